r"""k2SSL's pre-training comparison: CTC from scratch vs from encoders pre-trained with each objective, one table.

  python launch/ssl_compare.py --size=tiny --workdir=runs/ssl_compare                 # Conformer: HuBERT, CE
  python launch/ssl_compare.py --size=tiny --backbone=wav2vec2 --workdir=runs/ssl_w2v  # HuBERT, wav2vec 2.0, WavLM

All logic lives in speechfuse/projects/k2ssl/pipeline.py (budgets: configs/ssl_compare.py); a rerun resumes where it
stopped. The console shows the stage and progress lines and the tables; everything else goes to <workdir>/log.txt.
"""

from __future__ import annotations

from absl import app, flags

from speechfuse import cli, config
from speechfuse.projects.k2ssl import pipeline

_SIZE = flags.DEFINE_enum("size", "tiny", list(config.SIZES),
                          "Size of both recipes and the budgets; smoke runs the same path in minutes.")
_BACKBONE = flags.DEFINE_enum("backbone", "conformer", ["conformer", "wav2vec2"],
                              "The encoder pre-trained: the fbank Conformer or the waveform wav2vec2 encoder.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ssl_compare", "Job directory (resumed if it holds finished stages).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.start(_WORKDIR.value)
  cli.run_reporting(pipeline.run_comparison, _SIZE.value, _WORKDIR.value, backbone=_BACKBONE.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
