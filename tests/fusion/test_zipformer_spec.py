"""The Zipformer CTC spec: the nested residual stream as segments (windows of every stream axis), head 0 in place,
both depthwise convs; permuted copies compute the same log-probs, permutations across a segment boundary or of
head 0 do not, alignment undoes a random permutation and a permuted copy's activations are the permuted ones."""

from __future__ import annotations

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, fusion, models
from speechfuse.fusion import align, permute, transport
from speechfuse.fusion import spec as spec_lib
from speechfuse.models import ctc

fuse_lib = importlib.import_module("speechfuse.fusion.fuse")  # the module, not fusion.fuse, the function

CASES = ("smoke", "three_stacks_causal")
ATOL = 2e-5  # log-probs of a functionally identical copy
CHANGED = 1e-3  # the largest log-prob change that a function-changing permutation must exceed
SEED = 2  # every leaf a space touches moves (smoke's 2-feature pos parts keep their order for some seeds)


def _abstract_variables(size: str, **encoder) -> dict:
  """eval_shape of a Zipformer CTC model's variables (specs read shapes only)."""
  config = ctc.default_config("zipformer", size)
  config.encoder.update(encoder)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=50, cmvn=audio.CMVNStats(np.zeros(80), np.ones(80), 1))
  waves, lengths = jnp.zeros((1, 16000), jnp.int16), jnp.array([16000])
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), waves, lengths)))


def _segments(spec: fusion.Spec) -> list[str]:
  return [space.name for space in spec.spaces if space.name.startswith("residual/")]


def test_segments_heads_and_convs_of_the_spec():
  smoke = fusion.zipformer_ctc_spec(_abstract_variables("smoke"))
  assert _segments(smoke) == ["residual/0:32", "residual/32:48"]
  # Unmasked dims (32, 32) of widths (48, 32): feature masks start at 32 and 32 + 8 in stack 0.
  assert _segments(fusion.zipformer_ctc_spec(_abstract_variables("smoke"), (32, 32))) == [
      "residual/0:32", "residual/32:40", "residual/40:48"]
  spaces = {space.name: space for space in smoke.spaces}
  segment = spaces["residual/32:48"].parts[0]
  assert segment.size == 16 and all(member.window == (32, 48) for member in segment.members)
  # Only 48-wide axes reach [32, 48): stack 0, encoder_embed's out and norm, the CTC head; stack 1 is 32 wide.
  assert {m.path for m in segment.members if "stacks_1" in m.path} == set()
  assert ("params/ctc_head/kernel", (0,)) in {(m.path, m.axes) for m in segment.members}
  head_0, heads = spaces["stacks_0/layers_0/attention/head_0"], spaces["stacks_0/layers_0/attention/heads"]
  assert head_0.heads == heads.heads == 1
  assert [(p.name, p.size) for p in head_0.parts] == [("qk", 8), ("pos", 2), ("value1", 4), ("value2", 4)]
  assert {m.window for p in head_0.parts for m in p.members} == {(0, 1)}
  assert {m.window for p in heads.parts for m in p.members} == {(1, 2)}
  pos = {m.path.rsplit("/", 2)[-2] + "/" + m.path.rsplit("/", 1)[-1] for m in head_0.parts[1].members}
  assert pos == {"pos_query/kernel", "pos_query/bias", "pos/kernel"}
  assert spaces["stacks_0/layers_0/nonlin_attention"].parts[0].size == 36
  assert spaces["encoder_embed/convnext"].parts[0].size == 48
  out = [m for m in spaces["encoder_embed/conv_2"].parts[0].members if m.path.endswith("encoder_embed/out/kernel")]
  assert out[0].inner == 19  # 80 mel bins -> 80 -> 39 -> 19
  causal = fusion.zipformer_ctc_spec(_abstract_variables("smoke", causal=True))
  conv1 = next(space for space in causal.spaces if space.name == "stacks_0/layers_0/conv1")
  conv = {m.path.split("/conv1/")[1] for m in conv1.parts[0].members}
  assert conv == {"pointwise_in/kernel", "pointwise_in/bias", "pointwise_out/kernel", "depthwise/causal/kernel",
                  "depthwise/causal/bias", "depthwise/chunkwise/kernel", "depthwise/chunkwise/bias",
                  "depthwise/chunkwise_scale"}
  assert fuse_lib.SPECS["zipformer"] is fusion.zipformer_ctc_spec


