"""Federated pruning plans: what is prunable, in which pattern, and how many units each keeps.

A *prunable layer* is a dense kernel [I, O]. The `paper` set (the Federated Pruning paper's)
is the Conformer blocks' kernels outside the convolution module: the feed-forward
`dense_in`/`dense_out` and the attention `query`, `key`, `value`, `position` and `output`
projections. The `extended` set adds the other large dense kernels: each convolution module's
pointwise kernels (`pointwise_in` [D, 2D], whose columns are the GLU's value and gate channels,
and `pointwise_out` [D, D]) and the subsampling's projection (`subsampling/project`
[F/4 * C, D], about a sixth of `tiny`'s parameters); a pruned column of either writes zeros
where the full layer would, as for every pruned kernel. Biases, norms, convolution filters and
the output head stay whole. A *pattern* splits a kernel into pieces, each pruned along one axis
by whole units:

  row          one piece; units are the I rows (input features)
  column       one piece; units are the O columns (output features)
  half_row     two pieces, the left and right halves of the columns; each prunes its rows
  half_column  two pieces, the top and bottom halves of the rows; each prunes its columns

In the feed-forward module under the column pattern, a column of `dense_in` removed is a hidden
unit removed: its bias goes, and so does the matching row of `dense_out` (which then prunes its
own columns as well), so the removed fraction there exceeds the target.

A plan maps each prunable layer to its pattern and the number of units each piece keeps. It is
JSON (it becomes part of the reduced model's config) and depends only on shapes and the
sparsity per layer, so the compiled computations can be cached per plan.
"""

import dataclasses
import re
from typing import Any, Optional, Sequence

import numpy as np

PATTERNS = ('row', 'column', 'half_row', 'half_column')
_PAPER = r'block_\d+/(ffn[12]/dense_(in|out)|mhsa/(query|key|value|position|output))'
_EXTENDED = _PAPER + r'|block_\d+/conv/pointwise_(in|out)|subsampling/project'
PRUNABLE_SETS = {'paper': re.compile(rf'(^|/)({_PAPER})$'),
                 'extended': re.compile(rf'(^|/)({_EXTENDED})$')}


class PlanError(ValueError):
  """A pruning setting is invalid; the message names it."""


@dataclasses.dataclass(frozen=True)
class LayerShape:
  name: str  # Layer path, e.g. 'encoder/block_00/ffn1/dense_in'.
  input_dim: int
  output_dim: int

  @property
  def size(self) -> int:
    return self.input_dim * self.output_dim


def validate_prunable(prunable: str, flag: str = 'fp_prunable') -> None:
  if prunable not in PRUNABLE_SETS:
    raise PlanError(f'--{flag}={prunable!r} is unknown; known: {", ".join(PRUNABLE_SETS)}')


def is_prunable(layer_path: str, prunable: str = 'paper') -> bool:
  return bool(PRUNABLE_SETS[prunable].search(layer_path))


def coupled_partner(layer_path: str) -> Optional[str]:
  """The `dense_out` whose rows follow `layer_path`'s hidden units, for a `dense_in`."""
  if layer_path.endswith('/dense_in') and '/ffn' in layer_path:
    return layer_path[:-len('dense_in')] + 'dense_out'
  return None


def prunable_layers(model, prunable: str = 'paper') -> list[LayerShape]:
  """The dense kernels of set `prunable` of a built Keras model, in variable order."""
  layers = []
  for variable in model.trainable_variables:
    path = variable.name.rsplit('/', 1)[0]
    if (variable.name.endswith('/kernel:0') and variable.shape.rank == 2 and
        is_prunable(path, prunable)):
      layers.append(LayerShape(path, int(variable.shape[0]), int(variable.shape[1])))
  return layers


def unit_counts(pattern: str, layer: LayerShape) -> list[int]:
  """Units of each piece: rows for row patterns, columns for column patterns."""
  return {'row': [layer.input_dim], 'column': [layer.output_dim],
          'half_row': [layer.input_dim] * 2, 'half_column': [layer.output_dim] * 2}[pattern]


def piece_extent(pattern: str, layer: LayerShape, piece: int) -> tuple[int, int]:
  """[start, end) of the piece along the axis that is *not* pruned."""
  if pattern in ('row', 'column'):
    full = layer.output_dim if pattern == 'row' else layer.input_dim
    return 0, full
  full = layer.output_dim if pattern == 'half_row' else layer.input_dim
  half = full // 2
  return (0, half) if piece == 0 else (half, full)


def kept_units(units: int, sparsity: float) -> int:
  """Units kept at `sparsity` (rounded, at least one)."""
  return max(1, int(round(units * (1.0 - sparsity))))


def validate_sparsity(sparsity: float, flag: str = 'sparsity') -> None:
  if not 0.0 <= sparsity < 1.0:
    raise PlanError(f'--{flag}={sparsity} is outside [0, 1)')


def validate_pattern(pattern: str, flag: str = 'pattern') -> None:
  if pattern not in PATTERNS:
    raise PlanError(f'--{flag}={pattern!r} is unknown; known: {", ".join(PATTERNS)}')


