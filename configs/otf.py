r"""OTF (Fu et al.): the whole comparison of its Tables 1 and 3, as one pipeline (the README's quickstart).

  python launch/quickstart.py --size=tiny --workdir=runs/quickstart [--config.steps.sl=600 ...]

This is a pipeline config, not a trainer config: `speechfuse.projects.otf.pipeline.run_otf(config, workdir)` reads
it and runs the member recipes below through the trainer, one stage at a time (launch/main.py runs single recipes
and does not take it). Stages, each in <workdir>/<stage>:
  sl               configs/asr_conformer_ctc.py from scratch on the labeled train split          -> row SL
  ssl_pretrain     configs/ssl_hubert.py (Conformer backbone, same encoder, loss ssl_loss) on the same audio
  ssl_finetune     configs/finetune_ctc.py from that encoder, on the SAME labeled data (train_fraction 1.0)
                                                                                                 -> row SSL
  sl_mft, ssl_mft  each member continued for mft.fraction of its schedule                       -> + MFT rows
  direct_avg       fuse method=direct (no alignment); direct_full_ft: trained steps.full_ft more -> Direct Avg rows
  aligned_avg      fuse method=otf (SL aligned onto SSL, then averaged); otf: + MFT            -> Aligned Avg, OTF
  sbf, ebf, upper_bound   confidence selection, frozen-encoder ensemble + new CTC layer, oracle selection
  landscape        dev loss along (1 - a) * init + a * final for SL, SSL and OTF (CSV + PNG)
  table            the results table (Markdown + JSON in <workdir>, printed)

Sizes: smoke (the same path in minutes on the built-in `tiny` corpus, for the end-to-end test), tiny (the
README's main command: the tiny 6 x 144 Conformer on the built-in `small` corpus, under an hour on 2 CPU cores),
base (the paper's 12 x 512 Conformer-CTC; LibriSpeech via --config.data.corpus=<dataset path> and its split
names), large (base's pipeline with the 17 x 512 members).
"""

from __future__ import annotations

import ml_collections

