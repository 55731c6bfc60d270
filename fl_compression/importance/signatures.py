"""Numerical signatures of training (Zhou, Guliani et al., ICASSP 2022): how far each module of
each encoder block has moved from its initial weights, relative to the block that moved most.

For module m and block l: ||W^{m,l}(t) - W^{m,l}(0)||_F / max_l' ||W^{m,l'}(t) - W^{m,l'}(0)||_F,
in [0, 1], where W^{m,l} is every kernel of the module (biases and norms left out).
"""

from typing import Sequence

import numpy as np

from fl_compression.importance import layers

# Signature modules: the kernels each covers, by their path inside a block.
KERNELS = {
    'attention/query': ('mhsa/query/kernel',),
    'attention/key': ('mhsa/key/kernel',),
    'attention/value': ('mhsa/value/kernel',),
    'attention/output': ('mhsa/output/kernel',),
    'ffn1': ('ffn1/dense_in/kernel', 'ffn1/dense_out/kernel'),
    'ffn2': ('ffn2/dense_in/kernel', 'ffn2/dense_out/kernel'),
    'conv': ('conv/pointwise_in/kernel', 'conv/depthwise/depthwise_kernel',
             'conv/pointwise_out/kernel'),
}


def distances(names: Sequence[str], values: Sequence[np.ndarray],
              initial: Sequence[np.ndarray]) -> dict[str, list[float]]:
  """Per signature module, the Frobenius distance of each block's kernels from their initial
  values (blocks in order)."""
  count = layers.num_blocks(names)
  if not count:
    raise layers.LayerError('the model has no encoder blocks')
  by_name = {name.split(':')[0]: i for i, name in enumerate(names)}
  found = {}
  for module, kernels in KERNELS.items():
    per_block = []
    for block in range(count):
      squares = 0.0
      for kernel in kernels:
        i = by_name[f'encoder/block_{block:02d}/{kernel}']
        difference = np.asarray(values[i], np.float64) - np.asarray(initial[i], np.float64)
        squares += float(np.sum(difference * difference))
      per_block.append(squares ** 0.5)
    found[module] = per_block
  return found


def signatures(names: Sequence[str], values: Sequence[np.ndarray],
               initial: Sequence[np.ndarray]) -> dict[str, list[float]]:
  """Per signature module, each block's distance over the largest block's (0 for a module
  that has not moved anywhere)."""
  found = {}
  for module, per_block in distances(names, values, initial).items():
    largest = max(per_block)
    found[module] = [d / largest if largest > 0 else 0.0 for d in per_block]
  return found


def movement(names: Sequence[str], values: Sequence[np.ndarray],
             initial: Sequence[np.ndarray]) -> list[float]:
  """Per block (in order), how far its signature kernels moved relative to where they started:
  ||W_l(t) - W_l(0)||_F / ||W_l(0)||_F over all of them together. Unlike the signatures, not
  relative to another block: a deep stack whose lower blocks do not train shows it at once."""
  moved = distances(names, values, initial)
  start = distances(names, [np.zeros_like(v) for v in initial], initial)
  count = len(next(iter(moved.values())))
  found = []
  for block in range(count):
    numerator = sum(per_block[block] ** 2 for per_block in moved.values()) ** 0.5
    denominator = sum(per_block[block] ** 2 for per_block in start.values()) ** 0.5
    found.append(numerator / denominator if denominator > 0 else 0.0)
  return found


def flat(signature: dict[str, list[float]]) -> dict[str, float]:
  """`{'signature/<module>/block_<i>': value}`: one scalar per module and block, for metrics."""
  return {f'signature/{module}/block_{block:02d}': value
          for module, per_block in signature.items() for block, value in enumerate(per_block)}
