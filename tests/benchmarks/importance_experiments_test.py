"""Targeted federated dropout's rows, flat-rate matching, JSON rows and the paper's shapes."""

from absl.testing import absltest

from fl_compression.benchmarks import importance_experiments as experiments

_HELDOUT, _MAIN = experiments.HELDOUT_TEST, experiments.MAIN_TEST
_IDS = tuple(f'u{i}' for i in range(40))


def _errors(per_utterance):
  return {'utterance_ids': list(_IDS), 'errors': list(per_utterance), 'words': [5] * len(_IDS)}


def _run(heldout, main, dropped, selected_round=5):
  return {'utterance_errors': {_HELDOUT: _errors(heldout), _MAIN: _errors(main)},
          'dropped_fraction': dropped, 'selected_round': selected_round}


def _results():
  """no dropout: 1 error per utterance; Amb-1 clearly better (0 on most), Crit-1 and Crit-2
  clearly worse (2); Amb-2 like no dropout; flat like Amb-2 but dropping less."""
  ones, twos = [1] * 40, [2] * 40
  mostly_zero = [0] * 30 + [1] * 10
  return {
      'initial': {_HELDOUT: {'utterances': _errors(twos)}, _MAIN: {'utterances': _errors(ones)}},
      'flat_rate': {'rate': 0.2, 'ambient_dropped': 0.12, 'flat_dropped': 0.11},
      experiments.NONE: _run(ones, ones, None),
      experiments.targeted_key('ambient', 1): _run(mostly_zero, ones, 0.05),
      experiments.targeted_key('critical', 1): _run(twos, ones, 0.05),
      experiments.targeted_key('ambient', 2): _run(ones, twos, 0.12),
      experiments.targeted_key('critical', 2): _run(twos, ones, 0.12),
      experiments.flat_key(0.2): _run(ones, ones, 0.11),
  }


