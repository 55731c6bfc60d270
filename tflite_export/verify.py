"""Checks an exported bundle against the Keras model it came from, in the TFLite interpreter.

Checks (each with its measured value and limit; the export fails if one fails):
- `infer` logits equal the Keras model's within `LOGITS_ATOL`, and its greedy tokens equal
  `asr.greedy_ctc_decode`'s;
- the first `train` loss equals the Keras loss of the same batch within `LOSS_RTOL` relative,
  and the step changes the model;
- `save`, then `restore` into a fresh interpreter, reproduces `infer` exactly;
- the int8 model's `infer` logits equal those of the Keras model with its weights on the same
  integer grid, within `LOGITS_ATOL`;
- on real utterances (the corpus's `test-clean`, when `data_dir` has one): `transcribe` of the
  audio gives the tokens of the Python pipeline (tensorflow-io decoding, log-mel, Keras model,
  greedy decoding) for every utterance; the WER of both, and of the int8 model, is reported;
- with sparse training (ZeroFL): the loss of the second `train` step (which depends on the
  first step's SWAT forward and backward) equals that of the same two steps of the TensorFlow
  module within `LOSS_RTOL`, and `sparse_update` decodes to exactly the round's update at the
  top-k positions of the trained weights (numpy), zero elsewhere. The largest weight
  difference after the two steps is reported (Adam normalizes each gradient entry, so entries
  whose gradient cancels to near zero differ by a fraction of a step between the TF and TFLite
  kernels).
Without a corpus the batch is seeded random features and labels, and `transcribe` is checked
on random audio.
"""

import os
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf

from fl_compression.data import features as features_lib
from fl_compression.data import librispeech
from fl_compression.evaluation import error_rates
from fl_compression.models import asr
from tflite_export import bundle as bundle_lib
from tflite_export import signatures

VERIFY_SPLIT = 'test-clean'


def _utterances(data_dir: str | None, count: int) -> list[librispeech.Utterance]:
  if not data_dir:
    return []
  split_dir = os.path.join(data_dir, VERIFY_SPLIT)
  if not os.path.isdir(split_dir):
    return []
  return librispeech.scan_split(split_dir, set(features_lib.CHARACTERS[1:])).utterances[:count]


