"""The exported bundle of the shipped pretrained model, checked in the TFLite interpreter.

Independent references: the Keras model and its loss on the same batch, the Python pipeline
(tensorflow-io decoding, log-mel, Keras, greedy decoding) on a real synthesized utterance,
and TFLite's own flatbuffer schema for the operators and weight types.
"""

import contextlib
import io
import json
import os
import re
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fl_compression.data import corpus
from fl_compression.data import features as features_lib
from fl_compression.data import librispeech
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from fl_compression.models import transducer
from fl_compression.pruning import reduce as reduce_lib
from tests import tff_test_utils
from tflite_export import bundle as bundle_lib
from tflite_export import flatbuffer
from tflite_export import signatures
from tflite_export import verify

_CORPUS = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=1, num_test_speakers=1,
                           train_utterances_per_speaker=1, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=4),
    short_form=None, seed=11)
# TensorFlow kernels the training signature may need: gradients with no TFLite builtin
# (broadcasting, convolutions) and the in-place updates of TensorFlow's CTC loss.
_ALLOWED_TRAIN_FLEX = {'BroadcastGradientArgs', 'Conv2DBackpropFilter',
                       'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput',
                       'InplaceAdd', 'InplaceUpdate'}


def _batch(utterances):
  tokenizer = features_lib.CharTokenizer()
  feats = [features_lib.normalize(features_lib.log_mel(librispeech.decode_flac(u.audio_path)))
           .numpy() for u in utterances]
  labels = [tokenizer.encode(tf.constant(u.transcript)).numpy() for u in utterances]
  frames, tokens = max(f.shape[0] for f in feats), max(len(l) for l in labels)
  batch = dict(features=np.zeros((len(feats), frames, 80), np.float32),
               feature_length=np.array([f.shape[0] for f in feats], np.int32),
               labels=np.zeros((len(labels), tokens), np.int32),
               label_length=np.array([len(l) for l in labels], np.int32))
  for i, (f, l) in enumerate(zip(feats, labels)):
    batch['features'][i, :f.shape[0]] = f
    batch['labels'][i, :len(l)] = l
  return batch


