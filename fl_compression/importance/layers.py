"""Which variables belong to which encoder block and module, and resetting them.

A Conformer encoder block `encoder/block_<i>/` has four modules (`ffn1`, `mhsa`, `conv`,
`ffn2`) and its `final_norm`. A reset replaces the values of one block (or one module of one
block) with those of another set of weights of the same model: the initial weights
(re-initialization) or a fresh draw from the initializers (re-randomization); every other
variable keeps its value bit for bit.
"""

import re
from typing import Optional, Sequence

import numpy as np

MODULES = ('ffn1', 'mhsa', 'conv', 'ffn2')
_BLOCK = re.compile(r'(^|/)encoder/block_(\d+)/([^/]+)/')


class LayerError(ValueError):
  """The model has no encoder block to rank, or weights that do not fit it."""


def block_part(name: str) -> Optional[tuple[int, str]]:
  """(block index, module or `final_norm`) of a variable name, None outside the blocks."""
  match = _BLOCK.search(name)
  return (int(match.group(2)), match.group(3)) if match else None


def num_blocks(names: Sequence[str]) -> int:
  """The number of encoder blocks the variable names describe (0: none)."""
  blocks = {part[0] for part in map(block_part, names) if part is not None}
  if blocks and blocks != set(range(len(blocks))):
    raise LayerError(f'encoder blocks are not numbered 0..{len(blocks) - 1}: {sorted(blocks)}')
  return len(blocks)


def indices(names: Sequence[str], block: int, module: Optional[str] = None) -> list[int]:
  """Positions of the variables of `block` (all of them, or of `module` only)."""
  if module is not None and module not in MODULES:
    raise LayerError(f'unknown module {module!r}; known: {", ".join(MODULES)}')
  found = [i for i, name in enumerate(names)
           if (part := block_part(name)) is not None and part[0] == block
           and (module is None or part[1] == module)]
  if not found:
    raise LayerError(f'block {block}{" module " + module if module else ""} has no variables')
  return found


def reset(values: Sequence[np.ndarray], source: Sequence[np.ndarray], names: Sequence[str],
          block: int, module: Optional[str] = None) -> list[np.ndarray]:
  """`values` with the variables of `block` (or of its `module`) taken from `source`."""
  if not len(values) == len(source) == len(names):
    raise LayerError(f'{len(values)} values, {len(source)} source values, {len(names)} names')
  chosen = set(indices(names, block, module))
  out = []
  for i, (value, replacement) in enumerate(zip(values, source)):
    if i in chosen:
      if np.shape(value) != np.shape(replacement):
        raise LayerError(f'{names[i]}: shape {np.shape(value)} cannot take '
                         f'{np.shape(replacement)}')
      out.append(np.array(replacement, copy=True))
    else:
      out.append(value)
  return out
