"""`speechfuse-prepare`: converts a corpus on disk into a speechfuse dataset (see storage.py).

  speechfuse-prepare librispeech DIR --out ROOT [--name librispeech] [--splits dev-clean,test-clean]
  speechfuse-prepare manifest train.jsonl dev.tsv:valid ... --name NAME --out ROOT [--fields translation]
  speechfuse-prepare lm --dataset {builtin,PATH} --split train --order 3 --out lm.arpa [--tokenizer RUN/tokenizer]

A manifest's split is the part after its last ':', or else its file name without suffix. Prints a
table of splits (examples, hours, speakers, skipped records) and where the report of skipped
records is.

`lm` estimates a word n-gram LM (speechfuse.text.ngram: interpolated modified Kneser-Ney, ARPA) from the
transcripts of one split, read from the dataset's index (no audio is decoded) and normalised as the tokenizer
normalises labels: a run's tokenizer directory (--tokenizer), or else the recipes' default normaliser. The file
is what config.task.lm_path reads for decoding="beam_lm". It prints the n-gram counts.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from speechfuse.data import inputs, manifest, storage
from speechfuse.text import TextNormalizer, load_tokenizer, ngram


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  args.command_line = " ".join(sys.argv[1:] if argv is None else argv)
  try:
    if args.command == "lm":
      print(_prepare_lm(args))
      return 0
    if args.command == "librispeech":
      path = _prepare_librispeech(args)
    else:
      path = _prepare_manifests(args)
  except (ValueError, OSError) as e:  # Bad input: a clear message, not a traceback.
    parser.exit(1, f"speechfuse-prepare: error: {e}\n")
  print(format_summary(storage.dataset_info(path)))
  return 0


def format_summary(info: dict[str, Any]) -> str:
  """A table of `storage.dataset_info`: one row per split, then the totals and the report path."""
  rows = [("split", "examples", "hours", "speakers", "skipped")]
  for split, s in info["splits"].items():
    rows.append((split, str(s["num_examples"]), f"{s['hours']:.3f}", str(s["speakers"]),
                 str(sum(s["skipped"].values()))))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                     enumerate(zip(row, widths))) for row in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines += ["", f"{info['name']}: {info['total_hours']:.3f} hours, {info['speakers']} speakers, "
            f"written to {info['path']}", f"report: {info['report']}"]
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="speechfuse-prepare", description="Converts a corpus on disk into a speechfuse dataset.")
  commands = parser.add_subparsers(dest="command", required=True)
  libri = commands.add_parser("librispeech", help="a LibriSpeech directory (holding its split directories)")
  libri.add_argument("dir", type=pathlib.Path, help="e.g. .../LibriSpeech, holding train-clean-100/ etc.")
  libri.add_argument("--name", default="librispeech", help="dataset name (default: librispeech)")
  libri.add_argument("--splits", type=_comma_list, help="comma-separated splits (default: all under DIR)")
  mani = commands.add_parser("manifest", help="JSONL / TSV manifests, one per split")
  mani.add_argument("manifests", nargs="+", metavar="MANIFEST[:split]")
  mani.add_argument("--name", required=True, help="dataset name, lower_snake_case")
  mani.add_argument("--transcripts", type=pathlib.Path,
                    help="file of `id text` lines, for AV-HuBERT TSVs (LRS3)")
  mani.add_argument("--fields", type=_comma_list,
                    help="optional fields to store (default: those the manifests have, except video)")
  mani.add_argument("--video-channels", type=int, default=1, choices=(1, 3),
                    help="1: grayscale video [frames, h, w]; 3: RGB [frames, h, w, 3]")
  for command in (libri, mani):
    command.add_argument("--out", required=True, type=pathlib.Path, help="data root; writes OUT/NAME")
    command.add_argument("--sample-rate", type=int, default=16000)
    command.add_argument("--resample", action="store_true",
                         help="resample audio at another rate (default: such records are skipped as bad)")
    command.add_argument("--min-duration", type=float, default=0.1, help="seconds")
    command.add_argument("--max-duration", type=float, default=30.0, help="seconds")
    command.add_argument("--no-skip-bad", dest="skip_bad", action="store_false",
                         help="stop at the first bad record instead of skipping and reporting it")
    command.add_argument("--workers", type=int, default=0, help="audio decoding processes")
  data = inputs.default_config()
  lm = commands.add_parser("lm", help="a word n-gram LM (ARPA) of one split's transcripts")
  lm.add_argument("--dataset", default=data.corpus,
                  help="'builtin' (the built-in corpus) or the path of a dataset written by speechfuse-prepare")
  lm.add_argument("--data-dir", default=data.data_dir, help="where the built-in corpus is cached (built if missing)")
  lm.add_argument("--builtin-size", default=data.builtin_size, help="built-in corpus size (tiny, small, ...)")
  lm.add_argument("--split", default=data.train_split, help="whose transcripts (default: train)")
  lm.add_argument("--order", type=int, default=3, help="the largest n (default: 3)")
  lm.add_argument("--tokenizer", type=pathlib.Path,
                  help="a run's tokenizer directory, whose text normaliser to apply (default: the recipes' default)")
  lm.add_argument("--out", required=True, type=pathlib.Path, help="the ARPA file to write")
  return parser


def _comma_list(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def _prepare_librispeech(args: argparse.Namespace) -> pathlib.Path:
  available = manifest.librispeech_splits(args.dir)
  splits = args.splits or available
  unknown = sorted(set(splits) - set(available))
  if unknown or not splits:
    raise ValueError(f"{args.dir}: no LibriSpeech splits {unknown or ''}; found {available}")
  return _write(args, {split: manifest.read_librispeech(args.dir, split) for split in splits},
                optional_fields=(), video_channels=1)


def _prepare_manifests(args: argparse.Namespace) -> pathlib.Path:
  entries, sources = {}, {}
  for spec in args.manifests:
    path, split = _split_of(spec)
    if split in entries:
      raise ValueError(f"split {split!r} named twice (from {spec!r}); name splits as MANIFEST:split")
    entries[split] = manifest.read_manifest(path, transcripts=args.transcripts)
    sources[split] = str(path)
  if args.fields is None:
    present = manifest.present_fields([e for split_entries in entries.values() for e in split_entries])
    # Video needs decodable frame files and makes the dataset large: stored only when asked for.
    optional_fields = tuple(f for f in present if f != "video")
  else:
    optional_fields = tuple(args.fields)
  return _write(args, entries, optional_fields, args.video_channels, sources)


def _prepare_lm(args: argparse.Namespace) -> str:
  """Writes the LM of args.split's transcripts to args.out; returns a one-line summary."""
  data = inputs.default_config()
  data.corpus, data.data_dir, data.builtin_size = args.dataset, str(args.data_dir), args.builtin_size
  texts = inputs.open_split(data, args.split).metadata()["text"]
  normalizer = load_tokenizer(args.tokenizer).normalizer if args.tokenizer else TextNormalizer()
  tables = ngram.estimate([normalizer(text) for text in texts], args.order)
  path = ngram.write_arpa(tables, args.out)
  counts = ", ".join(f"{n}-grams {len(table)}" for n, table in enumerate(tables, 1))
  return f"{path}: {args.order}-gram LM of {len(texts)} transcripts of {args.split} ({counts})"


def _split_of(spec: str) -> tuple[pathlib.Path, str]:
  """MANIFEST[:split] -> (manifest path, split name)."""
  path, sep, split = spec.rpartition(":")
  if sep and split and "/" not in split:
    return pathlib.Path(path), split
  return pathlib.Path(spec), pathlib.Path(spec).stem


def _write(args: argparse.Namespace, entries: dict[str, list], optional_fields: Sequence[str],
           video_channels: int, sources: dict[str, str] | None = None) -> pathlib.Path:
  def examples(split: str) -> Callable[[], Any]:
    return lambda: manifest.load_examples(
        entries[split], sample_rate=args.sample_rate, resample=args.resample,
        optional_fields=optional_fields, num_workers=args.workers)

  return storage.write_dataset(
      args.out, args.name, {split: examples(split) for split in entries},
      optional_fields=optional_fields, video_channels=video_channels, expected_sample_rate=args.sample_rate,
      min_duration=args.min_duration, max_duration=args.max_duration, skip_bad=args.skip_bad,
      description=f"speechfuse-prepare {args.command_line}", sources=sources)
