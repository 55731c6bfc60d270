"""Decompress-on-use layers and step against float32 Keras references."""

import numpy as np
import tensorflow as tf

from fl_compression.compression import aqt
from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.compression import on_the_fly
from fl_compression.models import asr
from fl_compression.models import conformer
from fl_compression.models import registry

LR = 0.05


def _config(name='tiny'):
  config = asr.named_config(name)
  # Two small blocks and no dropout: deterministic steps that trace quickly.
  config['encoder'].update(num_blocks=2, model_dim=32, num_heads=2, conv_kernel_size=5,
                           num_groups=4, dropout=0.0)
  return config


def _batch(seed=0, batch=2, frames=60, labels=6):
  return dict(
      features=tf.random.stateless_normal([batch, frames, 80], seed=[seed, 1]),
      feature_length=tf.constant([frames, frames - 13]),
      labels=tf.random.stateless_uniform([batch, labels], seed=[seed, 2], minval=1, maxval=29,
                                         dtype=tf.int32),
      label_length=tf.constant([labels, labels - 2]))


def _loss(model, batch):
  return tf.reduce_mean(asr.per_example_loss(model, batch, training=True))


def _kernel_name(layer):
  return layer.update_anchor.name.replace('update_anchor', 'kernel')


def _float_twin(model, config=None):
  """The plain Keras model with `model`'s decoded kernels and its other variables."""
  twin = registry.build_keras_model(config or _config())
  values = {v.name: v for v in model.variables}
  values.update({_kernel_name(layer): layer.kernel()
                 for layer in on_the_fly.compressed_layers(model)})
  for v in twin.variables:
    v.assign(values[v.name])
  return twin


def _kernels(model):
  return {_kernel_name(layer): layer.kernel().numpy()
          for layer in on_the_fly.compressed_layers(model)}


class CompressedDenseTest(tf.test.TestCase):

  def _layer_step(self, codec, bits):
    layer = on_the_fly.CompressedDense(5, codec, LR, activation_bits=bits, name='layer')
    x = tf.random.stateless_normal([3, 4, 7], seed=[1, 2])
    r = tf.random.stateless_normal([3, 4, 5], seed=[3, 4])
    layer.build(x.shape)
    layer.bias.assign(tf.range(5, dtype=tf.float32) / 10)
    w0 = layer.kernel()
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * r)
    dx, danchor = tape.gradient(loss, [x, layer.update_anchor])
    used = aqt.dequantize(aqt.quantize(x, bits, per_channel=False)) if bits else x
    dw = tf.einsum('bti,bto->io', used, r)
    return layer, w0, y, dx, danchor, used, r, dw

  def test_omc_layer_forward_backward_and_fused_update(self):
    codec = codecs.OmcCodec(ff.parse('S1E4M6'))
    layer, w0, y, dx, danchor, x, r, dw = self._layer_step(codec, 0)
    self.assertEqual(layer.stored['words'].dtype, tf.uint32)
    self.assertEmpty([v for v in layer.trainable_variables if v.shape.rank >= 2])
    self.assertAllClose(y, tf.tensordot(x, w0, 1) + layer.bias, atol=1e-5)
    self.assertAllClose(dx, tf.tensordot(r, tf.transpose(w0), 1), atol=1e-5)
    self.assertEqual(float(danchor), 0.0)
    expected = codec.roundtrip(w0 - LR * dw)
    self.assertAllClose(layer.kernel(), expected, atol=1e-6)
    self.assertGreater(float(tf.reduce_max(tf.abs(layer.kernel() - w0))), 1e-3)

  def test_aqt_layer_quantizes_inputs_and_keeps_weights_int8(self):
    codec = codecs.AqtCodec(8)
    layer, w0, y, dx, _, used, r, dw = self._layer_step(codec, 8)
    x = tf.random.stateless_normal([3, 4, 7], seed=[1, 2])
    self.assertNotAllClose(used, x)  # The input really is quantized...
    self.assertAllClose(y, tf.tensordot(used, w0, 1) + layer.bias, atol=1e-5)
    # ... and its gradient is straight-through.
    self.assertAllClose(dx, tf.tensordot(r, tf.transpose(w0), 1), atol=1e-5)
    self.assertAllClose(layer.kernel(), codec.roundtrip(w0 - LR * dw), atol=1e-6)
    scales = layer.stored['scales'].numpy()
    codes = layer.kernel().numpy() / scales
    self.assertAllClose(codes, np.round(codes), atol=1e-3)  # On the int8 grid.
    self.assertLessEqual(np.abs(np.round(codes)).max(), 127)

  def test_bad_activation_bits(self):
    with self.assertRaisesRegex(ValueError, 'layer: 3-bit activations are outside 4..8'):
      on_the_fly.CompressedDense(5, codecs.AqtCodec(8), LR, activation_bits=3, name='layer')


