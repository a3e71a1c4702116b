"""Text: normalisation and tokenizers (characters, SentencePiece) behind one protocol; see base.py."""

from speechfuse.text.base import BLANK_ID, UNK_ID, Tokenizer, load_tokenizer
from speechfuse.text.chars import CharTokenizer, default_alphabet
from speechfuse.text.normalize import TextNormalizer
from speechfuse.text.spm import SentencePieceTokenizer
