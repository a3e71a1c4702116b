r"""k2SSL's pre-training comparison: CTC from scratch vs from encoders pre-trained with each objective.

  python launch/ssl_compare.py --size=tiny --workdir=runs/ssl_compare
  python launch/ssl_compare.py --size=tiny --backbone=wav2vec2 --workdir=runs/ssl_compare_w2v

Args: size, backbone: "conformer" (the fbank Conformer of the ASR recipes; rows HuBERT loss and CE loss) or
"wav2vec2" (the waveform encoder; rows HuBERT, wav2vec 2.0's contrastive objective and WavLM).

This is a pipeline config, not a trainer config: `speechfuse.projects.k2ssl.pipeline.run_comparison(size,
workdir)` reads it and runs configs/ssl_hubert.py (pre-training, once per loss) and configs/finetune_ctc.py
(fine-tuning, one run per row) at the same size through the trainer; the fields here replace their corpus and
step counts. Sizes:
smoke (two steps per run on the built-in `tiny` corpus, for the end-to-end test), tiny (the tiny Conformer on
the built-in `small` corpus, about an hour on 2 CPU cores), base / large (None: the recipes' own budgets).
"""

from __future__ import annotations

import ml_collections

from speechfuse import config as config_lib
from speechfuse.data import inputs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The job at `arg`'s size ("smoke", "tiny", "base", "large")."""
  arg = config_lib.parse_arg(arg, size="tiny", backbone="conformer")
  size = arg.size
  if arg.backbone not in ("conformer", "wav2vec2"):
    raise ValueError(f"backbone={arg.backbone!r} must be 'conformer' or 'wav2vec2'")
  config = ml_collections.ConfigDict()
  config.size = size  # the size argument of the recipes
  config.backbone = arg.backbone
  # One pre-trained row per objective (projects.k2ssl.pipeline.OBJECTIVES: hubert, ce, wav2vec2, wavlm).
  config.objectives = ("hubert", "ce") if arg.backbone == "conformer" else ("hubert", "wav2vec2", "wavlm")

  # Replaces these fields of every run's data section, so that all runs read one corpus and split names.
  corpus = inputs.sized_config(size)
  config.data = ml_collections.ConfigDict({
      key: corpus[key] for key in ("corpus", "builtin_size", "data_dir", "train_split", "eval_split", "test_splits")})

  # Tiny: pre-training runs past its early phase (the CE loss's dev masked accuracy takes off between steps 300
  # and 600) with a warm-up of 20 % of it (a 30-step one collapsed the middle blocks' attention onto each frame's
  # neighbours, and fine-tuning from that encoder stalled); fine-tuning 400 steps, past character CTC's all-blank
  # plateau, at the SL recipe's 2e-3. The measurements: speechfuse/projects/k2ssl/README.md.
  no_value = ml_collections.config_dict.placeholder(int)  # base / large: the recipe's own value
  no_rate = ml_collections.config_dict.placeholder(float)
  # The waveform backbone's tiny budget is a quarter of the pre-training and 3/4 of the fine-tuning steps, with
  # the same 20 % warm-up: its steps cost 3 to 8 s on 2 CPU cores (the fbank Conformer's 1.3 to 2.5 s), and the
  # whole job then takes over two hours there. 150 steps do not leave the objectives' early phase: measurements and
  # why in speechfuse/projects/k2ssl/README.md.
  waveform = arg.backbone == "wav2vec2"
  config.pretrain = ml_collections.ConfigDict({
      "steps": config_lib.by_size(size, smoke=2, tiny=150 if waveform else 600, base=no_value, large=no_value),
      # The recipe's 200 is made for its 2,000 steps.
      "warmup_steps": config_lib.by_size(size, smoke=1, tiny=30 if waveform else 120, base=no_value,
                                         large=no_value),
      # Curves with a point every 10 steps at tiny (None: the recipe's interval).
      "log_every_steps": config_lib.by_size(size, smoke=no_value, tiny=10, base=no_value, large=no_value),
  })
  config.finetune = ml_collections.ConfigDict({
      "steps": config_lib.by_size(size, smoke=2, tiny=300 if waveform else 400, base=no_value, large=no_value),
      "warmup_steps": config_lib.by_size(size, smoke=1, tiny=60 if waveform else 80, base=no_value,
                                         large=no_value),
      "learning_rate": config_lib.by_size(size, smoke=no_rate, tiny=2e-3, base=no_rate, large=no_rate),
      # The pre-trained rows' encoder stays frozen while the new CTC head warms up (the scratch row: never).
      "freeze_encoder_steps": config_lib.by_size(size, smoke=1, tiny=0, base=no_value, large=no_value),
      "train_fraction": 0.1,  # the labeled subset: the same utterances in every row
  })
  # The phone probe of every row's starting encoder (speechfuse.ssl.probe): utterances it is fitted / scored on
  # (tiny: ~45k / 18k frames, about a minute per row on 2 CPU cores). fbank encoders only: it probes their input too.
  config.probe = ml_collections.ConfigDict({
      "enabled": arg.backbone == "conformer",
      "train_utterances": config_lib.by_size(size, smoke=4, tiny=300, base=1000, large=1000),
      "eval_utterances": config_lib.by_size(size, smoke=2, tiny=120, base=400, large=400),
  })
  return config
