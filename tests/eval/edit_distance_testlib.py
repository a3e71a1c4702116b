"""The independent reference for error counts in tests: Levenshtein distance by dynamic programming."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
  """Substitutions + deletions + insertions (unit costs) turning `reference` into `hypothesis`."""
  d = np.arange(len(hypothesis) + 1)
  for i, r in enumerate(reference, 1):
    previous, d[0] = d.copy(), i
    for j, h in enumerate(hypothesis, 1):
      d[j] = min(previous[j] + 1, d[j - 1] + 1, previous[j - 1] + (r != h))
  return int(d[-1])
