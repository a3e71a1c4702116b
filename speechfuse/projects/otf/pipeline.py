"""The OTF paper's comparison (Fu et al., its Tables 1 and 3) on the built-in corpus, end to end: the quickstart.

    table = run_otf(load_config("configs/otf.py:tiny"), "runs/quickstart")  # launch/quickstart.py, the notebook

The pipeline config is configs/otf.py (its docstring lists the stages); every model is a member recipe run by
the generic trainer. Stages (projects.pipeline: each runs once, a rerun skips the finished ones and the
interrupted one resumes from its last checkpoint), each in <workdir>/<stage>:
  sl, ssl_pretrain, ssl_finetune    the two members: train, export (<run>/export/params), decode the test splits
  sl_mft, ssl_mft, otf              moderate fine-tuning (MFT): the model's every variable loaded
                                    (task.init_from, init_encoder_only=False), a new warm-up, then decay to zero
  direct_avg, aligned_avg           `--mode=fuse` (method direct / otf) into <stage>/fused, then decoded
  direct_full_ft                    the direct average trained for steps.full_ft with the SL recipe's optimizer
  sbf, upper_bound                  projects.otf.baselines over the SL and SSL runs' per-utterance results
  ebf                               models.ensemble: both frozen member encoders, a new CTC layer trained
  landscape                         dev loss along (1 - a) * init + a * final for SL, SSL and OTF (CSV, PNG)
Each decoded stage's output (in <workdir>/stages.json) is its test results, parameter count and training steps:
one row of the table (eval.comparison), WER / CER per test split, offline and online (streaming, with the
latency in the header), and the model size (SBF, EBF and the upper bound run both members). The table is written
to <workdir>/otf_results.{md,json} and printed; the landscape to <workdir>/landscape/landscape.{csv,png}.

Every run after `sl` starts with the SL run's tokenizer and CMVN statistics copied into its directory (the
tasks load them when present), so that all models read the same features and the fused CTC head has one
vocabulary; the SSL model's vocabulary is checked against SL's before fusing. Compiled programs are cached in
<workdir>/compile_cache (JAX's persistent cache): the many decodings of one architecture compile once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from speechfuse import config as config_lib, run, tasks
from speechfuse.eval import comparison, results
from speechfuse.fusion.fuse import FUSED_DIR
from speechfuse.models import ensemble
from speechfuse.projects import pipeline
from speechfuse.projects.otf import baselines, landscape
from speechfuse.tasks import asr
from speechfuse.train import checkpoint

SHARED = (asr.TOKENIZER_DIR, asr.CMVN_FILE)
RESULTS_NAME = "otf_results"
# (row label, the stage whose output it is), in the order of the paper's Tables 1 and 3.
ROWS = (("SL", "sl"), ("SL + MFT", "sl_mft"), ("SSL", "ssl_finetune"), ("SSL + MFT", "ssl_mft"),
        ("Direct Avg", "direct_avg"), ("+ full FT", "direct_full_ft"), ("Aligned Avg", "aligned_avg"),
        ("+ MFT = OTF", "otf"), ("SBF", "sbf"), ("EBF", "ebf"), ("upper bound", "upper_bound"))


def _recipe(name: str, otf: ml_collections.ConfigDict, **args: str) -> ml_collections.ConfigDict:
  """configs/<name>.py at the pipeline's member size (and the recipe's other `args`), reading the pipeline's
  corpus."""
  return pipeline.recipe(name, ",".join([otf.member_size] + [f"{key}={value}" for key, value in args.items()]),
                         otf.data)


def sl_config(otf: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """configs/asr_conformer_ctc.py from scratch for steps.sl."""
  config = config_lib.set_schedule(_recipe("asr_conformer_ctc", otf), otf.steps.sl, otf.warmup_steps.sl)
  config.seed = otf.seeds.sl
  return config


def pretrain_config(otf: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """configs/ssl_hubert.py (the Conformer of the SL recipe, loss `ssl_loss`) for steps.ssl_pretrain."""
  config = config_lib.set_schedule(_recipe("ssl_hubert", otf, loss=otf.ssl_loss), otf.steps.ssl_pretrain,
                                   otf.warmup_steps.ssl_pretrain)
  config.seed = otf.seeds.ssl
  return config


def finetune_config(otf: ml_collections.ConfigDict, pretrained: str) -> ml_collections.ConfigDict:
  """configs/finetune_ctc.py from the `pretrained` encoder, on all the labeled data SL trains on, with
  ssl_finetune's learning rate and frozen-encoder steps where set."""
  config = config_lib.set_schedule(_recipe("finetune_ctc", otf), otf.steps.ssl_finetune,
                                   otf.warmup_steps.ssl_finetune, otf.ssl_finetune.learning_rate)
  if otf.ssl_finetune.freeze_encoder_steps is not None:
    config.task.freeze_encoder_steps = otf.ssl_finetune.freeze_encoder_steps
  config.data.train_fraction = 1.0
  config.task.init_from = pretrained
  config.seed = otf.seeds.ssl
  return config


