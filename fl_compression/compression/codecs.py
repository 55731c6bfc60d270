"""Codecs: how one variable is held and sent compressed, for the OMC and FedAQT processes.

A codec turns a float32 tensor into an `OrderedDict` of tensors (its compressed form: what a
client holds between steps and what crosses the network) and back. `roundtrip(x)` is
`decode(encode(x))` without the bit packing (packing is exact), for the per-step
recompression inside client training; `requantize(x, seed)` is what a client runs after each
local step (rounding to nearest, or stochastically when the codec says so).

- `OmcCodec`: an `S1EeMm` floating-point format, bit-packed, with the least-squares
  per-variable transform `V' = s * V + b` (`omc.py`).
- `AqtCodec`: symmetric per-channel integers of 4 to 8 bits, bit-packed, with float32 scales
  (`aqt.py`).
"""

import collections
import dataclasses
from typing import Sequence

import tensorflow as tf

from fl_compression.compression import aqt
from fl_compression.compression import float_format as ff
from fl_compression.compression import omc

Encoded = collections.OrderedDict
ROUNDINGS = ('nearest', 'stochastic')


@dataclasses.dataclass(frozen=True)
class OmcCodec:
  """An `S1EeMm` float format with (optionally) the per-variable transform."""

  fmt: ff.FloatFormat
  transform: bool = True
  # How a client requantizes after a local step: 'nearest' (even) or 'stochastic'
  # (`ff.quantize_stochastic`). The server's broadcast always rounds to nearest even.
  rounding: str = 'nearest'

  def __post_init__(self):
    _check_rounding(self.rounding)

  @property
  def name(self) -> str:
    return f'{self.fmt.name}{"" if self.transform else " (no transform)"}'

  def encode(self, x: tf.Tensor) -> Encoded:
    c = omc.compress(x, self.fmt, self.transform)
    return Encoded(words=c.words, scale=c.scale, offset=c.offset)

  def decode(self, encoded: Encoded, shape: Sequence[int]) -> tf.Tensor:
    return omc.decompress(omc.Compressed(encoded['words'], encoded['scale'], encoded['offset'],
                                         tuple(shape)), self.fmt)

  def requantize(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A client's recompression after a local step, stochastic with `seed` if configured."""
    if self.rounding == 'nearest':
      return self.roundtrip(x)
    return self._transformed(x, ff.quantize_stochastic(x, self.fmt, seed))

  def roundtrip(self, x: tf.Tensor) -> tf.Tensor:
    return self._transformed(x, ff.quantize(x, self.fmt))

  def _transformed(self, x: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    if not self.transform:
      return values
    scale, offset = omc.fit_transform(x, values)
    return scale * values + offset

  def nbytes(self, shape: Sequence[int]) -> int:
    return ff.packed_words(_size(shape), self.fmt.bits) * 4 + 2 * 4


@dataclasses.dataclass(frozen=True)
class AqtCodec:
  """Symmetric per-channel `bits`-bit integers (per tensor for vectors), float32 scales."""

  bits: int = 8
  # How a client requantizes after a local step: 'nearest' or 'stochastic' (`aqt.quantize`).
  # The server's broadcast always rounds to nearest.
  rounding: str = 'nearest'

  def __post_init__(self):
    if not aqt.MIN_BITS <= self.bits <= aqt.MAX_BITS:
      raise ValueError(f'{self.bits}-bit quantization is outside the supported '
                       f'{aqt.MIN_BITS}..{aqt.MAX_BITS}')
    _check_rounding(self.rounding)

  @property
  def name(self) -> str:
    return f'int{self.bits}'

  def encode(self, x: tf.Tensor) -> Encoded:
    q = aqt.quantize(x, self.bits)
    return Encoded(words=aqt.pack(q), scales=q.scales)

  def decode(self, encoded: Encoded, shape: Sequence[int]) -> tf.Tensor:
    return aqt.dequantize(aqt.unpack(encoded['words'], encoded['scales'], self.bits, shape))

  def roundtrip(self, x: tf.Tensor) -> tf.Tensor:
    return aqt.dequantize(aqt.quantize(x, self.bits))

  def requantize(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A client's requantization after a local step, stochastic with `seed` if configured."""
    if self.rounding == 'nearest':
      return self.roundtrip(x)
    return aqt.dequantize(aqt.quantize(x, self.bits, seed=seed))

  def nbytes(self, shape: Sequence[int]) -> int:
    channels = int(shape[-1]) if len(shape) >= 2 else 1
    return ff.packed_words(_size(shape), self.bits) * 4 + channels * 4


def _check_rounding(rounding: str) -> None:
  if rounding not in ROUNDINGS:
    raise ValueError(f'rounding {rounding!r} is unknown; known: {", ".join(ROUNDINGS)}')


def _size(shape: Sequence[int]) -> int:
  size = 1
  for d in shape:
    size *= int(d)
  return size
