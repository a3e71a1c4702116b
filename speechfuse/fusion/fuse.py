"""`--mode=fuse`: two exported CTC models of one architecture and size -> one fused checkpoint and a report.

    python launch/main.py --config=configs/<recipe>.py:<arg> --workdir=runs/fused --mode=fuse \\
        --config.fusion.sl=runs/sl/export/params --config.fusion.ssl=runs/ssl_ft/export/params

Reads config.fusion (`default_config`) and config.model (the members' CTC model: its encoder architecture picks
the hidden-space spec) and writes
  <workdir>/fused/params       variables (train.load_variables), for tasks.evaluate_checkpoint(checkpoint=...) or as
                               task.init_from with task.init_encoder_only=False (moderate fine-tuning, MFT)
  <workdir>/fused/report.json  method, solver, weight, options, wall time and, per hidden space: units, transport
  <workdir>/fused/report.md    cost, the identity plan's cost, mean largest map entry, whether Sinkhorn converged
The fused/ directory is written whole under a temporary name and then renamed, so a rerun replaces it.

The fused model reads audio and text as its members did: their run directory's tokenizer/ and cmvn.json (the
nearest directory above each exported path holding a cmvn.json, e.g. <run>/export/params -> <run>) are copied
into <workdir>, the SSL member's, after checking the SL member's tokenizer is the same. Where an exported path
lies in no run directory, the caller puts the members' tokenizer/ and cmvn.json into <workdir>; otherwise the
next task built there would make its own, which need not match the members'.
"""

from __future__ import annotations

import filecmp
import itertools
import json
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from speechfuse.fusion import align, architectures, otf
from speechfuse.fusion import spec as spec_lib
from speechfuse import tasks
from speechfuse.tasks import asr
from speechfuse.train import checkpoint

FUSED_DIR = "fused"
METHODS = ("otf", "direct")
ALIGNMENTS = ("weights", "activations")
SPECS = {"conformer": architectures.conformer_ctc_spec, "transformer": architectures.transformer_ctc_spec,
         "zipformer": architectures.zipformer_ctc_spec}


