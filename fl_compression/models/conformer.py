"""Conformer encoder (Gulati et al. 2020) in Keras, with GroupNorm in the convolution module.

Convolutional 4x subsampling, then blocks of: half-step feed-forward, multi-head self-attention
with relative positional encoding (Transformer-XL style), convolution module (pointwise, GLU,
depthwise, GroupNorm instead of BatchNorm as federated training needs, swish, pointwise),
half-step feed-forward, layer norm. Layer names are stable (`block_03/ffn1/dense_in`, ...)
because pruning and compression select variables by them.

**Rematerialization** (`set_rematerialization`): a training step can keep only the input of
the subsampling and of each block for the backward pass and recompute the part's activations
there (`tf.recompute_grad`), trading one more forward pass of the encoder for activation
memory that no longer grows with the number of blocks. Recomputation must see the same
dropout masks as the forward pass, so a rematerializing encoder draws one seed per step
outside the recomputed parts and its dropout layers (`SeededDropout`) derive stateless masks
from it. Each mask is drawn only once the tensor it masks exists: a stateless mask depends on
nothing but its seed and shape, so TF would otherwise compute all of a step's masks up front,
merge the forward's with the recomputation's, and hold every block's masks from the forward
pass to the backward (on `conformer_l`, 4 utterances of 4 s: 566 against 283 MiB of step
tensors, `tff_programs/profile_step.py` found them). Off by default: inference, TFLite export
and the federated processes run the plain graph.
"""

import dataclasses
import math

import tensorflow as tf

from fl_compression.models import pruned_dense


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
  num_blocks: int = 4
  model_dim: int = 96
  num_heads: int = 4
  ffn_multiplier: int = 4
  conv_kernel_size: int = 15
  num_groups: int = 8
  dropout: float = 0.1
  num_mel_bins: int = 80
  subsampling_channels: int = 0  # 0: model_dim, as in the paper.
  # True: every block ends with a LayerNorm of the residual stream (Gulati et al.). False: the
  # stack is Pre-LN, one LayerNorm after the last block; deep stacks of the former barely
  # train their lower blocks (docs/layer_importance.md).
  block_output_norm: bool = True

  def __post_init__(self):
    if self.model_dim % self.num_heads:
      raise ValueError(f'model_dim {self.model_dim} is not a multiple of num_heads '
                       f'{self.num_heads}')
    if self.model_dim % self.num_groups:
      raise ValueError(f'model_dim {self.model_dim} is not a multiple of num_groups '
                       f'{self.num_groups}')


def with_defaults(encoder: dict) -> dict:
  """An encoder config dict with the fields it leaves out at their defaults: a config saved
  before a field existed describes the same model (unchanged if it is not a ConformerConfig)."""
  try:
    return dataclasses.asdict(ConformerConfig(**encoder))
  except (TypeError, ValueError):
    return dict(encoder)


def subsampled_length(length: tf.Tensor) -> tf.Tensor:
  """Frames after two 3x3 stride-2 'valid' convolutions."""
  length = (length - 3) // 2 + 1
  return (length - 3) // 2 + 1


def relative_positions(length: tf.Tensor, dim: int) -> tf.Tensor:
  """Sinusoidal encodings of relative distances length-1, ..., 0, ..., -(length-1)."""
  distances = tf.expand_dims(tf.cast(tf.range(length - 1, -length, -1), tf.float32), 1)
  inverse = tf.exp(tf.range(0, dim, 2, dtype=tf.float32) * (-math.log(10000.0) / dim))
  angles = distances * tf.expand_dims(inverse, 0)
  return tf.reshape(tf.stack([tf.sin(angles), tf.cos(angles)], axis=-1), [-1, dim])


def relative_shift(scores: tf.Tensor) -> tf.Tensor:
  """[B, H, T, 2T-1] scores by relative distance -> [B, H, T, T] scores by key position.

  Entry (i, j) of the result is entry (i, T-1-(i-j)) of the input, the score of distance i-j.
  Written with `tf.slice` (gradient: a pad) rather than strided slicing, whose gradient has
  no TFLite builtin.
  """
  batch, heads, length = tf.shape(scores)[0], tf.shape(scores)[1], tf.shape(scores)[2]
  padded = tf.pad(scores, [[0, 0], [0, 0], [0, 0], [1, 0]])
  padded = tf.reshape(padded, [batch, heads, 2 * length, length])
  shifted = tf.reshape(tf.slice(padded, [0, 0, 1, 0], [-1, -1, -1, -1]),
                       [batch, heads, length, 2 * length - 1])
  return tf.slice(shifted, [0, 0, 0, 0], [-1, -1, -1, length])


