"""//tff_programs:pretrain: the plateau rule, and a short run that resumes where it stopped and
saves its exact initial weights."""

import csv
import os
import tempfile

from absl.testing import absltest
import numpy as np

from fl_compression.data import corpus
from fl_compression.evaluation import plateau
from fl_compression.models import asr  # pylint: disable=unused-import (registers the models)
from fl_compression.models import checkpoint
from fl_compression.models import registry
from tests import tff_test_utils
from tff_programs import pretrain


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _regenerated(config):
  """The initial weights rebuilt from the config's seed."""
  model = registry.build_keras_model(config)
  return [v.numpy() for v in model.trainable_variables + model.non_trainable_variables]


class MeasureFilesTest(absltest.TestCase):

  def test_dropping_rows_past_a_step_keeps_the_header(self):
    path = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'm.csv')
    for step in (2, 4):
      pretrain._append_row(path, {'step': step, 'movement/block_00': 0.5 * step})
    pretrain._drop_rows_after(path, 2)
    pretrain._drop_rows_after(path, 0)  # A header-only file, twice: still the same header.
    pretrain._drop_rows_after(path, 0)
    pretrain._append_row(path, {'step': 2, 'movement/block_00': 1.0})
    self.assertEqual(_read(path), [{'step': '2', 'movement/block_00': '1.0'}])


class PlateauRuleTest(absltest.TestCase):

  def test_trailing_quarter_must_improve_by_one_percent(self):
    falling = [(s, 1.0 / s) for s in range(250, 4001, 250)]
    self.assertFalse(plateau.plateau_reached(falling, 0.25, 0.01, 4))
    flat = [(250, 0.5), (500, 0.2), (750, 0.1), (1000, 0.08), (1250, 0.0799), (1500, 0.0801),
            (1750, 0.08), (2000, 0.0795)]
    # The last quarter (steps above 1500): best 0.0795 against 0.0799 before: -0.5%, a plateau.
    self.assertTrue(plateau.plateau_reached(flat, 0.25, 0.01, 2))
    # ... but not with fewer trailing evaluations than required.
    self.assertFalse(plateau.plateau_reached(flat, 0.25, 0.01, 3))
    self.assertFalse(plateau.plateau_reached([], 0.25, 0.01, 1))

  def test_no_plateau_before_the_first_step_allowed(self):
    # The `deep` model's first 3,250 steps: CTC's early plateau (dev WER about 100%, best
    # 97.9% at step 500), which the rule alone takes for the end of training.
    stuck = [(250, 1.0), (500, 0.979), (750, 1.037), (1000, 1.020), (1250, 1.038),
             (1500, 1.050), (1750, 1.013), (2000, 1.017), (2250, 1.004), (2500, 1.014),
             (2750, 1.045), (3000, 1.062), (3250, 1.054)]
    self.assertTrue(plateau.plateau_reached(stuck, 0.25, 0.01, 4))
    self.assertTrue(plateau.plateau_reached(stuck, 0.25, 0.01, 4, from_step=3250))
    self.assertFalse(plateau.plateau_reached(stuck, 0.25, 0.01, 4, from_step=3251))
    self.assertFalse(plateau.plateau_reached(stuck, 0.25, 0.01, 4, from_step=15000))


