"""Tasks: a model configuration with its federated train and held-out data and its TFF model.

The training program, its tests and benchmarks get everything task-specific from a `Task`,
so adding a task (the speech tasks) touches no program code.
"""

import collections
import dataclasses
import os
import zlib
from typing import Any, Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.data import corpus
from fl_compression.data import features
from fl_compression.data import librispeech
from fl_compression.data import speech_data
from fl_compression.data import synthetic
from fl_compression.evaluation import speech_eval
from fl_compression.models import asr
from fl_compression.models import registry


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  model_config: registry.ModelConfig
  train_data: tff.simulation.datasets.ClientData
  eval_data: tff.simulation.datasets.ClientData
  model_fn: Callable[[], tff.learning.models.VariableModel]
  # (dataset, seed) -> batches; `seed` ([2] int64) varies with round and client, for the
  # task's random augmentation.
  train_preprocess: Callable[[tf.data.Dataset, tf.Tensor], tf.data.Dataset]
  eval_preprocess: Callable[[tf.data.Dataset], tf.data.Dataset]
  # Speech tasks: (model weights, model config[, splits]) -> {split: ErrorRates} on the dev
  # and test splits, or the given ones (greedy transcripts scored with jiwer), reported with
  # each evaluation.
  transcription_eval: Optional[Callable[..., dict[str, Any]]] = None
  # model config -> model_fn: the task's TFF model for another config of the same family
  # (a reduced model of federated pruning, for example).
  make_model_fn: Optional[Callable[[dict], Callable[[], tff.learning.models.VariableModel]]] = None

  def train_dataset(self, client_id: str, round_num: int = 0) -> tf.data.Dataset:
    """The client's training batches for `round_num` (augmentation differs per round)."""
    seed = tf.constant([round_num, zlib.crc32(client_id.encode())], tf.int64)
    return self.train_preprocess(self.train_data.create_tf_dataset_for_client(client_id), seed)

  def eval_dataset(self, client_id: str) -> tf.data.Dataset:
    return self.eval_preprocess(self.eval_data.create_tf_dataset_for_client(client_id))


@dataclasses.dataclass(frozen=True)
class TaskOptions:
  batch_size: int = 16
  local_epochs: int = 1
  num_train_clients: int = 20
  num_eval_clients: int = 4
  examples_per_client: int = 64
  seed: int = 0
  # Speech tasks: a LibriSpeech-layout directory; the embedded corpus is generated there if
  # the directory does not exist yet.
  data_dir: str = os.path.join('data', 'embedded_corpus')
  partition: str = 'speaker'
  strict_data: bool = False
  # Speech tasks: a named model configuration (`asr.NAMED_CONFIGS`, e.g. 'conformer_s') in
  # place of the task's own model; empty: the task's.
  model: str = ''
  # Speech tasks: the corpus domain whose splits the task trains and evaluates on
  # (`corpus.DOMAINS`: main, or the held-out short-form domain).
  domain: str = corpus.MAIN
  # Speech tasks: a model configuration (e.g. a saved model's) in place of a named one.
  model_config: Optional[dict] = None
  # Speech tasks: the encoder blocks the clients train (None: the whole model); the rest of the
  # model is frozen (`registry.build_keras_model`'s `trainable_blocks`).
  trainable_blocks: Optional[list] = None


