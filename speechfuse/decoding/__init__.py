"""Decoding: CTC greedy and prefix beam search (optional word n-gram LM), transducer greedy and modified
beam search, streaming CTC; all take arrays (and, for transducers, apply-callables) and return token ids."""

from speechfuse.decoding.beams import BeamResult
from speechfuse.decoding.ctc import ctc_greedy, ctc_prefix_beam_search
from speechfuse.decoding.ctc_lm import token_pieces
from speechfuse.decoding.lm import NgramLM
from speechfuse.decoding.streaming import StreamingCTCDecoder, stream_encode
from speechfuse.decoding.transducer import modified_beam_search, transducer_greedy
