"""Transcribes utterances with a CTC or transducer model and scores them per split (WER/CER with jiwer)."""

import collections
import os
from typing import Optional, Sequence

import tensorflow as tf

from fl_compression.data import features as features_lib
from fl_compression.data import librispeech
from fl_compression.evaluation import error_rates
from fl_compression.models import asr


def utterance_dataset(utterances: Sequence[librispeech.Utterance],
                      feature_config: features_lib.FeatureConfig, batch_size: int
                      ) -> tf.data.Dataset:
  """Padded batches of normalized log-mel features, decoded in this process (tensorflow-io)."""
  paths = tf.data.Dataset.from_tensor_slices([u.audio_path for u in utterances])

  def featurize(path):
    feats = features_lib.normalize(
        features_lib.log_mel(librispeech.decode_flac(path), feature_config))
    return collections.OrderedDict(features=feats, feature_length=tf.shape(feats)[0])

  return paths.map(featurize, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(
      batch_size, padded_shapes=collections.OrderedDict(
          features=[None, feature_config.num_mel_bins], feature_length=[]))


def transcribe(model: tf.keras.Model, dataset: tf.data.Dataset,
               tokenizer: features_lib.CharTokenizer) -> list[str]:
  """Greedy transcripts of every utterance of `dataset`, in order."""
  texts = []
  for batch in dataset:
    for ids in asr.greedy_decode(model, batch['features'], batch['feature_length']).to_list():
      texts.append(tokenizer.decode(ids))
  return texts


class SplitEvaluator:
  """WER/CER of model weights on fixed utterance sets; features are computed once and cached.

  The Keras model is built at each call, for the config given: a model kept from an earlier
  call would be invalidated by TFF tracing computations in graph mode in between.
  """

  def __init__(self, splits: dict[str, Sequence[librispeech.Utterance]], *,
               batch_size: int = 32):
    self._tokenizer = features_lib.CharTokenizer()
    config = features_lib.FeatureConfig()
    self._splits = {
        split: (utterances, utterance_dataset(utterances, config, batch_size).cache())
        for split, utterances in splits.items() if utterances}

  def __call__(self, weights, model_config: dict, splits: Optional[Sequence[str]] = None
               ) -> dict[str, error_rates.ErrorRates]:
    """`weights`: a `tff.learning.models.ModelWeights` (or its trainable/non-trainable lists)
    of a model of `model_config`; scored on `splits` (default: all)."""
    unknown = sorted(set(splits or ()) - set(self._splits))
    if unknown:
      raise ValueError(f'no utterances of split(s) {", ".join(unknown)} to score')
    from fl_compression.models import registry  # pylint: disable=g-import-not-at-top
    model = registry.build_keras_model(model_config)
    trainable, non_trainable = weights[0], weights[1]
    for variable, value in zip(model.trainable_variables, trainable):
      variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, non_trainable):
      variable.assign(value)
    return {split: score(utterances, transcribe(model, dataset, self._tokenizer))
            for split, (utterances, dataset) in self._splits.items()
            if splits is None or split in splits}


def score(utterances: Sequence[librispeech.Utterance], hypotheses: Sequence[str]
          ) -> error_rates.ErrorRates:
  """Error rates of `hypotheses` against the utterances' transcripts, kept per utterance id."""
  return error_rates.error_rates([u.transcript for u in utterances], hypotheses,
                                 [u.utterance_id for u in utterances])


def evaluate_splits(model: tf.keras.Model, data_dir: str, splits: Sequence[str], *,
                    batch_size: int = 16, strict: bool = False, log=print
                    ) -> dict[str, error_rates.ErrorRates]:
  """WER/CER of `model` on each split directory under `data_dir`."""
  tokenizer = features_lib.CharTokenizer()
  config = features_lib.FeatureConfig()
  results = {}
  for split in splits:
    report = librispeech.scan_split(os.path.join(data_dir, split), tokenizer.alphabet,
                                    strict=strict,
                                    decoded_stamps=librispeech.decoded_stamps_dir(data_dir))
    if report.problems:
      log(report.summary())
    if not report.utterances:
      raise librispeech.CorpusError(f'{report.split_dir}: no usable utterances')
    hypotheses = transcribe(model, utterance_dataset(report.utterances, config, batch_size),
                            tokenizer)
    results[split] = score(report.utterances, hypotheses)
  return results


def format_table(results: dict[str, error_rates.ErrorRates]) -> str:
  lines = [f'{"split":<16} {"utterances":>10} {"words":>7} {"WER":>7} {"CER":>7}']
  for split, rates in results.items():
    lines.append(f'{split:<16} {rates.num_utterances:>10} {rates.num_reference_words:>7} '
                 f'{100 * rates.wer:>6.2f}% {100 * rates.cer:>6.2f}%')
  return '\n'.join(lines)


