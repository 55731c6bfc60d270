"""//tff_programs:layer_importance as users run it: the ranking files, resumption and bad
input."""

import csv
import json
import os
import tempfile

from absl.testing import absltest
import numpy as np
import tensorflow_federated as tff

from fl_compression.data import corpus
from fl_compression.importance import layers
from fl_compression.models import asr
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tests import tff_test_utils
from tff_programs import layer_importance


def _save(model_dir, config, trained, initial=None):
  weights = lambda values: tff.learning.models.ModelWeights(values, [])  # noqa: E731
  checkpoint.save_model(model_dir, config, weights(trained),
                        initial_weights=None if initial is None else weights(initial))


class LayerImportanceProgramTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cls.data_dir = os.path.join(cls.tmp, 'corpus')
    corpus.generate(cls.data_dir, corpus.SMALL, log=lambda message: None)
    config = asr.tiny_config(29)
    config['encoder'].update(num_blocks=2, model_dim=32, num_heads=4, num_groups=4)
    model = registry.build_keras_model(config)
    cls.initial = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(1)
    cls.trained = [w + rng.normal(scale=0.05, size=w.shape).astype(np.float32)
                   for w in cls.initial]
    cls.model_dir = os.path.join(cls.tmp, 'model')
    _save(cls.model_dir, config, cls.trained, cls.initial)
    cls.names = [v.name for v in model.trainable_variables]

  def test_writes_the_ranking_and_resumes(self):
    out = os.path.join(self.tmp, 'ranking')
    flags = [f'--model_dir={self.model_dir}', f'--data_dir={self.data_dir}',
             f'--output_dir={out}', '--draws=2']
    result = tff_test_utils.run_program('layer_importance', *flags, timeout=600)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('block  1: re-init', result.stdout)
    with open(os.path.join(out, 'ranking.json')) as f:
      ranking = json.load(f)
    self.assertEqual([b['block'] for b in ranking['blocks']], [0, 1])
    self.assertEqual(sorted(ranking['ambient_first']), [0, 1])
    for block in ranking['blocks']:
      self.assertIn(block['class'], ('ambient', 'intermediate', 'critical'))
      self.assertLen(block['rerand_wers'], 2)
      self.assertAlmostEqual(block['rerand_wer'], np.mean(block['rerand_wers']))
      self.assertEqual(set(block['modules']), set(layers.MODULES))
      low, high = block['delta_ci']
      self.assertLessEqual(low, high)
    self.assertEqual(ranking['num_utterances'], 2)  # SMALL's dev-clean.
    # Signatures: every module's largest block is 1 (both blocks moved).
    for values in ranking['signatures'].values():
      self.assertAlmostEqual(max(values), 1.0)
    with open(os.path.join(out, 'ranking.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([int(r['block']) for r in rows], [0, 1])
    self.assertAlmostEqual(float(rows[0]['reinit_wer']), ranking['blocks'][0]['reinit_wer'])
    for name in ('heatmap.png', 'signatures.png'):
      with open(os.path.join(out, name), 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertIn('**Rule.** ambient:', report)
    self.assertRegex(report, r'\| 1 \| (ambient|intermediate|critical) \| [\d.]+% \|')

    # Started again, every evaluation is already stored: the same ranking.
    again = tff_test_utils.run_program('layer_importance', *flags, timeout=600)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    with open(os.path.join(out, 'ranking.json')) as f:
      self.assertEqual(json.load(f), ranking)

  def test_bad_input_is_one_line_and_writes_nothing(self):
    no_initial = os.path.join(self.tmp, 'no_initial')
    _save(no_initial, checkpoint.load_config(self.model_dir)['model'], self.trained)
    mlp = os.path.join(self.tmp, 'mlp')
    mlp_config = {'name': 'mlp', 'input_dim': 4, 'hidden_units': [3], 'num_classes': 2,
                  'seed': 0}
    model = registry.build_keras_model(mlp_config)
    values = [v.numpy() for v in model.trainable_variables]
    _save(mlp, mlp_config, values, values)
    out = os.path.join(self.tmp, 'never')
    cases = [
        ([f'--model_dir={no_initial}'], f'--model_dir={no_initial}: initial_weights.npz is '
         'missing'),
        ([f'--model_dir={mlp}'], f"--model_dir={mlp} holds a 'mlp' model with no encoder "
         'blocks'),
        ([f'--model_dir={self.model_dir}', '--split=dev-other'], 'dev-other: no such corpus '
         'split directory'),
        ([f'--model_dir={self.model_dir}', '--draws=0'], '--draws must be positive'),
    ]
    tff_test_utils.assert_bad_input(self, layer_importance, cases, f'--data_dir={self.data_dir}',
                                    f'--output_dir={out}')
    self.assertFalse(os.path.exists(out), 'a failed run wrote output')


if __name__ == '__main__':
  absltest.main()
