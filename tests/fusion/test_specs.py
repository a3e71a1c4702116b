"""Hidden-space specs: full coverage of the CTC models' variables at any size, errors that name the leaf."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from speechfuse import audio, fusion, models
from speechfuse.fusion import spec as spec_lib
from speechfuse.models import ctc


def _abstract_variables(architecture: str, size: str, **encoder) -> dict:
  """eval_shape of a CTC model's variables: specs read shapes only, so no initialiser runs."""
  rng = np.random.default_rng(0)
  stats = audio.CMVNStats(rng.normal(size=80), np.full(80, 2.0), 1)
  config = ctc.default_config(architecture, size)
  config.encoder.update(encoder)
  model = models.get_model(config, dtype=jnp.float32, vocab_size=50, cmvn=stats)
  waves, lengths = jnp.zeros((1, 16000), jnp.int16), jnp.array([16000])
  return jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), waves, lengths)))


def _covered_axes(spec: fusion.Spec) -> dict[str, list[int]]:
  axes: dict[str, list[int]] = {}
  for space in spec.spaces:
    for part in space.parts:
      for member in part.members:
        axes.setdefault(member.path, []).extend(member.axes)
  for fixed in spec.fixed:
    axes.setdefault(fixed.path, []).extend(fixed.axes)
  return axes


@pytest.mark.parametrize("architecture, size, encoder", [
    ("conformer", "smoke", {}),
    ("conformer", "tiny", {}),
    ("conformer", "smoke", {"conv_norm": "layer_norm", "subsampling": "conv1d"}),
    ("conformer", "smoke", {"subsampling_factor": 8, "subsampling_channels": 32}),
    ("transformer", "tiny", {}),
    ("transformer", "smoke", {"positions": "relative", "pre_norm": False}),
])
def test_every_axis_of_every_leaf_is_covered_once(architecture, size, encoder):
  variables = _abstract_variables(architecture, size, **encoder)
  build = fusion.conformer_ctc_spec if architecture == "conformer" else fusion.transformer_ctc_spec
  spec = build(variables)
  flat = spec_lib.flatten(variables)
  covered = _covered_axes(spec)
  assert set(covered) == set(flat)
  for path, leaf in flat.items():
    assert sorted(covered[path]) == list(range(len(leaf.shape))), path
  names = [space.name for space in spec.spaces]
  blocks = models.ctc.default_config(architecture, size).encoder.num_blocks
  per_block = ("ffn1", "mhsa", "conv", "ffn2") if architecture == "conformer" else ("mhsa", "ffn")
  expected_blocks = [f"blocks_{i}/{name}" for i in range(blocks) for name in per_block]
  assert names[-len(expected_blocks):] == expected_blocks
  residual = encoder.get("positions") == "relative" or architecture == "conformer"
  assert ("residual" in names) == residual
  assert all(name.startswith("subsampling/conv_") for name in names[:-len(expected_blocks) - residual])


def test_conformer_spaces_sizes_and_structure():
  variables = _abstract_variables("conformer", "tiny")
  spec = fusion.conformer_ctc_spec(variables)
  spaces = {space.name: space for space in spec.spaces}
  mhsa = spaces["blocks_0/mhsa"]
  assert mhsa.heads == 4 and [(p.name, p.size) for p in mhsa.parts] == [("qk", 36), ("vo", 36)]
  qk = {m.path.rsplit("/mhsa/", 1)[1] for m in mhsa.parts[0].members}
  assert qk == {"query/kernel", "query/bias", "key/kernel", "key/bias", "pos/kernel", "pos_bias_u", "pos_bias_v"}
  assert spaces["residual"].parts[0].size == 144 and spaces["blocks_0/ffn1"].parts[0].size == 576
  conv = {m.path for m in spaces["blocks_0/conv"].parts[0].members}
  assert "batch_stats/encoder/blocks_0/conv/norm/var" in conv
  proj = [m for m in spaces["subsampling/conv_1"].parts[0].members if m.path.endswith("proj/kernel")]
  assert proj[0].inner == 19  # 80 mel bins -> 39 -> 19 after two stride-2 convs
  fixed = {(f.path, f.axes) for f in spec.fixed}
  assert ("params/ctc_head/kernel", (1,)) in fixed and ("params/ctc_head/bias", (0,)) in fixed


def test_absolute_transformer_keeps_the_residual_stream_fixed():
  spec = fusion.transformer_ctc_spec(_abstract_variables("transformer", "smoke"))
  fixed = {(f.path, f.axes): f.reason for f in spec.fixed}
  assert "absolute sinusoids" in fixed[("params/ctc_head/kernel", (0,))]
  assert "absolute sinusoids" in fixed[("params/encoder/blocks_0/mhsa/query/kernel", (0,))]


def test_an_uncovered_leaf_is_named():
  variables = _abstract_variables("conformer", "smoke")
  variables["params"]["encoder"]["blocks_1"]["adapter"] = {"kernel": jax.ShapeDtypeStruct((64, 8), jnp.float32)}
  with pytest.raises(ValueError, match="params/encoder/blocks_1/adapter/kernel"):
    fusion.conformer_ctc_spec(variables)


def test_a_missing_leaf_is_named():
  variables = _abstract_variables("conformer", "smoke")
  del variables["params"]["encoder"]["blocks_0"]["conv"]["depthwise"]
  with pytest.raises(ValueError, match="params/encoder/blocks_0/conv/depthwise/kernel is missing"):
    fusion.conformer_ctc_spec(variables)


def test_validate_names_a_partly_covered_leaf_and_a_size_mismatch():
  variables = _abstract_variables("transformer", "smoke", positions="relative")
  spec = fusion.transformer_ctc_spec(variables)
  flat = spec_lib.flatten(variables)
  dropped = fusion.Spec(spec.spaces, tuple(f for f in spec.fixed if f.path != "params/ctc_head/bias"))
  with pytest.raises(ValueError, match=r"leaf params/ctc_head/bias \(50,\) has axes \[0\] covered by no"):
    dropped.validate(flat)
  ffn = next(s for s in spec.spaces if s.name == "blocks_0/ffn")
  wrong = fusion.Space(ffn.name, (fusion.Part("units", 100, ffn.parts[0].members),))
  with pytest.raises(ValueError, match="space blocks_0/ffn/units needs 100"):
    fusion.Spec(tuple(wrong if s is ffn else s for s in spec.spaces), spec.fixed).validate(flat)


def test_validate_rejects_an_order_no_cost_can_read():
  flat = {"params/a/kernel": np.zeros((3, 4)), "params/b/kernel": np.zeros((4, 5))}
  first = fusion.Space("first", (fusion.Part("units", 4, (fusion.Member("params/a/kernel", (1,)),
                                                          fusion.Member("params/b/kernel", (0,)))),))
  second = fusion.Space("second", (fusion.Part("units", 5, (fusion.Member("params/b/kernel", (1,)),)),))
  fixed = (fusion.Fixed("params/a/kernel", (0,), "inputs"),)
  fusion.Spec((first, second), fixed).validate(flat)
  # second's only member reads b's input axis, which first moves: first must come before it.
  with pytest.raises(ValueError, match="space second/units has no member whose other axes are fixed"):
    fusion.Spec((second, first), fixed).validate(flat)
  twice = r"leaf params/a/kernel \(3, 4\) has axes \[\] covered by no .* axes \[0\] covered twice"
  with pytest.raises(ValueError, match=twice):
    fusion.Spec((first, second), fixed * 2).validate(flat)
