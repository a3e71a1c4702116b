"""k2SSL's comparison of pre-training objectives (Yang et al.): CTC fine-tuned from scratch and from an encoder
pre-trained with each objective, on the same labeled subset; one results table.

    results = run_comparison("tiny", "runs/ssl_compare")      # what launch/ssl_compare.py runs
    results = run_comparison("tiny", "runs/ssl_w2v", backbone="wav2vec2")

Objectives (OBJECTIVES, config.objectives): "hubert" and "ce" (configs/ssl_hubert.py's losses, on either backbone),
"wav2vec2" (configs/ssl_wav2vec2.py, contrastive) and "wavlm" (configs/ssl_wavlm.py), the last two on the
waveform backbone only.

The job's config is configs/ssl_compare.py (corpus, budgets); every model is a recipe run by the generic trainer.
Stages (projects.pipeline: each runs once, a rerun skips the finished ones and the interrupted one resumes from
its last checkpoint), each in its own run directory <workdir>/<stage>:
  pretrain_<obj>    the objective's recipe at <size> on the whole train split as unlabeled audio, then exported
                    (<run>/export/params); output: its steps and the dev metrics of its final evaluation
  finetune_<row>    configs/finetune_ctc.py:<size>,backbone=<backbone> on the labeled subset (data.train_fraction:
                    the same utterances in every row); rows "scratch" and one per objective, whose encoder is
                    loaded from that objective's export (task.init_from) and frozen for its first updates
  eval_<row>        speechfuse.run "eval": the test splits, offline and online (streaming; the run's results/)
  probe             every row's encoder at fine-tuning step 0 (random or pre-trained): linear phone-probe
                    accuracy of the fbank input and of each block's output (speechfuse.ssl.probe), which
                    shows whether pre-training left phone information where fine-tuning starts from, and
                    each block's self-attention entropy and reach (probe.attention_statistics); fbank
                    encoders only (config.probe.enabled)
Every run starts with the first run's CMVN statistics and every fine-tuning run with the first fine-tuning run's
tokenizer copied into its directory (the tasks load them when present): the recipes would compute the same ones,
copying makes it a fact rather than an expectation. Compiled programs are cached in <workdir>/compile_cache (JAX's
persistent cache): the three fine-tuning runs and their decodings compile once per shape.

Writes <workdir>/results.json (an eval.comparison table, with the job's config) and results.md: the WER / CER
table of the three rows, then the pre-training table (steps, masked and unmasked dev accuracy) and the probe
table (phone accuracy per layer, attention entropy and distance per block); and pretraining_curves.png, the
pre-training runs' train curves (projects.k2ssl.curves).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections

from speechfuse import config as config_lib, nn as sf_nn, run, tasks, train
from speechfuse.eval import comparison
from speechfuse.projects import pipeline
from speechfuse.projects.k2ssl import curves
from speechfuse.ssl import probe
from speechfuse.tasks import asr

SCRATCH = "scratch"


class Objective(NamedTuple):
  """A pre-training row: its recipe (configs/<recipe>.py), the recipe's arguments after the size, its name."""
  recipe: str
  args: str
  name: str
  waveform_only: bool = False


OBJECTIVES = {
    "hubert": Objective("ssl_hubert", "loss=hubert,backbone={backbone}", "HuBERT loss"),
    "ce": Objective("ssl_hubert", "loss=ce,backbone={backbone}", "CE loss"),
    "wav2vec2": Objective("ssl_wav2vec2", "", "wav2vec 2.0 contrastive", waveform_only=True),
    "wavlm": Objective("ssl_wavlm", "", "WavLM (HuBERT loss, gated rel. pos., mixing)", waveform_only=True),
}
# The pre-training tasks' dev metrics the table keeps (each task reports some of them).
PRETRAIN_METRICS = ("masked_accuracy", "unmasked_accuracy", "contrastive_accuracy", "codebook_perplexity", "loss")


