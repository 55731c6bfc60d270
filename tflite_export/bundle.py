"""The handoff bundle for the app team: writing it from a saved model, and running it.

`export_bundle(model_dir, output_dir, options)` writes, atomically (a failed export leaves an
existing bundle as it was):

- `model.tflite`: the `train`, `infer`, `transcribe`, `save` and `restore` signatures (and
  `sparse_update` with sparse training, ZeroFL's client upload);
- `model_int8.tflite` with `--quantize=int8` (and for FedAQT models): `infer` and
  `transcribe` with the weight matrices stored as int8 codes (per-channel scales; a FedAQT
  model's own bit width), builtins only;
- `vocab.txt`: one token per line, line i is token id i (line 0 is the blank);
- `manifest.json`: signatures (input and output names, shapes with -1 for dynamic axes,
  dtypes, the builtin and Flex ops each runs), feature settings, vocabulary, training options,
  parameter counts, file sizes, the measured `train` step memory and the verification results.

`Bundle(bundle_dir)` runs a bundle in the Python TFLite interpreter, with the manifest's
checks on every input, so a wrong input gets an error naming it instead of a kernel failure.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from fl_compression.data import features as features_lib
from fl_compression.models import checkpoint
from fl_compression.models import pruned_dense
from fl_compression.models import registry
from fl_compression.zerofl import process as zerofl_process
from fl_compression.zerofl import upload as zerofl_upload
from tflite_export import convert
from tflite_export import flatbuffer
from tflite_export import memory
from tflite_export import signatures

FORMAT_VERSION = 1
MANIFEST_FILE = 'manifest.json'
MODEL_FILE = 'model.tflite'
INT8_FILE = 'model_int8.tflite'
VOCAB_FILE = 'vocab.txt'
QUANTIZE_CHOICES = ('none', 'int8')
# Verification tolerances: float32 TFLite kernels against TensorFlow's, same weights.
LOGITS_ATOL = 2e-3
LOSS_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  training: signatures.TrainingOptions = signatures.TrainingOptions()
  quantize: str = 'none'
  measure_memory: bool = True
  memory_batch_size: int = 4
  memory_seconds: float = 4.0
  # Real utterances for verification (a LibriSpeech-layout corpus); random features without.
  data_dir: str | None = None

  def __post_init__(self):
    if self.quantize not in QUANTIZE_CHOICES:
      raise signatures.ExportError(f'--quantize={self.quantize} is unknown; known: '
                                   f'{", ".join(QUANTIZE_CHOICES)}')


def load_source_model(model_dir: str, sparse_training: float = 0.0
                      ) -> tuple[tf.keras.Model, dict[str, Any]]:
  """The saved model of `--model_dir`, or an `ExportError` that says what is wrong with it;
  with `sparse_training`, its dense layers in the Conformer blocks are SWAT layers of that
  sparsity (ZeroFL's clients' model, same variables)."""
  if not os.path.isdir(model_dir):
    raise signatures.ExportError(f'--model_dir={model_dir} does not exist')
  building = (pruned_dense.building_dense(zerofl_process.swat_factory(
      zerofl_process.ZeroFLConfig(sparsity=sparse_training, mask_ratio=0.0)))
              if sparse_training else contextlib.nullcontext())
  try:
    with building:
      model, config = checkpoint.load_keras_model(model_dir)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise signatures.ExportError(f'--model_dir={model_dir}: {e}') from None
  return model, config


def aqt_bits(config: dict[str, Any]) -> int | None:
  """The bit width of a model trained with FedAQT (alone or stacked on pruning), else None."""
  options = config.get('algorithm_flags') or {}
  algorithm = config.get('algorithm')
  if algorithm == 'fedaqt' or (algorithm == 'fp' and options.get('fp_compress') == 'fedaqt'):
    return int(options.get('aqt_bits', 8))
  return None


def vocabulary(model_config: dict[str, Any]) -> list[str]:
  size = int(model_config['vocab_size'])
  if size != len(features_lib.CHARACTERS):
    raise signatures.ExportError(
        f'the model has a {size}-token vocabulary; only the {len(features_lib.CHARACTERS)}-'
        'symbol character vocabulary has a token list to ship')
  return list(features_lib.CHARACTERS)


def _io_details(runner) -> tuple[list, list]:
  describe = lambda details: [  # noqa: E731
      {'name': name, 'shape': [int(d) for d in detail['shape_signature']],
       'dtype': np.dtype(detail['dtype']).name}
      for name, detail in sorted(details.items())]
  return describe(runner.get_input_details()), describe(runner.get_output_details())


def describe_signatures(model_path: str) -> dict[str, Any]:
  """Input/output names, shapes and dtypes and the ops of every signature of a model file."""
  with open(model_path, 'rb') as f:
    ops = flatbuffer.signature_ops(f.read())
  interpreter = tf.lite.Interpreter(model_path=model_path)
  described = {}
  for name in interpreter.get_signature_list():
    inputs, outputs = _io_details(interpreter.get_signature_runner(name))
    described[name] = {'inputs': inputs, 'outputs': outputs,
                       'flex_ops': sorted(ops[name].flex),
                       'builtin_only': ops[name].builtin_only,
                       'builtin_ops': sorted(ops[name].builtin)}
  return described


def _file_entry(path: str) -> dict[str, Any]:
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return {'bytes': os.path.getsize(path), 'sha256': digest}


def _parameter_count(variables) -> int:
  return int(sum(np.prod(v.shape) for v in variables))


# (bundle directory, Keras reference, int8 model path or None, its Keras reference or None)
# -> verification results, recorded in the manifest (`tflite_export.verify.verify`).
Verifier = Callable[[str, tf.keras.Model, Any, Any], dict[str, Any]]


def export_bundle(model_dir: str, output_dir: str, options: ExportOptions = ExportOptions(),
                  log: Callable[[str], None] = print,
                  verifier: Verifier | None = None) -> dict[str, Any]:
  """Writes the bundle of `model_dir` to `output_dir` (see the module docstring); with a
  `verifier`, checks the bundle before it is published and records the result."""
  model, config = load_source_model(model_dir, options.training.sparse_training)
  model_config = config['model']
  vocab = vocabulary(model_config)
  if os.path.exists(output_dir) and os.listdir(output_dir) and not os.path.isfile(
      os.path.join(output_dir, MANIFEST_FILE)):
    raise signatures.ExportError(f'--output_dir={output_dir} exists and is not an export '
                                 'bundle; choose an empty or new directory')
  module = signatures.OnDeviceModel(model, options.training)
  parent = os.path.dirname(os.path.abspath(output_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.staging_', dir=parent)
  try:
    log(f'converting {model_config["name"]} ({_parameter_count(model.variables):,} parameters, '
        f'{_parameter_count(module.trainable):,} trainable) to TFLite ...')
    model_path = os.path.join(staging, MODEL_FILE)
    with open(model_path, 'wb') as f:
      f.write(convert.to_tflite(module))
    fedaqt_bits = aqt_bits(config)
    int8_path, int8_reference, int8_summary = None, None, None
    if options.quantize == 'int8' or fedaqt_bits is not None:
      bits = fedaqt_bits or 8
      log(f'converting the inference model with {bits}-bit weights ...')
      int8_reference, _ = load_source_model(model_dir)
      int8_module = signatures.OnDeviceModel(int8_reference)
      content, int8_summary = convert.to_int8_inference(int8_module, bits)
      int8_path = os.path.join(staging, INT8_FILE)
      with open(int8_path, 'wb') as f:
        f.write(content)
    with open(os.path.join(staging, VOCAB_FILE), 'w') as f:
      f.write(''.join(f'{token}\n' for token in vocab))
    feature_config = module.feature_config
    manifest = {
        'format_version': FORMAT_VERSION,
        'source': {'model_dir': os.path.abspath(model_dir),
                   **{k: config[k] for k in ('task', 'algorithm', 'round', 'seed')
                      if k in config}},
        'model': model_config,
        'parameters': _parameter_count(model.trainable_variables +
                                       model.non_trainable_variables),
        'trainable_parameters': _parameter_count(module.trainable),
        'features': {**dataclasses.asdict(feature_config),
                     'frame_length': feature_config.frame_length,
                     'frame_step': feature_config.frame_step,
                     'window': 'hann', 'log': 'natural log of mel power + 1e-6',
                     'normalization': 'per utterance: each mel bin to mean 0, variance 1',
                     'audio': 'float32 mono samples in [-1, 1) (int16 PCM / 32768)',
                     'encoder_frame_rate_hz': 1000.0 / feature_config.hop_ms / 4},
        'vocabulary': vocab, 'blank_id': 0,
        'training': {**dataclasses.asdict(options.training),
                     'loss': 'CTC' if not module.is_transducer else 'RNN-T',
                     'loss_reduction': 'mean over the batch of per-utterance losses',
                     'dropout': 'off',
                     'trainable_variables': [name for name, _ in module.checkpointed
                                             if not name.startswith('optimizer/')],
                     'checkpoint_tensors': [name for name, _ in module.checkpointed],
                     **_sparse_update_manifest(module)},
        'signatures': describe_signatures(model_path),
        'files': {MODEL_FILE: _file_entry(model_path),
                  VOCAB_FILE: _file_entry(os.path.join(staging, VOCAB_FILE))},
    }
    if int8_path:
      grid = "the FedAQT clients' grid" if fedaqt_bits else 'FedAQT quantizer'
      with open(int8_path, 'rb') as f:
        stored = flatbuffer.constant_bytes_by_type(f.read())
      manifest['int8_model'] = {
          'signatures': describe_signatures(int8_path),
          'weights': (f'{int8_summary["bits"]}-bit symmetric codes per output channel '
                      f'({grid}), stored int8, dequantized to float32 when the model loads'),
          'quantized_weight_matrices': int8_summary['quantized'],
          'weight_matrices': int8_summary['kernels'],
          'constant_bytes_by_type': stored}
      manifest['files'][INT8_FILE] = _file_entry(int8_path)
    manifest['flex_runtime_needed_by'] = sorted(
        name for name, sig in manifest['signatures'].items() if not sig['builtin_only'])
    if options.measure_memory:
      log('measuring one train step in the TFLite interpreter (fresh process) ...')
      manifest['memory'] = memory.measure_in_subprocess(
          model_path, batch_size=options.memory_batch_size, seconds=options.memory_seconds,
          vocab_size=len(vocab), num_mel_bins=module.num_mel_bins)
      manifest['memory'].pop('model_path')
    _write_manifest(staging, manifest)
    if verifier is not None:
      log('verifying the bundle against the Keras model ...')
      reference, _ = load_source_model(model_dir, options.training.sparse_training)
      manifest['verification'] = verifier(staging, reference, int8_path, int8_reference)
      _write_manifest(staging, manifest)
    _publish(staging, output_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return manifest


def _sparse_update_manifest(module: signatures.OnDeviceModel) -> dict[str, Any]:
  """The upload format of `sparse_update`, for the app team (empty without sparse training)."""
  if not module.options.sparse_training:
    return {}
  variables = {}
  for variable, sparse in zip(module.trainable, module.sparse):
    entry = {'shape': [int(d) for d in variable.shape]}
    if sparse:
      entry.update(sent='top_k', count=module.upload_count(variable))
    else:
      entry['sent'] = 'whole'
    variables[signatures.variable_name(variable)] = entry
  return {'sparse_update': {
      'update': 'round-start weights minus current weights (the round starts when the model '
                'is loaded and at each restore); the server averages updates and subtracts '
                'them times its learning rate',
      'top_k': '`values/<variable>`: float32 [count], the update at the `count` entries of '
               'largest current magnitude, in ascending flat (row-major) position order; '
               '`positions/<variable>`: uint8 buffer, byte 0 = 0: a bitmap of the positions '
               '(one bit per entry, least significant bit first, ceil(size / 8) bytes), '
               'byte 0 = 1: the gaps between consecutive positions (the first from -1) as '
               'LEB128 varints (7 bits per byte, high bit set on all but the last byte of a '
               'gap); whichever is smaller',
      'whole': '`update/<variable>`: float32, the whole update',
      'sparsity': module.options.sparse_training, 'mask_ratio': module.options.mask_ratio,
      'variables': variables}}


def _write_manifest(directory: str, manifest: dict[str, Any]) -> None:
  with open(os.path.join(directory, MANIFEST_FILE), 'w') as f:
    json.dump(manifest, f, indent=2, default=_json_default)


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'not JSON serializable: {value!r}')


def _publish(staging: str, output_dir: str) -> None:
  if os.path.exists(output_dir):
    old = output_dir.rstrip('/') + '.old'
    shutil.rmtree(old, ignore_errors=True)
    os.rename(output_dir, old)
    os.rename(staging, output_dir)
    shutil.rmtree(old)
  else:
    os.rename(staging, output_dir)


class BundleError(ValueError):
  """A bad input to a bundle's signature; the message names the input."""