def fold_seed(seed, index: int):
  """A distinct stateless seed ([2] int32) for part `index` of whatever `seed` seeds; None
  passes through (stateful dropout)."""
  if seed is None:
    return None
  return tf.random.experimental.stateless_fold_in(seed, index)


class SeededDropout(tf.keras.layers.Dropout):
  """Keras dropout, or with a `seed` ([2] int32) a stateless mask drawn from it: the same seed
  gives the same mask, which a rematerialized (recomputed) forward pass needs."""

  def call(self, inputs, training=None, seed=None):
    if seed is None or not training or self.rate == 0:
      return super().call(inputs, training=training)
    # The mask depends only on the seed and (usually static) shape: without the control
    # dependency TF computes every mask of the step up front and merges the forward's and the
    # recomputation's identical masks, holding them all from the forward pass to the backward.
    with tf.control_dependencies([inputs]):
      keep = tf.random.stateless_uniform(tf.shape(inputs), seed) >= self.rate
    return inputs * tf.cast(keep, inputs.dtype) / (1.0 - self.rate)


class RelativeMultiHeadAttention(tf.keras.layers.Layer):
  """Multi-head self-attention with relative positional encoding and learned u, v biases."""

  def __init__(self, model_dim: int, num_heads: int, dropout: float, pruning=None, **kwargs):
    super().__init__(**kwargs)
    self.model_dim, self.num_heads = model_dim, num_heads
    self.head_dim = model_dim // num_heads
    dense = lambda name, bias=True: pruned_dense.dense(  # noqa: E731
        name, model_dim, pruning, use_bias=bias)
    self.query, self.key, self.value = dense('query'), dense('key'), dense('value')
    self.position = dense('position', bias=False)
    self.output_dense = dense('output')
    self.dropout = SeededDropout(dropout)

  def build(self, input_shape):
    shape = (self.num_heads, self.head_dim)
    self.bias_u = self.add_weight('bias_u', shape, initializer='zeros')
    self.bias_v = self.add_weight('bias_v', shape, initializer='zeros')
    super().build(input_shape)

  def _heads(self, x):
    return tf.reshape(x, [tf.shape(x)[0], -1, self.num_heads, self.head_dim])

  def call(self, x, mask, training=None, seed=None):
    """x: [B, T, D]; mask: [B, T] (True for real frames); seed: see `SeededDropout`."""
    length = tf.shape(x)[1]
    q = self._heads(self.query(x))
    k = tf.transpose(self._heads(self.key(x)), [0, 2, 1, 3])
    v = tf.transpose(self._heads(self.value(x)), [0, 2, 1, 3])
    p = tf.reshape(self.position(relative_positions(length, self.model_dim)),
                   [-1, self.num_heads, self.head_dim])
    content = tf.einsum('bihd,bhjd->bhij', q + self.bias_u, k)
    position = relative_shift(tf.einsum('bihd,jhd->bhij', q + self.bias_v, p))
    scores = (content + position) / math.sqrt(self.head_dim)
    key_mask = tf.reshape(tf.cast(mask, scores.dtype), [tf.shape(mask)[0], 1, 1, -1])
    scores += (1.0 - key_mask) * -1e9
    weights = self.dropout(tf.nn.softmax(scores, axis=-1), training=training, seed=seed)
    context = tf.transpose(tf.einsum('bhij,bhjd->bhid', weights, v), [0, 2, 1, 3])
    return self.output_dense(tf.reshape(context, [tf.shape(x)[0], -1, self.model_dim]))


