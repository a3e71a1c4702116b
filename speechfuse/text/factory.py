"""Building a recipe's tokenizer from its config: loaded from the run directory if it was saved there
before (so a resumed or evaluated run encodes exactly as it trained), else trained / built and saved."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import ml_collections

from speechfuse.text.base import DESCRIPTOR, Tokenizer, load_tokenizer
from speechfuse.text.chars import CharTokenizer
from speechfuse.text.normalize import TextNormalizer
from speechfuse.text.spm import SentencePieceTokenizer

KINDS = ("char", "bpe", "unigram")


def default_config() -> ml_collections.ConfigDict:
  """The `tokenizer` section of a recipe config."""
  config = ml_collections.ConfigDict()
  config.kind = "char"  # "char" (letters, apostrophe, space), "bpe" or "unigram" (SentencePiece)
  config.vocab_size = 256  # SentencePiece kinds only: ids in total, blank and unk included
  config.case = "lower"  # text normalisation, see speechfuse.text.normalize
  config.digits = "drop"
  return config


def build_tokenizer(config: ml_collections.ConfigDict, texts: Callable[[], Iterable[str]],
                    directory: str | os.PathLike) -> Tokenizer:
  """The tokenizer saved in `directory`, or a new one of `config.kind` saved there.

  Args:
    config: a `default_config()`.
    texts: returns the training transcripts; called only when a SentencePiece model must be trained.
    directory: where the tokenizer lives (the run's `tokenizer/`).

  Raises:
    ValueError: an unknown kind, or a saved tokenizer that contradicts `config.kind`.
  """
  if config.kind not in KINDS:
    raise ValueError(f"config.tokenizer.kind={config.kind!r} is unknown; choose from {KINDS}")
  if os.path.exists(os.path.join(directory, DESCRIPTOR)):
    tokenizer = load_tokenizer(directory)
    if isinstance(tokenizer, CharTokenizer) != (config.kind == "char"):
      raise ValueError(f"{directory} holds a {type(tokenizer).__name__} but config.tokenizer.kind={config.kind!r}; "
                       "use another workdir or the saved kind")
    return tokenizer
  normalizer = TextNormalizer(case=config.case, digits=config.digits)
  if config.kind == "char":
    tokenizer = CharTokenizer(normalizer=normalizer)
    tokenizer.save(directory)
    return tokenizer
  return SentencePieceTokenizer.train(texts(), config.vocab_size, model_type=config.kind, normalizer=normalizer,
                                      out_dir=directory)
