"""SentencePiece subword tokenizer (BPE or unigram), trained in-process from transcripts.

The model reserves id 0 as the control piece "<blank>" (SentencePiece's pad, which encoding never
emits), so the CTC / transducer blank cannot collide with a real piece, and id 1 as "<unk>"; there is no
BOS / EOS. SentencePiece's own normalisation is off ("identity"): transcripts go through our
TextNormalizer instead, once, the same for training and encoding.
"""

from __future__ import annotations

import collections
import io
import os
from collections.abc import Iterable
from typing import Any, Literal

import sentencepiece

from speechfuse.text import base
from speechfuse.text.normalize import TextNormalizer

MODEL_FILE = "tokenizer.model"


@base.register("sentencepiece")
class SentencePieceTokenizer:
  """Subword pieces as ids: 0 blank (and pad), 1 unk, then the trained pieces."""

  blank_id = base.BLANK_ID
  pad_id = base.BLANK_ID
  unk_id = base.UNK_ID

  def __init__(self, model_proto: bytes, normalizer: TextNormalizer | None = None):
    """Wraps a serialised SentencePiece model trained with the id layout above (as `train` does)."""
    self._model_proto = bytes(model_proto)
    self._processor = sentencepiece.SentencePieceProcessor(model_proto=self._model_proto)
    if self._processor.pad_id() != self.blank_id or self._processor.unk_id() != self.unk_id:
      raise ValueError(
          f"SentencePiece model has pad id {self._processor.pad_id()} and unk id {self._processor.unk_id()}; "
          f"speechfuse needs blank (pad) at {self.blank_id} and unk at {self.unk_id}: train it with "
          "SentencePieceTokenizer.train")
    self.normalizer = normalizer or TextNormalizer()
    self.oov_counts: collections.Counter[str] = collections.Counter()

  @classmethod
  def train(
      cls,
      texts: Iterable[str],
      vocab_size: int,
      *,
      model_type: Literal["bpe", "unigram"] = "bpe",
      normalizer: TextNormalizer | None = None,
      character_coverage: float = 1.0,
      out_dir: str | os.PathLike | None = None,
  ) -> SentencePieceTokenizer:
    """Trains on the normalised, non-empty `texts`; the same texts always give the same model.

    Args:
      texts: transcripts (any iterable, read once).
      vocab_size: ids in total, blank and unk included; SentencePiece fails if the texts cannot fill it.
      model_type: "bpe" or "unigram".
      normalizer: applied to `texts` here and by `encode`; TextNormalizer() if None.
      character_coverage: share of character occurrences the vocabulary must cover; 1.0 keeps every
        character seen (right for small alphabets), rarer ones become unk below it.
      out_dir: if given, the tokenizer is also saved there.

    Raises:
      ValueError: the vocabulary cannot be trained (e.g. `vocab_size` too large for the texts).
    """
    if model_type not in ("bpe", "unigram"):
      raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    normalizer = normalizer or TextNormalizer()
    sentences = (sentence for sentence in map(normalizer, texts) if sentence)
    model = io.BytesIO()
    try:
      sentencepiece.SentencePieceTrainer.train(
          sentence_iterator=sentences,
          model_writer=model,
          vocab_size=vocab_size,
          model_type=model_type,
          character_coverage=character_coverage,
          pad_id=cls.blank_id,
          pad_piece="<blank>",
          unk_id=cls.unk_id,
          unk_piece="<unk>",
          bos_id=-1,
          eos_id=-1,
          normalization_rule_name="identity",
          minloglevel=2,
      )
    except RuntimeError as e:
      raise ValueError(f"cannot train a {model_type} vocabulary of {vocab_size} pieces: {e}") from e
    tokenizer = cls(model.getvalue(), normalizer)
    if out_dir is not None:
      tokenizer.save(out_dir)
    return tokenizer

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def model_proto(self) -> bytes:
    """The serialised SentencePiece model."""
    return self._model_proto

  def encode(self, text: str) -> list[int]:
    text = self.normalizer(text)
    ids = self._processor.encode(text)
    if self.unk_id in ids:
      # Rare, so only then pay for the proto that maps each unk piece back to its characters.
      for piece in self._processor.encode(text, return_type="proto").pieces:
        if piece.id == self.unk_id:
          self.oov_counts.update(piece.surface)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    pieces = [int(index) for index in ids if int(index) != self.blank_id]
    return " ".join(self._processor.decode(pieces).split())

  def save(self, directory: str | os.PathLike) -> str:
    os.makedirs(directory, exist_ok=True)
    model_path = os.path.join(os.fspath(directory), MODEL_FILE)
    with open(model_path + ".tmp", "wb") as f:
      f.write(self._model_proto)
    os.replace(model_path + ".tmp", model_path)
    return base.write_descriptor(directory, "sentencepiece", model=MODEL_FILE,
                                 normalizer=self.normalizer.to_dict())

  @classmethod
  def from_descriptor(cls, directory: str, descriptor: dict[str, Any]) -> SentencePieceTokenizer:
    model_path = os.path.join(directory, descriptor["model"])
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model {model_path!r} named by the tokenizer descriptor is missing")
    with open(model_path, "rb") as f:
      model_proto = f.read()
    try:
      return cls(model_proto, TextNormalizer.from_dict(descriptor["normalizer"]))
    except RuntimeError as e:  # what SentencePiece raises for a corrupt model
      raise ValueError(f"SentencePiece model {model_path!r} cannot be read: {e}") from e
