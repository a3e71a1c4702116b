"""Sentences of the built-in corpus: a shipped vocabulary (words.tsv) and a small seeded grammar.

The vocabulary holds the open word classes (nouns, verbs, adjectives, adverbs, prepositions) with
their inflected forms; the grammar below adds the closed classes (determiners, pronouns, auxiliaries,
conjunctions) and a handful of clause templates: transitive and intransitive clauses in the past and
present, progressive and modal clauses, copulas, "there was" clauses, two clauses joined by a
conjunction, and yes/no and wh- questions. Transcripts are lowercase words without punctuation.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

WORDS_PATH = pathlib.Path(__file__).with_name("words.tsv")

_SINGULAR_DETERMINERS = ("the", "the", "a", "this", "that", "every", "my", "your", "his", "her", "our", "their")
_PLURAL_DETERMINERS = ("the", "the", "some", "many", "these", "those", "two", "three", "four", "five",
                       "several", "my", "our", "their", "your")
_SINGULAR_PRONOUNS = ("he", "she")
_PLURAL_PRONOUNS = ("we", "they", "you")
_OBJECT_PRONOUNS = ("him", "her", "us", "them", "me")
_MODALS = ("will", "can", "could", "should", "might", "must", "would")
_DEGREE_ADVERBS = ("very", "rather", "quite", "so", "really")
_CONJUNCTIONS = ("and", "but", "because", "while", "when", "so", "although", "until")
_WH_WORDS = ("where", "why", "when", "how")


class Noun(NamedTuple):
  singular: str
  plural: str


class Verb(NamedTuple):
  base: str
  third_person: str
  past: str
  participle: str  # present participle, "-ing"
  transitive: bool


class Sentence(NamedTuple):
  """A generated sentence: its words and whether it is a question (spoken with rising intonation)."""

  words: tuple[str, ...]
  question: bool

  @property
  def text(self) -> str:
    """The transcript: lowercase words separated by single spaces."""
    return " ".join(self.words)

  @property
  def spoken(self) -> str:
    """What eSpeak reads: the transcript with its final punctuation, which sets the intonation."""
    return self.text + ("?" if self.question else ".")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  nouns: tuple[Noun, ...]
  verbs: tuple[Verb, ...]
  adjectives: tuple[str, ...]
  adverbs: tuple[str, ...]
  prepositions: tuple[str, ...]

  def words(self) -> frozenset[str]:
    """Every word a sentence can contain: all forms of the vocabulary plus the grammar's own."""
    words = {w for noun in self.nouns for w in noun}
    words |= {w for verb in self.verbs for w in verb[:4]}
    words |= set(self.adjectives) | set(self.adverbs) | set(self.prepositions)
    closed = (_SINGULAR_DETERMINERS + _PLURAL_DETERMINERS + _SINGULAR_PRONOUNS + _PLURAL_PRONOUNS +
              _OBJECT_PRONOUNS + _MODALS + _DEGREE_ADVERBS + _CONJUNCTIONS + _WH_WORDS)
    return frozenset(words | set(closed) | {"an", "is", "are", "was", "were", "did", "do", "does", "there"})


def load_vocabulary(path: str | os.PathLike = WORDS_PATH) -> Vocabulary:
  """Reads a vocabulary file in the format of words.tsv (described in its header).

  Raises:
    ValueError: a line with an unknown word class or the wrong number of fields; names file and line.
  """
  fields_per_class = {"noun": 3, "verb": 6, "adjective": 2, "adverb": 2, "preposition": 2}
  entries: dict[str, list] = {word_class: [] for word_class in fields_per_class}
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), start=1):
    if not line.strip() or line.startswith("#"):
      continue
    fields = line.split("\t")
    expected = fields_per_class.get(fields[0])
    if expected is None or len(fields) != expected or not all(f.isalpha() and f.islower() for f in fields[1:]
                                                              if f not in ("t", "i")):
      raise ValueError(f"{path}:{number}: expected one of {sorted(fields_per_class)} with its "
                       f"{expected or 'n'} tab-separated lowercase fields, got {line!r}")
    if fields[0] == "noun":
      entries["noun"].append(Noun(*fields[1:]))
    elif fields[0] == "verb":
      if fields[1] not in ("t", "i"):
        raise ValueError(f"{path}:{number}: verb transitivity must be 't' or 'i', got {fields[1]!r}")
      entries["verb"].append(Verb(*fields[2:], transitive=fields[1] == "t"))
    else:
      entries[fields[0]].append(fields[1])
  return Vocabulary(
      nouns=tuple(entries["noun"]), verbs=tuple(entries["verb"]), adjectives=tuple(entries["adjective"]),
      adverbs=tuple(entries["adverb"]), prepositions=tuple(entries["preposition"]))


def _pick(rng: np.random.Generator, options: Sequence[str]):
  return options[int(rng.integers(len(options)))]


