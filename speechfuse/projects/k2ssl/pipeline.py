"""k2SSL's comparison of pre-training losses (Yang et al.): CTC fine-tuned from scratch, from a HuBERT-loss and
from a CE-loss pre-trained encoder, on the same labeled subset; one results table.

    results = run_comparison("tiny", "runs/ssl_compare")      # what launch/ssl_compare.py runs

The job's config is configs/ssl_compare.py (corpus, budgets); every model is a recipe run by the generic trainer.
Stages (projects.pipeline: each runs once, a rerun skips the finished ones and the interrupted one resumes from
its last checkpoint), each in its own run directory <workdir>/<stage>:
  pretrain_<loss>   configs/ssl_hubert.py:<size>,loss=<loss> on the whole train split as unlabeled audio, then
                    exported (<run>/export/params); output: its steps and the dev masked-prediction metrics of
                    its final evaluation
  finetune_<row>    configs/finetune_ctc.py:<size> on the labeled subset (data.train_fraction: the same
                    utterances in every row); rows "scratch" and one per loss, whose encoder is loaded from that
                    loss's export (task.init_from) and frozen for its first updates
  eval_<row>        speechfuse.run "eval": the test splits, offline and online (streaming; the run's results/)
  probe             every row's encoder at fine-tuning step 0 (random or pre-trained): linear phone-probe
                    accuracy of the fbank input and of each block's output (speechfuse.ssl.probe), which
                    shows whether pre-training left phone information where fine-tuning starts from, and
                    each block's self-attention entropy and reach (probe.attention_statistics)
Every run starts with the first run's CMVN statistics and every fine-tuning run with the first fine-tuning run's
tokenizer copied into its directory (the tasks load them when present): the recipes would compute the same ones,
copying makes it a fact rather than an expectation. Compiled programs are cached in <workdir>/compile_cache (JAX's
persistent cache): the three fine-tuning runs and their decodings compile once per shape.

Writes <workdir>/results.json (an eval.comparison table, with the job's config) and results.md: the WER / CER
table of the three rows, then the pre-training table (steps, masked and unmasked dev accuracy) and the probe
table (phone accuracy per layer, attention entropy and distance per block).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from speechfuse import config as config_lib, nn as sf_nn, run, tasks, train
from speechfuse.eval import comparison
from speechfuse.projects import pipeline
from speechfuse.ssl import probe
from speechfuse.tasks import asr

SCRATCH = "scratch"
LOSS_NAMES = {"hubert": "HuBERT loss", "ce": "CE loss"}
PRETRAIN_METRICS = ("masked_accuracy", "unmasked_accuracy", "loss")  # the ssl_hubert task's eval metrics we keep


def pretrain_config(compare: ml_collections.ConfigDict, loss: str) -> ml_collections.ConfigDict:
  """configs/ssl_hubert.py at the job's size with `loss`, on the job's pre-training budget."""
  config = pipeline.recipe("ssl_hubert", f"{compare.size},loss={loss}", compare.data)
  return config_lib.set_schedule(config, compare.pretrain.steps, compare.pretrain.warmup_steps)


def finetune_config(compare: ml_collections.ConfigDict, init_from: str | None) -> ml_collections.ConfigDict:
  """configs/finetune_ctc.py at the job's size and labeled fraction, from `init_from` (None: from scratch)."""
  config = pipeline.recipe("finetune_ctc", f"{compare.size},train_fraction={compare.finetune.train_fraction}",
                           compare.data)
  config_lib.set_schedule(config, compare.finetune.steps, compare.finetune.warmup_steps,
                          compare.finetune.learning_rate)
  config.task.init_from = init_from
  if compare.finetune.freeze_encoder_steps is not None:
    config.task.freeze_encoder_steps = compare.finetune.freeze_encoder_steps
  return config


