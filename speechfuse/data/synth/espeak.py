"""eSpeak NG in-process through ctypes: audio, word and phoneme timings, and phoneme transcriptions.

The library and its data come from the `espeakng-loader` wheel, so nothing is installed system-wide.
The C API is a process-wide singleton: create one `ESpeak` per process.

Determinism. eSpeak NG seeds its noise generator (breathiness, aspiration, Klatt voicing noise) from
`time(NULL)` in `espeak_Initialize`, so the same text differs between runs unless `espeak_ng_SetRandSeed`
is called; `synthesize` reseeds before every utterance. Other internal state (echo buffers, filter
memories) still carries over from one utterance to the next, so an utterance's samples depend on the
utterances synthesised before it in the same process: the same sequence of calls in a fresh process
reproduces them exactly, which is why the corpus builder synthesises each shard in its own process.

Phone inventory. Phonemes are eSpeak NG's IPA names for the selected voice's dialect (e.g. "ð", "ə",
"aʊ", "dʒ", "ɑː", "ɚ"), stress marks removed; length marks stay part of the phone because eSpeak's
English distinguishes "ɑ" from "ɑː". Pauses are not phones.
"""

from __future__ import annotations

import ctypes
import dataclasses
import difflib
from typing import NamedTuple

import espeakng_loader
import numpy as np

# speak_lib.h: espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, espeak_PARAMETER and option bits.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAMETER_RATE = 1
_PARAMETER_PITCH = 3
_PARAMETER_RANGE = 4
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PHONEMES_IPA = 0x02
_EE_OK = 0

SAMPLE_RATE = 22050  # What eSpeak NG's formant synthesiser produces; checked at initialisation.
_STRESS_MARKS = "ˈˌ"


class _EventId(ctypes.Union):
  _fields_ = [
      ("number", ctypes.c_int),  # WORD and SENTENCE events: the word / sentence number.
      ("name", ctypes.c_char_p),  # MARK and PLAY events.
      ("string", ctypes.c_char * 8),  # PHONEME events: UTF-8, zero-terminated unless all 8 bytes are used.
  ]


