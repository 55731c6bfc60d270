"""Sparse Weight Activation Training (SWAT; Raihan and Aamodt, NeurIPS 2020): the math of
ZeroFL's local training, pure TensorFlow with no TFF in it.

A SWAT dense layer multiplies its input by the kernel restricted to its top-k entries by
magnitude (the rest are zero in the computation). Its backward pass computes the input gradient
with the same sparse kernel and the kernel gradient from the input's top-k activations by
magnitude (`activation_density` < 1) or the whole input; the kernel gradient is dense, so an
optimizer step updates every entry and entries can enter and leave the top-k set between steps.

Top-k ties are broken by position: of equal magnitudes the lower flat index is kept
(`tf.math.top_k`'s order), so a mask is a deterministic function of the values.
"""

from typing import Optional

import numpy as np
import tensorflow as tf


def kept_count(size: int, density: float) -> int:
  """Entries kept of `size` at `density` (the fraction kept): rounded, at least 1."""
  if not 0.0 < density <= 1.0:
    raise ValueError(f'density must be in (0, 1], got {density}')
  return max(1, min(int(size), int(round(density * size))))


def top_k_indices(values: tf.Tensor, k) -> tf.Tensor:
  """Flat indices of the `k` entries of `values` of largest magnitude, ascending."""
  flat = tf.reshape(tf.abs(values), [-1])
  return tf.sort(tf.math.top_k(flat, k, sorted=False).indices)


def top_k_mask(values: tf.Tensor, density: float) -> tf.Tensor:
  """A float32 0/1 mask of `values`' shape keeping its top `kept_count(size, density)`
  entries by magnitude (static size)."""
  values = tf.convert_to_tensor(values)
  size = int(np.prod(values.shape.as_list(), dtype=np.int64))
  return mask_of(top_k_indices(values, kept_count(size, density)), values.shape)


def mask_of(indices: tf.Tensor, shape) -> tf.Tensor:
  """A float32 0/1 tensor of `shape` with ones at the flat `indices`."""
  size = int(np.prod(shape, dtype=np.int64))
  ones = tf.ones_like(indices, tf.float32)
  flat = tf.scatter_nd(tf.expand_dims(tf.cast(indices, tf.int64), 1), ones, [size])
  return tf.reshape(flat, shape)


def _top_k_activations(x: tf.Tensor, density: float) -> tf.Tensor:
  """`x` with all but its top `density` fraction of entries (by magnitude, over the whole
  tensor of the batch) set to zero; the size is dynamic."""
  flat = tf.reshape(x, [-1])
  size = tf.size(flat)
  k = tf.maximum(1, tf.cast(tf.round(density * tf.cast(size, tf.float32)), tf.int32))
  indices = tf.math.top_k(tf.abs(flat), k, sorted=False).indices
  kept = tf.scatter_nd(tf.expand_dims(indices, 1), tf.gather(flat, indices),
                       tf.expand_dims(size, 0))
  return tf.reshape(kept, tf.shape(x))


def swat_matmul(x: tf.Tensor, kernel: tf.Tensor, density: float,
                activation_density: Optional[float] = None) -> tf.Tensor:
  """`x @ (kernel * top_k_mask(kernel, density))` over `x`'s last axis, with SWAT's gradients:
  input gradient through the sparse kernel, dense kernel gradient from `x`'s top-k
  activations (`activation_density`; None or 1: all of `x`)."""
  in_dim, out_dim = kernel.shape

  @tf.custom_gradient
  def product(x, kernel):
    sparse_kernel = kernel * tf.stop_gradient(top_k_mask(kernel, density))
    y = tf.tensordot(x, sparse_kernel, 1)

    def grad(dy):
      dx = tf.tensordot(dy, tf.transpose(sparse_kernel), 1)
      used = x if activation_density in (None, 1.0) else _top_k_activations(
          x, activation_density)
      dkernel = tf.matmul(tf.reshape(used, [-1, in_dim]), tf.reshape(dy, [-1, out_dim]),
                          transpose_a=True)
      return dx, dkernel

    return y, grad

  return product(x, kernel)


class SwatDense(tf.keras.layers.Dense):
  """A `Dense` layer (same variables, same names) whose product is `swat_matmul`."""

  def __init__(self, units: int, density: float, activation_density: Optional[float] = None,
               **kwargs):
    kept_count(2, density)  # Checks the range.
    if activation_density is not None:
      kept_count(2, activation_density)
    super().__init__(units, **kwargs)
    self.density = density
    self.activation_density = activation_density

  def call(self, inputs):
    y = swat_matmul(tf.convert_to_tensor(inputs, self.compute_dtype), self.kernel,
                    self.density, self.activation_density)
    if self.use_bias:
      y = tf.nn.bias_add(y, self.bias)
    return self.activation(y) if self.activation is not None else y


def forward_flops(in_dim: int, out_dim: int, tokens: int, density: float) -> float:
  """Multiply-accumulates x2 of a SWAT layer's forward product over `tokens` input rows."""
  return 2.0 * tokens * kept_count(in_dim * out_dim, density)


def backward_flops(in_dim: int, out_dim: int, tokens: int, density: float,
                   activation_density: Optional[float]) -> float:
  """The same for its backward pass: the input gradient through the sparse kernel plus the
  kernel gradient from the kept activations."""
  kept_activations = (activation_density or 1.0) * tokens * in_dim
  return 2.0 * tokens * kept_count(in_dim * out_dim, density) + 2.0 * kept_activations * out_dim
