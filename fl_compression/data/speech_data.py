"""Federated speech data: one client per speaker (non-IID) or an IID partition, as tf.data.

Client datasets yield raw `{audio_path, transcript}` pairs; `preprocess` decodes the FLAC,
computes normalized log-mel features (with optional SpecAugment), tokenizes, and pads batches.
"""

import collections
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.data import features as features_lib
from fl_compression.data import librispeech

PARTITIONS = ('speaker', 'iid')


def make_client_data(utterances: Sequence[librispeech.Utterance], partition: str = 'speaker',
                     *, num_iid_clients: Optional[int] = None, seed: int = 0
                     ) -> tff.simulation.datasets.ClientData:
  """Groups utterances into clients: by speaker, or shuffled into equal IID shares."""
  if not utterances:
    raise ValueError('no utterances to make clients from')
  if partition == 'speaker':
    owners = [u.speaker_id for u in utterances]
  elif partition == 'iid':
    count = num_iid_clients or len({u.speaker_id for u in utterances})
    order = np.random.default_rng(seed).permutation(len(utterances))
    owners = [''] * len(utterances)
    for rank, index in enumerate(order):
      owners[index] = f'iid_{rank % count:04d}'
  else:
    raise ValueError(f'unknown partition {partition!r}; known: {", ".join(PARTITIONS)}')
  owner_tensor = tf.constant(owners)
  path_tensor = tf.constant([u.audio_path for u in utterances])
  text_tensor = tf.constant([u.transcript for u in utterances])

  def dataset_fn(client_id):
    dataset = tf.data.Dataset.from_tensor_slices((owner_tensor, path_tensor, text_tensor))
    dataset = dataset.filter(lambda owner, path, text: tf.equal(owner, client_id))
    return dataset.map(lambda owner, path, text: collections.OrderedDict(
        audio_path=path, transcript=text))

  return tff.simulation.datasets.ClientData.from_clients_and_tf_fn(
      sorted(set(owners)), dataset_fn)


def featurize(example, tokenizer: features_lib.CharTokenizer,
              feature_config: features_lib.FeatureConfig,
              augment: Optional[features_lib.SpecAugmentConfig] = None):
  """{audio_path, transcript} -> {features [T, bins], labels [L], feature_length, label_length}."""
  feats = features_lib.normalize(
      features_lib.log_mel(librispeech.decode_flac(example['audio_path']), feature_config))
  if augment is not None:
    feats = features_lib.spec_augment(feats, augment)
  labels = tokenizer.encode(example['transcript'])
  return collections.OrderedDict(
      features=feats, labels=labels,
      feature_length=tf.shape(feats)[0], label_length=tf.shape(labels)[0])


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