class _Event(ctypes.Structure):
  """`espeak_EVENT` of speak_lib.h (API revision 12), field for field."""

  _fields_ = [
      ("type", ctypes.c_int),
      ("unique_identifier", ctypes.c_uint),
      ("text_position", ctypes.c_int),  # 1-based character offset of the word in the text.
      ("length", ctypes.c_int),  # word length in characters (WORD events).
      ("audio_position", ctypes.c_int),  # milliseconds, truncated.
      ("sample", ctypes.c_int),  # the same position in samples, exact.
      ("user_data", ctypes.c_void_p),
      ("id", _EventId),
  ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class ESpeakError(RuntimeError):
  """eSpeak NG refused a call; the message names the call and its arguments."""


@dataclasses.dataclass(frozen=True)
class Synthesis:
  """One synthesised utterance.

  Attributes:
    audio: int16 [samples] at `SAMPLE_RATE`.
    words: one (start_sample, end_sample) per word of the text, in order.
    phonemes: per word, its phones as (phone, start_sample, end_sample); a word's phones tile it.
  """

  audio: np.ndarray
  words: list[tuple[int, int]]
  phonemes: list[list[tuple[str, int, int]]]


class _Mark(NamedTuple):
  """A WORD (phone is None) or PHONEME event (phone "" for a pause) as the callback saw it."""

  sample: int
  text_position: int
  phone: str | None


def _phone(name: str) -> str:
  return "".join(c for c in name if c not in _STRESS_MARKS)


def _split_points(spoken: list[str], alone: list[list[str]]) -> list[int] | None:
  """Where each word starts in `spoken`, the phones eSpeak spoke for words it read as one unit.

  `alone` holds each word's phones when read alone. In context a word may gain a phone (a linking
  "r") or change one (a weak form), so the words are aligned to `spoken` through matching phones;
  a phone that matches nothing belongs to the word before it, and a word none of whose phones
  match starts right after the last matched phone of the word before. Returns None if that fails
  or the starts are not increasing.
  """
  owners = [(word, position) for word, phones in enumerate(alone) for position in range(len(phones))]
  matched: list[list[tuple[int, int]]] = [[] for _ in alone]  # per word: (index in spoken, position)
  matcher = difflib.SequenceMatcher(None, [p for phones in alone for p in phones], spoken, autojunk=False)
  for block in matcher.get_matching_blocks():
    for k in range(block.size):
      word, position = owners[block.a + k]
      matched[word].append((block.b + k, position))
  starts = [0]
  for word in range(1, len(alone)):
    if matched[word]:
      index, position = matched[word][0]
      starts.append(index - position)
    elif matched[word - 1]:  # Read differently alone ("a" alone is the letter): starts after its neighbour.
      starts.append(matched[word - 1][-1][0] + 1)
    else:
      return None
  if any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= len(spoken):
    return None
  return starts


class ESpeak:
  """The eSpeak NG library, initialised for synchronous retrieval with IPA phoneme events."""

  def __init__(self):
    self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
    self._declare_signatures()
    options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
    data_path = espeakng_loader.get_data_path()
    sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), options)
    if sample_rate != SAMPLE_RATE:
      raise ESpeakError(f"espeak_Initialize with data {data_path!r} returned {sample_rate}, "
                        f"expected sample rate {SAMPLE_RATE}")
    self._chunks: list[np.ndarray] = []
    self._events: list[_Mark] = []
    # ctypes keeps no reference to a callback it hands to C: hold it for the library's lifetime.
    self._callback = _SynthCallback(self._collect)
    self._lib.espeak_SetSynthCallback(self._callback)

  def _declare_signatures(self) -> None:
    lib = self._lib
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p

  def version(self) -> str:
    """The library's version string, e.g. "1.52.0"."""
    return self._lib.espeak_Info(None).decode()

  def _collect(self, wav, num_samples, events) -> int:
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
      event = events[i]
      if event.type == _EVENT_WORD:
        self._events.append(_Mark(event.sample, event.text_position, None))
      elif event.type == _EVENT_PHONEME:
        self._events.append(_Mark(event.sample, event.text_position, _phone(event.id.string.decode())))
      i += 1
    return 0  # 0 = continue synthesis.

  def set_voice(self, voice: str, *, rate: int, pitch: int, pitch_range: int) -> None:
    """Selects a voice such as "en-us+f3" (language voice + variant) and its prosody.

    Args:
      voice: a voice name, optionally with "+variant".
      rate: words per minute, 80..450 (175 is eSpeak's default).
      pitch: base pitch 0..100 (50 is the voice's own).
      pitch_range: intonation range 0..100 (0 is monotone, 50 the voice's own).
    """
    if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
      raise ESpeakError(f"espeak_SetVoiceByName({voice!r}) failed: no such voice or variant")
    for parameter, value in ((_PARAMETER_RATE, rate), (_PARAMETER_PITCH, pitch), (_PARAMETER_RANGE, pitch_range)):
      if self._lib.espeak_SetParameter(parameter, value, 0) != _EE_OK:
        raise ESpeakError(f"espeak_SetParameter({parameter}, {value}) failed for voice {voice!r}")

  def synthesize(self, text: str, *, seed: int) -> Synthesis:
    """Speaks `text` (words separated by single spaces) with the current voice.

    Args:
      text: the words, optionally ending in "." or "?" for the intonation.
      seed: seeds eSpeak's noise generator.

    Phone boundaries come from the PHONEME events: a phone lasts until the next phone or pause.
    A WORD event marks where a word's first phone starts when it lies after the start of the
    previous phone (the silent closure before a stop then belongs to the stop); eSpeak sometimes
    emits it at the start of the previous word's last phone instead, and then it is ignored.
    eSpeak speaks some word pairs as one dictionary entry ("in the"); such a group is split between
    its words by the number of phones each has on its own.

    Raises:
      ESpeakError: synthesis failed, or the phones of a merged group do not split between its words.
    """
    self._chunks.clear()
    self._events.clear()
    self._lib.espeak_ng_SetRandSeed(seed)
    encoded = text.encode()
    status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != _EE_OK:
      raise ESpeakError(f"espeak_Synth failed with status {status} for text {text!r}")
    audio = np.concatenate(self._chunks) if self._chunks else np.zeros((0,), np.int16)

    words = text.split(" ")
    # 1-based character offset of each word: what WORD events report as text_position.
    word_offsets = np.cumsum([1] + [len(w) + 1 for w in words[:-1]])
    phones: list[list] = []  # [phone, start, end, word index]
    word_event = None  # (word index, sample) of the latest WORD event not yet followed by a phone.
    # A phone ends where the next phone or pause starts later than it (eSpeak may report a final
    # phone and the pause after it at the same sample); WORD events only move that end when accepted.
    ends, boundaries = [], [len(audio)]  # boundaries: starts of later phones and pauses, nearest last
    for mark in reversed(self._events):
      while len(boundaries) > 1 and boundaries[-1] <= mark.sample:
        boundaries.pop()
      ends.append(boundaries[-1])
      if mark.phone is not None:
        boundaries.append(mark.sample)
    for mark, next_sample in zip(self._events, reversed(ends)):
      if mark.phone is None:
        word_event = (int(np.searchsorted(word_offsets, mark.text_position, side="right")) - 1, mark.sample)
        continue
      if not mark.phone:  # A pause: it ends the previous phone and is no phone itself.
        continue
      start = mark.sample
      if word_event is not None and phones and word_event[0] != phones[-1][3]:
        if word_event[1] > phones[-1][1]:
          start = min(start, word_event[1])
          for phone in reversed(phones):
            if phone[2] <= start:
              break
            phone[2] = start
      if word_event is not None:
        word_index = max(word_event[0], phones[-1][3] if phones else 0)
        word_event = None
      else:
        word_index = phones[-1][3] if phones else 0
      phones.append([mark.phone, start, next_sample, word_index])

    # eSpeak reports a phone it gives no duration of its own at the same sample as the next one
    # ("calls": l and z); such a run shares its interval evenly.
    run = 0
    for i in range(1, len(phones) + 1):
      if i == len(phones) or phones[i][1:3] != phones[run][1:3]:
        start, end = phones[run][1:3]
        for k in range(run, i):
          phones[k][1] = start + (end - start) * (k - run) // (i - run)
          phones[k][2] = start + (end - start) * (k - run + 1) // (i - run)
        run = i

    per_word: list[list[tuple[str, int, int]]] = [[] for _ in words]
    group_starts = sorted({p[3] for p in phones}) + [len(words)]
    for first, stop in zip(group_starts, group_starts[1:]):
      group = [tuple(p[:3]) for p in phones if p[3] == first]
      starts = [0]
      if stop - first > 1:
        starts = _split_points([p[0] for p in group], [self.phonemize(w) for w in words[first:stop]])
        if starts is None:
          raise ESpeakError(f"cannot split the phones {[p[0] for p in group]} between the words "
                            f"{words[first:stop]} in {text!r}")
      for index, start, end in zip(range(first, stop), starts, starts[1:] + [len(group)]):
        per_word[index] = group[start:end]
    if not per_word or not all(per_word):
      raise ESpeakError(f"eSpeak spoke no phones for some words of {text!r}")
    return Synthesis(audio=audio, words=[(w[0][1], w[-1][2]) for w in per_word], phonemes=per_word)

  def phonemize(self, text: str) -> list[str]:
    """Phones of `text` for the current voice (espeak_TextToPhonemes, IPA, stress marks removed)."""
    buffer = ctypes.create_string_buffer(text.encode())
    pointer = ctypes.c_void_p(ctypes.addressof(buffer))
    # Bits 8-23 of phonememode hold the separator put between phoneme names: a space.
    mode = _PHONEMES_IPA | (ord(" ") << 8)
    phones: list[str] = []
    while pointer.value:  # Each call translates one clause and advances the pointer past it.
      clause = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, mode)
      phones.extend(p for p in (_phone(name) for name in clause.decode().split()) if p)
    return phones
