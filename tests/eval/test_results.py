"""results.summarize: the loss over feasible utterances, undefined (NaN) when there is none."""

from __future__ import annotations

import math

import pytest

from speechfuse.eval import results
from speechfuse.losses.ctc import INFEASIBLE_LOSS


def _records(losses):
  return [{"reference": "a b", "hypothesis": "a", "loss": loss, "confidence": None} for loss in losses]


def test_loss_is_the_mean_over_feasible_utterances():
  summary = results.summarize(_records([2.0, 4.0, INFEASIBLE_LOSS, math.nan]))
  assert summary["loss"] == pytest.approx(3.0)
  assert summary["utterances"] == 4 and summary["wer"] == pytest.approx(0.5)


def test_loss_without_a_feasible_utterance_is_nan():
  assert math.isnan(results.summarize(_records([math.nan, INFEASIBLE_LOSS]))["loss"])
