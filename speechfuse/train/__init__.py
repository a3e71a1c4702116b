"""Training: the Task protocol, TrainState, the generic sharded loop, checkpoints and metrics."""

from speechfuse.train.checkpoint import (CheckpointMismatchError, average_checkpoints, export_params,
                                         latest_variables, load_variables)
from speechfuse.train.config import default_config, validate
from speechfuse.train.loop import NonFiniteError, evaluate, initialize, train_and_evaluate
from speechfuse.train.pretrained import merge_pretrained
from speechfuse.train.state import TrainState, initial_variables
from speechfuse.train.task import CheckpointableIterator, Mean, Task, mean_of