def test_base_segments_with_and_without_unmasked_dims():
  variables = _abstract_variables("base")
  assert _segments(fusion.zipformer_ctc_spec(variables)) == [
      "residual/0:192", "residual/192:256", "residual/256:384", "residual/384:512"]
  # unmasked_dims (192, 192, 256, 256, 256, 192): masks also start at 192 + 32, 256 + 64 (and 256 + 128 = 384).
  with_masks = ["residual/0:192", "residual/192:224", "residual/224:256", "residual/256:320", "residual/320:384",
                "residual/384:512"]
  assert _segments(fusion.zipformer_ctc_spec(variables, (192, 192, 256, 256, 256, 192))) == with_masks
  # `--mode=fuse` passes the members' unmasked_dims.
  assert _segments(fuse_lib._spec(ctc.default_config("zipformer", "base").encoder, variables)) == with_masks
  spaces = {space.name: space for space in fusion.zipformer_ctc_spec(variables).spaces}
  assert spaces["stacks_3/layers_3/attention/heads"].heads == 7
  with pytest.raises(ValueError, match=r"unmasked_dims=\(64, 64\) needs one entry"):
    fusion.zipformer_ctc_spec(variables, (64, 64))


def test_validate_checks_windows():
  flat = {"params/w": np.zeros((6, 3))}
  rows = lambda name, start, stop: fusion.Space(name, (fusion.Part("units", stop - start, (
      fusion.Member("params/w", (0,), window=(start, stop)),)),))
  fixed = (fusion.Fixed("params/w", (1,), "outputs"),)
  # Valid, and in this order too: a window's rows read the fixed axis only, the other window holds other rows.
  fusion.Spec((rows("a", 0, 2), rows("b", 2, 6)), fixed).validate(flat)
  with pytest.raises(ValueError, match=r"leaf params/w \(6, 3\) has axes \[0\] covered by no .* axes \[\] covered"):
    fusion.Spec((rows("a", 0, 2), rows("b", 3, 6)), fixed).validate(flat)
  with pytest.raises(ValueError, match=r"axes \[\] covered by no .* axes \[0\] covered twice"):
    fusion.Spec((rows("a", 0, 2), rows("b", 1, 6)), fixed).validate(flat)
  with pytest.raises(ValueError, match=r"window \(4, 8\) of axis 0"):
    fusion.Spec((rows("a", 0, 4), rows("b", 4, 8)), fixed).validate(flat)
  wrong = fusion.Space("b", (fusion.Part("units", 3, (fusion.Member("params/w", (0,), window=(2, 6)),)),))
  with pytest.raises(ValueError, match=r"\(window \(2, 6\)\) hold 4 entries, space b/units needs 3"):
    fusion.Spec((rows("a", 0, 2), wrong), fixed).validate(flat)


@pytest.mark.parametrize("name", CASES)
def test_permuted_zipformer_computes_the_same_log_probs(zipformer_cases, name):
  case = zipformer_cases[name]
  spec = fusion.zipformer_ctc_spec(case.variables)
  permuted = fusion.random_permutation(case.variables, spec, jax.random.key(SEED))
  before, after = spec_lib.flatten(case.variables), spec_lib.flatten(permuted)
  moved = [path for path in before if not np.array_equal(before[path], after[path])]
  fixed_only = {f.path for f in spec.fixed} - set(spec.assignments())
  assert set(moved) == set(before) - fixed_only  # every leaf a space touches has moved
  original, shuffled = case.log_probs(case.variables), case.log_probs(permuted)
  for b, valid in enumerate(case.lengths):
    np.testing.assert_allclose(shuffled[b, :valid], original[b, :valid], atol=ATOL, rtol=0)
  # Head 0 keeps its features (in an order of its own).
  for path, leaf in before.items():
    if "/attention_weights/" in path and path.endswith("kernel"):
      np.testing.assert_array_equal(np.sort(after[path][:, 0], axis=None), np.sort(leaf[:, 0], axis=None))


def _stream_axes(spec: fusion.Spec) -> set[tuple[str, int]]:
  """(path, axis) of every residual stream axis: the axes the segments' windows cut."""
  return {(m.path, m.axes[0]) for space in spec.spaces if space.name.startswith("residual/")
          for part in space.parts for m in part.members}


def _swap_stream_channels(flat: dict, spec: fusion.Spec, i: int, j: int) -> dict:
  """flat with stream channels i and j swapped on every stream axis holding both (a stream permutation that the
  narrower axes, holding neither or only one, cannot follow when i and j lie in different segments)."""
  out = dict(flat)
  for path, axis in _stream_axes(spec):
    if out[path].shape[axis] > max(i, j):
      order = np.arange(out[path].shape[axis])
      order[[i, j]] = order[[j, i]]
      out[path] = np.take(np.asarray(out[path]), order, axis=axis)
  return out