class ModelStepTest(tf.test.TestCase):

  def test_forward_equals_the_float_model_with_decoded_kernels(self):
    model = on_the_fly.build_model(_config(), codecs.OmcCodec(ff.parse('S1E4M6')), LR)
    twin = _float_twin(model)
    batch = _batch()
    self.assertAllClose(_loss(model, batch), _loss(twin, batch), rtol=1e-5)

  def _check_lossless_step(self, config):
    """The S1E8M23 (lossless) step equals Keras' SGD step on the float twin; returns the
    twin's gradients."""
    model = on_the_fly.build_model(config, codecs.OmcCodec(ff.parse('S1E8M23')), LR)
    twin = _float_twin(model, config)
    batch = _batch()
    loss = on_the_fly.sgd_step(model, _loss, LR)(batch)
    optimizer = tf.keras.optimizers.SGD(LR)
    with tf.GradientTape() as tape:
      twin_loss = _loss(twin, batch)
    grads = tape.gradient(twin_loss, twin.trainable_variables)
    optimizer.apply_gradients(zip(grads, twin.trainable_variables))
    self.assertAllClose(loss, twin_loss, rtol=1e-6)
    twin_values = {v.name: v.numpy() for v in twin.variables}
    kernels = _kernels(model)
    for name, value in kernels.items():
      self.assertAllClose(value, twin_values[name], atol=2e-6, msg=name)
    compared = 0
    for v in model.variables:
      if v.name in twin_values:
        self.assertAllClose(v, twin_values[v.name], atol=2e-6, msg=v.name)
        compared += 1
    self.assertGreater(compared, len(kernels))  # Biases, norms and the rest too.
    return kernels, grads

  def test_lossless_step_equals_the_float_sgd_step(self):
    kernels, _ = self._check_lossless_step(_config())
    self.assertLen(kernels, 2 * 11 + 2)  # 11 dense layers per block, projection and head.

  def test_lossless_transducer_step_applies_sparse_gradients(self):
    # The transducer's prediction network embeds the previous labels: its gradient is
    # `tf.IndexedSlices`, which the step applies with `scatter_sub`.
    _, grads = self._check_lossless_step(_config('tiny_transducer'))
    self.assertTrue(any(isinstance(g, tf.IndexedSlices) for g in grads))

  def test_lossy_step_recompresses_the_sgd_step(self):
    codec = codecs.OmcCodec(ff.parse('S1E4M6'))
    model = on_the_fly.build_model(_config(), codec, LR)
    before = _kernels(model)
    twin = _float_twin(model)
    batch = _batch(seed=1)
    on_the_fly.sgd_step(model, _loss, LR)(batch)
    with tf.GradientTape() as tape:
      loss = _loss(twin, batch)
    names = [v.name for v in twin.trainable_variables]
    grads = dict(zip(names, tape.gradient(loss, twin.trainable_variables)))
    values = _kernels(model)
    for layer in on_the_fly.compressed_layers(model):
      name = _kernel_name(layer)
      stepped = before[name] - LR * grads[name]
      reference = codec.encode(tf.constant(stepped))
      # The codes: equal up to values the float gradient's last bits put on the other side
      # of a rounding boundary (one format step apart).
      bits = codec.fmt.bits
      codes = ff.unpack(layer.stored['words'], bits, layer.kernel_shape).numpy()
      reference_codes = ff.unpack(reference['words'], bits, layer.kernel_shape).numpy()
      self.assertGreater(np.mean(codes == reference_codes), 0.99, msg=name)
      # The transform: a float32 least-squares fit over the whole kernel, equal to the
      # reference's up to the summation order (the layer's encoder is XLA-compiled): the
      # offset's float32 sums over ~1e4 values carry errors of about 1e-6 of the kernel's
      # largest value, which also bounds how far the decoded values may differ.
      scale_tolerance = 1e-5 * np.abs(stepped).max()
      self.assertAllClose(layer.stored['scale'].numpy(), reference['scale'].numpy(), rtol=1e-5)
      self.assertAllClose(layer.stored['offset'].numpy(), reference['offset'].numpy(),
                          atol=scale_tolerance)
      expected = codec.roundtrip(stepped).numpy()
      same = np.isclose(values[name], expected, rtol=1e-5, atol=scale_tolerance)
      self.assertGreater(same.mean(), 0.99, msg=name)
      self.assertLess(np.abs(values[name] - expected).max(),
                      2 ** -6 * np.abs(expected).max() + 1e-6, msg=name)
      self.assertGreater(np.abs(values[name] - before[name]).max(), 0, msg=name)

  def test_rematerialized_step_equals_the_plain_step(self):
    # Recomputing each block in the backward pass decodes its kernels once more, and the fused
    # update must still run once per layer on the same gradient: the FedAQT step (int8 codes,
    # quantized inputs) with dropout under one fixed seed lands on the same model either way.
    config = _config()
    config['encoder'].update(dropout=0.2)
    codec = codecs.AqtCodec(8)
    model = on_the_fly.build_model(config, codec, LR, activation_bits=8)
    start = [v.numpy() for v in model.variables]
    batch = _batch(seed=3)
    ends = []
    for remat in (False, True):
      for v, value in zip(model.variables, start):
        v.assign(value)
      self.assertEqual(conformer.set_rematerialization(model, remat, dropout_seed=(5, 6)), 1)
      loss = on_the_fly.sgd_step(model, _loss, LR)(batch)
      ends.append((float(loss), [v.numpy() for v in model.variables]))
    (plain_loss, plain), (remat_loss, remat) = ends
    self.assertAllClose(remat_loss, plain_loss, rtol=1e-5)
    changed = 0
    for v, before, a, b in zip(model.variables, start, plain, remat):
      if v.dtype == tf.uint32:  # Packed codes: a gradient's last bits may flip a rounding.
        self.assertGreater(np.mean(a == b), 0.99, msg=v.name)
      else:
        self.assertAllClose(a, b, rtol=1e-4, atol=1e-6, msg=v.name)
      changed += int(not np.array_equal(a, before))
    self.assertGreater(changed, len(on_the_fly.compressed_layers(model)))

  def test_held_bytes_count_packed_kernels(self):
    fmt = ff.parse('S1E4M6')
    model = on_the_fly.build_model(_config(), codecs.OmcCodec(fmt), LR)
    dense = registry.build_keras_model(_config())
    float_bytes = sum(v.numpy().nbytes for v in dense.variables)
    kernels = [layer.kernel_shape for layer in on_the_fly.compressed_layers(model)]
    expected = (float_bytes - sum(4 * a * b for a, b in kernels) +
                sum(4 * ff.packed_words(a * b, 11) + 8 for a, b in kernels))
    self.assertEqual(on_the_fly.held_parameter_bytes(model), expected)
    self.assertEqual(on_the_fly.parameter_count(model), dense.count_params())
    self.assertLess(expected / float_bytes, 0.45)

  def test_bad_input(self):
    config = dict(_config(), pruning={'encoder': {}})
    with self.assertRaisesRegex(ValueError, 'pruning plan'):
      on_the_fly.build_model(config, codecs.AqtCodec(8), LR)
    model = on_the_fly.build_model(_config(), codecs.AqtCodec(8), LR)
    with self.assertRaisesRegex(ValueError, 'built with learning rate 0.05, the step uses 0.1'):
      on_the_fly.sgd_step(model, _loss, 0.1)


if __name__ == '__main__':
  tf.test.main()