def default_config() -> ml_collections.ConfigDict:
  """config.fusion: what `--mode=fuse` fuses and how."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict({
      "sl": placeholder(str),  # exported variables (--mode=export) of the supervised model, aligned onto...
      "ssl": placeholder(str),  # ...the fine-tuned self-supervised model's, whose basis the fused model keeps
      "method": "otf",  # "otf": align SL onto SSL, then average; "direct": average without alignment
      "weight": 0.5,  # the SSL model's share of the average (the paper: 1/2)
      "solver": "sinkhorn",  # "sinkhorn" (ott-jax, entropic) or "exact" (a permutation by linear assignment)
      "squared": False,  # squared Euclidean cost between units instead of Euclidean (OTFusion)
      "alignment": "weights",  # support points: "weights" (rows of weights) or "activations" (outputs on data)
      "activation_batches": 2,  # training batches whose activations are the support points (alignment=activations)
      # Weight-matching refinement passes after the greedy layer-by-layer one (weights only; align.align's rounds).
      "rounds": 0,
      # Sinkhorn only: entropic regularisation relative to the cost after scale_cost, stopping rule.
      "epsilon": 1e-2,
      "scale_cost": "max_cost",
      "threshold": 1e-3,
      "max_iterations": 2000,
  })


def _check_config(config: ml_collections.ConfigDict) -> None:
  if "fusion" not in config:
    raise ValueError("the config has no fusion section: set config.fusion = speechfuse.fusion.default_config()")
  fc = config.fusion
  if fc.method not in METHODS:
    raise ValueError(f"config.fusion.method={fc.method!r} is unknown; choose from {METHODS}")
  if fc.solver not in align.SOLVERS:
    raise ValueError(f"config.fusion.solver={fc.solver!r} is unknown; choose from {align.SOLVERS}")
  if fc.alignment not in ALIGNMENTS:
    raise ValueError(f"config.fusion.alignment={fc.alignment!r} is unknown; choose from {ALIGNMENTS}")
  if not 0.0 <= fc.weight <= 1.0:
    raise ValueError(f"config.fusion.weight={fc.weight} must lie in [0, 1]")
  if fc.rounds < 0 or (fc.rounds and fc.alignment != "weights"):
    raise ValueError(f"config.fusion.rounds={fc.rounds}: refinement passes need rounds >= 0 and alignment='weights'")
  if config.model.name != "ctc":
    raise ValueError(f"--mode=fuse fuses CTC models (config.model.name='ctc'), not {config.model.name!r}")
  if config.model.encoder.architecture not in SPECS:
    raise ValueError(f"config.model.encoder.architecture={config.model.encoder.architecture!r} has no fusion spec; "
                     f"choose from {sorted(SPECS)}")
  for key in ("sl", "ssl"):
    if not fc[key]:
      raise ValueError(f"config.fusion.{key} is not set: give the exported variables path (--mode=export)")
    if not os.path.exists(fc[key]):
      raise FileNotFoundError(f"config.fusion.{key}={fc[key]!r} does not exist")


def _check_same_layout(sl: dict[str, Any], ssl: dict[str, Any], names: tuple[str, str]) -> None:
  """Raises ValueError naming the first leaf that is in one model only or has two shapes."""
  flat_sl, flat_ssl = spec_lib.flatten(sl), spec_lib.flatten(ssl)
  for path in sorted(set(flat_sl) | set(flat_ssl)):
    if path not in flat_sl or path not in flat_ssl:
      inside, outside = (names[1], names[0]) if path not in flat_sl else names
      raise ValueError(f"{path} is in {inside} but not in {outside}: fusion needs one architecture")
    if np.shape(flat_sl[path]) != np.shape(flat_ssl[path]):
      raise ValueError(f"{path} has shape {np.shape(flat_sl[path])} in {names[0]} and {np.shape(flat_ssl[path])} in "
                       f"{names[1]}: fusion needs one architecture and size")


def _run_dir(exported: str) -> pathlib.Path | None:
  """The run directory an exported path lies in: the nearest of its 3 parents holding the CMVN statistics."""
  return next((p for p in pathlib.Path(exported).absolute().parents[:3] if (p / asr.CMVN_FILE).exists()), None)


def _same_tree(a: pathlib.Path, b: pathlib.Path) -> bool:
  comparison = filecmp.dircmp(a, b)
  if comparison.left_only or comparison.right_only or comparison.funny_files:
    return False
  _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
  return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in comparison.common_dirs)


def _same(a: pathlib.Path, b: pathlib.Path) -> bool:
  return _same_tree(a, b) if a.is_dir() else filecmp.cmp(a, b, shallow=False)


def _copy_assets(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """The members' tokenizer/ and cmvn.json into workdir (module docstring); ValueError on conflicting ones."""
  runs = {key: _run_dir(config.fusion[key]) for key in ("ssl", "sl")}
  found = [(key, run) for key, run in runs.items() if run is not None]
  if not found:
    logging.warning("config.fusion.sl / ssl lie in no run directory (no %s above them): put the members' %s/ "
                    "and %s into %s before evaluating or fine-tuning the fused model", asr.CMVN_FILE,
                    asr.TOKENIZER_DIR, asr.CMVN_FILE, workdir)
    return
  source = found[0][1]
  for name in (asr.TOKENIZER_DIR, asr.CMVN_FILE):
    for key, run in found[1:]:
      if (run / name).exists() and not _same(source / name, run / name):
        message = f"{run / name} differs from {source / name}"
        if name == asr.TOKENIZER_DIR:
          raise ValueError(f"{message}: the two models read different token ids; fuse models of one tokenizer")
        logging.warning("%s: the fused model normalises features with the SSL run's statistics", message)
    target = workdir / name
    if target.exists():
      if not _same(source / name, target):
        raise ValueError(f"{target} exists and differs from the members' {source / name}; use a fresh workdir")
      continue
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (shutil.copytree if (source / name).is_dir() else shutil.copyfile)(source / name, tmp)
    os.replace(tmp, target)
    logging.info("fuse: copied %s into %s", source / name, workdir)


