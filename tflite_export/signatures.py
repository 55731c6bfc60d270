"""The on-device model: a `tf.Module` whose `tf.function`s become the TFLite signatures.

`OnDeviceModel(keras_model, options)` wraps a trained CTC or transducer speech model with:

- `train(features, feature_length, labels, label_length) -> {loss}`: one optimizer step
  (SGD or Adam, state kept in variables) on the trainable subset; the loss is the model's own
  mean per-utterance loss before the step, computed with dropout off.
- `infer(features, feature_length) -> {logits, logit_length, token_ids, token_count}`:
  greedy token ids left-aligned per utterance and padded with blank (0).
- `transcribe(audio) -> {token_ids}`: 16 kHz mono float samples in [-1, 1) through the same
  log-mel features and per-utterance normalization as training (`fl_compression.data.features`).
- `save(checkpoint_path)` / `restore(checkpoint_path)`: the trainable variables and the
  optimizer state in one TensorFlow checkpoint file at a path given at run time.
- With sparse training (ZeroFL, `TrainingOptions.sparse_training`): the model's SWAT layers
  compute `train` and `infer` with the top-k entries of their kernels
  (`fl_compression.zerofl.swat`), and `sparse_update() -> {...}` returns what a ZeroFL client
  uploads: for each SWAT kernel the entries of the update `round start - current` at the top
  `1 - sparsity + mask_ratio` positions by current magnitude (`values/<variable>`, float32,
  ascending position order, and `positions/<variable>`, the encoded uint8 buffer of
  `fl_compression.zerofl.upload`), for every other trainable variable its whole update
  (`update/<variable>`). The round starts when the model is loaded and at each `restore`.

Batch and time axes are dynamic. The layers are formulated so that `infer` and `transcribe`
convert to TFLite builtins only; `train`, `save` and `restore` need a few TensorFlow kernels
(Flex ops), which the manifest lists.
"""

import dataclasses
import math
import re

import numpy as np
import tensorflow as tf

from fl_compression.data import features as features_lib
from fl_compression.models import asr
from fl_compression.models import tokens
from fl_compression.models import transducer
from fl_compression.zerofl import swat
from fl_compression.zerofl import upload as zerofl_upload

SIGNATURES = ('train', 'infer', 'transcribe', 'save', 'restore')
SPARSE_SIGNATURES = SIGNATURES + ('sparse_update',)
INFERENCE_SIGNATURES = ('infer', 'transcribe')
OPTIMIZERS = ('sgd', 'adam')


class ExportError(ValueError):
  """The model or an export option cannot be exported; the message names it."""


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
  """What the `train` signature does: the optimizer, its rate and the trainable subset.

  `trainable`: 'all'; 'last_blocks:N' (the last N encoder blocks and the output layers: the
  CTC head, or the transducer's prediction and joint networks); 'blocks:i,j,...' (those encoder
  blocks only: what `--trainable=critical:N --ranking=...` of the export program resolves to);
  or a regular expression that `re.search`es the variable names
  (`encoder/block_03/ffn1/dense_in/kernel`, ...).
  Variables outside the subset are constants of the exported model.
  """

  optimizer: str = 'adam'
  learning_rate: float = 2e-4
  trainable: str = 'all'
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-7
  # ZeroFL: sparsity of the SWAT kernels (0: dense training) and the upload's mask ratio.
  sparse_training: float = 0.0
  mask_ratio: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.sparse_training < 1.0:
      raise ExportError(f'--sparse_training={self.sparse_training} is outside [0, 1)')
    if not 0.0 <= self.mask_ratio <= self.sparse_training:
      raise ExportError(f'--mask_ratio={self.mask_ratio} must be in [0, --sparse_training='
                        f'{self.sparse_training}] (the upload is at most the whole matrix)')
    if self.optimizer not in OPTIMIZERS:
      raise ExportError(f'--optimizer={self.optimizer} is unknown; known: '
                        f'{", ".join(OPTIMIZERS)}')
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ExportError(f'--learning_rate must be positive and finite, got {self.learning_rate}')


def variable_name(variable: tf.Variable) -> str:
  """The variable's name without the `:0` suffix; unique within one model."""
  return variable.name.split(':')[0]


