"""Assembled models, chosen by name: `get_model(config.model, dtype=..., **context)` builds `MODELS[config.model.name]`.

`context` carries what only the task knows, e.g. the ASR models' `vocab_size` (from the tokenizer) and `cmvn`
(the training data's feature statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from speechfuse.models import ctc, ensemble, frame_classifier, ssl, transducer

# name -> builder(model_config, dtype, **context) -> flax module. A model module adds itself here.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "ctc": ctc.from_config,
    "ctc_ensemble": ensemble.from_config,
    "frame_classifier": frame_classifier.from_config,
    "ssl": ssl.from_config,
    "transducer": transducer.from_config,
}


def get_model(config: ml_collections.ConfigDict, *, dtype: Any, **context: Any) -> nn.Module:
  """Builds the model named by config.name with compute dtype `dtype` (parameters stay float32)."""
  if config.name not in MODELS:
    raise ValueError(f"config.model.name={config.name!r} is unknown; choose from {sorted(MODELS)}")
  return MODELS[config.name](config, dtype, **context)
