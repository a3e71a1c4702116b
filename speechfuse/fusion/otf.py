"""OTF (Fu et al., 2023): align the supervised model onto the self-supervised one, then average; and direct averaging.

The fused weights are W_F = (1 - weight) * W~_SL + weight * W_SSL, where W~_SL is the SL model aligned by
`align.align`; the paper averages with weight = 1/2 (Sec. 3.2). Every variable collection is fused the same way:
BatchNorm running means and variances are moved by their channel maps and averaged (for a soft map or two
different models the averaged variance is only an estimate; the moderate fine-tuning that follows OTF
re-estimates the statistics).
"""

from __future__ import annotations

from typing import Any

import jax

from speechfuse.fusion import align as align_lib
from speechfuse.fusion import spec as spec_lib
from speechfuse.fusion.spec import Spec, Variables


def direct_average(a: Variables, b: Variables, weight: float = 0.5) -> dict[str, Any]:
  """(1 - weight) * a + weight * b for every leaf of two variables dicts of the same structure (no alignment)."""
  return jax.tree.map(lambda x, y: ((1 - weight) * x + weight * y).astype(y.dtype), spec_lib.unbox(dict(a)),
                      spec_lib.unbox(dict(b)))


def otf_fuse(variables_sl: Variables, variables_ssl: Variables, spec: Spec, weight: float = 0.5,
             solver: str = "sinkhorn", **options) -> tuple[dict[str, Any], dict[str, align_lib.SpaceReport]]:
  """Fuses an SL model into an SSL model of the same architecture and size.

  Args:
    variables_sl, variables_ssl: {"params": ..., ["batch_stats": ...]} of the two models (boxed or not).
    spec: their hidden-space spec, e.g. speechfuse.fusion.conformer_ctc_spec(variables_ssl).
    weight: the SSL model's share of the average (the paper: 0.5).
    solver: "sinkhorn" (ott-jax) or "exact" (linear assignment).
    **options: align.align's squared, activations, epsilon, scale_cost, threshold, max_iterations.

  Returns:
    (fused variables as plain arrays, report per hidden space: align.SpaceReport).
  """
  aligned, _, report = align_lib.align(variables_sl, variables_ssl, spec, solver=solver, **options)
  return direct_average(aligned, variables_ssl, weight), report