def make_plan(layers: Sequence[LayerShape], pattern: str,
              sparsity: dict[str, float] | float) -> dict[str, Any]:
  """The plan for `layers` at one sparsity for all or a sparsity per layer name."""
  validate_pattern(pattern)
  if not layers:
    raise PlanError('the model has nothing prunable (no Conformer feed-forward or attention '
                    'kernels)')
  names = {layer.name for layer in layers}
  plan = {}
  for layer in layers:
    s = sparsity if isinstance(sparsity, (int, float)) else sparsity[layer.name]
    validate_sparsity(s)
    entry = {'pattern': pattern, 'input_dim': layer.input_dim, 'output_dim': layer.output_dim,
             'kept': [kept_units(u, s) for u in unit_counts(pattern, layer)]}
    partner = coupled_partner(layer.name)
    if pattern == 'column' and partner in names:
      entry['drop_units'] = True  # Removed columns are removed hidden units.
    plan[layer.name] = entry
  for layer in layers:
    partner = coupled_partner(layer.name)
    if plan[layer.name].get('drop_units'):
      plan[partner]['coupled_to'] = layer.name
      plan[partner]['coupled_rows'] = plan[layer.name]['kept'][0]
  return plan


def kept_area(entry: dict[str, Any]) -> int:
  """Kernel entries a plan entry keeps."""
  rows = entry.get('coupled_rows', entry['input_dim'])
  pattern, kept = entry['pattern'], entry['kept']
  if pattern == 'row':
    return kept[0] * entry['output_dim']
  if pattern == 'column':
    return rows * kept[0]
  if pattern == 'half_row':
    half = entry['output_dim'] // 2
    return kept[0] * half + kept[1] * (entry['output_dim'] - half)
  half = entry['input_dim'] // 2
  return half * kept[0] + (entry['input_dim'] - half) * kept[1]


def removed_bias(entry: dict[str, Any]) -> int:
  return entry['output_dim'] - entry['kept'][0] if entry.get('drop_units') else 0


def zero_parameter_ratio(plan: dict[str, Any]) -> float:
  """Removed kernel entries / all kernel entries of the prunable layers (Table 1's ratio)."""
  total = sum(e['input_dim'] * e['output_dim'] for e in plan.values())
  return 1.0 - sum(kept_area(e) for e in plan.values()) / total


def removed_parameters(plan: dict[str, Any]) -> int:
  """Parameters the reduced model no longer has (kernel entries and dropped biases)."""
  return sum(e['input_dim'] * e['output_dim'] - kept_area(e) + removed_bias(e)
             for e in plan.values())


def adaptive_sparsity(layers: Sequence[LayerShape], mean_magnitudes: dict[str, float],
                      target: float, max_sparsity: float = 0.9) -> dict[str, float]:
  """Per-layer sparsity with density proportional to the layer's mean |weight|.

  Normalization: density_l = min(1, c * m_l), clipped below at 1 - max_sparsity, with the one
  constant c (found by bisection) for which the parameter-weighted mean density
  sum_l(size_l * density_l) / sum_l(size_l) equals 1 - target. Layers with smaller weights
  (less important) get lower density, i.e. are pruned more.
  """
  validate_sparsity(target, 'fp_sparsity')
  sizes = np.array([layer.size for layer in layers], np.float64)
  magnitudes = np.array([mean_magnitudes[layer.name] for layer in layers], np.float64)
  if np.any(magnitudes <= 0):
    raise PlanError('adaptive sparsity needs nonzero weights in every prunable layer')
  goal = 1.0 - target
  floor = 1.0 - max_sparsity

  def mean_density(c):
    return float(np.sum(sizes * np.clip(c * magnitudes, floor, 1.0)) / np.sum(sizes))

  low, high = 0.0, 1.0 / magnitudes.min()
  for _ in range(200):
    middle = 0.5 * (low + high)
    low, high = (middle, high) if mean_density(middle) < goal else (low, middle)
  density = np.clip(high * magnitudes, floor, 1.0)
  return {layer.name: float(1.0 - d) for layer, d in zip(layers, density)}


def reduced_parameter_count(full_count: int, plan: dict[str, Any]) -> int:
  return full_count - removed_parameters(plan)


def describe(plan: dict[str, Any]) -> str:
  """A short, stable description of a plan's shapes (for cache keys and logs)."""
  return ';'.join(f'{name}:{e["pattern"]}:{",".join(map(str, e["kept"]))}'
                  for name, e in sorted(plan.items()))


def ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def step_sparsity(target: float, round_num: int, prune_rounds: int, steps: int) -> float:
  """Step schedule: the sparsity rises to `target` in `steps` equal steps over the pruning
  phase (rounds 1..prune_rounds), reaching it in the phase's last step."""
  if prune_rounds <= 0:
    return target
  step = min(steps, ceil_div(min(round_num, prune_rounds) * steps, prune_rounds))
  return target * step / steps

