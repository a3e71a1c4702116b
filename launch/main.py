r"""speechfuse launcher, intentionally thin: all logic lives in `speechfuse.run` so notebooks call the same code.

  python launch/main.py --config=configs/<recipe>.py:<arg> --workdir=runs/<name> [--mode=train] \
      [--config.a.b=value ...]

Modes (speechfuse.run): train, eval, export, fuse (needs a config.fusion section: speechfuse.fusion.default_config).

`<arg>` is parsed by `speechfuse.config.parse_arg` ("tiny", "base,seed=3", ...). The config is locked, so an
override of a key that does not exist fails at start with a message naming the key. The console shows the run's
own lines; the libraries' go to <workdir>/log.txt (--verbosity=0 shows them too).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from speechfuse import cli, run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file: configs/<recipe>.py:<arg>.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MODE = flags.DEFINE_enum("mode", "train", sorted(run.MODES),
                          "What to do with the config: train, eval (decode the test splits), export (the averaged "
                          "variables to <workdir>/export/params), fuse (config.fusion's two exported CTC models "
                          "into <workdir>/fused/params).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start(_WORKDIR.value)
  cli.run_reporting(run.run, _MODE.value, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
