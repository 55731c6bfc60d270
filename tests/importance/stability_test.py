import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from fl_compression.importance import stability
from tests import tff_test_utils
from tff_programs import importance_stability


def _ranking(damage, classes=None):
  blocks = [{'block': i, 'reinit_wer': d, 'rerand_wer': d, 'reinit_relative': d / 0.05 - 1,
             'class': (classes or ['ambient'] * len(damage))[i]}
            for i, d in enumerate(damage)]
  order = sorted(range(len(damage)), key=lambda b: (damage[b], b))
  return {'intact_wer': 0.05, 'blocks': blocks, 'ambient_first': order}


def _spearman_without_ties(a, b):
  """The closed form 1 - 6 sum d^2 / (n (n^2 - 1)) over rank differences d (no ties)."""
  d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
  n = len(a)
  return 1 - 6 * float(np.sum(d ** 2)) / (n * (n * n - 1))


class StabilityTest(absltest.TestCase):

  def test_ties_take_average_ranks(self):
    # Ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4): Pearson of the ranks, by hand.
    x, y = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4])
    expected = np.sum((x - x.mean()) * (y - y.mean())) / np.sqrt(
        np.sum((x - x.mean()) ** 2) * np.sum((y - y.mean()) ** 2))
    self.assertAlmostEqual(stability.spearman([0.2, 0.2, 0.5, 0.9], [1, 2, 3, 4]), expected)

  def test_pairs_against_the_closed_form_and_top_overlap(self):
    rng = np.random.default_rng(0)
    a, b, c = (list(rng.uniform(0.05, 1.0, 8)) for _ in range(3))
    result = stability.compare([('deep', 's1', _ranking(a)), ('deep', 's2', _ranking(b)),
                                ('deep', 's3', _ranking(c)),
                                ('narrow', 's1', _ranking(a[:6], ['critical'] * 6))])
    deep = result['configurations']['deep']
    self.assertLen(deep['pairs'], 3)
    first = deep['pairs'][0]
    self.assertAlmostEqual(first['spearman'], _spearman_without_ties(a, b))
    expected = len(set(np.argsort(a)[:3]) & set(np.argsort(b)[:3]))
    self.assertEqual(first['top_overlap'], expected)
    self.assertAlmostEqual(deep['mean_spearman'],
                           np.mean([p['spearman'] for p in deep['pairs']]))
    narrow = result['configurations']['narrow']
    self.assertEqual(narrow['pairs'], [])
    self.assertEqual(narrow['trainings'][0]['classes'],
                     {'ambient': 0, 'intermediate': 0, 'critical': 6})
    report = stability.render(result, 'cmd')
    self.assertIn('## `deep` (8 blocks)', report)
    self.assertIn(f'| s1 / s2 | {first["spearman"]:+.2f} | {expected} of 3 |', report)

  def test_identical_rankings_correlate_fully_and_sizes_must_match(self):
    same = _ranking([0.1, 0.5, 0.2, 0.9])
    result = stability.compare([('d', 'x', same), ('d', 'y', same)])
    self.assertAlmostEqual(result['configurations']['d']['pairs'][0]['spearman'], 1.0)
    self.assertEqual(result['configurations']['d']['pairs'][0]['top_overlap'], 3)
    with self.assertRaisesRegex(stability.StabilityError, 'different numbers of blocks'):
      stability.compare([('d', 'x', same), ('d', 'y', _ranking([0.1, 0.2]))])

  def test_program_writes_the_report_and_names_bad_input(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    paths = []
    # `tiny` has 4 blocks; these two rankings agree at Spearman 0.8.
    for i, damage in enumerate(([0.1, 0.3, 0.2, 0.4], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])):
      paths.append(os.path.join(tmp, f'r{i}.json'))
      with open(paths[-1], 'w') as f:
        json.dump(_ranking(damage), f)
    with open(os.path.join(tmp, 'heatmap.png'), 'wb') as f:
      f.write(b'\x89PNG')  # Linked from the report, not read.
    out = os.path.join(tmp, 'out')
    result = tff_test_utils.run_program('importance_stability', f'--output_dir={out}',
                                        f'--ranking=tiny:a:{paths[0]}',
                                        f'--ranking=tiny:b:{paths[1]}', timeout=120)
    self.assertEqual(result.returncode, 0, result.stderr[-2000:])
    with open(os.path.join(out, 'stability.json')) as f:
      written = json.load(f)
    self.assertAlmostEqual(written['configurations']['tiny']['pairs'][0]['spearman'], 0.8)
    # The findings are decided in the report, with the model's size.
    self.assertEqual(set(written['parameters']), {'tiny'})
    self.assertGreater(written['parameters']['tiny'], 1_000_000)
    stable = {f['key']: f for f in written['findings']}['stable']
    self.assertEqual(stable['verdict'], 'reproduced')
    with open(os.path.join(out, 'report.md')) as f:
      report = f.read()
    self.assertIn('| The ranking is fairly stable when the whole experiment is rerun. | '
                  '**reproduced** | `tiny` +0.80 over 1 pairs.', report)
    self.assertIn('![tiny a: WER after each reset](../heatmap.png)', report)
    self.assertNotIn('signatures.png', report)
    a, b, three = (f'--ranking=tiny:{label}:{path}' for label, path in zip('abc', paths))
    cases = [
        ([a, f'--ranking=tiny:b:{tmp}/none.json'], f'--ranking=tiny:b:{tmp}/none.json:'),
        ([a, f'--ranking=huge:b:{paths[1]}'], "--ranking=huge:b:"),
        ([a, three], f'{three}: ranks 3 blocks; `tiny` has 4'),
        ([a, a], '--ranking: tiny:a is given twice'),
        ([a, b, f'--signature_history={tmp}/none.csv'], f'--signature_history={tmp}/none.csv'),
    ]
    tff_test_utils.assert_bad_input(self, importance_stability, cases, f'--output_dir={out}-bad')
    self.assertFalse(os.path.exists(f'{out}-bad'))


if __name__ == '__main__':
  absltest.main()
