"""Federated speech data: one client per speaker (non-IID) or an IID partition, as tf.data.

Audio is decoded (tensorflow-io) and turned into normalized log-mel features once, in the
driver, and cached as one TFRecord file per client. Client datasets then read those files with
core TF ops only, because they run inside TFF's C++ worker, which has no tensorflow-io kernels
(and reading features beats decoding FLAC every epoch). Workers on other machines must see the
cache at the same path.
"""

import collections
import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.data import features as features_lib
from fl_compression.data import librispeech

PARTITIONS = ('speaker', 'iid')
_CACHE_VERSION = 1


def assign_clients(utterances: Sequence[librispeech.Utterance], partition: str = 'speaker',
                   *, num_iid_clients: Optional[int] = None, seed: int = 0
                   ) -> dict[str, list[librispeech.Utterance]]:
  """Groups utterances into clients: by speaker, or shuffled into equal IID shares."""
  if not utterances:
    raise ValueError('no utterances to make clients from')
  clients = collections.defaultdict(list)
  if partition == 'speaker':
    for utterance in utterances:
      clients[utterance.speaker_id].append(utterance)
  elif partition == 'iid':
    count = num_iid_clients or len({u.speaker_id for u in utterances})
    order = np.random.default_rng(seed).permutation(len(utterances))
    for rank, index in enumerate(order):
      clients[f'iid_{rank % count:04d}'].append(utterances[index])
  else:
    raise ValueError(f'unknown partition {partition!r}; known: {", ".join(PARTITIONS)}')
  return dict(sorted(clients.items()))


def utterance_features(audio_path: str, feature_config: features_lib.FeatureConfig
                       ) -> np.ndarray:
  """Normalized log-mel features [frames, bins] of one FLAC file."""
  samples = librispeech.decode_flac(audio_path)
  return features_lib.normalize(features_lib.log_mel(samples, feature_config)).numpy()


@functools.lru_cache(maxsize=None)
def _compiled_features(feature_config: features_lib.FeatureConfig):
  """`utterance_features` as one graph function of the audio path: the same ops on the same
  thread pool without eager dispatch per op (bit-identical to it on the machines tested; the
  cache test compares every record with it)."""

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
  def compute(audio_path):
    return features_lib.normalize(
        features_lib.log_mel(librispeech.decode_flac(audio_path), feature_config))

  return compute


def _example(feats: np.ndarray, labels: np.ndarray, transcript: str) -> bytes:
  feature = {
      'features': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[feats.astype(np.float32).tobytes()])),
      'num_frames': tf.train.Feature(int64_list=tf.train.Int64List(value=[feats.shape[0]])),
      'labels': tf.train.Feature(int64_list=tf.train.Int64List(value=labels.tolist())),
      'transcript': tf.train.Feature(bytes_list=tf.train.BytesList(value=[transcript.encode()])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def build_feature_cache(clients: dict[str, list[librispeech.Utterance]], cache_root: str,
                        tokenizer: features_lib.CharTokenizer,
                        feature_config: features_lib.FeatureConfig, log=print) -> str:
  """Writes `<cache_root>/<key>/<client>.tfrecord` unless present; returns the directory.

  The key hashes the client assignment, audio files (path, size, mtime) and feature settings,
  so a changed corpus or setting gets a new cache. Writing is staged and renamed into place.
  """
  description = {
      'version': _CACHE_VERSION, 'features': feature_config.__dict__,
      'symbols': tokenizer.symbols,
      'clients': {c: [(u.utterance_id, u.audio_path, os.path.getsize(u.audio_path),
                       int(os.path.getmtime(u.audio_path)), u.transcript) for u in us]
                  for c, us in clients.items()}}
  key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
  directory = os.path.join(cache_root, key)
  if os.path.isdir(directory):
    return directory
  os.makedirs(cache_root, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.staging_', dir=cache_root)
  total = sum(len(us) for us in clients.values())
  log(f'computing log-mel features of {total} utterances into {directory} ...')
  compute = _compiled_features(feature_config)

  def record(utterance):
    feats = compute(utterance.audio_path).numpy()
    labels = tokenizer.encode(tf.constant(utterance.transcript)).numpy()
    return _example(feats, labels, utterance.transcript)

  order = [(client_id, u) for client_id, us in clients.items() for u in us]
  try:
    # One utterance per usable core at a time (TF ops release the GIL), across client
    # boundaries; records keep corpus order.
    with concurrent.futures.ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
      writer, current = None, None
      try:
        for (client_id, _), serialized in zip(order, pool.map(lambda e: record(e[1]), order)):
          if client_id != current:
            if writer:
              writer.close()
            writer = tf.io.TFRecordWriter(os.path.join(staging, f'{client_id}.tfrecord'))
            current = client_id
          writer.write(serialized)
      finally:
        if writer:
          writer.close()
    os.rename(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def parse_example(serialized: tf.Tensor, num_mel_bins: int) -> collections.OrderedDict:
  """A cached record -> {features [T, bins], labels [L], feature_length, label_length}."""
  parsed = tf.io.parse_single_example(serialized, {
      'features': tf.io.FixedLenFeature([], tf.string),
      'num_frames': tf.io.FixedLenFeature([], tf.int64),
      'labels': tf.io.VarLenFeature(tf.int64),
      'transcript': tf.io.FixedLenFeature([], tf.string),
  })
  feats = tf.reshape(tf.io.decode_raw(parsed['features'], tf.float32), [-1, num_mel_bins])
  labels = tf.cast(tf.sparse.to_dense(parsed['labels']), tf.int32)
  return collections.OrderedDict(
      features=feats, labels=labels, feature_length=tf.shape(feats)[0],
      label_length=tf.shape(labels)[0])


def make_client_data(cache_dir: str, num_mel_bins: int) -> tff.simulation.datasets.ClientData:
  """ClientData over a feature cache: client `c` reads `<cache_dir>/c.tfrecord`."""
  client_ids = sorted(name[:-len('.tfrecord')] for name in os.listdir(cache_dir)
                      if name.endswith('.tfrecord'))
  if not client_ids:
    raise ValueError(f'{cache_dir}: no client files in the feature cache')
  prefix = os.path.abspath(cache_dir) + os.sep

  def dataset_fn(client_id):
    dataset = tf.data.TFRecordDataset(tf.strings.join([prefix, client_id, '.tfrecord']))
    return dataset.map(lambda record: parse_example(record, num_mel_bins))

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(client_ids, dataset_fn)


def padded_batches(dataset: tf.data.Dataset, batch_size: int, num_mel_bins: int,
                   *, bucket_boundaries: Sequence[int] = (), drop_remainder: bool = False
                   ) -> tf.data.Dataset:
  """Pads to the longest example of each batch; with boundaries, batches similar lengths."""
  shapes = collections.OrderedDict(features=[None, num_mel_bins], labels=[None],
                                   feature_length=[], label_length=[])
  if bucket_boundaries:
    return dataset.bucket_by_sequence_length(
        lambda e: e['feature_length'], list(bucket_boundaries),
        [batch_size] * (len(bucket_boundaries) + 1), padded_shapes=shapes,
        drop_remainder=drop_remainder)
  return dataset.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=drop_remainder)