class Bundle:
  """A bundle's `model.tflite` in the Python TFLite interpreter, inputs checked first."""

  def __init__(self, bundle_dir: str, model_file: str = MODEL_FILE):
    manifest_path = os.path.join(bundle_dir, MANIFEST_FILE)
    if not os.path.isfile(manifest_path):
      raise BundleError(f'{bundle_dir} is not an export bundle: {MANIFEST_FILE} is missing')
    with open(manifest_path) as f:
      self.manifest = json.load(f)
    self.bundle_dir = bundle_dir
    self.interpreter = tf.lite.Interpreter(model_path=os.path.join(bundle_dir, model_file))
    self.num_mel_bins = int(self.manifest['features']['num_mel_bins'])
    self.vocabulary = self.manifest['vocabulary']
    self._runners = {}

  def _run(self, name: str, **inputs) -> dict[str, np.ndarray]:
    if name not in self._runners:
      if name not in self.interpreter.get_signature_list():
        raise BundleError(f'this model has no {name!r} signature')
      self._runners[name] = self.interpreter.get_signature_runner(name)
    return self._runners[name](**inputs)

  def _features(self, features, feature_length) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float32)
    feature_length = np.asarray(feature_length, np.int32)
    if features.ndim != 3 or features.shape[2] != self.num_mel_bins:
      raise BundleError(f'features must be [batch, frames, {self.num_mel_bins}] log-mel '
                        f'frames, got shape {list(features.shape)}')
    if feature_length.shape != (features.shape[0],):
      raise BundleError(f'feature_length must have one entry per utterance '
                        f'({features.shape[0]}), got shape {list(feature_length.shape)}')
    minimum = MIN_FRAMES
    if feature_length.min(initial=minimum) < minimum or feature_length.max(initial=0) > \
        features.shape[1]:
      raise BundleError(f'feature_length must be in {minimum}..{features.shape[1]} (the '
                        f'padded frames), got {feature_length.tolist()}')
    return features, feature_length

  def infer(self, features, feature_length) -> dict[str, np.ndarray]:
    features, feature_length = self._features(features, feature_length)
    return self._run('infer', features=features, feature_length=feature_length)

  def train(self, features, feature_length, labels, label_length) -> float:
    features, feature_length = self._features(features, feature_length)
    labels = np.asarray(labels, np.int32)
    label_length = np.asarray(label_length, np.int32)
    if labels.ndim != 2 or labels.shape[0] != features.shape[0]:
      raise BundleError(f'labels must be [batch={features.shape[0]}, tokens], got shape '
                        f'{list(labels.shape)}')
    if label_length.shape != (labels.shape[0],) or label_length.min(initial=1) < 1 or \
        label_length.max(initial=0) > labels.shape[1]:
      raise BundleError(f'label_length must give 1..{labels.shape[1]} tokens per utterance, '
                        f'got {label_length.tolist()}')
    used = np.arange(labels.shape[1])[None, :] < label_length[:, None]
    if np.any((labels < 1) & used) or np.any((labels >= len(self.vocabulary)) & used):
      raise BundleError(f'labels must be token ids in 1..{len(self.vocabulary) - 1} (0 is the '
                        'blank)')
    return float(self._run('train', features=features, feature_length=feature_length,
                           labels=labels, label_length=label_length)['loss'])

  def transcribe(self, audio) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
      raise BundleError(f'audio must be one channel of samples, got shape {list(audio.shape)}')
    minimum = min_audio_samples(self.manifest['features'])
    if audio.shape[0] < minimum:
      raise BundleError(f'audio has {audio.shape[0]} samples; the model needs at least '
                        f'{minimum} ({minimum / self.manifest["features"]["sample_rate"]:.3f} s)')
    return self._run('transcribe', audio=audio)['token_ids']

  def text(self, token_ids) -> str:
    return ''.join(self.vocabulary[i] for i in token_ids if 0 < i < len(self.vocabulary))

  def save(self, checkpoint_path: str) -> None:
    parent = os.path.dirname(os.path.abspath(checkpoint_path))
    if not os.path.isdir(parent):
      raise BundleError(f'cannot save to {checkpoint_path}: {parent} is not a directory')
    self._run('save', checkpoint_path=np.array(checkpoint_path, dtype=np.bytes_))

  def restore(self, checkpoint_path: str) -> None:
    if not os.path.isfile(checkpoint_path):
      raise BundleError(f'cannot restore from {checkpoint_path}: no such checkpoint file')
    self._run('restore', checkpoint_path=np.array(checkpoint_path, dtype=np.bytes_))

  def sparse_update(self) -> dict[str, np.ndarray]:
    """The ZeroFL upload since the round started (see `tflite_export.signatures`), decoded:
    variable name -> dense update (zero where a SWAT kernel's entry is not sent)."""
    outputs = self._run('sparse_update')
    return decode_sparse_update(self.manifest, outputs)