def _output_prefixes(model: tf.keras.Model) -> tuple[str, ...]:
  if model.name == 'conformer_transducer':
    return ('prediction/', 'joint/')
  return ('ctc_head/',)


def select_trainable(model: tf.keras.Model, spec: str) -> list[tf.Variable]:
  """The trainable variables `spec` selects (see `TrainingOptions.trainable`), model order."""
  variables = list(model.trainable_variables)
  if spec == 'all':
    return variables
  if spec.startswith('last_blocks:'):
    blocks = sorted({m.group(1) for v in variables
                     for m in [re.match(r'encoder/(block_\d+)/', variable_name(v))] if m})
    try:
      count = int(spec.split(':', 1)[1])
    except ValueError:
      count = -1
    if not 1 <= count <= len(blocks):
      raise ExportError(f'--trainable={spec}: the model has {len(blocks)} encoder blocks; '
                        f'use last_blocks:N with N in 1..{len(blocks)}')
    prefixes = tuple(f'encoder/{b}/' for b in blocks[-count:]) + _output_prefixes(model)
    return [v for v in variables if variable_name(v).startswith(prefixes)]
  if spec.startswith('blocks:'):
    try:
      wanted = [int(b) for b in spec.split(':', 1)[1].split(',')]
    except ValueError:
      raise ExportError(f'--trainable={spec}: blocks must be integers') from None
    prefixes = tuple(f'encoder/block_{b:02d}/' for b in wanted)
    chosen = [v for v in variables if variable_name(v).startswith(prefixes)]
    found = {variable_name(v).split('/')[1] for v in chosen}
    missing = sorted(f'block_{b:02d}' for b in wanted if f'block_{b:02d}' not in found)
    if missing:
      raise ExportError(f'--trainable={spec}: the model has no trainable encoder '
                        f'{", ".join(missing)}')
    return chosen
  try:
    pattern = re.compile(spec)
  except re.error as e:
    raise ExportError(f'--trainable={spec} is not all, last_blocks:N or a valid regular '
                      f'expression: {e}') from None
  chosen = [v for v in variables if pattern.search(variable_name(v))]
  if not chosen:
    raise ExportError(f'--trainable={spec} matches no variable of the model (names look like '
                      f'{variable_name(variables[0])!r})')
  return chosen


class OnDeviceOptimizer(tf.Module):
  """SGD or Adam over fixed variables, with its state in variables (saved in checkpoints).

  Adam is the update of `tf.keras.optimizers.Adam` (bias-corrected rate, epsilon outside the
  square root), written with ops that TFLite has as builtins.
  """

  def __init__(self, options: TrainingOptions, variables: list[tf.Variable]):
    super().__init__(name='optimizer')
    self.options = options
    self._variables = variables
    self.slots: list[tuple[str, tf.Variable]] = []
    if options.optimizer == 'adam':
      self.step = tf.Variable(0.0, trainable=False, name='adam_step')
      self.m = [tf.Variable(tf.zeros_like(v), trainable=False, name='adam_m') for v in variables]
      self.v = [tf.Variable(tf.zeros_like(v), trainable=False, name='adam_v') for v in variables]
      self.slots = [('optimizer/adam_step', self.step)]
      for variable, m, v in zip(variables, self.m, self.v):
        self.slots += [(f'optimizer/adam_m/{variable_name(variable)}', m),
                       (f'optimizer/adam_v/{variable_name(variable)}', v)]

  def apply(self, gradients: list[tf.Tensor]) -> None:
    rate = tf.constant(self.options.learning_rate, tf.float32)
    if self.options.optimizer == 'sgd':
      for variable, gradient in zip(self._variables, gradients):
        variable.assign_sub(rate * gradient)
      return
    o = self.options
    step = self.step.assign_add(1.0)
    alpha = rate * tf.sqrt(1.0 - tf.pow(o.beta_2, step)) / (1.0 - tf.pow(o.beta_1, step))
    for variable, m, v, gradient in zip(self._variables, self.m, self.v, gradients):
      m_new = m.assign_add((gradient - m) * (1.0 - o.beta_1))
      v_new = v.assign_add((tf.square(gradient) - v) * (1.0 - o.beta_2))
      variable.assign_sub(m_new * alpha / (tf.sqrt(v_new) + o.epsilon))


