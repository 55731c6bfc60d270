"""Speech features and text tokens: 80-dim log-mel frames, SpecAugment, character vocabulary.

Pure TF functions (no TFF), shared by training, evaluation and the TFLite export so the phone
computes exactly the features the model was trained on.
"""

import dataclasses

import tensorflow as tf

BLANK = '<blank>'
CHARACTERS = (BLANK, ' ', "'") + tuple(chr(c) for c in range(ord('A'), ord('Z') + 1))


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  sample_rate: int = 16000
  window_ms: float = 25.0
  hop_ms: float = 10.0
  fft_length: int = 512
  num_mel_bins: int = 80
  lower_edge_hz: float = 20.0
  upper_edge_hz: float = 7600.0

  @property
  def frame_length(self) -> int:
    return int(round(self.sample_rate * self.window_ms / 1000))

  @property
  def frame_step(self) -> int:
    return int(round(self.sample_rate * self.hop_ms / 1000))


def log_mel(samples: tf.Tensor, config: FeatureConfig = FeatureConfig()) -> tf.Tensor:
  """[num_samples] float waveform -> [num_frames, num_mel_bins] natural-log mel energies."""
  stft = tf.signal.stft(samples, frame_length=config.frame_length,
                        frame_step=config.frame_step, fft_length=config.fft_length,
                        window_fn=tf.signal.hann_window)
  power = tf.math.square(tf.abs(stft))
  mel_matrix = tf.signal.linear_to_mel_weight_matrix(
      config.num_mel_bins, config.fft_length // 2 + 1, config.sample_rate,
      config.lower_edge_hz, config.upper_edge_hz)
  return tf.math.log(tf.matmul(power, mel_matrix) + 1e-6)


@dataclasses.dataclass(frozen=True)
class SpecAugmentConfig:
  """Frequency and time masks (Park et al. 2019)."""

  num_freq_masks: int = 2
  freq_mask_param: int = 15
  num_time_masks: int = 2
  time_mask_param: int = 25


def spec_augment(features: tf.Tensor, seed: tf.Tensor,
                 config: SpecAugmentConfig = SpecAugmentConfig()) -> tf.Tensor:
  """Zeroes random frequency bands and time spans of [frames, bins] features.

  Each mask has a width drawn uniformly from [0, param] and a uniform start, from stateless
  random ops keyed by `seed` (shape [2] int), so masks are reproducible (a resumed run sees the
  same ones) and differ wherever the caller varies the seed (per round, client, example).
  Written with core TF ops (not tensorflow-io's `freq_mask`/`time_mask`) because client datasets run inside TFF's
  C++ worker, which has no tensorflow-io kernels. Features are normalized per utterance first,
  so zero is the mean.
  """
  num_frames, num_bins = tf.shape(features)[0], tf.shape(features)[1]

  seeds = tf.random.experimental.stateless_split(
      tf.cast(seed, tf.int64), 2 * (config.num_freq_masks + config.num_time_masks))

  def band_mask(size, param, mask_index):
    width = tf.random.stateless_uniform([], seeds[2 * mask_index], 0,
                                        tf.minimum(param, size) + 1, dtype=tf.int32)
    start = tf.random.stateless_uniform([], seeds[2 * mask_index + 1], 0, size - width + 1,
                                        dtype=tf.int32)
    positions = tf.range(size)
    return (positions >= start) & (positions < start + width)

  keep_bins = tf.ones([num_bins], tf.bool)
  for i in range(config.num_freq_masks):
    keep_bins &= ~band_mask(num_bins, config.freq_mask_param, i)
  keep_frames = tf.ones([num_frames], tf.bool)
  for i in range(config.num_time_masks):
    keep_frames &= ~band_mask(num_frames, config.time_mask_param, config.num_freq_masks + i)
  keep = tf.cast(keep_frames[:, None] & keep_bins[None, :], features.dtype)
  return features * keep


def normalize(features: tf.Tensor) -> tf.Tensor:
  """Per-utterance mean and variance normalization of each mel bin."""
  mean, variance = tf.nn.moments(features, axes=[0], keepdims=True)
  return (features - mean) * tf.math.rsqrt(variance + 1e-5)


class CharTokenizer:
  """Characters <-> ids: 0 is the CTC/transducer blank, then space, apostrophe, A-Z."""

  def __init__(self, symbols=CHARACTERS):
    self.symbols = tuple(symbols)
    self.alphabet = set(self.symbols[1:])
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.symbols[1:]), tf.range(1, len(self.symbols), dtype=tf.int32)),
        default_value=-1)

  @property
  def vocab_size(self) -> int:
    return len(self.symbols)

  def encode(self, text: tf.Tensor) -> tf.Tensor:
    """A scalar string tensor -> [len] int32 ids (characters outside the alphabet give -1)."""
    return self._table.lookup(tf.strings.unicode_split(text, 'UTF-8'))

  def decode(self, ids) -> str:
    """Ids (blanks and out-of-range ids dropped) -> text."""
    return ''.join(self.symbols[i] for i in ids if 0 < i < len(self.symbols))