@pytest.mark.parametrize("name", CASES)
def test_a_stream_permutation_across_a_segment_boundary_changes_the_log_probs(zipformer_cases, name):
  case = zipformer_cases[name]
  spec = fusion.zipformer_ctc_spec(case.variables)
  flat = spec_lib.flatten(case.variables)
  width = flat["params/ctc_head/kernel"].shape[0]
  original = np.asarray(case.log_probs(case.variables))
  within = case.log_probs(spec_lib.unflatten(_swap_stream_channels(flat, spec, width - 2, width - 1)))
  np.testing.assert_allclose(within, original, atol=ATOL, rtol=0)  # both in the last segment: the same function
  across = np.asarray(case.log_probs(spec_lib.unflatten(_swap_stream_channels(flat, spec, 0, width - 1))))
  assert np.abs(across - original).max() > CHANGED


def _all_heads(space: fusion.Space, heads: int) -> fusion.Space:
  """The attention space of head 0 widened to every head (no window)."""
  parts = tuple(fusion.Part(p.name, p.size, tuple(fusion.Member(m.path, m.axes) for m in p.members))
                for p in space.parts)
  return fusion.Space(space.name, parts, heads)


def _head_swap(space: fusion.Space, a: int, b: int) -> tuple[jax.Array, ...]:
  """Maps that swap whole heads a and b, every head's features in place."""
  head_map = np.eye(space.heads, dtype=np.float32)
  head_map[[a, b]] = head_map[[b, a]]
  return tuple(transport.block_map(jnp.asarray(head_map), jnp.broadcast_to(
      jnp.eye(p.size), (space.heads, space.heads, p.size, p.size))) for p in space.parts)


def test_head_0_must_stay_in_place(zipformer_cases):
  case = zipformer_cases["three_stacks_causal"]
  spec = fusion.zipformer_ctc_spec(case.variables)
  flat = spec_lib.flatten(case.variables)
  original = np.asarray(case.log_probs(case.variables))
  head_0 = next(space for space in spec.spaces if space.name == "stacks_1/layers_0/attention/head_0")
  every = _all_heads(head_0, 3)
  swapped = lambda a, b: case.log_probs(spec_lib.unflatten(
      transport.apply(flat, fusion.Spec((every,), ()), {every.name: _head_swap(every, a, b)})))
  np.testing.assert_allclose(swapped(1, 2), original, atol=ATOL, rtol=0)
  assert np.abs(np.asarray(swapped(0, 1)) - original).max() > CHANGED  # NonlinAttention reads head 0's weights


def test_exact_alignment_undoes_a_random_permutation_of_a_zipformer(zipformer_cases):
  case = zipformer_cases["smoke"]
  spec = fusion.zipformer_ctc_spec(case.variables)
  rng = jax.random.key(SEED)
  permuted = fusion.random_permutation(case.variables, spec, rng)
  aligned, maps, report = align.align(permuted, case.variables, spec, solver="exact")
  for name, true in permute.random_maps(spec, rng).items():
    for p, t in zip(maps[name], true):
      np.testing.assert_array_equal(p, np.asarray(t).T, err_msg=name)
  for path, leaf in spec_lib.flatten(case.variables).items():
    np.testing.assert_array_equal(spec_lib.flatten(aligned)[path], leaf, err_msg=path)
  assert all(space.max_mass == 1.0 for space in report.values())


def test_activations_of_a_permuted_copy_are_the_permuted_activations(zipformer_cases):
  case = zipformer_cases["three_stacks_causal"]
  spec = fusion.zipformer_ctc_spec(case.variables)
  rng = jax.random.key(SEED)
  permuted = fusion.random_permutation(case.variables, spec, rng)
  original, shuffled = (fusion.ctc_activations(case.model, v, case.waves, case.wave_lengths, spec)
                        for v in (case.variables, permuted))
  assert set(original) == {f"{space.name}/{part.name}" for space in spec.spaces for part in space.parts}
  # Only the 48-wide stack 1 holds segment [40, 48): its layer's bypass_mid and output and output_downsample at the
  # 25 Hz output rate (valid frames), its out_combiner at the 50 Hz embed rate (all 2 x 20 frames).
  valid = case.lengths.sum()
  assert original["residual/40:48/units"].shape == (8, 3 * valid + 2 * 20)
  assert original["stacks_1/layers_0/attention/heads/qk"].shape == (2 * 8, 2 * valid)  # heads 1, 2; query and key
  for name, maps in permute.random_maps(spec, rng).items():
    space = next(s for s in spec.spaces if s.name == name)
    for part, p in zip(space.parts, maps):
      key = f"{name}/{part.name}"
      np.testing.assert_allclose(shuffled[key], np.asarray(p).T @ original[key], atol=1e-4, rtol=1e-4, err_msg=key)
