"""Evaluation decodings of the ASR tasks (config.task.decoding): beam and beam_lm through evaluate_checkpoint, their
tables against a recomputation from the JSONL with jiwer, the limits where they meet greedy / beam, and the
transducer's auxiliary-CTC decoding.

The model is the smoke CTC recipe at initialisation with its CTC head scaled up: peaky posteriors (as a trained
CTC model's are) over varied symbols, so hypotheses are long and the decoders have something to agree on. Peaky
matters for "beam of one is greedy": prefix beam search ranks prefixes by their probability summed over alignments,
greedy follows the single best alignment, and with flat posteriors the two can part (a repeated symbol after a
blank, say); when each frame's argmax holds nearly all the mass they cannot.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jiwer
import numpy as np
import pytest
import speech_testlib

from speechfuse import parallel, tasks
from speechfuse.data import inputs
from speechfuse.decoding import NgramLM
from speechfuse.eval import results
from speechfuse.tasks import evaluate_checkpoint
from speechfuse.text import ngram
from speechfuse.train import checkpoint, state as state_lib

HEAD_SCALE = 30.0  # logits x 30: each frame's argmax takes nearly all the mass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return speech_testlib.write_corpus(tmp_path_factory.mktemp("data"), "noise_words", {"train": 12, "test_clean": 4},
                                     speech_testlib.noise_word_records)


def _config(name: str, dataset):
  config = speech_testlib.recipe(name, "smoke")
  config.data.corpus = str(dataset)
  config.data.test_splits = ("test_clean",)
  config.data.eval_split = "test_clean"
  config.data.bucket_boundaries_seconds = (1.6,)  # one batch shape: one compilation per decoder
  config.data.max_batch_seconds = 8.0
  config.model.encoder.num_blocks = 1
  config.compute_dtype = "float32"
  return config


def _initial_variables(task):
  batch = next(task.make_input("train", seed=0, shard_index=0, shard_count=1))
  return jax.device_get(jax.jit(lambda rng, b: nn.unbox(task.init(rng, b)))(jax.random.key(0),
                                                                            state_lib.example_batch(batch)))


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
  """(config, workdir, exported variables path, ARPA path) of a smoke CTC model with a sharpened head."""
  root = tmp_path_factory.mktemp("ctc")
  config = _config("asr_conformer_ctc", dataset)
  task = tasks.get_task(config, root / "run")
  variables = _initial_variables(task)
  variables["params"]["ctc_head"] = jax.tree.map(lambda x: x * HEAD_SCALE, variables["params"]["ctc_head"])
  params = checkpoint.write_variables(root / "params", variables)
  transcripts = inputs.open_split(config.data, "train").metadata()["text"]
  lm_path = ngram.train_arpa([task.tokenizer.normalizer(t) for t in transcripts], root / "lm.arpa", order=3)
  return config, root / "run", params, lm_path


def _decoded(config, workdir, variables, **task_fields):
  """Offline records of test_clean decoded by the task of `config` with `task_fields` changed."""
  config = config.copy_and_resolve_references()
  config.task.update(task_fields)
  task = tasks.get_task(config, workdir)
  variables = checkpoint.load_variables(variables) if isinstance(variables, str) else variables
  decode = jax.jit(task.decode_step)
  records = task.utterances(lambda batch: jax.device_get(decode(variables, parallel.numeric_only(batch))),
                            task.split_input("test_clean", shard_index=0, shard_count=1))
  return {r["id"]: r for r in records}


def test_beam_of_one_is_greedy_on_peaky_posteriors(run):
  config, workdir, params, _ = run
  greedy = _decoded(config, workdir, params, decoding="greedy")
  beam = _decoded(config, workdir, params, decoding="beam", beam=1)
  assert greedy.keys() == beam.keys() and len(greedy) == 4
  assert min(len(r["hypothesis"]) for r in greedy.values()) > 5  # the test is not about empty hypotheses
  for key, record in greedy.items():
    assert beam[key]["hypothesis"] == record["hypothesis"]
    assert beam[key]["confidence"] == pytest.approx(record["confidence"], rel=1e-5)
    assert beam[key]["loss"] == record["loss"]


def test_beam_lm_without_lm_terms_is_beam(run):
  config, workdir, params, lm_path = run
  beam = _decoded(config, workdir, params, decoding="beam", beam=4)
  fused = _decoded(config, workdir, params, decoding="beam_lm", beam=4, lm_path=lm_path, lm_weight=0.0,
                   word_insertion=0.0)
  for key, record in beam.items():
    assert fused[key]["hypothesis"] == record["hypothesis"]
    assert fused[key]["confidence"] == pytest.approx(record["confidence"], rel=1e-5)


def test_beam_lm_with_a_lexicon_writes_only_lm_words(run):
  config, workdir, params, lm_path = run
  free = _decoded(config, workdir, params, decoding="beam_lm", beam=4, lm_path=lm_path, lm_weight=0.5)
  constrained = _decoded(config, workdir, params, decoding="beam_lm", beam=4, lm_path=lm_path, lm_weight=0.5,
                         lexicon=True)
  words = NgramLM.from_arpa(lm_path).words()
  free_words = [w for r in free.values() for w in r["hypothesis"].split()]
  assert any(w not in words for w in free_words), "the test is not about hypotheses already in the lexicon"
  prefixes = {word[:i] for word in words for i in range(1, len(word) + 1)}
  for record in constrained.values():
    *closed, last = record["hypothesis"].split()
    # The last word is a lexicon word unless no hypothesis in the beam had finished one (then its prefix).
    assert all(w in words for w in closed) and last in prefixes
  assert sum(r["hypothesis"].split()[-1] in words for r in constrained.values()) >= len(constrained) // 2


@pytest.mark.parametrize("decoding", ["beam", "beam_lm"])
def test_evaluation_writes_tables_that_match_the_jsonl(run, decoding):
  config, workdir, params, lm_path = run
  config = config.copy_and_resolve_references()
  config.task.update(decoding=decoding, beam=4, lm_path=lm_path, lm_weight=1.0, word_insertion=0.5)
  table = evaluate_checkpoint(config, workdir, checkpoint=params)
  out_dir = workdir / "results" / decoding
  assert not (workdir / "results" / "results.json").exists(), "greedy's table is not touched"
  assert json.loads((out_dir / "results.json").read_text()) == table
  expected = {"method": decoding, "beam": 4}
  if decoding == "beam_lm":
    expected.update(lm_path=lm_path, lm_weight=1.0, word_insertion=0.5, lexicon=False)
  assert table["decoding"] == expected
  assert f"Decoding: {decoding} (beam 4" in (out_dir / "results.md").read_text()
  for mode in results.MODES:
    records = results.read_jsonl(out_dir / f"test_clean.{mode}.jsonl")
    references, hypotheses = [r["reference"] for r in records], [r["hypothesis"] for r in records]
    figures = table["splits"]["test_clean"][mode]
    assert figures["utterances"] == len(records) == 4
    assert figures["wer"] == pytest.approx(jiwer.wer(references, hypotheses))
    assert figures["cer"] == pytest.approx(jiwer.cer(references, hypotheses))
    assert figures["confidence"] == pytest.approx(np.mean([r["confidence"] for r in records]))
    assert all(0 < r["confidence"] <= 1 for r in records)


def test_transducer_beam_of_one_is_greedy_with_one_symbol_per_frame(dataset, tmp_path):
  # Modified beam search keeps the best of blank and every symbol per frame: with one hypothesis, the argmax.
  config = _config("asr_conformer_transducer", dataset)
  config.task.max_symbols_per_frame = 1
  variables = _initial_variables(tasks.get_task(config, tmp_path))
  greedy = _decoded(config, tmp_path, variables, decoding="greedy")
  beam = _decoded(config, tmp_path, variables, decoding="beam", beam=1)
  assert sum(len(r["hypothesis"]) for r in greedy.values()) > 0
  assert {k: r["hypothesis"] for k, r in beam.items()} == {k: r["hypothesis"] for k, r in greedy.items()}
  assert all(r["confidence"] is None for r in beam.values())


def test_transducer_ctc_greedy_is_the_best_path_of_its_ctc_head(dataset, tmp_path):
  config = _config("asr_conformer_transducer", dataset)
  task = tasks.get_task(config, tmp_path)
  variables = _initial_variables(task)
  variables["params"]["ctc_head"] = jax.tree.map(lambda x: x * HEAD_SCALE, variables["params"]["ctc_head"])
  decoded = _decoded(config, tmp_path, variables, decoding="ctc_greedy")
  expected = {}
  for batch in task.split_input("test_clean", shard_index=0, shard_count=1):
    x, lengths = task.model.apply(variables, batch["audio"], batch["audio_lengths"], method="encode")
    best = np.asarray(task.model.apply(variables, x, method="ctc_log_probs")).argmax(-1)
    for row in np.flatnonzero(batch["mask"]):
      path = best[row, :lengths[row]]
      tokens = [int(t) for i, t in enumerate(path) if t != task.tokenizer.blank_id and (i == 0 or t != path[i - 1])]
      expected[str(batch["ids"][row])] = task.tokenizer.decode(tokens)
  assert {k: r["hypothesis"] for k, r in decoded.items()} == expected
  assert sum(len(h) for h in expected.values()) > 0


def test_transducer_ctc_decoding_needs_the_ctc_head(dataset, tmp_path):
  config = _config("asr_conformer_transducer", dataset)
  config.model.ctc_head, config.task.ctc_weight, config.task.decoding = False, 0.0, "ctc_greedy"
  with pytest.raises(ValueError, match="config.model.ctc_head=True"):
    tasks.get_task(config, tmp_path)


@pytest.mark.parametrize("name, fields, error, message", [
    ("asr_conformer_transducer", {"decoding": "beam_lm"}, ValueError, "config.task.decoding='beam_lm' is unknown"),
    ("asr_conformer_ctc", {"decoding": "beam", "beam": 0}, ValueError, "config.task.beam"),
    ("asr_conformer_ctc", {"decoding": "beam_lm"}, FileNotFoundError, "config.task.lm_path"),
    ("asr_conformer_ctc", {"decoding": "beam_lm", "lm_path": __file__, "lm_weight": -1.0}, ValueError,
     "config.task.lm_weight"),
])
def test_bad_decoding_settings_are_named(dataset, tmp_path, name, fields, error, message):
  config = _config(name, dataset)
  config.task.update(fields)
  with pytest.raises(error, match=message):
    tasks.get_task(config, tmp_path)
