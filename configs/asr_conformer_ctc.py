"""Conformer-CTC speech recognition (the OTF paper's supervised model; WeNet / ESPnet recipe shape).

  python launch/main.py --config=configs/asr_conformer_ctc.py:tiny --workdir=runs/ctc_tiny

Sizes: smoke (a few steps on the built-in `tiny` corpus, for tests), tiny (6 x 144 Conformer, conv1d x2, on the
built-in `small` corpus, ~2 h of audio: 1600 steps), base (the OTF paper's 12 x 512 Conformer-CTC), large
(17 x 512). For real data, write a dataset with `speechfuse-prepare librispeech ...` and pass
--config.data.corpus=<its path> (with --config.data.train_split=train-clean-100 etc.). The measurements behind the
tiny values, and the recipe's results: configs/README.md.
"""

from __future__ import annotations

import ml_collections

from speechfuse import config as config_lib
from speechfuse import fusion, train
from speechfuse.data import inputs
from speechfuse.models import ctc
from speechfuse.text import factory
from speechfuse.tasks import asr


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe at `arg`'s size ("smoke", "tiny", "base", "large"), optionally "<size>,architecture=transformer"."""
  arg = config_lib.parse_arg(arg, size="tiny", architecture="conformer")
  size = arg.size
  config = train.default_config()
  config.size = size  # recorded with the run
  config.total_steps = config_lib.by_size(size, smoke=4, tiny=1600, base=100_000, large=200_000)
  config.log_every_steps = config_lib.by_size(size, smoke=2, tiny=100, base=100, large=100)
  config.eval_every_steps = config_lib.by_size(size, smoke=4, tiny=400, base=5000, large=5000)
  config.checkpoint_every_steps = config_lib.by_size(size, smoke=4, tiny=400, base=5000, large=5000)
  config.best_checkpoint_metric = "cer"  # rank checkpoints by dev CER, the figure we report
  # float32 on CPU (bfloat16 matmuls are emulated there and slower); bfloat16 on accelerators.
  config.compute_dtype = config_lib.by_size(size, tiny="float32", base="bfloat16", large="bfloat16")
  config.max_grad_norm = 5.0  # ESPnet / WeNet clip at 5 for Conformer-CTC

  # Built-in synthetic corpus by default; a speechfuse-prepare dataset path for real runs.
  config.data = inputs.sized_config(size)
  config.data.max_tokens_per_second = 30.0  # characters: the built-in corpus reaches 28 per second
  # Tiny: 40 s batches, twice the updates of 80 s ones for the same audio: on the small corpus the updates count
  # more than the batch.
  if size == "tiny":
    config.data.max_batch_seconds = 40.0
  config.data.speed_perturb = config_lib.by_size(size, tiny=False, base=True, large=True)  # 3x data (Ko et al.)

  config.tokenizer = factory.default_config()
  # Characters for the small corpora (the tiny model learns them far faster than 128 BPE pieces); SentencePiece
  # unigram (the OTF setup's subwords) for real data.
  config.tokenizer.kind = config_lib.by_size(size, tiny="char", base="unigram", large="unigram")
  config.tokenizer.vocab_size = 500  # SentencePiece kinds only

  config.model = ctc.default_config(arg.architecture, size)  # speechfuse.nn's encoder of the same size name
  config.model.encoder.dropout_rate = 0.1  # ESPnet / WeNet / the OTF paper
  # Tiny: conv1d x2 (50 Hz frames). The built-in corpus speaks ~18 characters per second (up to 28): at conv2d
  # x4's 25 Hz character CTC has ~1.4 frames per character, and repeated letters need a blank between them; and
  # conv2d x4's second 3x3 conv over 144 channels costs more than the encoder itself at this width. Smoke keeps
  # conv2d x4 so that the tests cover it; real data (~15 characters per second, subword units) uses conv2d x4.
  config.model.encoder.subsampling = config_lib.by_size(size, smoke="conv2d", tiny="conv1d", base="conv2d",
                                                        large="conv2d")
  config.model.encoder.subsampling_factor = config_lib.by_size(size, smoke=4, tiny=2, base=4, large=4)
  # Dynamic chunk training, so one model serves the offline and the online (chunk) columns.
  config.model.encoder.dynamic_chunk_training = True
  if arg.architecture == "conformer":
    # Under a chunk mask no conv module reads past its chunk, so the online column truly streams (a symmetric
    # kernel of 31 looks 15 frames ahead in every block: 1.8 s at tiny after 6 blocks); with full context it keeps
    # its future taps, whose loss made a causal kernel learn far slower here (configs/README.md).
    config.model.encoder.conv_context = "chunk"
    # LayerNorm, as WeNet's streaming Conformers: BatchNorm's running statistics mix full-context and chunked
    # batches, and fit neither (configs/README.md). Smoke keeps BatchNorm so that the tests cover its statistics.
    config.model.encoder.conv_norm = config_lib.by_size(size, smoke="batch_norm", tiny="layer_norm",
                                                        base="layer_norm", large="layer_norm")
  # Tiny: light SpecAugment: a dozen epochs leave little time to learn through heavy masking (it underfit).
  config.model.spec_augment.max_freq_width = config_lib.by_size(size, tiny=10, base=27, large=27)
  config.model.spec_augment.num_time_masks = config_lib.by_size(size, tiny=2, base=10, large=10)

  config.task = asr.default_config("asr_ctc")

  config.optimizer.learning_rate = config_lib.by_size(size, tiny=2e-3, base=1e-3, large=1e-3)
  config.optimizer.warmup_steps = config_lib.by_size(size, smoke=1, tiny=200, base=25_000, large=25_000)
  # Cosine to 0 for the short CPU run; Noam (WeNet's warmup + inverse square root) for long runs.
  config.optimizer.schedule = config_lib.by_size(size, tiny="cosine", base="noam", large="noam")
  config.optimizer.weight_decay = 1e-3

  # --mode=fuse: the two exported models of this recipe to fuse (--config.fusion.sl=, .ssl=) and how.
  config.fusion = fusion.default_config()
  return config
