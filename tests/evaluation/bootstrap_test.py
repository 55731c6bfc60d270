from absl.testing import absltest
import numpy as np
from scipy import stats

from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates


def _errors(errors, words, ids=None):
  ids = ids or [f'u{i:03d}' for i in range(len(errors))]
  return error_rates.UtteranceErrors(tuple(ids), tuple(int(e) for e in errors),
                                     tuple(int(w) for w in words))


class PairedBootstrapTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(3)
    self.words = rng.integers(3, 15, size=400)
    self.base = rng.binomial(self.words, 0.1)
    self.system = rng.binomial(self.words, 0.13)

  def test_identical_systems_give_a_zero_width_interval_at_zero(self):
    same = _errors(self.base, self.words)
    result = bootstrap.paired_bootstrap(same, same, num_resamples=1000, seed=4)
    self.assertEqual(result.absolute, 0.0)
    self.assertEqual(result.relative, 0.0)
    self.assertEqual(result.absolute_interval, (0.0, 0.0))
    self.assertEqual(result.relative_interval, (0.0, 0.0))
    self.assertTrue(result.within_relative(0.0))

  def test_resamples_without_baseline_errors_are_zero_or_infinite_not_nan(self):
    words = np.full(40, 5)
    base = np.zeros(40, int)
    base[0] = 1  # Most resamples miss the baseline's one error.
    perfect = bootstrap.paired_bootstrap(_errors(base, words), _errors(base, words), seed=1)
    self.assertEqual(perfect.relative_interval, (0.0, 0.0))
    worse = base.copy()
    worse[1:6] = 1
    result = bootstrap.paired_bootstrap(_errors(base, words), _errors(worse, words), seed=1)
    self.assertEqual(result.relative, 5.0)
    self.assertFalse(np.isnan(result.relative_interval).any())
    self.assertEqual(result.relative_interval[1], np.inf)
    self.assertFalse(result.within_relative(0.5))
    self.assertIn('+∞', result.describe_relative())
    no_errors = bootstrap.paired_bootstrap(_errors(np.zeros(40), words),
                                           _errors(worse, words), seed=1)
    self.assertEqual(no_errors.relative, np.inf)

  def test_constructed_differences_are_recovered_exactly(self):
    words = np.full(50, 5)
    base = np.arange(50) % 4 + 1
    # One more error in every utterance of 5 words: +0.2 WER in every resample.
    plus_one = bootstrap.paired_bootstrap(_errors(base, words), _errors(base + 1, words))
    self.assertAlmostEqual(plus_one.absolute, 0.2)
    np.testing.assert_allclose(plus_one.absolute_interval, (0.2, 0.2))
    # Twice the errors in every utterance: +100% relative in every resample.
    double = bootstrap.paired_bootstrap(_errors(base, words), _errors(2 * base, words))
    self.assertAlmostEqual(double.relative, 1.0)
    np.testing.assert_allclose(double.relative_interval, (1.0, 1.0))
    self.assertAlmostEqual(double.system_wer, 2 * double.baseline_wer)
    self.assertFalse(double.within_relative(0.1))
    self.assertFalse(double.not_worse())

  def test_interval_matches_scipys_paired_bootstrap(self):
    # Independent reference: scipy resamples the same indices of paired samples itself.
    def delta(base, system, words, axis=-1):
      return (system.sum(axis=axis) - base.sum(axis=axis)) / words.sum(axis=axis)

    reference = stats.bootstrap((self.base, self.system, self.words), delta, paired=True,
                                vectorized=True, n_resamples=20000, method='percentile',
                                random_state=1).confidence_interval
    ours = bootstrap.paired_bootstrap(_errors(self.base, self.words),
                                      _errors(self.system, self.words), num_resamples=20000)
    np.testing.assert_allclose(ours.absolute_interval, (reference.low, reference.high),
                               atol=1.5e-3)
    self.assertAlmostEqual(ours.absolute, delta(self.base, self.system, self.words))
    self.assertLess(ours.absolute_interval[0], ours.absolute)
    self.assertGreater(ours.absolute_interval[1], ours.absolute)

  def test_seeded_and_independent_of_utterance_order(self):
    base, system = _errors(self.base, self.words), _errors(self.system, self.words)
    first = bootstrap.paired_bootstrap(base, system, seed=9)
    self.assertEqual(first, bootstrap.paired_bootstrap(base, system, seed=9))
    self.assertNotEqual(first.absolute_interval,
                        bootstrap.paired_bootstrap(base, system, seed=10).absolute_interval)
    order = np.random.default_rng(0).permutation(len(self.words))
    shuffled = _errors(self.system[order], self.words[order],
                       [system.utterance_ids[i] for i in order])
    self.assertEqual(first, bootstrap.paired_bootstrap(base, shuffled, seed=9))

  def test_different_utterances_or_references_are_one_line_errors(self):
    base = _errors([1, 2, 3], [4, 4, 4], ['a', 'b', 'c'])
    with self.assertRaisesRegex(ValueError, r'^the systems were scored on different '
                                r'utterances: 1 only in the baseline \(e\.g\. c\), 1 only in '
                                r'the system \(e\.g\. d\)$'):
      bootstrap.paired_bootstrap(base, _errors([1, 2, 3], [4, 4, 4], ['a', 'b', 'd']))
    with self.assertRaisesRegex(ValueError, '^the systems count different reference words '
                                'for utterance b'):
      bootstrap.paired_bootstrap(base, _errors([1, 2, 3], [4, 5, 4], ['a', 'b', 'c']))
    with self.assertRaisesRegex(ValueError, 'num_resamples must be positive'):
      bootstrap.paired_bootstrap(base, base, num_resamples=0)


class UtteranceErrorsTest(absltest.TestCase):

  def test_per_utterance_errors_sum_to_the_corpus_rate(self):
    refs = ['THE CAT SAT ON THE MAT', "IT'S A DOG", 'ONE TWO THREE', 'A B']
    hyps = ['THE CAT SAT ON MAT', 'ITS A BIG DOG', '', 'A B C D']
    rates = error_rates.error_rates(refs, hyps, ['w', 'x', 'y', 'z'])
    self.assertEqual(rates.utterances.errors, (1, 2, 3, 2))
    self.assertEqual(rates.utterances.words, (6, 3, 3, 2))
    self.assertEqual(rates.utterances.utterance_ids, ('w', 'x', 'y', 'z'))
    self.assertAlmostEqual(rates.utterances.wer, rates.wer)
    self.assertNotIn('utterances', rates.as_dict())
    again = error_rates.UtteranceErrors.from_dict(rates.utterances.as_dict())
    self.assertEqual(again, rates.utterances)


if __name__ == '__main__':
  absltest.main()
