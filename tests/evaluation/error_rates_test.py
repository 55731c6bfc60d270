from absl.testing import absltest

from fl_compression.evaluation import error_rates


def _edit_distance(a, b):
  """Independent reference: Levenshtein distance by dynamic programming."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    previous, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
  return row[-1]


class ErrorRatesTest(absltest.TestCase):

  def test_corpus_level_rates_match_a_direct_edit_distance(self):
    refs = ['THE CAT SAT ON THE MAT', "IT'S A DOG", 'ONE TWO THREE']
    hyps = ['THE CAT SAT ON MAT', "ITS A BIG DOG", '']
    rates = error_rates.error_rates(refs, hyps)
    word_errors = sum(_edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    char_errors = sum(_edit_distance(r, h) for r, h in zip(refs, hyps))
    self.assertAlmostEqual(rates.wer, word_errors / 12)
    self.assertAlmostEqual(rates.cer, char_errors / sum(len(r) for r in refs))
    self.assertEqual(rates.num_reference_words, 12)

  def test_normalization(self):
    self.assertEqual(error_rates.normalize("  hello,   World's  end! "), "HELLO WORLD'S END")
    self.assertEqual(error_rates.error_rates(['Hello world'], ['HELLO, WORLD.']).wer, 0.0)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, '2 references but 1 hypotheses'):
      error_rates.error_rates(['A', 'B'], ['A'])
    with self.assertRaisesRegex(ValueError, 'empty after normalization'):
      error_rates.error_rates(['...'], ['A'])


if __name__ == '__main__':
  absltest.main()
