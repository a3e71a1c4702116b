"""Losses: pure functions of model outputs, per-utterance and float32 (CTC, full and pruned RNN-T)."""

from speechfuse.losses.ctc import ctc_loss
from speechfuse.losses.pruned_transducer import pruned_rnnt_loss
from speechfuse.losses.transducer import rnnt_loss