def _analyzer_ops(model: bytes) -> dict[str, set[str]]:
  """Per signature, the op names TF's `tf.lite.experimental.Analyzer` lists for its subgraph
  and every subgraph its ops call (CALL_ONCE, WHILE, IF)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    tf.lite.experimental.Analyzer.analyze(model_content=model)
  subgraphs, names, current = {}, {}, None
  for line in out.getvalue().splitlines():
    header = re.match(r'^Subgraph#(\d+) ([^(]*)\(', line)
    if header:
      current = int(header.group(1))
      subgraphs[current] = []
      if header.group(2):
        names[header.group(2)] = current
      continue
    op = re.match(r'^  Op#\d+ (\w+)\((.*)', line)
    if op and current is not None:
      subgraphs[current].append((op.group(1), [int(i) for i in
                                               re.findall(r'Subgraph#(\d+)', op.group(2))]))
    elif not line.startswith('  '):
      current = None

  def reach(index, seen):
    if index in seen:
      return set()
    seen.add(index)
    found = set()
    for op, called in subgraphs.get(index, []):
      found.add(op)
      for i in called:
        found |= reach(i, seen)
    return found

  return {name: reach(index, set()) for name, index in names.items()}


class PretrainedBundleTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir = os.path.join(cls.tmp, 'corpus')
    corpus.generate(data_dir, _CORPUS, log=lambda message: None)
    cls.utterances = librispeech.scan_split(os.path.join(data_dir, 'test-clean')).utterances
    cls.model_dir = tff_test_utils.repo_path('checkpoints/conformer_ctc_tiny')
    cls.bundle_dir = os.path.join(cls.tmp, 'bundle')
    cls.manifest = bundle_lib.export_bundle(
        cls.model_dir, cls.bundle_dir,
        bundle_lib.ExportOptions(quantize='int8', measure_memory=False),
        log=lambda line: None)
    cls.model, _ = checkpoint.load_keras_model(cls.model_dir)
    cls.batch = _batch(cls.utterances)

  def _read(self, name):
    with open(os.path.join(self.bundle_dir, name), 'rb') as f:
      return f.read()

  def test_bundle_has_the_files_and_a_manifest_that_describes_them(self):
    self.assertSetEqual(set(os.listdir(self.bundle_dir)),
                        {'model.tflite', 'model_int8.tflite', 'vocab.txt', 'manifest.json'})
    with open(os.path.join(self.bundle_dir, 'manifest.json')) as f:
      manifest = json.load(f)
    self.assertEqual(sorted(manifest['signatures']), sorted(signatures.SIGNATURES))
    for name, entry in manifest['files'].items():
      self.assertEqual(entry['bytes'], os.path.getsize(os.path.join(self.bundle_dir, name)))
    vocab = self._read('vocab.txt').decode().split('\n')[:-1]
    self.assertEqual(vocab, list(features_lib.CHARACTERS))
    self.assertEqual(manifest['vocabulary'], vocab)
    train_inputs = {i['name']: i for i in manifest['signatures']['train']['inputs']}
    self.assertEqual(train_inputs['features'], {'name': 'features', 'shape': [-1, -1, 80],
                                                'dtype': 'float32'})
    self.assertEqual(train_inputs['labels']['shape'], [-1, -1])
    self.assertEqual(manifest['features']['frame_step'], 160)
    self.assertEqual(manifest['parameters'], 1_164_797)
    self.assertEqual(manifest['flex_runtime_needed_by'], ['restore', 'save', 'train'])

  def test_infer_and_transcribe_use_only_builtins_and_train_few_flex_ops(self):
    ops = flatbuffer.signature_ops(self._read('model.tflite'))
    for name in ('infer', 'transcribe'):
      self.assertTrue(ops[name].builtin_only, (name, ops[name].flex, ops[name].custom))
    self.assertTrue(ops['train'].flex)
    self.assertLessEqual(set(ops['train'].flex), _ALLOWED_TRAIN_FLEX)
    self.assertEqual(sorted(ops['train'].flex), self.manifest['signatures']['train']['flex_ops'])
    self.assertEqual(set(ops['save'].flex), {'Save'})
    int8_ops = flatbuffer.signature_ops(self._read('model_int8.tflite'))
    self.assertEqual(sorted(int8_ops), ['infer', 'transcribe'])
    self.assertTrue(all(o.builtin_only for o in int8_ops.values()))

  def test_tf_lite_analyzer_agrees_on_the_flex_ops(self):
    # An independent reader of the flatbuffer (TF's own model analyzer, not the project's
    # walker): infer and transcribe reach no Flex op, train reaches the manifest's ones.
    for name, expected in (('model.tflite', self.manifest['signatures']),
                           ('model_int8.tflite', None)):
      ops = _analyzer_ops(self._read(name))
      self.assertContainsSubset({'infer', 'transcribe'}, set(ops))
      for signature in ('infer', 'transcribe'):
        self.assertEqual({op for op in ops[signature] if op.startswith('Flex')}, set(),
                         (name, signature))
      if expected is not None:
        self.assertEqual(sorted(op[len('Flex'):] for op in ops['train'] if op.startswith('Flex')),
                         expected['train']['flex_ops'])

  def test_infer_matches_the_keras_model(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    out = runner.infer(self.batch['features'], self.batch['feature_length'])
    logits, lengths = self.model([self.batch['features'], self.batch['feature_length']],
                                 training=False)
    np.testing.assert_array_equal(out['logit_length'], lengths.numpy())
    np.testing.assert_allclose(out['logits'], logits.numpy(), atol=bundle_lib.LOGITS_ATOL)
    expected = asr.greedy_ctc_decode(logits, lengths).to_list()
    self.assertEqual([r[:n].tolist() for r, n in zip(out['token_ids'], out['token_count'])],
                     expected)

  def test_first_train_loss_is_the_keras_loss_and_twenty_steps_lower_it(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    keras_loss = float(tf.reduce_mean(asr.per_example_loss(
        self.model, {k: tf.constant(v) for k, v in self.batch.items()}, training=False)))
    losses = [runner.train(**self.batch) for _ in range(20)]
    # float32 kernels of TFLite and TensorFlow on the same weights: 1e-4 relative.
    self.assertAlmostEqual(losses[0] / keras_loss, 1.0, delta=bundle_lib.LOSS_RTOL)
    self.assertLess(losses[-1], 0.7 * losses[0])
    after = runner.infer(self.batch['features'], self.batch['feature_length'])['logits']
    before = bundle_lib.Bundle(self.bundle_dir).infer(
        self.batch['features'], self.batch['feature_length'])['logits']
    self.assertGreater(np.max(np.abs(after - before)), 1e-3)

  def test_save_then_restore_in_a_fresh_interpreter_reproduces_infer_exactly(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    for _ in range(2):
      runner.train(**self.batch)
    trained = runner.infer(self.batch['features'], self.batch['feature_length'])
    path = os.path.join(tempfile.mkdtemp(dir=self.tmp), 'phone.ckpt')
    runner.save(path)
    fresh = bundle_lib.Bundle(self.bundle_dir)
    untrained = fresh.infer(self.batch['features'], self.batch['feature_length'])
    self.assertFalse(np.array_equal(untrained['logits'], trained['logits']))
    fresh.restore(path)
    restored = fresh.infer(self.batch['features'], self.batch['feature_length'])
    for key in trained:
      np.testing.assert_array_equal(restored[key], trained[key])
    # The optimizer state round-trips too (Adam's step count and moments): one more step on
    # the restored model is exactly the step on the original.
    self.assertEqual(fresh.train(**self.batch), runner.train(**self.batch))
    stepped = fresh.infer(self.batch['features'], self.batch['feature_length'])
    original = runner.infer(self.batch['features'], self.batch['feature_length'])
    np.testing.assert_array_equal(stepped['logits'], original['logits'])
    # The phone's checkpoint is a TensorFlow checkpoint: the desktop reads it back.
    reader = tf.compat.v1.train.NewCheckpointReader(path)
    names = set(reader.get_variable_to_shape_map())
    self.assertEqual(names, set(self.manifest['training']['checkpoint_tensors']))
    kernel = next(v for v in self.model.trainable_variables if v.name == 'ctc_head/kernel:0')
    self.assertEqual(reader.get_tensor('ctc_head/kernel').shape, tuple(kernel.shape))

  def test_transcribe_of_real_audio_gives_the_python_pipelines_tokens(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    for utterance in self.utterances:
      audio = librispeech.decode_flac(utterance.audio_path)
      feats = features_lib.normalize(features_lib.log_mel(audio))
      expected = asr.greedy_decode(self.model, feats[None], tf.shape(feats)[:1]).to_list()[0]
      got = runner.transcribe(audio.numpy()).tolist()
      self.assertEqual(got, expected, utterance.utterance_id)
      self.assertNotEmpty(got)

  def test_int8_model_stores_int8_weights_and_computes_the_model_on_that_grid(self):
    content = self._read('model_int8.tflite')
    stored = flatbuffer.constant_bytes_by_type(content)
    # Every weight matrix of a matrix operator is int8; biases, norms, the mel filterbank
    # and the attention's u/v biases stay float32.
    self.assertGreater(stored['INT8'], 0.95 * self.manifest['parameters'])
    self.assertLess(stored['FLOAT32'], 0.05 * 4 * self.manifest['parameters'])
    self.assertLess(os.path.getsize(os.path.join(self.bundle_dir, 'model_int8.tflite')),
                    0.45 * 4 * self.manifest['parameters'])
    # Independent reference: the Keras model with its matrices on the 8-bit grid.
    snapped, _ = checkpoint.load_keras_model(self.model_dir)
    for variable in snapped.trainable_variables:
      if variable.shape.rank >= 2:
        w = variable.numpy()
        scale = np.abs(w).max(axis=tuple(range(w.ndim - 1)))
        scale = np.where(scale > 0, scale / 127, 1.0)
        variable.assign(np.clip(np.round(w / scale), -127, 127) * scale)
    logits, _ = snapped([self.batch['features'], self.batch['feature_length']], training=False)
    out = bundle_lib.Bundle(self.bundle_dir, bundle_lib.INT8_FILE).infer(
        self.batch['features'], self.batch['feature_length'])
    np.testing.assert_allclose(out['logits'], logits.numpy(), atol=bundle_lib.LOGITS_ATOL)
    float_logits = bundle_lib.Bundle(self.bundle_dir).infer(
        self.batch['features'], self.batch['feature_length'])['logits']
    self.assertGreater(np.max(np.abs(out['logits'] - float_logits)), 1e-3)  # It is quantized.


class BadInputTest(absltest.TestCase):
  """Wrong inputs get errors that name them; nothing saved is lost."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    config = asr.tiny_config(vocab_size=29)
    config['encoder'].update(num_blocks=1, model_dim=32, dropout=0.0)
    model = registry.build_keras_model(config)
    cls.model_dir = os.path.join(cls.tmp, 'model')
    checkpoint.save_model(cls.model_dir, config, tff.learning.models.ModelWeights(
        [v.numpy() for v in model.trainable_variables],
        [v.numpy() for v in model.non_trainable_variables]))
    cls.bundle_dir = os.path.join(cls.tmp, 'bundle')
    cls.manifest = bundle_lib.export_bundle(
        cls.model_dir, cls.bundle_dir, bundle_lib.ExportOptions(
            training=signatures.TrainingOptions(optimizer='sgd', learning_rate=1e-3),
            measure_memory=False), log=lambda line: None)
    rng = np.random.default_rng(0)
    cls.features = rng.standard_normal((2, 90, 80), dtype=np.float32)
    cls.lengths = np.array([90, 70], np.int32)

  def test_wrong_inputs_name_the_input(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    cases = [
        (lambda: runner.infer(self.features[:, :, :40], self.lengths),
         r'features must be \[batch, frames, 80\] log-mel frames, got shape \[2, 90, 40\]'),
        (lambda: runner.infer(self.features, [90]), 'feature_length must have one entry'),
        (lambda: runner.infer(self.features, [90, 91]), r'feature_length must be in 7..90'),
        (lambda: runner.train(self.features, self.lengths, [[1, 2], [3, 29]], [2, 2]),
         r'labels must be token ids in 1..28'),
        (lambda: runner.train(self.features, self.lengths, [[1, 2], [3, 4]], [2, 3]),
         r'label_length must give 1..2 tokens'),
        (lambda: runner.transcribe(np.zeros(1000, np.float32)),
         r'audio has 1000 samples; the model needs at least 1360'),
        (lambda: runner.restore(os.path.join(self.tmp, 'no_such.ckpt')),
         r'cannot restore from .*no_such.ckpt: no such checkpoint file'),
        (lambda: runner.save(os.path.join(self.tmp, 'no_dir', 'x.ckpt')),
         r'cannot save to .*x.ckpt: .*no_dir is not a directory'),
    ]
    for call, message in cases:
      with self.assertRaisesRegex(bundle_lib.BundleError, message):
        call()

  def test_failed_restore_in_the_interpreter_leaves_the_model_as_it_was(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    before = runner.infer(self.features, self.lengths)['logits']
    restore = runner.interpreter.get_signature_runner('restore')
    missing = os.path.join(self.tmp, 'missing.ckpt')
    with self.assertRaisesRegex(RuntimeError, 'missing.ckpt'):
      restore(checkpoint_path=np.array(missing, dtype=np.bytes_))
    # A checkpoint of the right names, one of them with another shape, fails before any
    # variable is assigned.
    names = self.manifest['training']['checkpoint_tensors']
    shapes = {v.name.split(':')[0]: v.shape for v in
              bundle_lib.keras_model_of(self.bundle_dir).trainable_variables}
    wrong = os.path.join(self.tmp, 'wrong_shape.ckpt')
    tensors = [tf.ones(shapes[n]) for n in names]
    kernel = next(i for i, n in enumerate(names) if n == 'ctc_head/kernel')
    tensors[kernel] = tf.ones(list(reversed(shapes[names[kernel]])))  # Transposed.
    tf.raw_ops.Save(filename=wrong, tensor_names=names, data=tensors)
    with self.assertRaisesRegex(RuntimeError, 'Shape in shape_and_slice spec does not match'):
      restore(checkpoint_path=np.array(wrong, dtype=np.bytes_))
    np.testing.assert_array_equal(runner.infer(self.features, self.lengths)['logits'], before)

  def test_failed_save_keeps_the_last_good_checkpoint(self):
    runner = bundle_lib.Bundle(self.bundle_dir)
    path = os.path.join(tempfile.mkdtemp(dir=self.tmp), 'good.ckpt')
    runner.save(path)
    with open(path, 'rb') as f:
      good = f.read()
    runner.train(self.features, self.lengths, [[1, 2], [3, 4]], [2, 2])
    save = runner.interpreter.get_signature_runner('save')
    # A path whose parent is a file: TensorFlow cannot create its temporary file there.
    with self.assertRaises(RuntimeError):
      save(checkpoint_path=np.array(os.path.join(path, 'inside'), dtype=np.bytes_))
    with open(path, 'rb') as f:
      self.assertEqual(f.read(), good)
    fresh = bundle_lib.Bundle(self.bundle_dir)
    fresh.restore(path)
    np.testing.assert_array_equal(
        fresh.infer(self.features, self.lengths)['logits'],
        bundle_lib.Bundle(self.bundle_dir).infer(self.features, self.lengths)['logits'])

  def test_export_errors_name_the_model_dir_and_keep_an_existing_bundle(self):
    options = bundle_lib.ExportOptions(measure_memory=False)
    quiet = lambda line: None  # noqa: E731
    with self.assertRaisesRegex(signatures.ExportError, r'--model_dir=.*nowhere does not exist'):
      bundle_lib.export_bundle(os.path.join(self.tmp, 'nowhere'), self.bundle_dir, options,
                               log=quiet)
    unknown = os.path.join(self.tmp, 'unknown_model')
    shutil.copytree(self.model_dir, unknown)
    with open(os.path.join(unknown, 'config.json')) as f:
      config = json.load(f)
    config['model']['name'] = 'conformer_xyz'
    with open(os.path.join(unknown, 'config.json'), 'w') as f:
      json.dump(config, f)
    with self.assertRaisesRegex(signatures.ExportError, "unknown model config name 'conformer_xyz'"):
      bundle_lib.export_bundle(unknown, self.bundle_dir, options, log=quiet)
    with open(os.path.join(self.bundle_dir, 'manifest.json')) as f:
      before = f.read()
    bad_trainable = bundle_lib.ExportOptions(
        training=signatures.TrainingOptions(trainable='no_such_layer'),
        measure_memory=False)
    with self.assertRaisesRegex(signatures.ExportError, '--trainable=no_such_layer'):
      bundle_lib.export_bundle(self.model_dir, self.bundle_dir, bad_trainable, log=quiet)
    with open(os.path.join(self.bundle_dir, 'manifest.json')) as f:
      self.assertEqual(f.read(), before)
    occupied = os.path.join(self.tmp, 'occupied')
    os.makedirs(occupied)
    with open(os.path.join(occupied, 'notes.txt'), 'w') as f:
      f.write('keep me')
    with self.assertRaisesRegex(signatures.ExportError, 'exists and is not an export bundle'):
      bundle_lib.export_bundle(self.model_dir, occupied, options, log=quiet)
    self.assertEqual(os.listdir(occupied), ['notes.txt'])



def _save(directory, config, model):
  checkpoint.save_model(directory, config, tff.learning.models.ModelWeights(
      [v.numpy() for v in model.trainable_variables],
      [v.numpy() for v in model.non_trainable_variables]))


class ReducedAndTransducerExportTest(absltest.TestCase):
  """A federated-pruning reduced model, a sparse-training bundle and a transducer export like
  the dense CTC model. They start from `micro` at its initialization: what they check does
  not depend on trained weights (the pretrained `tiny` is exported by PretrainedBundleTest)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    config = asr.named_config('micro', 29)
    cls.dense_dir = os.path.join(cls.tmp, 'micro')
    _save(cls.dense_dir, config, registry.build_keras_model(config))
    rng = np.random.default_rng(1)
    cls.features = rng.standard_normal((2, 150, 80), dtype=np.float32)
    cls.lengths = np.array([150, 110], np.int32)
    cls.labels = np.array([[5, 6, 7, 8], [9, 10, 0, 0]], np.int32)
    cls.label_lengths = np.array([4, 2], np.int32)

  def _export(self, model_dir, name):
    bundle_dir = os.path.join(self.tmp, name)
    manifest = bundle_lib.export_bundle(model_dir, bundle_dir, bundle_lib.ExportOptions(
        training=signatures.TrainingOptions(optimizer='sgd'),
        measure_memory=False), log=lambda line: None)
    return bundle_lib.Bundle(bundle_dir), manifest

  def _check_train_loss(self, runner, model):
    batch = dict(features=self.features, feature_length=self.lengths, labels=self.labels,
                 label_length=self.label_lengths)
    keras_loss = float(tf.reduce_mean(asr.per_example_loss(
        model, {k: tf.constant(v) for k, v in batch.items()}, training=False)))
    self.assertAlmostEqual(runner.train(**batch) / keras_loss, 1.0, delta=bundle_lib.LOSS_RTOL)

  def test_pruned_model_exports_smaller_and_computes_the_keras_model(self):
    dense_dir = self.dense_dir
    config = checkpoint.load_config(dense_dir)['model']
    reduced_config, reduced_weights = reduce_lib.prune_once(
        config, checkpoint.load_weights(dense_dir), 'column', 0.5)
    reduced_dir = os.path.join(self.tmp, 'pruned_model')
    checkpoint.save_model(reduced_dir, reduced_config, reduced_weights)
    runner, manifest = self._export(reduced_dir, 'pruned')
    model, _ = checkpoint.load_keras_model(reduced_dir)
    out = runner.infer(self.features, self.lengths)
    logits, _ = model([self.features, self.lengths], training=False)
    np.testing.assert_allclose(out['logits'], logits.numpy(), atol=bundle_lib.LOGITS_ATOL)
    ops = flatbuffer.signature_ops(self._read(runner, 'model.tflite'))
    self.assertTrue(ops['infer'].builtin_only and ops['transcribe'].builtin_only)
    self.assertLessEqual(set(ops['train'].flex), _ALLOWED_TRAIN_FLEX)
    self._check_train_loss(runner, model)
    # The weights stored in the file shrink with the parameters (SGD: no optimizer slots).
    dense_runner, dense_manifest = self._export(dense_dir, 'dense_sgd')
    stored = flatbuffer.constant_bytes_by_type(self._read(runner, 'model.tflite'))['FLOAT32']
    dense_stored = flatbuffer.constant_bytes_by_type(
        self._read(dense_runner, 'model.tflite'))['FLOAT32']
    parameter_ratio = manifest['trainable_parameters'] / dense_manifest['trainable_parameters']
    self.assertLess(parameter_ratio, 0.7)  # `micro`: 56,541 of 82,173 parameters remain.
    # Each removed parameter removes its 4 stored bytes (the feature front end's constants,
    # the same in both files, stay).
    removed = dense_manifest['trainable_parameters'] - manifest['trainable_parameters']
    self.assertAlmostEqual((dense_stored - stored) / (4 * removed), 1.0, delta=0.02)
    self.assertLess(manifest['files']['model.tflite']['bytes'],
                    dense_manifest['files']['model.tflite']['bytes'])

  @staticmethod
  def _read(runner, name):
    with open(os.path.join(runner.bundle_dir, name), 'rb') as f:
      return f.read()

  def test_sparse_training_bundle_trains_with_top_k_and_returns_the_zerofl_upload(self):
    model_dir = self.dense_dir
    bundle_dir = os.path.join(self.tmp, 'sparse')
    options = bundle_lib.ExportOptions(
        training=signatures.TrainingOptions(sparse_training=0.9, mask_ratio=0.2),
        measure_memory=False)

    def verifier(directory, reference, int8_path, int8_reference):
      return verify.verify(directory, reference, None)

    manifest = bundle_lib.export_bundle(model_dir, bundle_dir, options, log=lambda line: None,
                                        verifier=verifier)
    checks = manifest['verification']['checks']
    self.assertLessEqual(checks['sparse_second_loss_relative_diff']['value'],
                         bundle_lib.LOSS_RTOL)
    self.assertEqual(checks['sparse_update_mismatched_variables']['value'], 0)
    # Two Adam steps of 2e-4: the TF and TFLite weights agree to a fraction of one step.
    self.assertLess(manifest['verification']['sparse_train_weights_max_abs_diff'], 1e-4)
    self.assertIn('sparse_update', manifest['signatures'])
    self.assertTrue(manifest['signatures']['infer']['builtin_only'])
    # `infer` computes the plain model with every SWAT kernel cut to its top 10% (numpy).
    plain, _ = checkpoint.load_keras_model(model_dir)
    described = manifest['training']['sparse_update']['variables']
    by_name = {signatures.variable_name(v): v for v in plain.trainable_variables}
    top_k = [name for name, entry in described.items() if entry['sent'] == 'top_k']
    self.assertTrue(all('encoder/block_' in name for name in top_k), top_k)
    self.assertEqual({re.search(r'block_(\d+)', name).group(1) for name in top_k}, {'00', '01'})
    self.assertGreaterEqual(len(top_k), 16)
    for name in top_k:
      values = by_name[name].numpy()
      keep = np.argsort(-np.abs(values).ravel(), kind='stable')[:int(round(0.1 * values.size))]
      masked = np.zeros(values.size, np.float32)
      masked[keep] = values.ravel()[keep]
      by_name[name].assign(masked.reshape(values.shape))
    runner = bundle_lib.Bundle(bundle_dir)
    out = runner.infer(self.features, self.lengths)
    logits, _ = plain([self.features, self.lengths], training=False)
    np.testing.assert_allclose(out['logits'], logits.numpy(), atol=bundle_lib.LOGITS_ATOL)
    # After a step, each SWAT kernel sends exactly 30% of its entries; a restore starts a new
    # round (nothing to send).
    runner.train(self.features, self.lengths, self.labels, self.label_lengths)
    update = runner.sparse_update()
    for name in top_k:
      self.assertEqual(described[name]['count'], int(round(0.3 * update[name].size)))
      self.assertLessEqual(np.count_nonzero(update[name]), described[name]['count'])
    self.assertGreater(max(np.count_nonzero(update[name]) for name in top_k), 0)
    path = os.path.join(self.tmp, 'sparse_checkpoint')
    runner.save(path)
    runner.restore(path)
    self.assertTrue(all(not np.any(u) for u in runner.sparse_update().values()))
    for bad, message in (({'sparse_training': 1.0}, '--sparse_training=1.0 is outside'),
                         ({'sparse_training': 0.5, 'mask_ratio': 0.6}, '--mask_ratio=0.6')):
      with self.assertRaisesRegex(signatures.ExportError, message):
        signatures.TrainingOptions(**bad)

  def test_transducer_with_lstm_exports_with_builtin_inference(self):
    encoder = dict(asr.named_config('tiny')['encoder'], num_blocks=1, model_dim=32,
                   dropout=0.0)
    config = transducer.transducer_config(encoder, 29, embedding_dim=16, joint_dim=32,
                                          lstm_units=32, lstm_layers=1)
    model = registry.build_keras_model(config)
    model_dir = os.path.join(self.tmp, 'transducer_model')
    _save(model_dir, config, model)
    runner, manifest = self._export(model_dir, 'transducer')
    self.assertEqual(manifest['training']['loss'], 'RNN-T')
    ops = flatbuffer.signature_ops(self._read(runner, 'model.tflite'))
    self.assertTrue(ops['infer'].builtin_only, ops['infer'].flex)
    self.assertTrue(ops['transcribe'].builtin_only, ops['transcribe'].flex)
    out = runner.infer(self.features, self.lengths)
    expected = asr.greedy_decode(model, self.features, self.lengths).to_list()
    self.assertEqual([r[:n].tolist() for r, n in zip(out['token_ids'], out['token_count'])],
                     expected)
    self.assertTrue(any(expected))
    self._check_train_loss(runner, model)


if __name__ == '__main__':
  absltest.main()