def _padded(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
  length = max(a.shape[0] for a in arrays)
  out = np.zeros((len(arrays), length) + arrays[0].shape[1:], dtype)
  for i, a in enumerate(arrays):
    out[i, :a.shape[0]] = a
  return out, np.array([a.shape[0] for a in arrays], np.int32)


def _check(value: float, limit: float, ok: bool) -> dict[str, Any]:
  return {'value': float(value), 'limit': float(limit), 'ok': bool(ok)}


def _sparse_checks(model: tf.keras.Model, manifest: dict[str, Any], batch, tflite_weights,
                   update, tflite_second_loss: float) -> tuple[dict[str, Any], float]:
  """The ZeroFL checks (see the module docstring) and the largest weight difference; trains
  `model` (the last use of it)."""
  training = {k: manifest['training'][k] for k in (
      'optimizer', 'learning_rate', 'trainable', 'beta_1', 'beta_2', 'epsilon',
      'sparse_training', 'mask_ratio')}
  module = signatures.OnDeviceModel(model, signatures.TrainingOptions(**training))
  initial = {signatures.variable_name(v): v.numpy() for v in module.trainable}
  losses = [float(module.train(*[tf.constant(x) for x in batch])['loss']) for _ in range(2)]
  relative = abs(tflite_second_loss - losses[1]) / max(abs(losses[1]), 1e-6)
  worst = max(float(np.max(np.abs(v.numpy() - tflite_weights[signatures.variable_name(v)])))
              for v in module.trainable)
  mismatched = 0
  for name, entry in manifest['training']['sparse_update']['variables'].items():
    expected = initial[name] - tflite_weights[name]
    if entry['sent'] == 'top_k':
      order = np.argsort(-np.abs(tflite_weights[name]).ravel(), kind='stable')[:entry['count']]
      kept = np.zeros(expected.size, bool)
      kept[order] = True
      expected = np.where(kept.reshape(expected.shape), expected, 0.0)
    mismatched += int(not np.array_equal(update[name], expected.astype(np.float32)))
  return {'sparse_second_loss_relative_diff': _check(relative, bundle_lib.LOSS_RTOL,
                                                     relative <= bundle_lib.LOSS_RTOL),
          'sparse_update_mismatched_variables': _check(mismatched, 0, mismatched == 0)}, worst


def verify(bundle_dir: str, model: tf.keras.Model, data_dir: str | None = None, *,
           int8_path: str | None = None, int8_reference: tf.keras.Model | None = None,
           num_utterances: int = 20, seed: int = 0) -> dict[str, Any]:
  """Runs the checks (see the module docstring); raises `ExportError` if one fails."""
  bundle = bundle_lib.Bundle(bundle_dir)
  tokenizer = features_lib.CharTokenizer()
  utterances = _utterances(data_dir, num_utterances)
  rng = np.random.default_rng(seed)
  if utterances:
    audio = [librispeech.decode_flac(u.audio_path).numpy() for u in utterances]
    feats = [features_lib.normalize(features_lib.log_mel(tf.constant(a))).numpy()
             for a in audio]
    labels = [tokenizer.encode(tf.constant(u.transcript)).numpy() for u in utterances]
  else:
    audio = [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(2)]
    feats = [rng.standard_normal((n, bundle.num_mel_bins), dtype=np.float32)
             for n in (300, 220)]
    labels = [rng.integers(1, len(bundle.vocabulary), n).astype(np.int32) for n in (12, 8)]
  batch_size = min(4, len(feats))
  features, feature_length = _padded(feats[:batch_size], np.float32)
  label_ids, label_length = _padded(labels[:batch_size], np.int32)
  checks, report = {}, {'utterances': len(utterances), 'split': VERIFY_SPLIT if utterances
                        else 'random inputs'}

  keras_batch = dict(features=tf.constant(features), feature_length=tf.constant(feature_length),
                     labels=tf.constant(label_ids), label_length=tf.constant(label_length))
  if model.name == 'conformer_ctc':
    logits, logit_length = model([keras_batch['features'], keras_batch['feature_length']],
                                 training=False)
    out = bundle.infer(features, feature_length)
    diff = float(np.max(np.abs(out['logits'] - logits.numpy())))
    checks['infer_logits_max_abs_diff'] = _check(diff, bundle_lib.LOGITS_ATOL,
                                                 diff <= bundle_lib.LOGITS_ATOL)
    expected = asr.greedy_ctc_decode(logits, logit_length).to_list()
    got = [row[:n].tolist() for row, n in zip(out['token_ids'], out['token_count'])]
    mismatched = sum(a != b for a, b in zip(expected, got))
    checks['infer_token_mismatches'] = _check(mismatched, 0, mismatched == 0)
  if int8_path and int8_reference is not None and model.name == 'conformer_ctc':
    quantized = bundle_lib.Bundle(bundle_dir, os.path.basename(int8_path)).infer(
        features, feature_length)['logits']
    reference_logits, _ = int8_reference([keras_batch['features'],
                                          keras_batch['feature_length']], training=False)
    diff = float(np.max(np.abs(quantized - reference_logits.numpy())))
    checks['int8_infer_logits_max_abs_diff'] = _check(diff, bundle_lib.LOGITS_ATOL,
                                                      diff <= bundle_lib.LOGITS_ATOL)
  keras_loss = float(tf.reduce_mean(asr.per_example_loss(model, keras_batch, training=False)))
  loss = bundle.train(features, feature_length, label_ids, label_length)
  relative = abs(loss - keras_loss) / max(abs(keras_loss), 1e-6)
  checks['train_first_loss_relative_diff'] = _check(relative, bundle_lib.LOSS_RTOL,
                                                    relative <= bundle_lib.LOSS_RTOL)
  report.update(keras_loss=keras_loss, tflite_first_loss=loss)
  second = bundle.train(features, feature_length, label_ids, label_length)
  checks['train_step_changes_loss'] = _check(abs(second - loss), 0, second != loss)
  trained = bundle.infer(features, feature_length)
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, 'checkpoint')
    bundle.save(path)
    fresh = bundle_lib.Bundle(bundle_dir)
    fresh.restore(path)
    restored = fresh.infer(features, feature_length)
  exact = all(np.array_equal(trained[k], restored[k]) for k in trained)
  checks['save_restore_reproduces_infer'] = _check(float(not exact), 0, exact)
  sparse = bundle.manifest['training'].get('sparse_update')
  if sparse:
    update = bundle.sparse_update()
    with tempfile.TemporaryDirectory() as directory:
      path = os.path.join(directory, 'checkpoint')
      bundle.save(path)
      reader = tf.train.load_checkpoint(path)
      tflite_weights = {name: reader.get_tensor(name) for name in update}

  # Transcription of whole utterances from audio, against the Python pipeline.
  reference = bundle_lib.Bundle(bundle_dir)  # untrained by the steps above
  int8 = bundle_lib.Bundle(bundle_dir, os.path.basename(int8_path)) if int8_path else None
  mismatches, texts = 0, {'keras': [], 'tflite': [], 'int8': []}
  for samples, feat in zip(audio, feats if utterances else [None] * len(audio)):
    if feat is None:
      feat = features_lib.normalize(features_lib.log_mel(tf.constant(samples))).numpy()
    keras_ids = asr.greedy_decode(model, tf.constant(feat[None]),
                                  tf.constant([feat.shape[0]])).to_list()[0]
    tflite_ids = reference.transcribe(samples).tolist()
    mismatches += keras_ids != tflite_ids
    texts['keras'].append(tokenizer.decode(keras_ids))
    texts['tflite'].append(tokenizer.decode(tflite_ids))
    if int8:
      texts['int8'].append(tokenizer.decode(int8.transcribe(samples).tolist()))
  checks['transcribe_token_mismatches'] = _check(mismatches, 0, mismatches == 0)
  if sparse:
    sparse_checks, report['sparse_train_weights_max_abs_diff'] = _sparse_checks(
        model, bundle.manifest, (features, feature_length, label_ids, label_length),
        tflite_weights, update, second)
    checks.update(sparse_checks)
  if utterances:
    refs = [u.transcript for u in utterances]
    for name, hyps in texts.items():
      if hyps:
        report[f'{name}_wer'] = error_rates.error_rates(refs, hyps).wer
  report['checks'] = checks
  failed = [f'{name} = {c["value"]:g} (limit {c["limit"]:g})' for name, c in checks.items()
            if not c['ok']]
  if failed:
    raise signatures.ExportError('the exported model does not match the Keras model: ' +
                                 '; '.join(failed))
  return report