def decode_sparse_update(manifest: dict[str, Any], outputs: dict[str, np.ndarray]
                         ) -> dict[str, np.ndarray]:
  """`sparse_update`'s outputs as dense updates per variable, using the shapes and counts the
  manifest lists (what a server does with an upload)."""
  decoded = {}
  for name, entry in manifest['training']['sparse_update']['variables'].items():
    if entry['sent'] == 'whole':
      decoded[name] = np.asarray(outputs[f'update/{name}'])
      continue
    size = int(np.prod(entry['shape']))
    indices = zerofl_upload.decode_positions(tf.constant(outputs[f'positions/{name}']), size,
                                             entry['count']).numpy()
    dense = np.zeros(size, np.float32)
    dense[indices] = outputs[f'values/{name}']
    decoded[name] = dense.reshape(entry['shape'])
  return decoded


# Two stride-2 3x3 'valid' convolutions need 7 feature frames for one encoder frame.
MIN_FRAMES = 7


def min_audio_samples(feature_settings: dict[str, Any]) -> int:
  """Samples that give `MIN_FRAMES` STFT frames."""
  return int(feature_settings['frame_length']) + (MIN_FRAMES - 1) * int(
      feature_settings['frame_step'])


def load_model_config(bundle_dir: str) -> dict[str, Any]:
  with open(os.path.join(bundle_dir, MANIFEST_FILE)) as f:
    return json.load(f)['model']


def keras_model_of(bundle_dir: str) -> tf.keras.Model:
  """A fresh Keras model of the bundle's configuration (weights initialized, not loaded)."""
  return registry.build_keras_model(load_model_config(bundle_dir))