class PretrainProgramTest(absltest.TestCase):

  def test_short_run_resumes_and_keeps_its_initial_weights(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, root = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'pretrain')
    corpus.generate(data_dir, corpus.SMALL, log=lambda message: None)
    common = [f'--data_dir={data_dir}', f'--root_output_dir={root}', '--batch_size=2',
              '--eval_every_steps=2', '--warmup_steps=2', '--model=micro']
    first = tff_test_utils.run_program('pretrain', *common, '--max_steps=4', timeout=600)
    self.assertEqual(first.returncode, 0, first.stderr[-3000:])
    self.assertEqual([int(r['step']) for r in _read(os.path.join(root, 'curve.csv'))], [2, 4])
    second = tff_test_utils.run_program('pretrain', *common, '--max_steps=6', timeout=600)
    self.assertEqual(second.returncode, 0, second.stderr[-3000:])
    self.assertIn('resumed from step 4', second.stdout)
    curve = _read(os.path.join(root, 'curve.csv'))
    self.assertEqual([int(r['step']) for r in curve], [2, 4, 6])
    elapsed = [float(r['elapsed_seconds']) for r in curve]
    self.assertEqual(elapsed, sorted(elapsed))  # Wall time adds up across invocations.
    signatures = _read(os.path.join(root, 'signatures.csv'))
    self.assertEqual([int(r['step']) for r in signatures], [2, 4, 6])
    self.assertIn('signature/attention/query/block_00', signatures[0])
    movement = _read(os.path.join(root, 'movement.csv'))
    self.assertEqual([int(r['step']) for r in movement], [2, 4, 6])
    self.assertEqual(list(movement[0])[1:], ['movement/block_00', 'movement/block_01'])
    self.assertTrue(all(float(v) > 0 for r in movement for k, v in r.items() if k != 'step'))
    self.assertRegex(second.stdout, r'step +6 \| .* \| blocks moved \d+-\d+% \| ')
    # A crash after the step-6 checkpoint and its measures but before its curve row: the
    # resumed run evaluates that step again instead of leaving a hole in the curve, and each
    # file holds the step once.
    with open(os.path.join(root, 'curve.csv')) as f:
      lines = f.readlines()
    with open(os.path.join(root, 'curve.csv'), 'w') as f:
      f.writelines(lines[:-1])
    third = tff_test_utils.run_program('pretrain', *common, '--max_steps=6', timeout=600)
    self.assertEqual(third.returncode, 0, third.stderr[-3000:])
    for name in ('curve.csv', 'signatures.csv', 'movement.csv'):
      self.assertEqual([int(r['step']) for r in _read(os.path.join(root, name))], [2, 4, 6],
                       name)
    # Resuming with another run-defining setting is refused, and nothing saved is touched.
    with open(os.path.join(root, 'curve.csv')) as f:
      before = f.read()
    changed = tff_test_utils.run_program('pretrain', *common, '--max_steps=8',
                                         '--learning_rate=0.5', timeout=300)
    self.assertNotEqual(changed.returncode, 0)
    self.assertIn('--learning_rate=0.5 (the run has', changed.stderr)
    with open(os.path.join(root, 'curve.csv')) as f:
      self.assertEqual(f.read(), before)
    # The saved model carries the exact initial weights, which its seed regenerates.
    model_dir = os.path.join(root, 'final_model')
    config = checkpoint.load_config(model_dir)['model']
    initial = checkpoint.load_weights(model_dir, checkpoint.INITIAL_WEIGHTS_FILE)
    for a, b in zip(list(initial.trainable) + list(initial.non_trainable),
                    _regenerated(config)):
      self.assertEqual(a.tobytes(), b.tobytes())
    trained = checkpoint.load_weights(model_dir)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(trained.trainable,
                                                               initial.trainable)))

    # Shipped with its card: the files, their checksums, the budget and a fresh evaluation.
    shipped = os.path.join(tmp, 'checkpoints', 'small')
    result = tff_test_utils.run_program('ship_model', f'--run_dir={root}',
                                        f'--output_dir={shipped}', '--name=small',
                                        f'--data_dir={data_dir}', timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertEqual(sorted(os.listdir(shipped)),
                     ['MODEL_CARD.md', 'config.json', 'curve.csv', 'initial_weights.npz',
                      'movement.csv', 'signatures.csv', 'weights.npz'])
    with open(os.path.join(shipped, 'MODEL_CARD.md')) as f:
      card = f.read()
    self.assertIn('Trained 6 steps in', card)
    self.assertIn('the plateau rule (the best dev WER of the last quarter', card)
    self.assertRegex(card, r'\| `weights.npz` \| `[0-9a-f]{64}` \|')
    self.assertRegex(card, r'test-clean +2 +\d+ +[\d.]+% +[\d.]+%')

  def test_the_shipped_tiny_model_has_the_initial_weights_of_its_seed(self):
    model_dir = tff_test_utils.repo_path('checkpoints/conformer_ctc_tiny')
    initial = checkpoint.load_weights(model_dir, checkpoint.INITIAL_WEIGHTS_FILE)
    config = checkpoint.load_config(model_dir)['model']
    for a, b in zip(list(initial.trainable) + list(initial.non_trainable),
                    _regenerated(config)):
      self.assertEqual(a.tobytes(), b.tobytes())

  def test_bad_flags_are_one_line(self):
    for flags, message in ((['--plateau_fraction=1.5'], '--plateau_fraction must be in (0, 1)'),
                           (['--max_minutes=nan'], '--max_minutes must be positive and finite'),
                           (['--plateau_from_step=-1'], '--plateau_from_step must be 0 or more'),
                           (['--model=huge'], "flag --model=huge: value should be one of")):
      result = tff_test_utils.run_program('pretrain', *flags, timeout=120)
      self.assertNotEqual(result.returncode, 0, flags)
      self.assertIn(message, result.stderr, flags)


if __name__ == '__main__':
  absltest.main()