def _final_eval(workdir: str, step: int) -> dict[str, float]:
  """PRETRAIN_METRICS of the evaluation at `step` in <workdir>/metrics.jsonl (the trainer's final one)."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    lines = [json.loads(line) for line in f if line.strip()]
  evals = [line for line in lines if line["split"] == "eval" and line["step"] == step]
  if not evals:
    raise ValueError(f"{path} has no evaluation at step {step}")
  return {key: evals[-1][key] for key in PRETRAIN_METRICS}


def stages(compare: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[pipeline.Stage]:
  """The job's stages (module docstring) for `compare` (configs/ssl_compare.py) in `workdir`."""
  run_dir = lambda name: os.path.join(os.fspath(workdir), name)
  first = run_dir(f"pretrain_{compare.losses[0]}")  # its CMVN statistics serve every run
  first_finetune = run_dir(f"finetune_{SCRATCH}")  # its tokenizer serves every fine-tuning run

  def pretrain(loss: str) -> dict[str, Any]:
    directory, config = run_dir(f"pretrain_{loss}"), pretrain_config(compare, loss)
    pipeline.share_files(first, directory, (asr.CMVN_FILE,))
    step = pipeline.train_to_end(config, directory)
    params = run.export_path(directory)
    if not os.path.exists(params):  # a rerun of a stage interrupted after its export keeps it
      run.run("export", config, directory)
    return {"steps": step, "params": params, **_final_eval(directory, step)}

  def config_of(name: str) -> ml_collections.ConfigDict:
    return finetune_config(compare, None if name == SCRATCH else run.export_path(run_dir(f"pretrain_{name}")))

  def finetune(name: str) -> dict[str, Any]:
    directory = run_dir(f"finetune_{name}")
    pipeline.share_files(first, directory, (asr.CMVN_FILE,))
    pipeline.share_files(first_finetune, directory, (asr.TOKENIZER_DIR,))
    return {"steps": pipeline.train_to_end(config_of(name), directory)}

  result = [pipeline.Stage(f"pretrain_{loss}", f"pre-train on the unlabeled train audio with the {LOSS_NAMES[loss]}",
                           lambda loss=loss: pretrain(loss)) for loss in compare.losses]
  for name in (SCRATCH, *compare.losses):
    what = "from scratch" if name == SCRATCH else f"from the {LOSS_NAMES[name]} encoder"
    result.append(pipeline.Stage(f"finetune_{name}", f"fine-tune CTC on the labeled subset {what}",
                                 lambda name=name: finetune(name)))
    result.append(pipeline.Stage(f"eval_{name}", f"decode the test splits with the model fine-tuned {what}",
                                 lambda name=name: tasks.evaluate_checkpoint(config_of(name),
                                                                                run_dir(f"finetune_{name}"))))

  def probe_rows() -> dict[str, Any]:
    out = {}
    for name in (SCRATCH, *compare.losses):
      config, directory = config_of(name), run_dir(f"finetune_{name}")
      task = tasks.get_task(config, directory)
      variables = train.initial_variables(task, config.seed)
      out[name] = {"params": sf_nn.count_params(variables["params"]),
                   **probe.layer_accuracies(task.model, variables, config.data,
                                            train_utterances=compare.probe.train_utterances,
                                            eval_utterances=compare.probe.eval_utterances),
                   "attention": probe.attention_statistics(task.model, variables, config.data,
                                                           config.data.eval_split,
                                                           utterances=compare.probe.eval_utterances)}
    return out

  result.append(pipeline.Stage("probe", "probe each row's encoder at fine-tuning step 0 for phones, layer by layer",
                               probe_rows))
  return result


def _label(name: str) -> str:
  return "from scratch" if name == SCRATCH else f"{LOSS_NAMES[name]} pre-trained"


