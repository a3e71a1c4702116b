"""Assembled models, chosen by name: `get_model(config.model, dtype=..., **context)` builds `MODELS[config.model.name]`.

`context` carries what only the task knows, e.g. the ASR models' `vocab_size` (from the tokenizer) and `cmvn`
(the training data's feature statistics). Every model builds its encoder from models.encoders (`ENCODERS`, by
config.model.encoder.architecture), so any model hosts any registered encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from speechfuse.models import ctc, encoders, ensemble, ssl, transducer
from speechfuse.models.encoders import ENCODERS

# name -> builder(model_config, dtype, **context) -> flax module. A model module adds itself here (tests add theirs).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "ctc": ctc.from_config,
    "ctc_ensemble": ensemble.from_config,
    "ssl": ssl.from_config,
    "transducer": transducer.from_config,
}


def get_model(config: ml_collections.ConfigDict, *, dtype: Any, **context: Any) -> nn.Module:
  """Builds the model named by config.name with compute dtype `dtype` (parameters stay float32)."""
  if config.name not in MODELS:
    raise ValueError(f"config.model.name={config.name!r} is unknown; choose from {sorted(MODELS)}")
  return MODELS[config.name](config, dtype, **context)