def build_synthetic_mlp(options: TaskOptions) -> Task:
  """A small MLP classifier on generated non-IID clients (the no-download stand-in task)."""
  model_config = {'name': 'mlp', 'input_dim': 16, 'hidden_units': [32], 'num_classes': 4,
                  'seed': options.seed}
  common = dict(input_dim=model_config['input_dim'], num_classes=model_config['num_classes'],
                seed=options.seed, examples_per_client=options.examples_per_client)
  train_data = synthetic.make_client_data(options.num_train_clients, id_prefix='client', **common)
  eval_data = synthetic.make_client_data(options.num_eval_clients, id_prefix='heldout', **common)

  def to_pairs(dataset):
    return dataset.map(lambda e: (e['x'], e['y']))

  def train_preprocess(dataset, seed):
    del seed  # No augmentation.
    return to_pairs(dataset).repeat(options.local_epochs).batch(options.batch_size)

  def eval_preprocess(dataset):
    return to_pairs(dataset).batch(options.batch_size)

  input_spec = eval_preprocess(
      train_data.create_tf_dataset_for_client(train_data.client_ids[0])).element_spec

  def make_model_fn(config):
    def model_fn():
      return tff.learning.models.from_keras_model(
          registry.build_keras_model(config),
          loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          input_spec=input_spec,
          metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
    return model_fn

  return Task('synthetic_mlp', model_config, train_data, eval_data, make_model_fn(model_config),
              train_preprocess, eval_preprocess, make_model_fn=make_model_fn)


def ensure_domain(data_dir: str, domain: str, seed: int = 0, log=print) -> corpus.Domain:
  """The corpus domain `domain`; generates the embedded corpus under `data_dir` if the
  directory does not exist, and adds the domain to an embedded corpus that lacks it. A
  directory with neither (real LibriSpeech, say) is used as it is."""
  spec = corpus.domain(domain)
  manifest = corpus.read_manifest(data_dir) if os.path.isdir(data_dir) else None
  if not os.path.exists(data_dir):
    corpus.generate(data_dir, corpus.CorpusConfig(seed=seed), log=log)
  elif manifest is not None and domain not in manifest['domains']:
    # Only the missing domain, at its default size, with the corpus's own seed.
    default = corpus.CorpusConfig(seed=manifest['seed']).restricted_to([domain])
    corpus.generate(data_dir, default, log=log)
  return spec


def load_speech_splits(options: TaskOptions, tokenizer: features.CharTokenizer, log=print
                       ) -> dict[str, librispeech.ScanReport]:
  """Scans the train/dev/test splits of `options.domain` in `options.data_dir` (generating
  the embedded corpus, or its missing domain, where `ensure_domain` does)."""
  spec = ensure_domain(options.data_dir, options.domain, options.seed, log)
  reports = {}
  for split in spec.splits:
    report = librispeech.scan_split(
        os.path.join(options.data_dir, split), tokenizer.alphabet, strict=options.strict_data,
        decoded_stamps=librispeech.decoded_stamps_dir(options.data_dir))
    if report.problems:
      log(report.summary())
      for path, reason in report.problems[:10]:
        log(f'  skipped {path}: {reason}')
    reports[split] = report
  return reports


# The named model each speech task trains unless `TaskOptions.model` names another.
SPEECH_MODELS = {'speech_ctc': 'tiny', 'speech_transducer': 'tiny_transducer'}


def build_speech_ctc(options: TaskOptions) -> Task:
  """The `tiny` Conformer-CTC on a LibriSpeech-layout corpus; clients are speakers."""
  return _build_speech('speech_ctc', SPEECH_MODELS['speech_ctc'], options)


def build_speech_transducer(options: TaskOptions) -> Task:
  """The `tiny_transducer` Conformer transducer on the same clients as `speech_ctc`."""
  return _build_speech('speech_transducer', SPEECH_MODELS['speech_transducer'], options)


def _build_speech(task_name: str, model_name: str, options: TaskOptions) -> Task:
  """A speech model on a LibriSpeech-layout corpus; clients are speakers.

  Training clients are the speakers of the domain's training split (`train-clean-100` in the
  main domain); evaluation clients are its test split's, who never appear in training.
  """
  tokenizer = features.CharTokenizer()
  feature_config = features.FeatureConfig()
  reports = load_speech_splits(options, tokenizer)
  spec = corpus.domain(options.domain)
  cache_root = options.data_dir.rstrip(os.sep) + '.features'
  bins = feature_config.num_mel_bins

  def client_data(split, partition):
    clients = speech_data.assign_clients(reports[split].utterances, partition, seed=options.seed)
    cache = speech_data.build_feature_cache(clients, cache_root, tokenizer, feature_config)
    return speech_data.make_client_data(cache, bins)

  train_data = client_data(spec.train_split, options.partition)
  eval_data = client_data(spec.test_split, 'speaker')
  model_config = (dict(options.model_config) if options.model_config else
                  asr.named_config(options.model or model_name, tokenizer.vocab_size,
                                   seed=options.seed))
  if options.trainable_blocks is not None:
    model_config['trainable_blocks'] = list(options.trainable_blocks)
  augment = features.SpecAugmentConfig()

  def train_preprocess(dataset, seed):
    dataset = dataset.repeat(options.local_epochs).enumerate().map(
        lambda index, e: collections.OrderedDict(
            e, features=features.spec_augment(
                e['features'], seed + tf.stack([tf.constant(options.seed, tf.int64), index]),
                augment)))
    return speech_data.padded_batches(dataset, options.batch_size, bins,
                                      bucket_boundaries=(300, 450, 600))

  def eval_preprocess(dataset):
    return speech_data.padded_batches(dataset, options.batch_size, bins)

  input_spec = eval_preprocess(
      train_data.create_tf_dataset_for_client(train_data.client_ids[0])).element_spec

  def make_model_fn(config):
    return lambda: asr.AsrVariableModel(registry.build_keras_model(config), input_spec)

  evaluator = []  # Built at the first evaluation (its features are cached then).

  def transcription_eval(weights, config=None, splits=None):
    if not evaluator:
      evaluator.append(speech_eval.SplitEvaluator(
          {split: reports[split].utterances for split in (spec.dev_split, spec.test_split)}))
    return evaluator[0](weights, config or model_config, splits)

  return Task(task_name, model_config, train_data, eval_data, make_model_fn(model_config),
              train_preprocess, eval_preprocess, transcription_eval, make_model_fn)


TASKS: dict[str, Callable[[TaskOptions], Task]] = {
    'synthetic_mlp': build_synthetic_mlp,
    'speech_ctc': build_speech_ctc,
    'speech_transducer': build_speech_transducer,
}


def build_task(name: str, options: TaskOptions) -> Task:
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(sorted(TASKS))}')
  if options.model and not name.startswith('speech_'):
    raise ValueError(f'task {name!r} has one model; a model ({options.model!r}) can be chosen '
                     'for the speech tasks only')
  if options.model and options.model not in asr.NAMED_CONFIGS:
    raise ValueError(f'unknown model {options.model!r}; known: {", ".join(asr.NAMED_CONFIGS)}')
  return TASKS[name](options)