class ImportanceExperimentsTest(absltest.TestCase):

  def test_row_names_follow_the_paper(self):
    self.assertEqual(experiments.row_name(experiments.targeted_key('ambient', 2)), 'Amb-2')
    self.assertEqual(experiments.row_name(experiments.targeted_key('critical', 3)), 'Crit-3')
    self.assertEqual(experiments.row_name(experiments.flat_key(0.2)), 'Flat-20')
    self.assertEqual(experiments.row_name(experiments.flat_key(0.07)), 'Flat-7')
    self.assertEqual(experiments.row_name('none'), 'none')

  def test_flat_rate_is_the_closest_in_dropped_parameters(self):
    # Dropped fraction 0.3 * rate: 0.12 is reached at 0.4 exactly.
    self.assertAlmostEqual(experiments.match_flat_rate(0.12, lambda r: 0.3 * r), 0.4)
    # Between two rates, the closer one; at a tie, the lower.
    self.assertEqual(experiments.match_flat_rate(0.26, lambda r: r, rates=(0.2, 0.3)), 0.3)
    self.assertEqual(experiments.match_flat_rate(0.25, lambda r: r, rates=(0.3, 0.2)), 0.2)
    with self.assertRaises(ValueError):
      experiments.match_flat_rate(0.1, lambda r: r, rates=())

  def test_runs_are_no_dropout_then_ambient_and_critical_per_count_then_flat(self):
    specs = experiments.plan_runs([2, 4], '/r/ranking.json', 0.18)
    self.assertEqual([s.key for s in specs],
                     ['none', 'fd/ambient:2/0.5', 'fd/critical:2/0.5', 'fd/ambient:4/0.5',
                      'fd/critical:4/0.5', 'fd/flat/0.18'])
    self.assertEqual(specs[0].algorithm, 'fedavg')
    self.assertEqual(specs[3].option_dict, {'pattern': 'column', 'rate': 0.5,
                                            'target': 'ambient:4',
                                            'ranking': '/r/ranking.json'})
    self.assertEqual(specs[-1].option_dict, {'pattern': 'column', 'rate': 0.18,
                                             'target': 'flat'})
    self.assertLen(experiments.plan_runs([2], '/r.json', None), 3)

  def test_rows_carry_the_interval_against_no_dropout_and_what_fine_tuning_forgot(self):
    results = _results()
    rows = {r['row']: r for r in experiments.rows(results, [1, 2])}
    self.assertEqual(list(rows), ['no-finetune', 'none', 'Amb-1', 'Crit-1', 'Amb-2', 'Crit-2',
                                  'Flat-20'])
    self.assertEqual(rows['no-finetune']['params_dropped'], 0.0)
    self.assertAlmostEqual(rows['no-finetune']['heldout_wer'], 0.4)
    self.assertAlmostEqual(rows['none']['heldout_wer'], 0.2)
    self.assertIsNone(rows['none']['heldout_delta_ci'])
    # Amb-1: 10 errors against 40 on the same 200 words: -75% relative, an interval around it.
    amb = rows['Amb-1']
    self.assertAlmostEqual(amb['heldout_wer'], 10 / 200)
    self.assertAlmostEqual(amb['heldout_delta'], -0.75)
    low, high = amb['heldout_delta_ci']
    self.assertLess(low, -0.75)
    self.assertLess(-0.75, high)
    self.assertLess(high, 0)
    # Identical errors: a zero-width interval at 0.
    self.assertEqual(rows['Flat-20']['heldout_delta_ci'], [0.0, 0.0])
    self.assertEqual(rows['Amb-1']['params_dropped'], 0.05)
    # Main domain: Amb-2 doubled the pretrained model's errors there.
    self.assertAlmostEqual(rows['Amb-2']['main_wer'], 0.4)
    self.assertEqual(rows['Amb-2']['main_delta_ci'], [1.0, 1.0])
    # Runs not done yet are left out.
    del results[experiments.targeted_key('critical', 2)]
    self.assertNotIn('Crit-2', [r['row'] for r in experiments.rows(results, [1, 2])])

  def test_shapes_are_decided_by_the_interval(self):
    checks = {claim: verdict for claim, _, verdict in
              experiments.shape_checks(_results(), [1, 2])}
    self.assertEqual(checks['Amb-1 better than Crit-1'], 'reproduced')
    self.assertEqual(checks['Amb-2 better than Crit-2'], 'reproduced')
    # Amb-1 (0.25 errors per utterance) against Crit-2 (2): reproduced as well.
    self.assertEqual(checks['Amb-1 better than Crit-2 (about equal parameters trained)'],
                     'reproduced')
    # Amb-2 drops more than Flat-20 at identical errors: an interval of [0, 0], no worse.
    self.assertEqual(checks['Amb-2 drops more than Flat-20 at no worse WER'], 'reproduced')
    results = _results()
    results[experiments.targeted_key('ambient', 2)] = _run([2] * 40, [1] * 40, 0.12)
    checks = {claim: verdict for claim, _, verdict in
              experiments.shape_checks(results, [1, 2])}
    self.assertEqual(checks['Amb-2 better than Crit-2'], 'undecided (the interval contains 0)')
    self.assertEqual(checks['Amb-2 drops more than Flat-20 at no worse WER'],
                     '**not reproduced** (worse)')
    results[experiments.flat_key(0.2)]['dropped_fraction'] = 0.2
    checks = {claim: verdict for claim, _, verdict in
              experiments.shape_checks(results, [1, 2])}
    self.assertEqual(checks['Amb-2 drops more than Flat-20 at no worse WER'],
                     '**not reproduced** (drops no more)')
    del results[experiments.targeted_key('critical', 1)]
    checks = {claim: verdict for claim, _, verdict in
              experiments.shape_checks(results, [1, 2])}
    self.assertEqual(checks['Amb-1 better than Crit-1'], 'n/a (runs missing)')

  def test_report_lists_rows_and_states_the_rule(self):
    report = experiments.render_report(_results(), [1, 2], {'command': 'bazel run x',
                                                           'total_rounds': 30})
    self.assertIn('| Amb-1 | 5.00% | 5.00% | -75.0% [', report)
    # The pretrained model against no-dropout fine-tuning: what fine-tuning gained.
    self.assertIn('| no-finetune | 0.00% | 40.00% | +100.0% [+100.0%, +100.0%] | 20.00% |  |  |',
                  report)
    self.assertIn(experiments.RULE, report)
    self.assertIn('| Amb-1 better than Crit-1 | 5.00% vs 40.00%', report)


  def test_allocation_runs_compare_each_allocation_at_the_same_totals(self):
    specs = {s.key: s for s in experiments.plan_allocation_runs(60, '/r.json')}
    self.assertEqual(list(specs)[0], 'fedavg')
    self.assertLen(specs, 1 + 2 * 3 + 3 * 2)
    importance = specs['fp/importance/0.5'].option_dict
    uniform = specs['fp/uniform/0.5'].option_dict
    self.assertEqual(importance.pop('ranking'), '/r.json')
    self.assertEqual({k: v for k, v in importance.items() if k != 'allocation'},
                     {k: v for k, v in uniform.items() if k != 'allocation'})
    self.assertEqual(uniform['select_from_round'], uniform['finetune_start'])
    self.assertEqual(specs['omc/importance/S1E4M3'].option_dict,
                     {'format': 'S1E4M3', 'rounding': 'stochastic', 'allocation': 'importance',
                      'ranking': '/r.json'})
    self.assertNotIn('ranking', specs['omc/uniform/S1E4M3'].option_dict)

  def test_bytes_to_reach_float_is_the_cheapest_format_not_shown_worse(self):
    def run(errors, nbytes):
      return {'utterance_errors': {_MAIN: _errors(errors)}, 'client_bytes_down': nbytes,
              'client_bytes_up': nbytes}
    results = {'fedavg': run([1] * 40, 100),
               'omc/uniform/S1E4M6': run([1] * 40, 40),
               'omc/uniform/S1E4M3': run([1] * 39 + [2], 30),
               'omc/uniform/S1E4M2': run([2] * 40, 25)}
    reached = experiments.bytes_to_reach_float(results, 'uniform')
    self.assertEqual((reached['format'], reached['client_bytes']), ('S1E4M3', 60))
    self.assertIsNone(experiments.bytes_to_reach_float(results, 'importance'))
    report = experiments.allocation_report(results, {'total_rounds': 60})
    self.assertIn('| S1E4M2 | uniform | 40.00% | +100.0% [+100.0%, +100.0%] |  | 0.25x |',
                  report)
    self.assertIn('- uniform: S1E4M3, 0.30x of FedAvg\'s bytes', report)
    self.assertIn('- importance: none of the formats run', report)


  def test_trainable_rows_train_the_ranked_blocks_and_compare_with_every_block(self):
    specs = experiments.plan_trainable_runs(
        [2], lambda spec: [3, 1] if spec.startswith('critical') else [0, 2])
    self.assertEqual([(s.key, s.algorithm, s.option_dict) for s in specs],
                     [('trainable/critical:2', 'fedavg', {'trainable_blocks': (1, 3)}),
                      ('trainable/ambient:2', 'fedavg', {'trainable_blocks': (0, 2)})])
    self.assertEqual(experiments.row_name('trainable/critical:2'), 'Train-Crit-2')
    results = _results()
    results['none'].update(client_bytes_up=1000.0)
    results['trainable/critical:2'] = dict(_run([1] * 40, [1] * 40, None), client_bytes_up=400.0,
                                           trainable_blocks=[1, 3])
    results['trainable_step'] = {'all': {'step_tensor_bytes': 200},
                                 'trainable/critical:2': {'step_tensor_bytes': 150}}
    (row,) = experiments.trainable_rows(results, [2])
    self.assertEqual((row['row'], row['blocks']), ('Train-Crit-2', [1, 3]))
    self.assertAlmostEqual(row['client_bytes_up_ratio'], 0.4)
    self.assertAlmostEqual(row['step_tensor_bytes_ratio'], 0.75)
    self.assertEqual(row['heldout_delta_ci'], [0.0, 0.0])
    report = experiments.render_report(results, [1, 2], {}, trainable_counts=[2])
    self.assertIn('| Train-Crit-2 | 1, 3 | 20.00% | +0.0% [+0.0%, +0.0%] | 20.00% | 0.40x | '
                  '0.75x |', report)


if __name__ == '__main__':
  absltest.main()