class Grammar:
  """Draws random sentences over a vocabulary; all randomness comes from the generator passed in."""

  def __init__(self, vocabulary: Vocabulary):
    self.vocabulary = vocabulary
    self._transitive = [v for v in vocabulary.verbs if v.transitive]
    self._intransitive = [v for v in vocabulary.verbs if not v.transitive]

  def sentence(self, rng: np.random.Generator) -> Sentence:
    """One sentence: 50% a single clause, 35% two joined clauses, 15% a question."""
    draw = rng.random()
    if draw < 0.5:
      words = self._clause(rng)
    elif draw < 0.85:
      words = self._clause(rng) + [_pick(rng, _CONJUNCTIONS)] + self._clause(rng, short=True)
    else:
      return Sentence(tuple(self._question(rng)), question=True)
    return Sentence(tuple(words), question=False)

  def _noun_phrase(self, rng: np.random.Generator, plural: bool, *, modifier: bool = True) -> list[str]:
    noun = _pick(rng, self.vocabulary.nouns)
    words = [_pick(rng, _PLURAL_DETERMINERS if plural else _SINGULAR_DETERMINERS)]
    num_adjectives = int(rng.choice(3, p=(0.5, 0.38, 0.12)))
    if num_adjectives == 1 and rng.random() < 0.15:
      words.append(_pick(rng, _DEGREE_ADVERBS))
    adjectives = rng.choice(len(self.vocabulary.adjectives), size=num_adjectives, replace=False)
    words += [self.vocabulary.adjectives[i] for i in adjectives]
    words.append(noun.plural if plural else noun.singular)
    if words[0] == "a" and words[1][0] in "aeiou":
      words[0] = "an"
    if modifier and rng.random() < 0.1:
      words += [_pick(rng, self.vocabulary.prepositions)] + self._noun_phrase(rng, rng.random() < 0.3,
                                                                             modifier=False)
    return words

  def _subject(self, rng: np.random.Generator) -> tuple[list[str], bool]:
    plural = bool(rng.random() < 0.35)
    if rng.random() < 0.2:
      return [_pick(rng, _PLURAL_PRONOUNS if plural else _SINGULAR_PRONOUNS)], plural
    return self._noun_phrase(rng, plural), plural

  def _object(self, rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.1:
      return [_pick(rng, _OBJECT_PRONOUNS)]
    return self._noun_phrase(rng, bool(rng.random() < 0.3))

  def _place(self, rng: np.random.Generator) -> list[str]:
    return [_pick(rng, self.vocabulary.prepositions)] + self._noun_phrase(rng, bool(rng.random() < 0.3),
                                                                         modifier=False)

  def _clause(self, rng: np.random.Generator, short: bool = False) -> list[str]:
    subject, plural = self._subject(rng)
    template = int(rng.integers(6))
    if template == 0:  # Transitive, simple past or present.
      verb = _pick(rng, self._transitive)
      words = subject + [self._finite(rng, verb, plural)] + self._object(rng)
    elif template == 1:  # Intransitive with an adverb or a place.
      verb = _pick(rng, self._intransitive)
      words = subject + [self._finite(rng, verb, plural)]
      if rng.random() < 0.4:
        words.append(_pick(rng, self.vocabulary.adverbs))
    elif template == 2:  # Modal.
      verb = _pick(rng, self.vocabulary.verbs)
      words = subject + [_pick(rng, _MODALS), verb.base] + (self._object(rng) if verb.transitive else [])
    elif template == 3:  # Progressive.
      verb = _pick(rng, self.vocabulary.verbs)
      words = subject + [self._be(rng, plural), verb.participle] + (self._object(rng) if verb.transitive else [])
    elif template == 4:  # Copula with one or two adjectives.
      words = subject + [self._be(rng, plural)]
      if rng.random() < 0.3:
        words.append(_pick(rng, _DEGREE_ADVERBS))
      adjectives = rng.choice(len(self.vocabulary.adjectives), size=2, replace=False)
      words.append(self.vocabulary.adjectives[adjectives[0]])
      if rng.random() < 0.3:
        words += ["and", self.vocabulary.adjectives[adjectives[1]]]
    else:  # Existential.
      plural = bool(rng.random() < 0.4)
      words = ["there", "were" if plural else "was"] + self._noun_phrase(rng, plural, modifier=False)
      return words + self._place(rng)
    if not short and rng.random() < (0.6 if template == 1 else 0.3):
      words += self._place(rng)
    return words

  def _question(self, rng: np.random.Generator) -> list[str]:
    subject, plural = self._subject(rng)
    verb = _pick(rng, self.vocabulary.verbs)
    complement = self._object(rng) if verb.transitive else []
    draw = rng.random()
    if draw < 0.4:  # Yes/no with do-support: "did the cat see a bird".
      auxiliary = "did" if rng.random() < 0.6 else ("do" if plural else "does")
      return [auxiliary] + subject + [verb.base] + complement
    if draw < 0.6:  # Yes/no with a modal.
      return [_pick(rng, _MODALS)] + subject + [verb.base] + complement
    if draw < 0.85:  # Wh- with do-support.
      return [_pick(rng, _WH_WORDS), "did"] + subject + [verb.base] + complement
    adjective = _pick(rng, self.vocabulary.adjectives)
    return [_pick(rng, ("why", "how")), self._be(rng, plural)] + subject + ["so", adjective]

  @staticmethod
  def _finite(rng: np.random.Generator, verb: Verb, plural: bool) -> str:
    if rng.random() < 0.6:
      return verb.past
    return verb.base if plural else verb.third_person

  @staticmethod
  def _be(rng: np.random.Generator, plural: bool) -> str:
    past = rng.random() < 0.6
    if plural:
      return "were" if past else "are"
    return "was" if past else "is"


def unique_sentences(grammar: Grammar, rng: np.random.Generator, count: int) -> list[Sentence]:
  """`count` sentences with pairwise different transcripts, in the order drawn."""
  sentences: dict[str, Sentence] = {}
  while len(sentences) < count:
    sentence = grammar.sentence(rng)
    sentences.setdefault(sentence.text, sentence)
  return list(sentences.values())
