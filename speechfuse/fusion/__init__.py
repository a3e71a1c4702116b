"""Model fusion through hidden spaces: specs per architecture, OT alignment, OTF and direct averaging.

  spec           the data model: Member / Part / Space / Fixed / Spec, validation of full coverage
  architectures  conformer_ctc_spec, transformer_ctc_spec, zipformer_ctc_spec, read off a variables dict (any size);
                 ctc_activations
  transport      applying maps to variables (one map per hidden-space part, every axis of the space at once)
  permute        random_permutation: a functionally identical copy with every hidden space permuted
  align          align.align: one OT map per space in dependency order (exact or ott-jax Sinkhorn), with a report
  otf            otf_fuse (align SL onto SSL, then average) and direct_average
  fuse           `--mode=fuse`: default_config (config.fusion) and fuse(config, workdir) -> <workdir>/fused
The OTF paper's comparison (its baselines SBF / EBF / upper bound, the loss landscape, the pipeline) is the
project speechfuse.projects.otf; EBF's model is speechfuse.models.ensemble.

Functions take variables dicts {"params": ..., "batch_stats": ...} (a TrainState's {"params": params, **extra}),
boxed or plain, and return plain arrays.
"""

from speechfuse.fusion.align import SOLVERS, SpaceReport
from speechfuse.fusion.architectures import (conformer_ctc_spec, ctc_activations, transformer_ctc_spec,
                                            zipformer_ctc_spec)
from speechfuse.fusion.fuse import default_config, fuse
from speechfuse.fusion.otf import direct_average, otf_fuse
from speechfuse.fusion.permute import random_permutation
from speechfuse.fusion.spec import Fixed, Member, Part, Space, Spec
