r"""The SSL comparison job: CTC from scratch vs from HuBERT- and CE-loss pre-trained encoders, one results table.

  python launch/ssl_compare.py --size=tiny --workdir=runs/ssl_compare

All logic lives in speechfuse/ssl_compare.py (budgets: configs/ssl_compare.py); a rerun resumes where it stopped.
"""

from __future__ import annotations

from absl import app, flags, logging

from speechfuse import config, ssl_compare

_SIZE = flags.DEFINE_enum("size", "tiny", list(config.SIZES),
                          "Size of both recipes and the budgets; smoke runs the same path in minutes.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ssl_compare", "Job directory (resumed if it holds finished stages).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  ssl_compare.run_comparison(_SIZE.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
