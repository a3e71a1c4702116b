"""Losses: pure functions of model outputs in float32 (CTC, RNN-T: per utterance; masked prediction and
wav2vec 2.0's contrastive and diversity losses: per batch)."""

from speechfuse.losses.contrastive import contrastive_logits, contrastive_loss, diversity_loss, sample_negatives
from speechfuse.losses.ctc import ctc_loss
from speechfuse.losses.masked_prediction import ce_loss, feature_penalty, hubert_loss
from speechfuse.losses.pruned_transducer import pruned_rnnt_loss
from speechfuse.losses.transducer import rnnt_loss
