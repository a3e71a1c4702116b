"""Conformer-CTC speech recognition (the OTF paper's supervised model; WeNet / ESPnet recipe shape).

  python launch/main.py --config=configs/asr_conformer_ctc.py:tiny --workdir=runs/ctc_tiny

Sizes: smoke (a few steps on the built-in `tiny` corpus, for tests), tiny (6 x 144 Conformer on the built-in
`small` corpus, ~2 h of audio: trains on a 2-core CPU in under 30 minutes), base (the OTF paper's 12 x 512
Conformer-CTC), large (17 x 512). For real data, write a dataset with `speechfuse-prepare librispeech ...` and
pass --config.data.corpus=<its path> (with --config.data.train_split=train-clean-100 etc.).
"""

from __future__ import annotations

import ml_collections

from speechfuse import config as config_lib
from speechfuse import train
from speechfuse.data import inputs
from speechfuse.models import ctc
from speechfuse.text import factory
from speechfuse.train.tasks import asr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size ("smoke", "tiny", "base", "large"), optionally "<size>,architecture=transformer"."""
  arg = config_lib.parse_arg(arg, size="tiny", architecture="conformer")
  size = arg.size
  config = train.default_config()
  config.size = size  # recorded with the run
  config.total_steps = config_lib.by_size(size, smoke=4, tiny=800, base=100_000, large=200_000)
  config.log_every_steps = config_lib.by_size(size, smoke=2, tiny=50, base=100, large=100)
  config.eval_every_steps = config_lib.by_size(size, smoke=4, tiny=200, base=5000, large=5000)
  config.checkpoint_every_steps = config_lib.by_size(size, smoke=4, tiny=200, base=5000, large=5000)
  config.best_checkpoint_metric = "cer"  # rank checkpoints by dev CER, the figure we report
  # float32 on CPU (bfloat16 matmuls are emulated there and slower); bfloat16 on accelerators.
  config.compute_dtype = config_lib.by_size(size, tiny="float32", base="bfloat16", large="bfloat16")
  config.max_grad_norm = 5.0  # ESPnet / WeNet clip at 5 for Conformer-CTC

  # Built-in synthetic corpus by default; a speechfuse-prepare dataset path for real runs.
  config.data = inputs.sized_config(size)
  config.data.max_tokens_per_second = 30.0  # characters: the built-in corpus reaches 28 per second
  config.data.speed_perturb = config_lib.by_size(size, tiny=False, base=True, large=True)  # 3x data (Ko et al.)

  config.tokenizer = factory.default_config()
  # Characters for the small corpora: with the tiny model and budget, 128 BPE pieces learned far slower
  # (dev CER 82% vs 32% after 400 steps). SentencePiece unigram (the OTF setup's subwords) for real data.
  config.tokenizer.kind = config_lib.by_size(size, tiny="char", base="unigram", large="unigram")
  config.tokenizer.vocab_size = 500  # SentencePiece kinds only

  config.model = ctc.default_config(arg.architecture, size)  # speechfuse.nn's encoder of the same size name
  config.model.encoder.dropout_rate = 0.1  # ESPnet / WeNet / the OTF paper
  # Dynamic chunk training, so one model serves the offline and the online (chunk) columns.
  config.model.encoder.dynamic_chunk_training = True
  # Tiny: lighter SpecAugment, since a dozen epochs leave little time to learn through heavy masking.
  config.model.spec_augment.max_freq_width = config_lib.by_size(size, tiny=15, base=27, large=27)
  config.model.spec_augment.num_time_masks = config_lib.by_size(size, tiny=5, base=10, large=10)

  config.task = asr.default_config("asr_ctc")

  config.optimizer.learning_rate = config_lib.by_size(size, tiny=2e-3, base=1e-3, large=1e-3)
  config.optimizer.warmup_steps = config_lib.by_size(size, smoke=1, tiny=100, base=25_000, large=25_000)
  # Cosine to 0 for the short CPU run; Noam (WeNet's warmup + inverse square root) for long runs.
  config.optimizer.schedule = config_lib.by_size(size, tiny="cosine", base="noam", large="noam")
  config.optimizer.weight_decay = 1e-3
  return config
