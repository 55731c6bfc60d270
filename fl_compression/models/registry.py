"""Model configurations by name: a JSON-able config dict builds a Keras model.

The config is what `final_model/config.json` stores, so every saved model can be rebuilt
(for evaluation and TFLite export) from its config alone.
"""

import functools
import json
from typing import Any, Callable

import tensorflow as tf

ModelConfig = dict[str, Any]
_BUILDERS: dict[str, Callable[[ModelConfig], tf.keras.Model]] = {}


def register(name: str):
  def decorate(builder):
    _BUILDERS[name] = builder
    return builder
  return decorate


def build_keras_model(config: ModelConfig) -> tf.keras.Model:
  """Returns a new Keras model for `config` (deterministic for the config's `seed`).

  With `trainable_blocks` (a list of encoder block indices), only those blocks' variables are
  trainable; the rest of the model is frozen (its variables are non-trainable weights, so a
  `tff.learning` process neither trains nor uploads them).
  """
  name = config.get('name')
  if name not in _BUILDERS:
    raise ValueError(f'unknown model config name {name!r}; known: {", ".join(sorted(_BUILDERS))}')
  model = _BUILDERS[name](config)
  blocks = config.get('trainable_blocks')
  if blocks is not None:
    freeze_all_but_blocks(model, blocks)
  return model


def variable_names(config: ModelConfig) -> tuple[list[str], list[str]]:
  """The names of the trainable and of the non-trainable variables of `config`'s plain model
  (`build_keras_model` outside any build context), in model order; built once per config and
  process (a Conformer build costs seconds)."""
  return tuple(list(names) for names in _variable_names(json.dumps(config, sort_keys=True)))


@functools.lru_cache(maxsize=None)
def _variable_names(config_json: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  model = build_keras_model(json.loads(config_json))
  return (tuple(v.name for v in model.trainable_variables),
          tuple(v.name for v in model.non_trainable_variables))


def freeze_all_but_blocks(model: tf.keras.Model, blocks) -> None:
  """Makes every layer of `model` untrainable except encoder blocks `blocks` (ValueError for a
  model with no such block)."""
  wanted = {f'block_{int(b):02d}' for b in blocks}
  found = set()
  for layer in model.layers:
    inner = getattr(layer, 'blocks', None)
    if inner is None:
      layer.trainable = False
      continue
    for attribute in ('conv1', 'conv2', 'project', 'dropout'):
      if hasattr(layer, attribute):
        getattr(layer, attribute).trainable = False
    for block in inner:
      block.trainable = block.name in wanted
      found.update({block.name} & wanted)
  if found != wanted:
    raise ValueError(f'the model has no encoder block {", ".join(sorted(wanted - found))}')


@register('mlp')
def _build_mlp(config: ModelConfig) -> tf.keras.Model:
  """A small classifier: dense ReLU hidden layers, logits out."""
  seed = int(config.get('seed', 0))
  inputs = tf.keras.Input(shape=(config['input_dim'],), name='features')
  x = inputs
  for i, units in enumerate(config['hidden_units']):
    x = tf.keras.layers.Dense(
        units, activation='relu', name=f'hidden_{i}',
        kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + i))(x)
  logits = tf.keras.layers.Dense(
      config['num_classes'], name='logits',
      kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 1000))(x)
  return tf.keras.Model(inputs, logits, name='mlp')
