"""speechfuse-convert against transformers: small random wav2vec 2.0 (base and large layouts), HuBERT and WavLM
models saved locally, converted, and run on a padded batch of two lengths; every hidden state is compared with
transformers' own. Also the fairseq layout, the way back (to-hf), and the one-line errors."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the `convert` extra, part of `dev`
import transformers

from speechfuse import convert, models, train as train_lib
from speechfuse.convert import command

_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, hidden_dropout=0.0,
              attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
VARIANTS = {
    "wav2vec2_base": (transformers.Wav2Vec2Config, dict(feat_extract_norm="group", do_stable_layer_norm=False)),
    "wav2vec2_large": (transformers.Wav2Vec2Config, dict(feat_extract_norm="layer", do_stable_layer_norm=True,
                                                         conv_bias=True)),
    "hubert": (transformers.HubertConfig, dict(feat_extract_norm="group", do_stable_layer_norm=False)),
    "wavlm": (transformers.WavLMConfig, dict(feat_extract_norm="group", do_stable_layer_norm=False)),
}
# 2 s and 1.5 s: 99 and 74 frames, so WavLM's relative positions reach its logarithmic buckets (|r| >= 80).
LENGTHS = (32000, 24000)


def _hf_model(variant: str, seed: int = 0):
  """A transformers base model of `variant` whose every parameter is perturbed away from its initialisation (unit
  LayerNorms, zero biases and WavLM's unit gate constants would hide a misplaced tensor)."""
  config_class, extra = VARIANTS[variant]
  torch.manual_seed(seed)
  model = transformers.AutoModel.from_config(config_class(**_SMALL, **extra)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(0.2 * torch.randn_like(p) * (p.abs().mean() if "weight_g" in name or "original0" in name else 1.0))
  return model


def _waveforms() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(1)
  batch = np.zeros((2, max(LENGTHS)), np.float32)
  for i, n in enumerate(LENGTHS):
    batch[i, :n] = rng.normal(0, 0.3, n)
  return batch, np.array(LENGTHS)


def _hf_hidden(model, waveform: np.ndarray, lengths: np.ndarray, *, padded: bool) -> list[list[np.ndarray]]:
  """hidden_states + last_hidden_state of transformers per utterance, valid frames only: from the padded batch
  with its attention mask, or each utterance alone."""
  frames = [int(model._get_feat_extract_output_lengths(int(n))) for n in lengths]
  with torch.no_grad():
    if padded:
      mask = torch.from_numpy((np.arange(waveform.shape[1])[None] < lengths[:, None]).astype(np.int64))
      out = model(torch.from_numpy(waveform), attention_mask=mask, output_hidden_states=True)
      states = [h.numpy() for h in (*out.hidden_states, out.last_hidden_state)]
      return [[h[i, :frames[i]] for h in states] for i in range(len(lengths))]
    rows = []
    for i, n in enumerate(lengths):
      out = model(torch.from_numpy(waveform[i:i + 1, :n]), output_hidden_states=True)
      rows.append([h.numpy()[0] for h in (*out.hidden_states, out.last_hidden_state)])
    return rows


def _our_hidden(path, waveform: np.ndarray, lengths: np.ndarray) -> list[list[np.ndarray]]:
  module, variables, _ = convert.load_pretrained(path)
  out = jax.jit(module.apply)(variables, jnp.asarray(waveform), jnp.asarray(lengths))
  states = [np.asarray(h) for h in (*out.hidden, out.x)]
  return [[h[i, :int(out.lengths[i])] for h in states] for i in range(len(lengths))]


def _assert_hidden_close(ours, theirs):
  for utterance, (row_ours, row_theirs) in enumerate(zip(ours, theirs)):
    assert len(row_ours) == len(row_theirs)
    for layer, (a, b) in enumerate(zip(row_ours, row_theirs)):
      assert a.shape == b.shape, (utterance, layer)
      np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=f"utterance {utterance}, hidden state {layer}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_hidden_state_matches_transformers_on_a_padded_batch(variant, tmp_path, capsys):
  model = _hf_model(variant)
  model.save_pretrained(tmp_path / "hf")
  waveform, lengths = _waveforms()

  # Default: a padded utterance encodes as it does alone (transformers' own output for it alone).
  command.main(["hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")])
  assert "--config.task.init_from=" in capsys.readouterr().out
  _assert_hidden_close(_our_hidden(tmp_path / "ours", waveform, lengths),
                       _hf_hidden(model, waveform, lengths, padded=False))
  # --group-norm-over-padding: transformers' padded batch itself (for layer-norm models the two agree).
  command.main(["hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours_padded"), "--group-norm-over-padding"])
  _assert_hidden_close(_our_hidden(tmp_path / "ours_padded", waveform, lengths),
                       _hf_hidden(model, waveform, lengths, padded=True))


