"""//tff_programs:benchmark_importance end to end on a small corpus with both domains: targeted
federated dropout rows from a ranking, the JSON rows, resumption and one-line errors."""

import json
import os
import re
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from tests import tff_test_utils
from tff_programs import benchmark_importance

_CORPUS = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=1, num_test_speakers=1,
                           train_utterances_per_speaker=1, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=2),
    short_form=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                                 train_utterances_per_speaker=2, dev_utterances_per_speaker=2,
                                 test_utterances_per_speaker=3),
    seed=7)


def _ranking(path, blocks, ambient_first):
  """A ranking file: the first of `ambient_first` does no damage when reset, the others more
  the later they come."""
  damage = {block: 0.5 * i for i, block in enumerate(ambient_first)}
  with open(path, 'w') as f:
    json.dump({'intact_wer': 0.5, 'ambient_first': ambient_first,
               'blocks': [{'block': b, 'reinit_wer': 0.5 * (1 + damage[b]),
                           'reinit_relative': damage[b], 'class': 'ambient'}
                          for b in range(blocks)]}, f)


class BenchmarkImportanceTest(absltest.TestCase):

  def test_targeted_rows_run_on_the_held_out_domain_and_resume(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, out = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'report')
    corpus.generate(data_dir, _CORPUS, log=lambda message: None)
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir, num_blocks=2)
    ranking = os.path.join(tmp, 'ranking.json')
    _ranking(ranking, 2, [1, 0])
    flags = [f'--data_dir={data_dir}', f'--initial_model_dir={model_dir}', f'--ranking={ranking}',
             f'--output_dir={out}', '--block_counts=1', '--total_rounds=2',
             '--evaluation_period=1', '--clients_per_round=1', '--batch_size=2',
             '--trainable_counts=1', '--step_seconds=1',
             '--only=none,fd/ambient:1/0.5,trainable/critical:1,fp/importance/0.3']
    result = tff_test_utils.run_program('benchmark_importance', *flags, timeout=1200)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('targeted fine-tuning: 3 runs, 0 already done', result.stdout)
    self.assertIn('allocation: 1 runs, 0 already done', result.stdout)

    with open(os.path.join(out, 'targeted_fd_results.json')) as f:
      results = json.load(f)['results']
    # The flat rate matches Amb-1's dropped parameters (one block of two: about half).
    flat = results['flat_rate']
    self.assertAlmostEqual(flat['flat_dropped'], flat['ambient_dropped'], delta=0.02)
    self.assertBetween(flat['rate'], 0.15, 0.35)
    amb = results['fd/ambient:1/0.5']
    self.assertEqual(amb['options']['target'], 'ambient:1')
    self.assertAlmostEqual(amb['dropped_fraction'], flat['ambient_dropped'], places=6)
    # Fine-tuned on the held-out domain (its dev chose the round), scored on both test splits.
    self.assertIn(corpus.domain(corpus.SHORT_FORM).dev_split, amb['wer_curves'])
    for split in (corpus.domain(corpus.SHORT_FORM).test_split, corpus.TEST_SPLIT):
      self.assertIn(split, amb['utterance_errors'])
    self.assertLen(amb['utterance_errors'][corpus.TEST_SPLIT]['utterance_ids'], 2)
    self.assertLen(results['initial'][corpus.domain(corpus.SHORT_FORM).test_split]
                   ['utterances']['utterance_ids'], 3)

    with open(os.path.join(out, 'targeted_fd.json')) as f:
      rows = {r['row']: r for r in json.load(f)}
    self.assertEqual(sorted(rows), ['Amb-1', 'no-finetune', 'none'])
    for row in rows.values():
      self.assertEqual(set(row) >= {'row', 'params_dropped', 'heldout_wer', 'heldout_delta_ci',
                                    'main_wer'}, True)
    self.assertEqual(rows['none']['params_dropped'], 0.0)
    self.assertAlmostEqual(rows['Amb-1']['params_dropped'], amb['dropped_fraction'])
    low, high = rows['Amb-1']['heldout_delta_ci']
    self.assertLessEqual(low, high)
    with open(os.path.join(out, 'targeted_fd.md')) as f:
      report = f.read()
    self.assertIn('| Amb-1 |', report)
    self.assertIn('Runs not done yet: fd/critical:1/0.5', report)
    # Training only the most critical block (block 0 of this ranking): fewer bytes up and a
    # smaller client step than training both.
    with open(os.path.join(out, 'trainable.json')) as f:
      (trained,) = json.load(f)
    self.assertEqual((trained['row'], trained['blocks']), ('Train-Crit-1', [0]))
    self.assertLess(trained['client_bytes_up_ratio'], 0.9)
    self.assertLess(trained['step_tensor_bytes_ratio'], 1.0)
    self.assertIn('| Train-Crit-1 | 0 |', report)
    # Importance allocation of pruning sparsity, on the main domain: ambient block 1 sparser.
    with open(os.path.join(out, 'allocation_results.json')) as f:
      pruned = json.load(f)['results']['fp/importance/0.3']
    self.assertEqual(pruned['options']['allocation'], 'importance')
    self.assertIn(corpus.DEV_SPLIT, pruned['wer_curves'])
    self.assertIn(corpus.TEST_SPLIT, pruned['utterance_errors'])
    kept = {}
    for entry in pruned['pruning_plan'].split(';'):
      name, _, units = entry.split(':')
      block = re.search(r'block_(\d+)', name)
      if block:
        kept[block.group(1)] = kept.get(block.group(1), 0) + sum(map(int, units.split(',')))
    self.assertLess(kept['01'], kept['00'])
    with open(os.path.join(out, 'allocation.md')) as f:
      self.assertRegex(f.read(), r'\| 30% \| importance \| [\d.]+% \|')

    again = tff_test_utils.run_program('benchmark_importance', *flags, timeout=600)
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertIn('targeted fine-tuning: 3 runs, 3 already done', again.stdout)
    self.assertNotIn('measuring the client step', again.stdout)
    self.assertIn('allocation: 1 runs, 1 already done', again.stdout)

  def test_bad_input_is_named_in_one_line(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    model_dir = os.path.join(tmp, 'initial')
    tff_test_utils.save_small_speech_model(model_dir, num_blocks=2)
    three = os.path.join(tmp, 'three.json')
    _ranking(three, 3, [2, 0, 1])
    two = os.path.join(tmp, 'two.json')
    _ranking(two, 2, [1, 0])
    common = [f'--initial_model_dir={model_dir}', f'--output_dir={tmp}/out',
              f'--data_dir={tmp}/corpus', '--trainable_counts=1']
    cases = [
        ([f'--ranking={three}'], f'--ranking={three} ranks 3 encoder blocks; the trained '
                                 'model has 2'),
        ([f'--ranking={tmp}/none.json'], f'--ranking={tmp}/none.json'),
        ([f'--ranking={two}', '--block_counts=2'], '--block_counts=2: each must be in [1, 1]'),
        ([f'--ranking={two}', f'--initial_model_dir={tmp}/nowhere'],
         f'--initial_model_dir={tmp}/nowhere'),
        ([f'--ranking={two}', '--evaluation_period=0'], '--evaluation_period'),
        ([f'--ranking={two}', '--experiments=bogus'], '--experiments=bogus: known: targeted_fd'),
        ([f'--ranking={two}', '--block_counts=1', '--trainable_counts=2'],
         '--trainable_counts=2: each must be in [1, 1]'),
        ([f'--ranking={two}', '--block_counts=1', '--only=fd/ambient:9/0.5'],
         '--only: fd/ambient:9/0.5 not among'),
    ]
    tff_test_utils.assert_bad_input(self, benchmark_importance, cases, *common)
    self.assertFalse(os.path.exists(os.path.join(tmp, 'out')), 'a failed run wrote output')


if __name__ == '__main__':
  absltest.main()
