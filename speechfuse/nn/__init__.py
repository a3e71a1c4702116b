"""Layers: relative-position attention and its masks, subsampling, Conformer and Transformer encoders.

Conventions (every module here follows them):
- Shapes: features [batch, time, mel], lengths [batch], hidden x [batch, time, embed]; masks are boolean and
  True where a frame is valid / attention is allowed (padding [batch, time], attention [batch, time, time]).
  Frames past a length may hold anything inside the encoders; encoder outputs zero them.
- Precision: parameters in `param_dtype` (float32); compute in `dtype` (None keeps the input's); softmax and
  normalisation statistics in float32.
- `train=True` enables dropout (RNG stream "dropout", which also draws dynamic chunk sizes) and BatchNorm batch
  statistics (apply with mutable=["batch_stats"]).

Logical axis names (parameters via nn.with_logical_partitioning, activations via nn.with_logical_constraint;
speechfuse.parallel maps them to mesh axes):
  batch          utterances in a batch
  time           frames
  embed          the residual stream (d_model)
  mlp            feed-forward hidden units
  heads          attention heads
  kv             features within a head (head_dim)
  conv_channels  channels of convolutions (conv module, subsampling)
  mel            feature bins (front end)
  vocab          output tokens (heads in speechfuse.models)
Axes that are never sharded (kernel taps, the GLU's value/gate axis, flattened subsampling features) are None.

Parameter tree of ConformerEncoder (fusion specs address these names; shapes with d = d_model, f = ffn_dim,
h = heads, k = head_dim, K = conv kernel, C = subsampling channels, F = mel bins after subsampling):
  subsampling/conv_{i}/{kernel [3, 3, in, C], bias [C]}, subsampling/proj/{kernel [C * F, d], bias [d]}
  blocks_{i}/norm_{ffn1, mhsa, conv, ffn2, out}/{scale, bias} [d]
  blocks_{i}/ffn{1,2}/dense_in/{kernel [d, f], bias [f]}, .../dense_out/{kernel [f, d], bias [d]}
  blocks_{i}/mhsa/{query, key, value}/{kernel [d, h, k], bias [h, k]}, mhsa/out/{kernel [h, k, d], bias [d]},
    mhsa/pos/kernel [d, h, k], mhsa/pos_bias_u [h, k], mhsa/pos_bias_v [h, k]
  blocks_{i}/conv/pointwise_in/{kernel [d, 2, d], bias [2, d]}  (axis -2: 0 = GLU value, 1 = gate)
  blocks_{i}/conv/depthwise/{kernel [K, d], bias [d]}, conv/norm/{scale, bias} [d] (+ batch_stats mean, var),
    conv/pointwise_out/{kernel [d, d], bias [d]}
TransformerEncoder: the same subsampling, blocks_{i}/{norm_mhsa, mhsa, norm_ffn, ffn/{dense_in, dense_out}}
(mhsa without pos/pos_bias_* for absolute positions) and norm_out for pre-LN.
"""

from speechfuse.nn.attention import (
    MultiHeadSelfAttention,
    attention_mask,
    make_chunk_mask,
    padding_mask,
    rel_shift,
    relative_sinusoids,
    sample_chunk,
)
from speechfuse.nn.conformer import ConformerBlock, ConformerEncoder, ConvModule, DepthwiseConv1d
from speechfuse.nn.layers import FeedForward, sinusoids
from speechfuse.nn.masking import MaskEmbedding, compute_mask
from speechfuse.nn.quantizer import GumbelVectorQuantizer, gumbel_temperature
from speechfuse.nn.relative_bias import PositionBiasGate, RelativePositionBias
from speechfuse.nn.sizes import SIZES, count_params, encoder_size
from speechfuse.nn.subsampling import Conv1dSubsampling, Conv2dSubsampling, conv_output_length, subsampled_length
from speechfuse.nn.transformer import TransformerBlock, TransformerEncoder
from speechfuse.nn.wav2vec2 import Wav2Vec2Encoder, Wav2Vec2Output, frame_lengths, wav2vec2_size
from speechfuse.nn.zipformer import ZipformerEncoder