def _activations(config: ml_collections.ConfigDict, workdir: pathlib.Path, sl: dict[str, Any], ssl: dict[str, Any],
                 spec: spec_lib.Spec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Both models' activations on config.fusion.activation_batches training batches (align's activations mode)."""
  task = tasks.get_task(config, workdir)
  batches = itertools.islice(task.make_input("train", seed=config.seed, shard_index=0, shard_count=1),
                             config.fusion.activation_batches)
  per_model = ([], [])
  for batch in batches:
    for variables, parts in zip((sl, ssl), per_model):
      parts.append(architectures.ctc_activations(task.model, variables, batch["audio"], batch["audio_lengths"], spec))
  join = lambda parts: {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}
  return join(per_model[0]), join(per_model[1])


def _spec(encoder: ml_collections.ConfigDict, variables: dict[str, Any]) -> spec_lib.Spec:
  """The members' hidden-space spec; a Zipformer's also keeps its feature-mask edges (unmasked_dims), which the
  moderate fine-tuning after fusion trains with, as segment boundaries of the residual stream."""
  if encoder.architecture == "zipformer":
    return SPECS["zipformer"](variables, tuple(encoder.unmasked_dims))
  return SPECS[encoder.architecture](variables)


def _report_markdown(report: dict[str, Any]) -> str:
  how = (f"OTF, {report['solver']} solver, alignment from {report['alignment']}" if report["method"] == "otf"
         else "direct average, no alignment")
  lines = [f"Fusion of SL {report['sl']} and SSL {report['ssl']} ({how}): SSL weight {report['weight']}, "
           f"{report['wall_seconds']:.1f} s.", ""]
  if report["spaces"]:
    lines += ["| hidden space | units | transport cost | identity cost | max mass | converged |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {s['units']} | {s['cost']:.4g} | {s['identity_cost']:.4g} | {s['max_mass']:.3f} | "
              f"{'yes' if s['converged'] else 'no'} |" for name, s in report["spaces"].items()]
  return "\n".join(lines) + "\n"


def fuse(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  """Fuses config.fusion.sl onto config.fusion.ssl and writes <workdir>/fused (module docstring).

  Returns:
    The path of the fused variables, <workdir>/fused/params.

  Raises:
    FileNotFoundError: an exported path does not exist.
    ValueError: an unknown method / solver / alignment, a weight outside [0, 1], models of different
      architectures or sizes (the message names the leaf), or members with different tokenizers.
  """
  _check_config(config)
  fc, workdir = config.fusion, pathlib.Path(workdir).absolute()
  start = time.perf_counter()
  sl, ssl = checkpoint.load_variables(fc.sl), checkpoint.load_variables(fc.ssl)
  _check_same_layout(sl, ssl, (f"config.fusion.sl={fc.sl}", f"config.fusion.ssl={fc.ssl}"))
  _copy_assets(config, workdir)
  spaces = {}
  if fc.method == "direct":
    fused = otf.direct_average(sl, ssl, fc.weight)
  else:
    spec = _spec(config.model.encoder, ssl)
    options = {"squared": fc.squared, "rounds": fc.rounds}
    if fc.solver == "sinkhorn":
      options.update(epsilon=fc.epsilon, scale_cost=fc.scale_cost, threshold=fc.threshold,
                     max_iterations=fc.max_iterations)
    if fc.alignment == "activations":
      options["activations"] = _activations(config, workdir, sl, ssl, spec)
    fused, report = otf.otf_fuse(sl, ssl, spec, fc.weight, fc.solver, **options)
    spaces = {name: {"units": r.units, "cost": r.cost, "identity_cost": r.identity_cost, "max_mass": r.max_mass,
                     "converged": r.converged} for name, r in report.items()}
  fused = jax.device_get(fused)
  report = {"method": fc.method, "sl": fc.sl, "ssl": fc.ssl, "weight": fc.weight, "architecture":
            config.model.encoder.architecture, "solver": fc.solver if fc.method == "otf" else None,
            "alignment": fc.alignment if fc.method == "otf" else None,
            "options": {key: fc[key] for key in ("squared", "rounds", "epsilon", "scale_cost", "threshold",
                                                "max_iterations")},
            "wall_seconds": time.perf_counter() - start, "spaces": spaces}
  out, tmp = workdir / FUSED_DIR, workdir / f"{FUSED_DIR}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  checkpoint.write_variables(tmp / "params", fused)
  (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
  (tmp / "report.md").write_text(_report_markdown(report), encoding="utf-8")
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  logging.info("fused %s onto %s (%s) in %.1f s: %s", fc.sl, fc.ssl, fc.method, report["wall_seconds"], out)
  return os.fspath(out / "params")