class LayerNorm(tf.keras.layers.Layer):
  """Layer normalization over the last axis, as `tf.keras.layers.LayerNormalization` computes it
  (same `gamma`/`beta` weights, epsilon 1e-3), written with mean and rsqrt: Keras's layer runs
  fused batch normalization, whose training graph needs TensorFlow kernels on a phone (Flex ops)
  where these ops are TFLite builtins."""

  def __init__(self, epsilon: float = 1e-3, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = epsilon

  def build(self, input_shape):
    channels = input_shape[-1]
    self.gamma = self.add_weight('gamma', (channels,), initializer='ones')
    self.beta = self.add_weight('beta', (channels,), initializer='zeros')
    super().build(input_shape)

  def call(self, x):
    mean = tf.reduce_mean(x, axis=-1, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axis=-1, keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta


def _relu(x):
  """ReLU as a maximum: the same values, and a gradient of TFLite builtins (ReluGrad is not)."""
  return tf.maximum(x, 0.0)


class MaskedGroupNorm(tf.keras.layers.Layer):
  """Group normalization over the real (unpadded) frames of [B, T, C] inputs.

  Statistics per example and group of channels, like `GroupNormalization`, but padded frames
  are left out, so an utterance is normalized the same however long its batch's padding is.
  """

  def __init__(self, num_groups: int, epsilon: float = 1e-5, **kwargs):
    super().__init__(**kwargs)
    self.num_groups, self.epsilon = num_groups, epsilon

  def build(self, input_shape):
    channels = input_shape[-1]
    self.gamma = self.add_weight('gamma', (channels,), initializer='ones')
    self.beta = self.add_weight('beta', (channels,), initializer='zeros')
    super().build(input_shape)

  def call(self, x, frame_mask):
    """x: [B, T, C]; frame_mask: [B, T, 1] float, 1 for real frames."""
    batch, length, channels = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
    grouped = tf.reshape(x, [batch, length, self.num_groups, channels // self.num_groups])
    mask = tf.expand_dims(frame_mask, 3)
    count = tf.reduce_sum(mask, axis=[1, 3], keepdims=True) * (channels // self.num_groups)
    count = tf.maximum(count, 1.0)
    mean = tf.reduce_sum(grouped * mask, axis=[1, 3], keepdims=True) / count
    variance = tf.reduce_sum(tf.square(grouped - mean) * mask, axis=[1, 3], keepdims=True) / count
    normalized = tf.reshape((grouped - mean) * tf.math.rsqrt(variance + self.epsilon),
                            [batch, length, channels])
    return normalized * self.gamma + self.beta


def encoder_plan(model_config: dict):
  """The encoder's part of a model config's pruning plan (`config['pruning']`), if any."""
  return _sub_plan(model_config.get('pruning'), 'encoder')


def _sub_plan(pruning, prefix: str):
  """The entries of a pruning plan under `prefix/`, keyed by the rest of their path."""
  return {name[len(prefix) + 1:]: entry for name, entry in (pruning or {}).items()
          if name.startswith(prefix + '/')}


class ConformerBlock(tf.keras.layers.Layer):
  """One Conformer block; `mask` zeroes padded frames before the depthwise convolution.

  `pruning` (a plan keyed by 'ffn1/dense_in', 'mhsa/query', ...) swaps those dense layers for
  `PrunedDense` layers of the reduced client model.
  """

  def __init__(self, config: ConformerConfig, pruning=None, **kwargs):
    super().__init__(**kwargs)
    d, c = config.model_dim, config
    self.config = config

    def ffn(name):
      return [LayerNorm(name=f'{name}/norm'),
              pruned_dense.dense(f'{name}/dense_in', d * c.ffn_multiplier, pruning,
                                 activation='swish'),
              SeededDropout(c.dropout),
              pruned_dense.dense(f'{name}/dense_out', d, pruning),
              SeededDropout(c.dropout)]

    self.ffn1, self.ffn2 = ffn('ffn1'), ffn('ffn2')
    self.attention_norm = LayerNorm(name='mhsa/norm')
    self.attention = RelativeMultiHeadAttention(d, c.num_heads, c.dropout,
                                                pruning=_sub_plan(pruning, 'mhsa'), name='mhsa')
    self.attention_dropout = SeededDropout(c.dropout)
    self.conv_norm = LayerNorm(name='conv/norm')
    self.pointwise_in = pruned_dense.dense('conv/pointwise_in', 2 * d, pruning, wrap=False)
    self.depthwise = tf.keras.layers.DepthwiseConv1D(
        c.conv_kernel_size, padding='same', name='conv/depthwise')
    self.group_norm = MaskedGroupNorm(c.num_groups, name='conv/group_norm')
    self.pointwise_out = pruned_dense.dense('conv/pointwise_out', d, pruning, wrap=False)
    self.conv_dropout = SeededDropout(c.dropout)
    self.final_norm = LayerNorm(name='final_norm') if c.block_output_norm else None

  @staticmethod
  def _run(layers, x, training, seed):
    for i, layer in enumerate(layers):
      x = (layer(x, training=training, seed=fold_seed(seed, i))
           if isinstance(layer, SeededDropout) else layer(x))
    return x

  def call(self, x, mask, training=None, seed=None):
    """`seed` ([2] int32): stateless dropout masks derived from it (see `SeededDropout`)."""
    frame_mask = tf.expand_dims(tf.cast(mask, x.dtype), 2)
    x = x + 0.5 * self._run(self.ffn1, x, training, fold_seed(seed, 0))
    x = x + self.attention_dropout(
        self.attention(self.attention_norm(x), mask, training=training,
                       seed=fold_seed(seed, 1)),
        training=training, seed=fold_seed(seed, 2))
    y = self.pointwise_in(self.conv_norm(x))
    values, gates = tf.split(y, 2, axis=-1)
    y = values * tf.sigmoid(gates)  # GLU
    y = self.depthwise(y * frame_mask)
    y = tf.nn.swish(self.group_norm(y, frame_mask))
    x = x + self.conv_dropout(self.pointwise_out(y), training=training,
                              seed=fold_seed(seed, 3))
    x = x + 0.5 * self._run(self.ffn2, x, training, fold_seed(seed, 4))
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x * frame_mask


class ConformerEncoder(tf.keras.layers.Layer):
  """features [B, T, mel] and lengths [B] -> encodings [B, T/4, D] and their lengths."""

  def __init__(self, config: ConformerConfig, pruning=None, **kwargs):
    super().__init__(**kwargs)
    channels = config.subsampling_channels or config.model_dim
    self.config = config
    self.conv1 = tf.keras.layers.Conv2D(channels, 3, 2, activation=_relu,
                                        name='subsampling/conv1')
    self.conv2 = tf.keras.layers.Conv2D(channels, 3, 2, activation=_relu,
                                        name='subsampling/conv2')
    self.project = pruned_dense.dense('subsampling/project', config.model_dim, pruning,
                                      wrap=False)
    self.dropout = SeededDropout(config.dropout)
    self.rematerialize = False
    self.dropout_seed = None
    self.blocks = [ConformerBlock(config, pruning=_sub_plan(pruning, f'block_{i:02d}'),
                                  name=f'block_{i:02d}')
                   for i in range(config.num_blocks)]
    self.output_norm = (None if config.block_output_norm else
                        LayerNorm(name='output_norm'))

  def configure_training(self, rematerialize: bool, dropout_seed=None) -> None:
    """Rematerialize the subsampling and each block in training steps (see the module
    docstring); `dropout_seed` ([2] ints) fixes the per-step dropout seed (tests compare a
    rematerialized step with a plain one under the same masks), None draws one per step."""
    self.rematerialize = bool(rematerialize)
    self.dropout_seed = None if dropout_seed is None else tuple(int(s) for s in dropout_seed)

  def _step_seed(self, training):
    if not training or not (self.rematerialize or self.dropout_seed is not None):
      return None
    if self.dropout_seed is not None:
      return tf.constant(self.dropout_seed, tf.int32)
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)

  def _subsample(self, features, training, seed):
    x = self.conv2(self.conv1(tf.expand_dims(features, 3)))
    x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], x.shape[2] * x.shape[3]])
    return self.dropout(self.project(x), training=training, seed=seed)

  def call(self, features, lengths, training=None):
    seed = self._step_seed(training)
    remat = bool(training) and self.rematerialize
    # Without a seed the parts' dropout is stateful, which recomputation could not repeat.
    part = tf.recompute_grad if remat else (lambda f: f)
    x = part(lambda f: self._subsample(f, training, fold_seed(seed, 0)))(features)
    out_lengths = subsampled_length(lengths)
    mask = tf.sequence_mask(out_lengths, tf.shape(x)[1])
    for i, block in enumerate(self.blocks):
      x = part(lambda h, block=block, i=i: block(h, mask, training=training,
                                                  seed=fold_seed(seed, i + 1)))(x)
    if self.output_norm is not None:
      x = self.output_norm(x) * tf.expand_dims(tf.cast(mask, x.dtype), 2)
    return x, out_lengths


def set_rematerialization(model: tf.keras.Model, enabled: bool, dropout_seed=None) -> int:
  """`ConformerEncoder.configure_training` on every Conformer encoder of `model` (built);
  returns how many there are (0: nothing to rematerialize)."""
  encoders = [m for m in model.submodules if isinstance(m, ConformerEncoder)]
  for encoder in encoders:
    encoder.configure_training(enabled, dropout_seed)
  return len(encoders)