@pytest.mark.parametrize("variant", ["wav2vec2_large", "hubert", "wavlm"])
def test_round_trip_ours_to_hf_to_transformers(variant, tmp_path):
  model = _hf_model(variant, seed=3)
  model.save_pretrained(tmp_path / "hf")
  convert.convert_hf(tmp_path / "hf", tmp_path / "ours")
  command.main(["to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")])
  reloaded = transformers.AutoModel.from_pretrained(tmp_path / "back").eval()
  assert type(reloaded) is type(model)
  waveform, lengths = _waveforms()
  _assert_hidden_close(_our_hidden(tmp_path / "ours", waveform, lengths),
                       _hf_hidden(reloaded, waveform, lengths, padded=False))
  state, back = model.state_dict(), reloaded.state_dict()
  assert set(state) == set(back)
  for key in state:
    np.testing.assert_allclose(back[key].numpy(), state[key].numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


# fairseq's names for the transformers ones, transcribed from fairseq's HubertModel / Wav2Vec2Model (its
# ConvFeatureExtractionModel's Sequential indices: 0 conv, 2 GroupNorm in "default" mode, 2.1 LayerNorm in
# "layer_norm" mode) independently of speechfuse.convert.layout.
def _fairseq_key(hf_key: str) -> str:
  parts = hf_key.split(".")
  if parts[0] == "feature_extractor":
    layer = parts[2]
    if parts[3] == "conv":
      return f"feature_extractor.conv_layers.{layer}.0.{parts[4]}"
    return f"feature_extractor.conv_layers.{layer}.2.{parts[4]}"  # GroupNorm of layer 0 (base layout)
  if parts[0] == "feature_projection":
    return {"layer_norm": "layer_norm", "projection": "post_extract_proj"}[parts[1]] + f".{parts[2]}"
  if hf_key == "masked_spec_embed":
    return "mask_emb"
  if parts[1] == "pos_conv_embed":
    return {"original0": "encoder.pos_conv.0.weight_g", "original1": "encoder.pos_conv.0.weight_v",
            "bias": "encoder.pos_conv.0.bias"}[parts[-1]]
  if parts[1] == "layer_norm":
    return hf_key
  layer, module = parts[2], parts[3]
  if module == "attention":
    return f"encoder.layers.{layer}.self_attn.{parts[4]}.{parts[5]}"
  if module == "feed_forward":
    return f"encoder.layers.{layer}." + {"intermediate_dense": "fc1", "output_dense": "fc2"}[parts[4]] + f".{parts[5]}"
  return f"encoder.layers.{layer}." + {"layer_norm": "self_attn_layer_norm",
                                       "final_layer_norm": "final_layer_norm"}[module] + f".{parts[4]}"


def _fairseq_checkpoint(model, name: str, old_style: bool) -> dict:
  state = {_fairseq_key(k): v.clone() for k, v in model.state_dict().items()}
  if name == "hubert":
    state["final_proj.weight"] = torch.randn(8, 32)
    state["final_proj.bias"] = torch.randn(8)
    state["label_embs_concat"] = torch.randn(5, 8)
  else:
    state["quantizer.vars"] = torch.randn(1, 640, 128)
    state["project_q.weight"] = torch.randn(8, 128)
  cfg = dict(_name=name, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
             activation_fn="gelu", extractor_mode="default", layer_norm_first=False, conv_bias=False,
             conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2", conv_pos=16, conv_pos_groups=2,
             final_dim=8)
  if old_style:
    return {"args": argparse.Namespace(arch=name, **{k: v for k, v in cfg.items() if k != "_name"}), "model": state}
  return {"cfg": {"model": cfg, "task": {"_name": "hubert_pretraining"}}, "model": state}


@pytest.mark.parametrize("name,old_style", [("hubert", False), ("wav2vec2", True)])
def test_fairseq_checkpoint_matches_transformers(name, old_style, tmp_path):
  model = _hf_model("hubert" if name == "hubert" else "wav2vec2_base", seed=5)
  checkpoint = _fairseq_checkpoint(model, name, old_style)
  torch.save(checkpoint, tmp_path / "model.pt")
  command.main(["fairseq", str(tmp_path / "model.pt"), "--out", str(tmp_path / "ours")])
  waveform, lengths = _waveforms()
  _assert_hidden_close(_our_hidden(tmp_path / "ours", waveform, lengths),
                       _hf_hidden(model, waveform, lengths, padded=False))
  params = train_lib.load_variables(tmp_path / "ours")["params"]
  if name == "hubert":  # the head lands where models.ssl's hubert head has it
    np.testing.assert_array_equal(params["final_proj"]["kernel"], checkpoint["model"]["final_proj.weight"].numpy().T)
    np.testing.assert_array_equal(params["label_embeddings"], checkpoint["model"]["label_embs_concat"].numpy())
  else:
    assert set(params) == {"encoder"}


def test_a_converted_encoder_loads_into_a_ctc_model(tmp_path):
  model = _hf_model("hubert")
  model.save_pretrained(tmp_path / "hf")
  convert.convert_hf(tmp_path / "hf", tmp_path / "ours")
  config = models.ctc.default_config("wav2vec2", "smoke")
  config.encoder = convert.encoder_config(tmp_path / "ours")
  config.spec_augment.enabled = False  # the wav2vec2 encoder reads the waveform
  ctc = models.get_model(config, dtype=jnp.float32, vocab_size=7, cmvn=None)
  waveform, lengths = _waveforms()
  variables = jax.eval_shape(lambda: ctc.init(jax.random.key(0), jnp.asarray(waveform * 32768, jnp.int16),
                                              jnp.asarray(lengths)))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
  merged, report = train_lib.merge_pretrained(variables, train_lib.load_variables(tmp_path / "ours"), ("encoder",))
  assert report["dropped"] == [] and all(name.split("/")[1] != "encoder" for name in report["initialised"])
  assert len(report["loaded"]) == len(jax.tree.leaves(variables["params"]["encoder"]))


def test_missing_unexpected_and_misshapen_tensors_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  model = _hf_model("wav2vec2_base")
  model.save_pretrained(tmp_path / "hf")
  weights = tmp_path / "hf" / "model.safetensors"
  state = load_file(weights)
  cases = {
      "missing": ({k: v for k, v in state.items() if k != "encoder.layers.1.final_layer_norm.weight"},
                  "encoder.layers.1.final_layer_norm.weight"),
      "unexpected": ({**state, "encoder.layers.2.layer_norm.weight": np.ones(32, np.float32)},
                     "encoder.layers.2.layer_norm.weight"),
      "shape": ({**state, "encoder.layers.0.attention.q_proj.bias": np.ones(30, np.float32)},
                "encoder.layers.0.attention.q_proj.bias"),
  }
  for case, (broken, name) in cases.items():
    save_file(broken, weights)
    with pytest.raises(SystemExit, match=name.replace(".", r"\.")) as error:
      command.main(["hf", str(tmp_path / "hf"), "--out", str(tmp_path / case)])
    assert "\n" not in str(error.value), case
    assert not (tmp_path / case).exists() and not list(tmp_path.glob(f".{case}*")), "nothing half-written"

  # The other direction: an encoder whose tensors do not fit the transformers model it exports as.
  save_file(state, weights)
  convert.convert_hf(tmp_path / "hf", tmp_path / "ours")
  params = train_lib.load_variables(tmp_path / "ours")["params"]["encoder"]
  params["blocks_1"]["ffn"]["dense_in"]["kernel"] = np.zeros((32, 60), np.float32)
  encoder = convert.encoder_config(tmp_path / "ours")
  with pytest.raises(ValueError, match="blocks_1/ffn/dense_in/kernel"):
    convert.hf.export(params, encoder, tmp_path / "back", "wav2vec2")
  with pytest.raises(ValueError, match="WavLM"):
    convert.hf.export(params, encoder, tmp_path / "back", "wavlm")
  assert not (tmp_path / "back").exists()
