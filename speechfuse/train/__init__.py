"""Training: TrainState, the generic sharded loop, checkpoints, metrics, and tasks (one module per objective)."""

from speechfuse.train.checkpoint import (CheckpointMismatchError, average_checkpoints, export_params,
                                         load_variables)
from speechfuse.train.config import default_config, validate
from speechfuse.train.loop import NonFiniteError, evaluate, train_and_evaluate
from speechfuse.train.state import TrainState
