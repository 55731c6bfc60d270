from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fl_compression.pruning import plan as plan_lib
from fl_compression.pruning import process
from fl_compression.pruning import reduce as reduce_lib


def _layers():
  shapes = [('ffn1/dense_in', 32, 128), ('ffn1/dense_out', 128, 32), ('mhsa/query', 32, 32),
            ('mhsa/output', 32, 32)]
  return [plan_lib.LayerShape(f'encoder/block_00/{name}', i, o) for name, i, o in shapes]


class PlanTest(parameterized.TestCase):

  def test_prunable_layers_exclude_convolution_module_and_vectors(self):
    self.assertTrue(plan_lib.is_prunable('encoder/block_03/ffn2/dense_out'))
    self.assertTrue(plan_lib.is_prunable('encoder/block_00/mhsa/position'))
    self.assertFalse(plan_lib.is_prunable('encoder/block_00/conv/pointwise_in'))
    self.assertFalse(plan_lib.is_prunable('encoder/subsampling/project'))
    self.assertFalse(plan_lib.is_prunable('ctc_head'))
    # The extended set adds the pointwise kernels and the subsampling projection, no more.
    for path in ('encoder/block_01/conv/pointwise_in', 'encoder/block_01/conv/pointwise_out',
                 'encoder/subsampling/project', 'encoder/block_03/ffn2/dense_out'):
      self.assertTrue(plan_lib.is_prunable(path, 'extended'), path)
    for path in ('ctc_head', 'encoder/block_00/conv/depthwise', 'encoder/subsampling/conv2'):
      self.assertFalse(plan_lib.is_prunable(path, 'extended'), path)

  @parameterized.parameters(0.1, 0.25, 0.5)
  def test_row_pattern_removes_the_target_fraction(self, sparsity):
    ratio = plan_lib.zero_parameter_ratio(plan_lib.make_plan(_layers(), 'row', sparsity))
    self.assertAlmostEqual(ratio, sparsity, delta=0.02)

  def test_column_pattern_couples_the_feed_forward_layers(self):
    plan = plan_lib.make_plan(_layers(), 'column', 0.5)
    dense_in = plan['encoder/block_00/ffn1/dense_in']
    dense_out = plan['encoder/block_00/ffn1/dense_out']
    self.assertTrue(dense_in['drop_units'])
    self.assertEqual(dense_out['coupled_to'], 'encoder/block_00/ffn1/dense_in')
    self.assertEqual(dense_out['coupled_rows'], 64)
    # dense_out loses half its rows and half its columns: 3/4 of it.
    self.assertEqual(plan_lib.kept_area(dense_out), 64 * 16)
    self.assertGreater(plan_lib.zero_parameter_ratio(plan), 0.5)
    # Removed hidden units take their dense_in biases along.
    self.assertEqual(plan_lib.removed_parameters(plan),
                     sum(e['input_dim'] * e['output_dim'] - plan_lib.kept_area(e)
                         for e in plan.values()) + 64)

  def test_half_patterns_keep_units_per_half(self):
    plan = plan_lib.make_plan(_layers(), 'half_row', 0.25)
    entry = plan['encoder/block_00/mhsa/query']
    self.assertEqual(entry['kept'], [24, 24])
    self.assertEqual(plan_lib.kept_area(entry), 24 * 16 * 2)

  def test_adaptive_sparsity_meets_the_target_and_prunes_small_layers_more(self):
    layers = _layers()
    magnitudes = dict(zip([l.name for l in layers], [0.02, 0.05, 0.04, 0.01]))
    sparsity = plan_lib.adaptive_sparsity(layers, magnitudes, 0.5, max_sparsity=0.9)
    sizes = np.array([l.size for l in layers])
    density = np.array([1 - sparsity[l.name] for l in layers])
    self.assertAlmostEqual(float(np.sum(sizes * density) / np.sum(sizes)), 0.5, places=6)
    order = sorted(layers, key=lambda l: magnitudes[l.name])
    self.assertEqual([sparsity[l.name] for l in order],
                     sorted((sparsity[l.name] for l in order), reverse=True))
    self.assertTrue(all(0.0 <= s <= 0.9 for s in sparsity.values()))

  def test_step_schedule_rises_to_the_target(self):
    values = [plan_lib.step_sparsity(0.4, r, prune_rounds=8, steps=4) for r in range(1, 11)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.4, 0.4])

  def test_phases_by_round(self):
    config = process.PruningConfig(sparsity=0.4, schedule='step', ramp_steps=2,
                                   refine_start=5, finetune_start=8).resolved(10)
    self.assertEqual([config.phase(r) for r in range(1, 11)],
                     ['prune'] * 4 + ['refine'] * 3 + ['finetune'] * 3)
    self.assertEqual([config.sparsity_at(r) for r in (1, 2, 3, 4, 5, 9)],
                     [0.2, 0.2, 0.4, 0.4, 0.4, 0.4])
    default = process.PruningConfig().resolved(9)
    self.assertEqual((default.refine_start, default.finetune_start), (4, 7))

  def test_gradient_importance_starts_with_a_dense_round(self):
    for method in ('gradient', 'weight_gradient'):
      importance = reduce_lib.ImportanceConfig(method=method)
      constant = process.PruningConfig(sparsity=0.3, importance=importance).resolved(6)
      self.assertEqual([constant.sparsity_at(r) for r in range(1, 7)], [0.0] + [0.3] * 5)
      step = process.PruningConfig(sparsity=0.4, importance=importance, schedule='step',
                                   ramp_steps=2, refine_start=5).resolved(6)
      self.assertEqual([step.sparsity_at(r) for r in range(1, 7)],
                       [0.0, 0.2, 0.4, 0.4, 0.4, 0.4])
    magnitude = process.PruningConfig(sparsity=0.3).resolved(6)
    self.assertEqual(magnitude.sparsity_at(1), 0.3)

  def test_bad_settings_name_the_flag(self):
    cases = [
        (lambda: plan_lib.make_plan(_layers(), 'column', 1.0), r'--sparsity=1.0 is outside'),
        (lambda: plan_lib.make_plan(_layers(), 'diagonal', 0.2), r"--pattern='diagonal'"),
        (lambda: plan_lib.make_plan([], 'row', 0.2), 'nothing prunable'),
        (lambda: plan_lib.validate_prunable('all'), r"--fp_prunable='all' is unknown; known: "
         'paper, extended'),
        (lambda: process.PruningConfig(sparsity=-0.1).resolved(10), '--fp_sparsity=-0.1'),
        (lambda: process.PruningConfig(refine_start=6, finetune_start=3).resolved(10),
         '--fp_finetune_start=3'),
        (lambda: process.PruningConfig(refine_start=12).resolved(10), '--fp_refine_start=12'),
        (lambda: process.PruningConfig(refine_start=1, finetune_start=1).resolved(10),
         '--fp_finetune_start=1: fine-tuning keeps the masks of earlier rounds'),
        (lambda: process.PruningConfig(schedule='cosine').resolved(10), '--fp_schedule'),
        (lambda: reduce_lib.ImportanceConfig(method='taylor'), "--fp_importance='taylor'"),
        (lambda: reduce_lib.ImportanceConfig(norm='linf'), "--fp_norm='linf'"),
    ]
    for make, message in cases:
      with self.assertRaisesRegex(plan_lib.PlanError, message):
        make()


if __name__ == '__main__':
  absltest.main()
