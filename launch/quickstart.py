r"""The README's main job: the OTF comparison (configs/otf.py) on the built-in corpus, ending with its results table.

  python launch/quickstart.py --size=tiny --workdir=runs/quickstart [--config.steps.sl=600 ...]

All logic lives in speechfuse/projects/otf/pipeline.py. `--config` defaults to configs/otf.py at `--size`; its
fields take `--config.a.b=value` overrides as launch/main.py's do. A rerun with the same workdir skips the finished
stages. The console shows the stage and progress lines and the table; everything else goes to <workdir>/log.txt.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from speechfuse import cli, config
from speechfuse.projects.otf import pipeline

_SIZE = flags.DEFINE_enum("size", "tiny", list(config.SIZES), "Pipeline size; smoke runs the same path in minutes.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Job directory (resumed if it holds finished stages).")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config (default: configs/otf.py:<size>).",
                                          lock_config=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """cli.parse_flags with --config defaulting to configs/otf.py at --size (so that overrides apply to it)."""
  args = argv[1:]
  if any(arg == "--config" or arg.startswith("--config=") for arg in args):
    if any(arg.startswith("--size") for arg in args):
      sys.exit("FATAL flags error: give --size or --config, not both")
  else:
    size = next((arg.split("=", 1)[1] for arg in reversed(args) if arg.startswith("--size=")), _SIZE.default)
    if size not in config.SIZES:
      sys.exit(f"FATAL flags error: --size={size} is not one of {', '.join(config.SIZES)}")
    args = [f"--config={config.recipe_path('otf')}:{size}", *args]
  return cli.parse_flags([argv[0], *args])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start(_WORKDIR.value)
  cli.run_reporting(pipeline.run_otf, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
