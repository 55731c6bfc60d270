"""The saved-model format that training writes and evaluation and export read.

A model directory holds `config.json` ({"format_version", "model": <model config>, ...
free-form metadata}) and `weights.npz` (arrays `trainable/0000`, ...,
`non_trainable/0000`, ..., in the order of `tff.learning.models.ModelWeights`). Models that
training produced also hold `initial_weights.npz`: the exact weights training started from
(same keys), so a layer can be reset to its initial values exactly.
"""

import json
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

# Registers the speech models, so that every saved model rebuilds from its config alone.
from fl_compression.models import asr  # pylint: disable=unused-import
from fl_compression.models import registry

FORMAT_VERSION = 1
CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'weights.npz'
INITIAL_WEIGHTS_FILE = 'initial_weights.npz'


def save_model(model_dir: str, model_config: registry.ModelConfig,
               weights: tff.learning.models.ModelWeights,
               metadata: dict[str, Any] | None = None,
               initial_weights: tff.learning.models.ModelWeights | None = None) -> None:
  """Writes `model_dir` atomically: a crash leaves either the old directory or the new one.

  `initial_weights` (the weights training started from) go to `initial_weights.npz`.
  """
  model_dir = os.path.abspath(model_dir)
  parent = os.path.dirname(model_dir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.staging_', dir=parent)
  try:
    save_weights(os.path.join(staging, WEIGHTS_FILE), weights)
    if initial_weights is not None:
      save_weights(os.path.join(staging, INITIAL_WEIGHTS_FILE), initial_weights)
    config = {'format_version': FORMAT_VERSION, 'model': model_config, **(metadata or {})}
    with open(os.path.join(staging, CONFIG_FILE), 'w') as f:
      json.dump(config, f, indent=2, sort_keys=True, default=_json_default)
    if os.path.exists(model_dir):
      old = model_dir + '.old'
      shutil.rmtree(old, ignore_errors=True)
      os.rename(model_dir, old)
      os.rename(staging, model_dir)
      shutil.rmtree(old)
    else:
      os.rename(staging, model_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def save_weights(path: str, weights: tff.learning.models.ModelWeights) -> None:
  """Writes `weights` to the .npz file `path` (keys `trainable/0000`, ...)."""
  arrays = {}
  for group in ('trainable', 'non_trainable'):
    for i, value in enumerate(getattr(weights, group)):
      arrays[f'{group}/{i:04d}'] = np.asarray(value)
  np.savez(path, **arrays)


def load_config(model_dir: str) -> dict[str, Any]:
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{model_dir} is not a model directory: {CONFIG_FILE} is missing')
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON: {e}') from None
  if config.get('format_version') != FORMAT_VERSION or 'model' not in config:
    raise ValueError(f'{path}: unsupported model format (want format_version '
                     f'{FORMAT_VERSION} with a "model" entry)')
  return config


def load_weights(model_dir: str, file_name: str = WEIGHTS_FILE
                 ) -> tff.learning.models.ModelWeights:
  """The weights of `model_dir` (`file_name`: `INITIAL_WEIGHTS_FILE` for the initial ones)."""
  path = os.path.join(model_dir, file_name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{model_dir}: {file_name} is missing')
  return read_weights(path)


def read_weights(path: str) -> tff.learning.models.ModelWeights:
  """The weights in the .npz file `path` (as `save_weights` writes them)."""
  with np.load(path) as npz:
    groups = {'trainable': [], 'non_trainable': []}
    for key in sorted(npz.files):
      group, _ = key.split('/')
      groups[group].append(npz[key])
  return tff.learning.models.ModelWeights(
      trainable=groups['trainable'], non_trainable=groups['non_trainable'])


def reorder_weights(weights: tff.learning.models.ModelWeights,
                    from_config: registry.ModelConfig, to_config: registry.ModelConfig
                    ) -> tff.learning.models.ModelWeights:
  """`weights` of a model of `from_config`, rearranged for `to_config`: the same variables split
  otherwise into trainable and non-trainable (another `trainable_blocks`), matched by name."""
  source_trainable, source_frozen = registry.variable_names(from_config)
  values = dict(zip(source_trainable + source_frozen,
                    list(weights.trainable) + list(weights.non_trainable)))
  target_trainable, target_frozen = registry.variable_names(to_config)
  missing = sorted(set(target_trainable + target_frozen) - set(values))
  if missing:
    raise ValueError(f'the weights have no {", ".join(missing[:3])}')
  return tff.learning.models.ModelWeights([values[n] for n in target_trainable],
                                          [values[n] for n in target_frozen])


def load_keras_model(model_dir: str) -> tuple[tf.keras.Model, dict[str, Any]]:
  """Rebuilds the Keras model from `config.json` and assigns the saved weights."""
  config = load_config(model_dir)
  model = registry.build_keras_model(config['model'])
  weights = load_weights(model_dir)
  expected = [tuple(v.shape) for v in model.trainable_variables + model.non_trainable_variables]
  found = [tuple(w.shape) for w in list(weights.trainable) + list(weights.non_trainable)]
  if expected != found:
    raise ValueError(f'{model_dir}: weights do not fit the model config '
                     f'(config expects shapes {expected}, {WEIGHTS_FILE} has {found})')
  weights.assign_weights_to(model)
  return model, config


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'not JSON serializable: {value!r}')