from speechfuse import config as config_lib
from speechfuse import fusion
from speechfuse.data import inputs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pipeline at `arg`'s size ("smoke", "tiny", "base", "large")."""
  arg = config_lib.parse_arg(arg, size="tiny")
  size = arg.size
  config = ml_collections.ConfigDict()
  config.size = size
  # The size argument of every member recipe (configs/asr_conformer_ctc.py, ssl_hubert.py, finetune_ctc.py).
  config.member_size = size

  # Random seeds (initialisation, data order) of the SL run and of the SSL runs: two independently initialised
  # models, as in the paper. From one seed they would start from the same encoder weights (same names, same key),
  # which already lines their units up and would leave alignment nothing to do.
  config.seeds = ml_collections.ConfigDict({"sl": 0, "ssl": 1})

  # Replaces these fields of every member's data section, so that all stages read one corpus and split names.
  corpus = inputs.sized_config(size)
  config.data = ml_collections.ConfigDict({
      key: corpus[key] for key in ("corpus", "builtin_size", "data_dir", "train_split", "eval_split", "test_splits")})

  # Training steps of each stage. The SL and SSL models get the same labeled schedule, as in the paper (200
  # epochs each); at tiny 700 steps (~2.9 epochs of the `small` corpus), past character CTC's all-blank plateau,
  # and the whole job stays under an hour on 2 CPU cores (stage times: speechfuse/projects/otf/README.md).
  config.steps = ml_collections.ConfigDict({
      "sl": config_lib.by_size(size, smoke=4, tiny=700, base=100_000, large=200_000),
      # Masked prediction must run past its early phase, where the upper blocks collapse onto the targets'
      # prior; the CE loss's dev masked accuracy takes off between steps 300 and 600, hence 600 at tiny.
      "ssl_pretrain": config_lib.by_size(size, smoke=4, tiny=600, base=400_000, large=400_000),
      "ssl_finetune": config_lib.by_size(size, smoke=4, tiny=700, base=100_000, large=200_000),
      # Direct Avg + full FT: the paper fine-tunes the averaged model fully; at tiny 100 steps, about the
      # MFT budget (105), so the row shows what the same fine-tuning buys a broken average.
      "full_ft": config_lib.by_size(size, smoke=4, tiny=100, base=100_000, large=200_000),
      # EBF: only the new CTC layer over both frozen encoders learns, so it converges in few steps.
      "ebf": config_lib.by_size(size, smoke=4, tiny=100, base=10_000, large=10_000),
  })
  # Warm-up of the member runs (None: the recipe's own, made for its full schedule).
  no_value = ml_collections.config_dict.placeholder(int)
  config.warmup_steps = ml_collections.ConfigDict({
      "sl": config_lib.by_size(size, smoke=1, tiny=150, base=no_value, large=no_value),
      "ssl_pretrain": config_lib.by_size(size, smoke=1, tiny=120, base=no_value, large=no_value),
      "ssl_finetune": config_lib.by_size(size, smoke=1, tiny=150, base=no_value, large=no_value),
  })

  # The SSL member's pre-training loss (configs/ssl_hubert.py's loss=): k2SSL's plain cross-entropy at the CPU
  # sizes, where HuBERT's cosine loss leaves its early phase too late (its uniform [0, 1) label embeddings start
  # nearly parallel: speechfuse/projects/k2ssl/README.md); HuBERT's own at base and large.
  config.ssl_loss = config_lib.by_size(size, smoke="ce", tiny="ce", base="hubert", large="hubert")
  # SSL fine-tuning's learning rate and frozen-encoder steps (None: configs/finetune_ctc.py's). At tiny the SL
  # recipe's 2e-3 and no freeze, which fine-tuned a CE-pre-trained encoder better (k2ssl's README).
  no_rate = ml_collections.config_dict.placeholder(float)
  config.ssl_finetune = ml_collections.ConfigDict({
      "learning_rate": config_lib.by_size(size, smoke=no_rate, tiny=2e-3, base=no_rate, large=no_rate),
      "freeze_encoder_steps": config_lib.by_size(size, smoke=no_value, tiny=0, base=no_value, large=no_value),
  })

  # Moderate fine-tuning: SL + MFT, SSL + MFT and OTF's MFT each run fraction x the schedule of the model they
  # start from (OTF: the SSL fine-tuning schedule, the model SL is aligned onto), from a new warm-up to zero.
  # The paper's 10 of 200 epochs is 5 %; at tiny 5 % of 700 steps is 35 updates, too few for the aligned average
  # to recover from the soft maps (the paper's start at 53-83 % WER): 15 % (105 updates, 0.4 epochs).
  config.mft = ml_collections.ConfigDict({
      "fraction": config_lib.by_size(size, tiny=0.15, base=0.05, large=0.05),
      "learning_rate": config_lib.by_size(size, tiny=1e-3, base=5e-4, large=5e-4),  # the fine-tuning recipe's
      "warmup_fraction": 0.1,  # of the steps of every run that starts from trained weights (MFT, full FT, EBF)
  })

  # Fusion: speechfuse.fusion.default_config()'s options (`--mode=fuse`; the pipeline sets which models and
  # which method per stage): SL aligned onto SSL and averaged with the SSL model's `weight` 1/2, ott-jax Sinkhorn
  # with `epsilon` relative to the largest cost (OTFusion's reg 1e-2), alignment from weights. The paper's SSL
  # weight 1/2 (what 0.75 gave at tiny: speechfuse/projects/otf/README.md).
  config.fusion = fusion.default_config()
  for key in ("sl", "ssl", "method"):
    del config.fusion[key]
  config.fusion.solver = "sinkhorn"
  config.fusion.epsilon = 1e-2

  # Loss landscape (the paper's Fig. 2): interpolation weights a of (1 - a) * init + a * final, a little past
  # both ends, and the dev batches each point is evaluated on (0: the whole split).
  config.landscape = ml_collections.ConfigDict({
      "alphas": config_lib.by_size(size, smoke=(-0.25, 0.0, 0.5, 1.0, 1.25),
                                   tiny=(-0.25, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25),
                                   base=tuple(round(-0.25 + 0.05 * i, 2) for i in range(31)),
                                   large=tuple(round(-0.25 + 0.05 * i, 2) for i in range(31))),
      "max_eval_batches": config_lib.by_size(size, smoke=2, tiny=4, base=20, large=20),
  })
  return config