def _caption(compare: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
  return (f"SSL pre-training on {compare.data.corpus} ({compare.size}): CTC fine-tuned for "
          f"{outputs[f'finetune_{SCRATCH}']['steps']} steps on {100 * compare.finetune.train_fraction:g}% of the "
          "train split (the same utterances in every row), from scratch or from an encoder pre-trained on the "
          "whole train split as unlabeled audio. WER / CER in %, offline (full context) and online (streaming).")


def pretraining_markdown(rows: list[Mapping[str, Any]]) -> str:
  """The pre-trained rows' "pretraining" ({"steps", "masked_accuracy", "unmasked_accuracy", "loss"}: the final
  dev evaluation) as Markdown, accuracies in percent."""
  lines = ["Pre-training (dev, at its last step; accuracy of predicting the k-means target of masked / unmasked "
           "frames):", "", "| method | pre-training steps | masked accuracy | unmasked accuracy |", "|---|---|---|---|"]
  for row in rows:
    if row["pretraining"] is not None:
      figures = row["pretraining"]
      lines.append(f"| {row['method']} | {figures['steps']} | {100 * figures['masked_accuracy']:.2f} | "
                   f"{100 * figures['unmasked_accuracy']:.2f} |")
  return "\n".join(lines) + "\n"


def probe_markdown(rows: list[Mapping[str, Any]]) -> str:
  """The rows' "probe" (speechfuse.ssl.probe.layer_accuracies and its "attention": attention_statistics) as
  Markdown, accuracies in percent."""
  figures = rows[0]["probe"]
  layers = figures["layers"]
  lines = [f"Linear phone probe of each layer at fine-tuning step 0 (frame accuracy on {figures['eval_frames']} dev "
           f"frames, {figures['phones']} phones with silence; fitted on {figures['train_frames']} train frames):", "",
           "| encoder | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
  encoders = ["random (from scratch)" if row["pretraining"] is None else row["method"] for row in rows]
  for encoder, row in zip(encoders, rows):
    lines.append(f"| {encoder} | " + " | ".join(f"{100 * a:.1f}" for a in row["probe"]["accuracy"]) + " |")
  attention = figures["attention"]
  lines += ["", f"Self-attention of each block at fine-tuning step 0 on dev: entropy of a query's attention in nats "
            f"(uniform over the utterance: {attention['uniform_entropy']:.2f}) / mean distance to the frames it "
            "attends, in encoder frames:", "",
            "| encoder | " + " | ".join(layers[1:]) + " |", "|---" * len(layers) + "|"]
  for encoder, row in zip(encoders, rows):
    stats = row["probe"]["attention"]
    lines.append(f"| {encoder} | " + " | ".join(f"{e:.2f} / {d:.1f}" for e, d in zip(stats["entropy"],
                                                                                   stats["distance"])) + " |")
  return "\n".join(lines) + "\n"


def run_comparison(size: str, workdir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
  """Runs the job at `size` in `workdir`; writes results.json / results.md there, prints the latter, returns
  the former.

  `overrides` set fields of configs/ssl_compare.py's config by dotted name, e.g. **{"pretrain.steps": 20,
  "data.data_dir": "/tmp/data"}. A rerun resumes: finished stages are skipped.
  """
  compare = config_lib.load_config(f"{config_lib.recipe_path('ssl_compare')}:{size}")
  compare.update_from_flattened_dict(overrides)
  workdir = os.fspath(workdir)
  pipeline.use_compile_cache(workdir)
  outputs = pipeline.run_stages(stages(compare, workdir), workdir)
  rows = []
  for name in (SCRATCH, *compare.losses):
    pretrained = outputs.get(f"pretrain_{name}")
    pretraining = None if pretrained is None else {key: pretrained[key] for key in ("steps", *PRETRAIN_METRICS)}
    probed = dict(outputs["probe"][name])
    rows.append(comparison.row(_label(name), outputs[f"eval_{name}"], probed.pop("params"), stage=f"finetune_{name}",
                               finetune_steps=outputs[f"finetune_{name}"]["steps"], pretraining=pretraining,
                               probe=probed))
  table = comparison.make_table(rows, tuple(compare.data.test_splits), title=_caption(compare, outputs),
                                online=outputs[f"eval_{SCRATCH}"]["online"])
  results = {**table, "config": config_lib.to_dict(compare)}
  text = comparison.markdown(table) + "\n" + pretraining_markdown(rows) + "\n" + probe_markdown(rows)
  pipeline.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2) + "\n")
  pipeline.write_text(os.path.join(workdir, "results.md"), text)
  print(text)
  return results