def left_aligned_ctc_tokens(logits: tf.Tensor, logit_length: tf.Tensor
                            ) -> tuple[tf.Tensor, tf.Tensor]:
  """Best-path CTC tokens as a dense [B, T] tensor (each row's tokens first, then blank 0)
  and their counts [B]; the same tokens as `asr.greedy_ctc_decode`, in builtin ops only (the
  placement is a one-hot sum rather than a scatter or a ragged tensor)."""
  best = tf.argmax(logits, axis=-1, output_type=tf.int32)
  frames = tf.shape(best)[1]
  valid = tf.sequence_mask(logit_length, frames)
  previous = tf.concat([tf.fill([tf.shape(best)[0], 1], -1), best[:, :-1]], axis=1)
  keep = valid & tf.not_equal(best, previous) & tf.not_equal(best, 0)
  return tokens.left_aligned(best, keep)


def _dense_gradients(gradients, variables) -> list[tf.Tensor]:
  dense = []
  for gradient, variable in zip(gradients, variables):
    if gradient is None:
      raise ExportError(f'the loss does not depend on {variable_name(variable)}; leave it out '
                        'of --trainable')
    dense.append(tf.convert_to_tensor(gradient))
  return dense


class OnDeviceModel(tf.Module):
  """The five signatures over one Keras speech model (see the module docstring)."""

  def __init__(self, keras_model: tf.keras.Model, options: TrainingOptions = TrainingOptions(),
               feature_config: features_lib.FeatureConfig = features_lib.FeatureConfig()):
    super().__init__(name='on_device_model')
    if keras_model.name not in asr.SPEECH_MODELS:
      raise ExportError(f'cannot export a {keras_model.name!r} model; known speech models: '
                        f'{", ".join(asr.SPEECH_MODELS)}')
    self.model = keras_model
    self.options = options
    self.feature_config = feature_config
    self.is_transducer = keras_model.name == 'conformer_transducer'
    self.num_mel_bins = int(keras_model.inputs[0].shape[-1])
    if self.num_mel_bins != feature_config.num_mel_bins:
      raise ExportError(f'the model takes {self.num_mel_bins} mel bins, the feature settings '
                        f'give {feature_config.num_mel_bins}')
    self.trainable = select_trainable(keras_model, options.trainable)
    self.optimizer = OnDeviceOptimizer(options, self.trainable)
    swat_kernels = {layer.kernel.ref() for layer in keras_model.submodules
                    if isinstance(layer, swat.SwatDense)}
    if options.sparse_training and not swat_kernels:
      raise ExportError('--sparse_training: the model was not built with SWAT layers '
                        '(load it with tflite_export.bundle.load_source_model)')
    self.sparse = [v.ref() in swat_kernels for v in self.trainable]
    # The weights at the start of the round (`sparse_update`'s reference).
    self.round_start = ([tf.Variable(v, trainable=False, name='round_start')
                         for v in self.trainable] if options.sparse_training else [])
    # What a checkpoint holds: (name in the file, variable).
    self.checkpointed = ([(variable_name(v), v) for v in self.trainable] +
                         self.optimizer.slots)
    bins = self.num_mel_bins
    features = tf.TensorSpec([None, None, bins], tf.float32, name='features')
    lengths = tf.TensorSpec([None], tf.int32, name='feature_length')
    labels = tf.TensorSpec([None, None], tf.int32, name='labels')
    label_lengths = tf.TensorSpec([None], tf.int32, name='label_length')
    path = tf.TensorSpec([], tf.string, name='checkpoint_path')
    self.train = tf.function(self._train, input_signature=[features, lengths, labels,
                                                            label_lengths])
    self.infer = tf.function(self._infer, input_signature=[features, lengths])
    self.transcribe = tf.function(
        self._transcribe, input_signature=[tf.TensorSpec([None], tf.float32, name='audio')])
    self.save = tf.function(self._save, input_signature=[path])
    self.restore = tf.function(self._restore, input_signature=[path])
    self.signature_names = SPARSE_SIGNATURES if options.sparse_training else SIGNATURES
    if options.sparse_training:
      self.sparse_update = tf.function(self._sparse_update, input_signature=[])

  def concrete_functions(self, names=None) -> dict:
    return {name: getattr(self, name).get_concrete_function()
            for name in (names or self.signature_names)}

  def loss(self, features, feature_length, labels, label_length) -> tf.Tensor:
    """The mean per-utterance loss of the model's own kind (CTC or transducer), dropout off."""
    batch = dict(features=features, feature_length=feature_length, labels=labels,
                 label_length=label_length)
    return tf.reduce_mean(asr.per_example_loss(self.model, batch, training=False))

  def _train(self, features, feature_length, labels, label_length):
    with tf.GradientTape() as tape:
      loss = self.loss(features, feature_length, labels, label_length)
    gradients = _dense_gradients(tape.gradient(loss, self.trainable), self.trainable)
    self.optimizer.apply(gradients)
    return {'loss': loss}

  def _tokens(self, features, feature_length):
    if self.is_transducer:
      token_ids, token_count = transducer.greedy_tokens(self.model, features, feature_length)
      return token_ids, token_count, None, None
    logits, logit_length = self.model([features, feature_length], training=False)
    token_ids, token_count = left_aligned_ctc_tokens(logits, logit_length)
    return token_ids, token_count, logits, logit_length

  def _infer(self, features, feature_length):
    token_ids, token_count, logits, logit_length = self._tokens(features, feature_length)
    outputs = {'token_ids': token_ids, 'token_count': token_count}
    if logits is not None:
      outputs.update(logits=logits, logit_length=logit_length)
    return outputs

  def _transcribe(self, audio):
    feats = features_lib.normalize(features_lib.log_mel(audio, self.feature_config))
    token_ids, token_count, _, _ = self._tokens(tf.expand_dims(feats, 0),
                                                tf.expand_dims(tf.shape(feats)[0], 0))
    return {'token_ids': token_ids[0, :token_count[0]]}

  def _save(self, checkpoint_path):
    # One `Save` op: TensorFlow writes a temporary file and renames it into place, so a failed
    # save leaves an existing checkpoint at that path as it was.
    tf.raw_ops.Save(filename=checkpoint_path,
                    tensor_names=[name for name, _ in self.checkpointed],
                    data=[v.read_value() for _, v in self.checkpointed])
    return {'checkpoint_path': checkpoint_path}

  def _restore(self, checkpoint_path):
    values = []
    for name, variable in self.checkpointed:
      # The full-shape slice spec makes TensorFlow check the saved shape ("Shape in
      # shape_and_slice spec does not match the shape in the save file").
      spec = (' '.join(str(d) for d in variable.shape) + ' ' +
              ':'.join(['-'] * variable.shape.rank)) if variable.shape.rank else ''
      value = tf.raw_ops.RestoreSlice(file_pattern=checkpoint_path, tensor_name=name,
                                      shape_and_slice=spec, dt=variable.dtype)
      values.append(tf.reshape(value, variable.shape))
    # Every tensor is read and checked before any variable changes, so a missing or
    # mismatched checkpoint leaves the model as it was.
    with tf.control_dependencies(values):
      for (_, variable), value in zip(self.checkpointed, values):
        variable.assign(value)
      trainable_values = values[:len(self.trainable)]
      for start, value in zip(self.round_start, trainable_values):
        start.assign(value)  # A restore starts a round.
    return {'checkpoint_path': checkpoint_path}

  def upload_count(self, variable: tf.Variable) -> int:
    """Entries of a SWAT kernel that `sparse_update` returns."""
    return zerofl_upload.upload_count(int(np.prod(variable.shape)),
                                      self.options.sparse_training, self.options.mask_ratio)

  def _sparse_update(self):
    outputs = {}
    for variable, start, sparse in zip(self.trainable, self.round_start, self.sparse):
      name = variable_name(variable)
      update = start - variable
      if not sparse:
        outputs[f'update/{name}'] = update
        continue
      indices = zerofl_upload.select(variable, self.upload_count(variable))
      outputs[f'values/{name}'] = tf.gather(tf.reshape(update, [-1]), indices)
      outputs[f'positions/{name}'] = zerofl_upload.encode_positions(
          indices, int(np.prod(variable.shape)))
    return outputs