def continued_config(otf: ml_collections.ConfigDict, init_from: str, steps: int,
                     learning_rate: float | None = None) -> ml_collections.ConfigDict:
  """The SL recipe started from every variable of `init_from` (MFT, full FT): `steps` updates, a warm-up of
  mft.warmup_fraction of them, the recipe's learning rate unless one is given."""
  config = _recipe("asr_conformer_ctc", otf)
  config.task.init_from = init_from
  config.task.init_encoder_only = False
  return config_lib.set_schedule(config, steps, round(otf.mft.warmup_fraction * steps), learning_rate)


def mft_config(otf: ml_collections.ConfigDict, init_from: str, schedule_steps: int) -> ml_collections.ConfigDict:
  """Moderate fine-tuning: mft.fraction of a `schedule_steps` schedule, at mft.learning_rate."""
  steps = max(1, round(otf.mft.fraction * schedule_steps))
  return continued_config(otf, init_from, steps, otf.mft.learning_rate)


def ensemble_config(member: ml_collections.ConfigDict, members: Sequence[str]) -> ml_collections.ConfigDict:
  """EBF (the encoder-feature ensemble of Arunkumar et al.) from a CTC recipe's config `member`: the same data,
  tokenizer, encoder config and trainer, model.name "ctc_ensemble" over the exported `members` (loaded by
  task.init_members and frozen), a new CTC head the only thing trained. The caller sets the schedule."""
  if member.model.name != "ctc":
    raise ValueError(f"an encoder ensemble is built from a CTC recipe (config.model.name='ctc'), got "
                     f"{member.model.name!r}")
  config = member.copy_and_resolve_references()
  with config.unlocked():
    config.model.name = ensemble.NAME
    config.model.num_members = len(members)  # frozen encoders whose outputs are concatenated
    config.task.init_from = None  # the members come from init_members, and nothing else is pre-trained
    config.task.freeze_encoder_steps = 0
    config.task.init_members = tuple(members)
  return config


def ebf_config(otf: ml_collections.ConfigDict, members: tuple[str, str]) -> ml_collections.ConfigDict:
  """EBF over the exported `members` (SL, SSL) for steps.ebf at the SL recipe's learning rate."""
  config = ensemble_config(_recipe("asr_conformer_ctc", otf), members)
  return config_lib.set_schedule(config, otf.steps.ebf, round(otf.mft.warmup_fraction * otf.steps.ebf))


def fuse_config(otf: ml_collections.ConfigDict, sl: str, ssl: str, method: str) -> ml_collections.ConfigDict:
  """The SL recipe with config.fusion: `sl` aligned (method "otf") or not ("direct") onto `ssl`, then averaged."""
  config = _recipe("asr_conformer_ctc", otf)  # its fusion section: fusion.default_config()
  config.fusion.update(otf.fusion)
  config.fusion.update({"sl": sl, "ssl": ssl, "method": method})
  return config


def num_params(path: str | os.PathLike) -> int:
  """Parameters (the "params" collection, not BatchNorm statistics) of exported variables."""
  return sum(int(np.size(x)) for x in jax.tree.leaves(checkpoint.load_variables(path)["params"]))


def check_vocabulary(sl: str, ssl: str) -> None:
  """Raises a ValueError naming both files unless the two CTC models' heads have one vocabulary size."""
  sizes = [checkpoint.load_variables(path)["params"]["ctc_head"]["kernel"].shape[-1] for path in (sl, ssl)]
  if sizes[0] != sizes[1]:
    raise ValueError(f"the SL model {sl} has {sizes[0]} output tokens and the SSL model {ssl} {sizes[1]}: fusion "
                     "needs one tokenizer (the SL run's tokenizer/ is copied into every later run; was a stage "
                     "directory reused from another job?)")


