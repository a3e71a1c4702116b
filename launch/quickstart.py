r"""The README's main job: train the tiny recipe on the built-in corpus and print its results table.

  python launch/quickstart.py --size=tiny --workdir=runs/quickstart
"""

from __future__ import annotations

from absl import app, flags, logging

from speechfuse import config, quickstart

_SIZE = flags.DEFINE_enum("size", "tiny", list(config.SIZES), "Recipe size; smoke runs the same path in minutes.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Run directory (resumed if it has checkpoints).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  quickstart.run_quickstart(_SIZE.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
