"""Theoretical FLOPs of a client training step with and without SWAT.

Counted on a real forward pass: every dense layer of the model (SWAT or plain) records the
rows it multiplies, so the counts follow the actual sequence lengths after subsampling. A
dense product of `t` rows by an `i x o` kernel costs `2 t i o` FLOPs forward and twice that
backward (input gradient and kernel gradient). SWAT keeps `k` of the `i o` kernel entries in
the forward product and the input gradient (`2 t k` each) and, with activation sparsity `a`,
computes the kernel gradient from `(1 - a) t i` input values (`2 (1 - a) t i o`). The other
operations of a step (attention score products, convolutions, normalization, the loss) are not
counted here; SWAT does not change them.
"""

import contextlib
import dataclasses
from typing import Any, Optional

import tensorflow as tf

from fl_compression.zerofl import swat


@dataclasses.dataclass
class Product:
  name: str
  rows: int
  in_dim: int
  out_dim: int
  density: float = 1.0
  activation_density: Optional[float] = None

  def forward(self) -> float:
    if self.density == 1.0:
      return 2.0 * self.rows * self.in_dim * self.out_dim
    return swat.forward_flops(self.in_dim, self.out_dim, self.rows, self.density)

  def backward(self) -> float:
    if self.density == 1.0 and self.activation_density is None:
      return 4.0 * self.rows * self.in_dim * self.out_dim
    return swat.backward_flops(self.in_dim, self.out_dim, self.rows, self.density,
                               self.activation_density)


@contextlib.contextmanager
def recording(model: tf.keras.Model):
  """Records a `Product` per call of every dense layer of `model` (eager calls)."""
  products: list[Product] = []
  layers = [m for m in model.submodules if isinstance(m, tf.keras.layers.Dense)]
  originals, own = {}, {}
  for layer in layers:
    originals[layer] = layer.call
    own[layer] = 'call' in vars(layer)

    def call(inputs, *args, _layer=layer, **kwargs):
      rows = 1
      for d in inputs.shape[:-1]:
        rows *= int(d)
      products.append(Product(
          _layer.name, rows, int(_layer.kernel.shape[0]), int(_layer.kernel.shape[1]),
          getattr(_layer, 'density', 1.0), getattr(_layer, 'activation_density', None)))
      return originals[_layer](inputs, *args, **kwargs)

    layer.call = call
  try:
    yield products
  finally:
    for layer, original in originals.items():
      if own[layer]:
        layer.call = original
      else:
        del layer.call


def step_flops(model: tf.keras.Model, features: tf.Tensor, feature_length: tf.Tensor
               ) -> dict[str, Any]:
  """Forward and backward FLOPs of the dense products of one step of `model` on a batch."""
  with recording(model) as products:
    model([features, feature_length], training=False)
  return {'forward': sum(p.forward() for p in products),
          'backward': sum(p.backward() for p in products),
          'products': len(products),
          'swat_products': sum(p.density < 1.0 for p in products)}
