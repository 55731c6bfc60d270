"""A dense layer with whole rows or columns physically removed (federated pruning's client model).

The layer holds only the kept sub-kernels, one per piece of the pattern, plus int32 index
vectors (non-trainable weights) that say which input features each piece reads and which
output features it writes. Its output equals that of the full `Dense` whose kernel is zero
outside the kept rows/columns (bias whole), so the reduced model computes what the masked full
model computes, with fewer parameters and smaller matrix products. With `drop_units` (a
feed-forward `dense_in` under the column pattern) the removed columns are removed outputs: the
layer emits only the kept units (with their biases), and the next layer's kernel has only the
matching rows (`coupled_rows`).

Entry format (`fl_compression.pruning.plan`): {'pattern', 'input_dim', 'output_dim', 'kept',
optional 'drop_units', 'coupled_rows'}.
"""

import contextlib
from typing import Any, Callable

import tensorflow as tf


def _scatter_last(values: tf.Tensor, index: tf.Tensor, width: int) -> tf.Tensor:
  """values [..., k] placed at positions `index` of a zero tensor [..., width]."""
  k = tf.shape(index)[0]
  inverse = tf.tensor_scatter_nd_update(tf.fill([width], k), tf.expand_dims(index, 1),
                                        tf.range(k))
  # A zero column to gather for the removed positions; a pad, whose gradient is a slice (a
  # concat's needs TensorFlow kernels in TFLite).
  padded = tf.pad(values, [[0, 0]] * (values.shape.rank - 1) + [[0, 1]])
  return tf.gather(padded, inverse, axis=-1)


def piece_shapes(entry: dict[str, Any]) -> list[tuple[int, int]]:
  """Kernel shape of each piece of a plan entry."""
  kept, pattern = entry['kept'], entry['pattern']
  rows, cols = int(entry.get('coupled_rows', entry['input_dim'])), int(entry['output_dim'])
  if pattern == 'row':
    return [(kept[0], cols)]
  if pattern == 'column':
    return [(rows, kept[0])]
  if pattern == 'half_row':
    return [(kept[0], cols // 2), (kept[1], cols - cols // 2)]
  if pattern == 'half_column':
    return [(rows // 2, kept[0]), (rows - rows // 2, kept[1])]
  raise ValueError(f'unknown pruning pattern {pattern!r}')


class PrunedDense(tf.keras.layers.Layer):
  """Dense layer of a pruning plan entry (see the module docstring)."""

  def __init__(self, entry: dict[str, Any], activation=None, use_bias: bool = True, **kwargs):
    super().__init__(**kwargs)
    self.entry = dict(entry)
    self.pattern = entry['pattern']
    self.input_dim = int(entry.get('coupled_rows', entry['input_dim']))
    self.output_dim = int(entry['output_dim'])
    self.drop_units = bool(entry.get('drop_units', False))
    self.activation = tf.keras.activations.get(activation)
    self.use_bias = use_bias

  def piece_shapes(self) -> list[tuple[int, int]]:
    return piece_shapes(self.entry)

  def build(self, input_shape):
    if input_shape[-1] != self.input_dim:
      raise ValueError(f'{self.name}: input width {input_shape[-1]}, plan says {self.input_dim}')
    self.kernels = [self.add_weight(f'kernel_{p}', shape, initializer='glorot_uniform')
                    for p, shape in enumerate(self.piece_shapes())]
    index = lambda name, size: self.add_weight(  # noqa: E731
        name, (size,), dtype=tf.int32, initializer='zeros', trainable=False)
    if self.pattern in ('row', 'half_row'):
      self.row_index = [index(f'row_index_{p}', shape[0])
                        for p, shape in enumerate(self.piece_shapes())]
    elif not self.drop_units:
      self.col_index = [index(f'col_index_{p}', shape[1])
                        for p, shape in enumerate(self.piece_shapes())]
    out_width = self.entry['kept'][0] if self.drop_units else self.output_dim
    self.bias = self.add_weight('bias', (out_width,), initializer='zeros') if self.use_bias \
        else None
    super().build(input_shape)

  def call(self, x):
    product = lambda a, kernel: tf.tensordot(a, kernel, 1)  # noqa: E731
    if self.pattern == 'row':
      y = product(tf.gather(x, self.row_index[0], axis=-1), self.kernels[0])
    elif self.pattern == 'half_row':
      y = tf.concat([product(tf.gather(x, index, axis=-1), kernel)
                     for index, kernel in zip(self.row_index, self.kernels)], axis=-1)
    elif self.pattern == 'column':
      y = product(x, self.kernels[0])
      if not self.drop_units:
        y = _scatter_last(y, self.col_index[0], self.output_dim)
    else:  # half_column
      half = self.input_dim // 2
      parts = (x[..., :half], x[..., half:])
      y = tf.add_n([_scatter_last(product(part, kernel), index, self.output_dim)
                    for part, kernel, index in zip(parts, self.kernels, self.col_index)])
    if self.bias is not None:
      y = y + self.bias
    return self.activation(y)


_dense_wrappers: list[Callable[[tf.keras.layers.Layer], tf.keras.layers.Layer]] = []


@contextlib.contextmanager
def wrapping_dense(wrap: Callable[[tf.keras.layers.Layer], tf.keras.layers.Layer]):
  """Models built inside pass each prunable `Dense` through `wrap` (e.g. tfmot's
  `prune_low_magnitude`), so other pruning methods act on exactly the same layers."""
  _dense_wrappers.append(wrap)
  try:
    yield
  finally:
    _dense_wrappers.pop()


DenseFactory = Callable[..., tf.keras.layers.Layer]
_dense_factories: list[DenseFactory] = []


@contextlib.contextmanager
def building_dense(factory: DenseFactory):
  """Models built inside make every dense layer (prunable or not) with
  `factory(units, name=..., activation=..., use_bias=...)` instead of `tf.keras.layers.Dense`,
  e.g. OMC's decompress-on-use layer (`fl_compression.compression.on_the_fly`)."""
  _dense_factories.append(factory)
  try:
    yield
  finally:
    _dense_factories.pop()


def plain_dense(units: int, name: str, activation=None, use_bias: bool = True
                ) -> tf.keras.layers.Layer:
  """A `Dense` layer of the model, or the active `building_dense` factory's layer."""
  if _dense_factories:
    return _dense_factories[-1](units, name=name, activation=activation, use_bias=use_bias)
  return tf.keras.layers.Dense(units, activation=activation, use_bias=use_bias, name=name)


def dense(name: str, units: int, pruning: dict[str, Any] | None, activation=None,
          use_bias: bool = True, wrap: bool = True) -> tf.keras.layers.Layer:
  """A prunable dense layer: a `PrunedDense` when the pruning plan (keyed by layer name) has
  `name`, otherwise `plain_dense`'s layer, passed through the active `wrapping_dense` wrapper
  when `wrap` (the layers of the paper's prunable set; the extended set's are not wrapped)."""
  if pruning and name in pruning:
    return PrunedDense(pruning[name], activation=activation, use_bias=use_bias, name=name)
  layer = plain_dense(units, name, activation=activation, use_bias=use_bias)
  return _dense_wrappers[-1](layer) if _dense_wrappers and wrap else layer
