"""HuBERT masked-prediction pre-training on unlabeled audio (the whole train split), fbank Conformer or waveform.

  python launch/main.py --config=configs/ssl_hubert.py:tiny --workdir=runs/ssl_tiny
  python launch/main.py --config=configs/ssl_hubert.py:tiny,backbone=wav2vec2,loss=ce --workdir=runs/ssl_w2v_ce

Args: size (smoke, tiny, base, large), backbone=conformer|wav2vec2|zipformer_waveform, loss=hubert|ce,
iteration=1|2, optimizer=adamw|scaled_adam.
  conformer: the encoder of configs/asr_conformer_ctc.py at the same size (same config: same class, subsampling
             and parameter names), so configs/finetune_ctc.py loads it; targets on its frames (tiny: conv1d x2,
             50 Hz; the other sizes conv2d x4, 25 Hz).
  wav2vec2:  HuBERT's waveform encoder (nn.wav2vec2; base = HuBERT base), targets at 50 Hz.
  zipformer_waveform: k2SSL's encoder, the same extractor under Zipformer stacks (nn.zipformer_waveform), 50 Hz.
  optimizer: adamw (fairseq HuBERT's Adam, cosine schedule) or scaled_adam (k2SSL: icefall's ScaledAdam with Eden,
             base learning rate 0.045, lr_epochs 10.5, warm-up from 0).
  iteration 1: MFCC-39 k-means, 100 clusters, written into the dataset before the first run trains
             (speechfuse.ssl.targets.prepare, which the train mode calls).
  iteration 2: 500 clusters of an iteration-1 model's layer, written beforehand under the name
             config.task.targets with speechfuse.ssl.targets.model_targets and the iteration-1 task's
             layer_features_fn (see speechfuse/tasks/ssl.py).
Then fine-tune: export the params (launch/main.py --mode=export) and run configs/finetune_ctc.py with
--config.task.init_from=<exported path>.
"""

from __future__ import annotations

import pathlib

import ml_collections

from speechfuse import config as config_lib
from speechfuse import train
from speechfuse.data import inputs
from speechfuse.models import encoders, ssl
from speechfuse.tasks import ssl as ssl_task


def _ctc_encoder(size: str) -> ml_collections.ConfigDict:
  """configs/asr_conformer_ctc.py's encoder config at `size`."""
  return config_lib.load_config(f"{pathlib.Path(__file__).with_name('asr_conformer_ctc.py')}:{size}").model.encoder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size, e.g. "tiny", "base,backbone=wav2vec2,loss=ce", "tiny,iteration=2"."""
  arg = config_lib.parse_arg(arg, size="tiny", backbone="conformer", loss="hubert", iteration=1, optimizer="adamw")
  size = arg.size
  if arg.iteration not in (1, 2):
    raise ValueError(f"iteration={arg.iteration!r} must be 1 or 2")
  if arg.optimizer not in ("adamw", "scaled_adam"):
    raise ValueError(f"optimizer={arg.optimizer!r} must be 'adamw' or 'scaled_adam'")
  config = train.default_config()
  config.size = size
  config.total_steps = config_lib.by_size(size, smoke=4, tiny=2000, base=400_000, large=400_000)
  config.log_every_steps = config_lib.by_size(size, smoke=2, tiny=50, base=100, large=100)
  config.eval_every_steps = config_lib.by_size(size, smoke=4, tiny=500, base=10_000, large=10_000)
  config.checkpoint_every_steps = config_lib.by_size(size, smoke=4, tiny=500, base=10_000, large=10_000)
  config.best_checkpoint_metric = "masked_accuracy"
  config.best_checkpoint_mode = "max"
  config.compute_dtype = config_lib.by_size(size, tiny="float32", base="bfloat16", large="bfloat16")
  config.max_grad_norm = 10.0  # fairseq HuBERT's clip_norm

  config.data = inputs.sized_config(size)
  config.data.speed_perturb = False  # labels are tied to the unperturbed frames

  config.model = ssl.default_config(arg.backbone, size)
  if arg.backbone == "conformer":
    config.model.encoder = _ctc_encoder(size)
    config.model.encoder.dynamic_chunk_training = False  # HuBERT pre-trains with full context; fine-tuning chunks

  config.task = ssl_task.default_config()
  config.task.loss = arg.loss
  config.task.iteration = arg.iteration
  config.task.num_classes = 100 if arg.iteration == 1 else 500  # HuBERT's
  encoder = config.model.encoder
  grid = encoders.frame_grid(encoder, config.data.sample_rate).name  # the encoder's frames: fbank_conv1d_x2, ...
  config.task.targets = f"mfcc_k100_{grid}" if arg.iteration == 1 else f"iter2_k500_{grid}"
  config.model.mask.mask_prob = 0.8 if arg.loss == "hubert" else 0.65  # HuBERT vs icefall / k2SSL
  # Spans of 200 ms as HuBERT's 10 frames at 50 Hz: 5 frames at conv2d x4's 25 Hz, 10 at conv1d x2's 50 Hz.
  config.model.mask.mask_length = 20 // encoder.subsampling_factor if arg.backbone == "conformer" else 10

  config.optimizer.learning_rate = config_lib.by_size(size, tiny=2e-3, base=5e-4, large=5e-4)
  config.optimizer.warmup_steps = config_lib.by_size(size, smoke=1, tiny=200, base=32_000, large=32_000)
  config.optimizer.schedule = "cosine"
  config.optimizer.weight_decay = 0.01
  if arg.optimizer == "scaled_adam":
    config.optimizer.name = "scaled_adam"  # its clipping (2 x the median recent norm) replaces max_grad_norm
    config.optimizer.schedule = "eden"
    config.optimizer.learning_rate = 0.045  # icefall's base-lr: ScaledAdam's steps are relative to each parameter
    config.optimizer.eps = 1e-8
    config.optimizer.eden_lr_epochs = 10.5
    config.optimizer.eden_warmup_start = 0.0  # eden's epochs: passes over the train split (derived by the trainer)
    config.optimizer.warmup_steps = config_lib.by_size(size, smoke=1, tiny=200, base=5000, large=5000)
  return config