def _objective(compare: ml_collections.ConfigDict, name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ValueError(f"config.objectives has {name!r}; choose from {sorted(OBJECTIVES)}")
  objective = OBJECTIVES[name]
  if objective.waveform_only and compare.backbone != "wav2vec2":
    raise ValueError(f"the {name} objective pre-trains the waveform encoder: run it with backbone=wav2vec2")
  return objective


def pretrain_config(compare: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The recipe of objective `name` at the job's size and backbone, on the job's pre-training budget."""
  objective = _objective(compare, name)
  args = ",".join(filter(None, [compare.size, objective.args.format(backbone=compare.backbone)]))
  config = pipeline.recipe(objective.recipe, args, compare.data)
  if compare.pretrain.log_every_steps is not None:
    config.log_every_steps = compare.pretrain.log_every_steps
  return config_lib.set_schedule(config, compare.pretrain.steps, compare.pretrain.warmup_steps)


def finetune_config(compare: ml_collections.ConfigDict, init_from: str | None,
                    objective: str | None = None) -> ml_collections.ConfigDict:
  """configs/finetune_ctc.py at the job's size, backbone and labeled fraction, from `init_from` (None: from
  scratch) pre-trained with `objective` (its encoder's extra parts, WavLM's relative position bias, included)."""
  config = pipeline.recipe("finetune_ctc", f"{compare.size},train_fraction={compare.finetune.train_fraction},"
                           f"backbone={compare.backbone}", compare.data)
  config_lib.set_schedule(config, compare.finetune.steps, compare.finetune.warmup_steps,
                          compare.finetune.learning_rate)
  if objective is not None and compare.backbone == "wav2vec2":
    pretrained = pretrain_config(compare, objective).model.encoder
    for key in ("relative_position_buckets", "max_relative_distance"):
      if key in pretrained:
        config.model.encoder[key] = pretrained[key]
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
  return {key: evals[-1][key] for key in PRETRAIN_METRICS if key in evals[-1]}


def stages(compare: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[pipeline.Stage]:
  """The job's stages (module docstring) for `compare` (configs/ssl_compare.py) in `workdir`."""
  run_dir = lambda name: os.path.join(os.fspath(workdir), name)
  first = run_dir(f"pretrain_{compare.objectives[0]}")  # its CMVN statistics serve every run (fbank encoders)
  first_finetune = run_dir(f"finetune_{SCRATCH}")  # its tokenizer serves every fine-tuning run
  cmvn = (asr.CMVN_FILE,) if compare.backbone == "conformer" else ()  # the waveform encoder reads no fbank

  def pretrain(name: str) -> dict[str, Any]:
    directory, config = run_dir(f"pretrain_{name}"), pretrain_config(compare, name)
    pipeline.share_files(first, directory, cmvn)
    step = pipeline.train_to_end(config, directory)
    params = run.export_path(directory)
    if not os.path.exists(params):  # a rerun of a stage interrupted after its export keeps it
      run.run("export", config, directory)
    return {"steps": step, "params": params, **_final_eval(directory, step)}

  def config_of(name: str) -> ml_collections.ConfigDict:
    if name == SCRATCH:
      return finetune_config(compare, None)
    return finetune_config(compare, run.export_path(run_dir(f"pretrain_{name}")), name)

  def finetune(name: str) -> dict[str, Any]:
    directory = run_dir(f"finetune_{name}")
    pipeline.share_files(first, directory, cmvn)
    pipeline.share_files(first_finetune, directory, (asr.TOKENIZER_DIR,))
    steps = pipeline.train_to_end(config_of(name), directory)
    return {"steps": steps, "params": sf_nn.count_params(train.latest_variables(directory)[0]["params"])}

  result = [pipeline.Stage(f"pretrain_{name}",
                           f"pre-train on the unlabeled train audio: {_objective(compare, name).name}",
                           lambda name=name: pretrain(name)) for name in compare.objectives]
  for name in (SCRATCH, *compare.objectives):
    what = "from scratch" if name == SCRATCH else f"from the {OBJECTIVES[name].name} encoder"
    result.append(pipeline.Stage(f"finetune_{name}", f"fine-tune CTC on the labeled subset {what}",
                                 lambda name=name: finetune(name)))
    result.append(pipeline.Stage(f"eval_{name}", f"decode the test splits with the model fine-tuned {what}",
                                 lambda name=name: tasks.evaluate_checkpoint(config_of(name),
                                                                                run_dir(f"finetune_{name}"))))

  def probe_rows() -> dict[str, Any]:
    out = {}
    for name in (SCRATCH, *compare.objectives):
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

  if compare.probe.enabled:
    result.append(pipeline.Stage("probe", "probe each row's encoder at fine-tuning step 0 for phones, layer by "
                                 "layer", probe_rows))
  return result


def _label(name: str) -> str:
  return "from scratch" if name == SCRATCH else f"{OBJECTIVES[name].name} pre-trained"


def _caption(compare: ml_collections.ConfigDict, outputs: Mapping[str, Any]) -> str:
  return (f"SSL pre-training on {compare.data.corpus} ({compare.size}): CTC fine-tuned for "
          f"{outputs[f'finetune_{SCRATCH}']['steps']} steps on {100 * compare.finetune.train_fraction:g}% of the "
          f"train split (the same utterances in every row), from scratch or from a {compare.backbone} encoder "
          "pre-trained on the whole train split as unlabeled audio. WER / CER in %, offline (full context)"
          + (" and online (streaming)." if outputs[f"eval_{SCRATCH}"].get("online") else "."))


def pretraining_markdown(rows: list[Mapping[str, Any]]) -> str:
  """The pre-trained rows' "pretraining" (steps and the PRETRAIN_METRICS their task reports: the final dev
  evaluation) as Markdown, accuracies in percent, "-" where a task has no such metric."""
  percent = lambda figures, key: f"{100 * figures[key]:.2f}" if key in figures else "-"
  lines = ["Pre-training (dev, at its last step): accuracy of predicting the k-means target of masked / unmasked "
           "frames (masked prediction), of picking the quantized target among its distractors and the codebook "
           "perplexity (contrastive):", "",
           "| method | pre-training steps | masked accuracy | unmasked accuracy | contrastive accuracy | "
           "codebook perplexity |", "|---|---|---|---|---|---|"]
  for row in rows:
    if row["pretraining"] is not None:
      figures = row["pretraining"]
      perplexity = f"{figures['codebook_perplexity']:.1f}" if "codebook_perplexity" in figures else "-"
      lines.append(f"| {row['method']} | {figures['steps']} | {percent(figures, 'masked_accuracy')} | "
                   f"{percent(figures, 'unmasked_accuracy')} | {percent(figures, 'contrastive_accuracy')} | "
                   f"{perplexity} |")
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


def run_comparison(size: str, workdir: str | os.PathLike, *, backbone: str = "conformer",
                   **overrides: Any) -> dict[str, Any]:
  """Runs the job at `size` with `backbone` in `workdir`; writes results.json / results.md there, prints the
  latter, returns the former.

  `overrides` set fields of configs/ssl_compare.py's config by dotted name, e.g. **{"pretrain.steps": 20,
  "data.data_dir": "/tmp/data"}. A rerun resumes: finished stages are skipped.
  """
  compare = config_lib.load_config(f"{config_lib.recipe_path('ssl_compare')}:{size},backbone={backbone}")
  compare.update_from_flattened_dict(overrides)
  workdir = os.fspath(workdir)
  pipeline.use_compile_cache(workdir)
  outputs = pipeline.run_stages(stages(compare, workdir), workdir)
  rows = []
  for name in (SCRATCH, *compare.objectives):
    pretrained = outputs.get(f"pretrain_{name}")
    pretraining = None if pretrained is None else {key: pretrained[key] for key in ("steps", *PRETRAIN_METRICS)
                                                   if key in pretrained}
    finetuned = outputs[f"finetune_{name}"]
    probed = dict(outputs["probe"][name]) if compare.probe.enabled else {}
    params = probed.pop("params", None) or finetuned["params"]
    rows.append(comparison.row(_label(name), outputs[f"eval_{name}"], params, stage=f"finetune_{name}",
                               finetune_steps=finetuned["steps"], pretraining=pretraining,
                               **({"probe": probed} if probed else {})))
  table = comparison.make_table(rows, tuple(compare.data.test_splits), title=_caption(compare, outputs),
                                online=outputs[f"eval_{SCRATCH}"]["online"])
  results = {**table, "config": config_lib.to_dict(compare)}
  text = comparison.markdown(table) + "\n" + pretraining_markdown(rows)
  if compare.probe.enabled:
    text += "\n" + probe_markdown(rows)
  curves.plot({_label(name): os.path.join(workdir, f"pretrain_{name}") for name in compare.objectives},
              os.path.join(workdir, "pretraining_curves.png"))
  pipeline.write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2) + "\n")
  pipeline.write_text(os.path.join(workdir, "results.md"), text)
  print(text)
  return results
