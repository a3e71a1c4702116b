"""speechfuse-convert: hf / fairseq checkpoints in, transformers folders out (convert/__init__'s docstring).

Errors (a missing file, a tensor of another shape, an unsupported setting) are one line naming it.
"""

from __future__ import annotations

import argparse
import sys

from speechfuse.convert import api


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="speechfuse-convert", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  hf = commands.add_parser("hf", help="a transformers save_pretrained folder -> CKPT")
  hf.add_argument("directory")
  hf.add_argument("--out", required=True)
  hf.add_argument("--group-norm-over-padding", action="store_true",
                  help="GroupNorm statistics over padding too, as transformers (match its padded batches exactly)")
  fairseq = commands.add_parser("fairseq", help="a fairseq HuBERT / wav2vec 2.0 checkpoint -> CKPT")
  fairseq.add_argument("checkpoint")
  fairseq.add_argument("--out", required=True)
  to_hf = commands.add_parser("to-hf", help="CKPT or a run's export/params -> a transformers folder")
  to_hf.add_argument("checkpoint")
  to_hf.add_argument("--out", required=True)
  to_hf.add_argument("--model-type", choices=("wav2vec2", "hubert", "wavlm"))
  return parser


# Training choices of the source, left to the fine-tuning recipe (configs/finetune_ctc.py freezes the extractor).
_TRAINING_KEYS = ("dropout_rate", "attention_dropout_rate", "input_dropout_rate", "feature_grad_mult", "remat")


def _overrides(out: str) -> str:
  """The --config flags that give a recipe's model.encoder the converted encoder's architecture."""
  encoder = api.encoder_config(out)
  return " ".join(f"--config.model.encoder.{key}={value}" for key, value in sorted(encoder.items())
                  if key not in _TRAINING_KEYS)


def main(argv: list[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  try:
    if args.command == "to-hf":
      print(f"wrote {api.to_hf(args.checkpoint, args.out, model_type=args.model_type)}")
      return
    if args.command == "hf":
      out, notes = api.convert_hf(args.directory, args.out, group_norm_over_padding=args.group_norm_over_padding)
    else:
      out, notes = api.convert_fairseq(args.checkpoint, args.out)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    sys.exit(f"speechfuse-convert: error: {e}")
  for note in notes:
    print(note)
  print(f"wrote {out}; fine-tune from it with --config.task.init_from={out} {_overrides(out)}")


if __name__ == "__main__":
  main()