def stages(otf: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[pipeline.Stage]:
  """The pipeline's stages (module docstring) for the config `otf` (configs/otf.py) in `workdir`."""
  run_dir = lambda name: os.path.join(os.fspath(workdir), name)
  exported = lambda name: run.export_path(run_dir(name))
  splits = tuple(otf.data.test_splits)
  sl_dir = run_dir("sl")
  fused = lambda name: os.path.join(run_dir(name), FUSED_DIR, "params")

  def prepare(name: str) -> str:
    """The stage's run directory, holding the SL run's tokenizer and CMVN statistics."""
    pipeline.share_files(sl_dir, run_dir(name), SHARED)
    return run_dir(name)

  def train_export(config: ml_collections.ConfigDict, name: str) -> str:
    directory = prepare(name)
    pipeline.train_to_end(config, directory)
    if not os.path.exists(exported(name)):  # a rerun of a stage interrupted after its export keeps it
      run.run("export", config, directory)
    return exported(name)

  def trained(name: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Trains, exports and decodes one model; output: its test results, parameters and training steps."""
    params = train_export(config, name)
    table = tasks.evaluate_checkpoint(config, run_dir(name), splits=splits, checkpoint=params)
    return {"splits": table["splits"], "params": num_params(params), "steps": config.total_steps,
            "online": table["online"]}

  def fused_model(name: str, method: str) -> dict[str, Any]:
    check_vocabulary(exported("sl"), exported("ssl_finetune"))
    config = fuse_config(otf, exported("sl"), exported("ssl_finetune"), method)
    params = run.run("fuse", config, prepare(name))
    table = tasks.evaluate_checkpoint(config, run_dir(name), splits=splits, checkpoint=params)
    return {"splits": table["splits"], "params": num_params(params), "steps": 0, "online": table["online"]}

  def combined(name: str, how: str) -> dict[str, Any]:
    table = baselines.combine_results(sl_dir, run_dir("ssl_finetune"), os.path.join(run_dir(name), results.RESULTS_DIR),
                                      how, splits)
    size = num_params(exported("sl")) + num_params(exported("ssl_finetune"))
    return {"splits": table["splits"], "params": size, "steps": 0, "online": table["online"]}

  def curves() -> dict[str, str]:
    """The loss landscapes of SL, SSL and OTF, each from its own initialisation to its final variables."""
    ends = {"SL": (sl_config(otf), "sl", None),
            "SSL": (finetune_config(otf, exported("ssl_pretrain")), "ssl_finetune", None),
            "OTF": (mft_config(otf, fused("aligned_avg"), otf.steps.ssl_finetune), "otf", fused("aligned_avg"))}
    rows = {}
    for curve, (config, name, start) in ends.items():
      initial = (landscape.initial_variables(config, run_dir(name)) if start is None
                 else checkpoint.load_variables(start))
      rows[curve] = landscape.interpolate(config, run_dir(name), initial, checkpoint.load_variables(exported(name)),
                                          tuple(otf.landscape.alphas), split=otf.data.eval_split,
                                          max_batches=otf.landscape.max_eval_batches or None)
    directory = run_dir("landscape")
    return {"csv": landscape.write_csv(rows, os.path.join(directory, "landscape.csv")),
            "png": landscape.plot(rows, os.path.join(directory, "landscape.png"),
                                  title=f"Loss landscape on {otf.data.eval_split} ({otf.size})")}

  return [
      pipeline.Stage("sl", "SL: train the Conformer-CTC from scratch, export, decode the test splits",
                     lambda: trained("sl", sl_config(otf))),
      pipeline.Stage("ssl_pretrain", f"SSL: pre-train the same Conformer ({otf.ssl_loss} loss) on the train audio",
                     lambda: train_export(pretrain_config(otf), "ssl_pretrain")),
      pipeline.Stage("ssl_finetune", "SSL: fine-tune it with CTC on the SL model's labeled data, decode",
                     lambda: trained("ssl_finetune", finetune_config(otf, exported("ssl_pretrain")))),
      pipeline.Stage("sl_mft", "SL + MFT: continue the SL model for a fraction of its schedule",
                     lambda: trained("sl_mft", mft_config(otf, exported("sl"), otf.steps.sl))),
      pipeline.Stage("ssl_mft", "SSL + MFT: continue the SSL model for a fraction of its schedule",
                     lambda: trained("ssl_mft", mft_config(otf, exported("ssl_finetune"),
                                                               otf.steps.ssl_finetune))),
      pipeline.Stage("direct_avg", "Direct Avg: average SL and SSL without alignment, decode",
                     lambda: fused_model("direct_avg", "direct")),
      pipeline.Stage("direct_full_ft", "+ full FT: train the direct average with the SL recipe's optimizer",
                     lambda: trained("direct_full_ft", continued_config(otf, fused("direct_avg"),
                                                                            otf.steps.full_ft))),
      pipeline.Stage("aligned_avg", "Aligned Avg: align SL onto SSL by optimal transport, average, decode",
                     lambda: fused_model("aligned_avg", "otf")),
      pipeline.Stage("otf", "+ MFT = OTF: moderately fine-tune the aligned average",
                     lambda: trained("otf", mft_config(otf, fused("aligned_avg"), otf.steps.ssl_finetune))),
      pipeline.Stage("sbf", "SBF: per utterance, the SL or SSL hypothesis of higher confidence",
                     lambda: combined("sbf", "sbf")),
      pipeline.Stage("ebf", "EBF: a new CTC layer on both frozen encoders' outputs, decode",
                     lambda: trained("ebf", ebf_config(otf, (exported("sl"), exported("ssl_finetune"))))),
      pipeline.Stage("upper_bound", "upper bound: per utterance, the SL or SSL hypothesis with fewer errors",
                     lambda: combined("upper_bound", "oracle")),
      pipeline.Stage("landscape", "loss landscapes of SL, SSL and OTF on the dev split (CSV, PNG)", curves),
  ]


def _caption(otf: ml_collections.ConfigDict) -> str:
  steps = otf.steps
  corpus = f"the built-in {otf.data.builtin_size} corpus" if otf.data.corpus == "builtin" else otf.data.corpus
  return (f"OTF on {corpus} ({otf.size}; members {otf.member_size}): SL {steps.sl} steps; SSL "
          f"{steps.ssl_pretrain} pre-training ({otf.ssl_loss} loss) + {steps.ssl_finetune} fine-tuning steps on the "
          f"same labeled data; MFT {100 * otf.mft.fraction:g}% of a schedule; full FT {steps.full_ft}, EBF "
          f"{steps.ebf} steps; fusion {otf.fusion.solver} (epsilon {otf.fusion.epsilon}), SSL weight "
          f"{otf.fusion.weight}. WER / CER in %, offline (full context) and online (streaming); SBF, EBF and the "
          "upper bound run both models.")


def _one_latency(outputs: dict[str, Any], rows: tuple[tuple[str, str], ...]) -> dict[str, Any] | None:
  """The online chunking and latency every row's online columns share (they run one encoder config).

  Raises:
    ValueError: two rows streamed differently (their online columns would not compare).
  """
  latencies = {json.dumps(outputs[name].get("online"), sort_keys=True) for _, name in rows}
  if len(latencies) > 1:
    raise ValueError(f"the rows' online columns streamed differently: {sorted(latencies)}")
  return json.loads(latencies.pop())


def run_otf(otf: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the pipeline of `otf` (configs/otf.py) in `workdir`; writes, prints and returns the results table."""
  pipeline.use_compile_cache(workdir)
  outputs = pipeline.run_stages(stages(otf, workdir), workdir)
  rows = [comparison.row(label, outputs[name], outputs[name]["params"], stage=name, steps=outputs[name]["steps"])
          for label, name in ROWS]
  online = _one_latency(outputs, ROWS)
  table = comparison.make_table(rows, tuple(otf.data.test_splits), title=_caption(otf), online=online)
  paths = comparison.write(table, workdir, RESULTS_NAME)
  print(comparison.markdown(table))
  print(f"Results: {paths[1]} (and .json); loss landscape: {outputs['landscape']['png']}; per-run results, "
        f"checkpoints and the fusion reports: {os.fspath(workdir)}/<stage>/")
  return table

