r"""The SSL comparison job (issue 6): CTC from scratch vs from HuBERT- and CE-loss pre-trained encoders.

  python launch/ssl_compare.py --size=tiny --workdir=runs/ssl_compare

This is a pipeline config, not a trainer config: `speechfuse.ssl_compare.run_comparison(size, workdir)` reads it
and runs configs/ssl_hubert.py (pre-training, once per loss) and configs/finetune_ctc.py (fine-tuning, one run
per row) at the same size through the trainer; the fields here replace their corpus and step counts. Sizes:
smoke (two steps per run on the built-in `tiny` corpus, for the end-to-end test), tiny (the tiny Conformer on
the built-in `small` corpus, about 75 minutes on 2 CPU cores), base / large (None: the recipes' own budgets).
"""

from __future__ import annotations

import ml_collections

from speechfuse import config as config_lib
from speechfuse.data import inputs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The job at `arg`'s size ("smoke", "tiny", "base", "large")."""
  arg = config_lib.parse_arg(arg, size="tiny")
  size = arg.size
  config = ml_collections.ConfigDict()
  config.size = size  # the size argument of both recipes
  config.losses = ("hubert", "ce")  # one pre-trained row per loss (configs/ssl_hubert.py's loss=)

  # Replaces these fields of every run's data section, so that all runs read one corpus and split names.
  corpus = inputs.sized_config(size)
  config.data = ml_collections.ConfigDict({
      key: corpus[key] for key in ("corpus", "builtin_size", "data_dir", "train_split", "eval_split", "test_splits")})

  # tiny on 2 CPU cores (measured interleaved on one 4 s batch shape, CPU-seconds per step): a pre-training step
  # of the recipe's 80 s batches costs 2.5 (HuBERT and CE alike), a CTC fine-tuning step of its 40 s batches 1.3,
  # so about 1.5 s and 0.8 s of wall time on a quiet machine.
  # Pre-training must run past its early phase, where masked prediction fits the targets' prior and the upper
  # blocks lose the phone information of a random encoder (speechfuse.ssl.probe: CE loss, block 6 at 33% after
  # 300 steps, random 44%); the CE loss's dev masked accuracy takes off between steps 300 and 600. Its warm-up
  # matters as much: with 30 warm-up steps at the recipe's 2e-3 the middle blocks' self-attention collapsed onto
  # each frame's neighbours by step 600 (probe.attention_statistics: block 4 at 0.97 nats and a mean reach of 3
  # frames, random init 4.8 and 57) and fine-tuning from that encoder stalled (train loss ~150 from step 200,
  # scratch 106 at 400; test_clean CER 71.5 against 49.6). With 120 (20% of the schedule), same seed, the
  # attention kept its reach (>= 2.1 nats, 19-38 frames) and the CE row beat scratch (2026-11-21, test_clean /
  # test_other CER 47.9 / 72.7 against 54.0 / 75.7). The HuBERT loss is slower (dev masked accuracy 9% at 600,
  # CE 36%): its label embeddings start nearly parallel (uniform [0, 1) init, as fairseq; mean cosine 0.75), so
  # its cosine logits barely separate the classes and its upper blocks stay collapsed (probe block 6: 10%).
  # From scratch, character CTC needs ~300 steps to leave the all-blank plateau, so the fine-tuning runs get 400
  # steps with an 80-step warm-up (~6 min each), at the SL recipe's 2e-3 with no frozen steps (from the collapsed
  # encoder: dev loss 123 against 131 with the fine-tuning recipe's 1e-3 and 25 frozen steps). With compilation
  # (cached across runs), the k-means targets, the CMVN statistics, decoding and the probes: about 55 minutes on a
  # quiet machine (77 measured beside other jobs).
  no_value = ml_collections.config_dict.placeholder(int)  # base / large: the recipe's own value
  no_rate = ml_collections.config_dict.placeholder(float)
  config.pretrain = ml_collections.ConfigDict({
      "steps": config_lib.by_size(size, smoke=2, tiny=600, base=no_value, large=no_value),
      # The recipe's 200 is made for its 2,000 steps.
      "warmup_steps": config_lib.by_size(size, smoke=1, tiny=120, base=no_value, large=no_value),
  })
  config.finetune = ml_collections.ConfigDict({
      "steps": config_lib.by_size(size, smoke=2, tiny=400, base=no_value, large=no_value),
      "warmup_steps": config_lib.by_size(size, smoke=1, tiny=80, base=no_value, large=no_value),
      "learning_rate": config_lib.by_size(size, smoke=no_rate, tiny=2e-3, base=no_rate, large=no_rate),
      # The pre-trained rows' encoder stays frozen while the new CTC head warms up (the scratch row: never).
      "freeze_encoder_steps": config_lib.by_size(size, smoke=1, tiny=0, base=no_value, large=no_value),
      "train_fraction": 0.1,  # the labeled subset: the same utterances in every row
  })
  # The phone probe of every row's starting encoder (speechfuse.ssl.probe): utterances it is fitted / scored on
  # (tiny: ~45k / 18k frames, about a minute per row on 2 CPU cores).
  config.probe = ml_collections.ConfigDict({
      "train_utterances": config_lib.by_size(size, smoke=4, tiny=300, base=1000, large=1000),
      "eval_utterances": config_lib.by_size(size, smoke=2, tiny=120, base=400, large=400),
  })
  return config
