import os
import tempfile

from absl.testing import absltest

from fl_compression.benchmarks import method_experiments as methods
from fl_compression.benchmarks import summary


def _run(errors, down, up, model_bytes, words=5):
  ids = [f'u{i}' for i in range(len(errors))]
  return {'error_rates': {'test-clean': {'wer': sum(errors) / (words * len(errors))},
                          'dev-clean': {'wer': 0.1}},
          'utterance_errors': {'test-clean': {'utterance_ids': ids, 'errors': list(errors),
                                              'words': [words] * len(errors)}},
          'client_bytes_down': down, 'client_bytes_up': up, 'model_parameter_bytes': model_bytes,
          'model_parameters': model_bytes // 4, 'selected_round': 10}


class SummaryTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    base = [1, 2, 1, 0, 2, 1, 1, 2] * 20
    worse = [e + 1 for e in base]
    self.results = {
        'initial': {'splits': {'test': 'test-clean', 'dev': 'dev-clean'}},
        'total_rounds': 60,
        methods.dense_key(): _run(base, 1000, 1000, 1000),
        # Same WER, a third of the traffic: the traffic pick.
        methods.OMC_KEY: _run(base, 400, 300, 1000),
        # Same WER, half the traffic but more than OMC's.
        methods.aqt_key('nearest'): _run(base, 300, 700, 1000),
        # Much worse, but the smallest model and traffic: never picked.
        methods.fp_key(0.5): _run(worse, 100, 100, 500),
        # Same WER, a smaller final model: the model-size pick.
        methods.fp_key(0.3): _run(base, 700, 700, 700),
    }
    self.probes = {
        'compression': {'dense': {'tensor_peak_bytes': 100}, 'omc_11': {'tensor_peak_bytes': 80},
                        'fedaqt_8': {'tensor_peak_bytes': 60}},
        'pruning': {'dense': {'tensor_peak_bytes': 200}, 'pruned': {'tensor_peak_bytes': 100}}}

  def test_advice_picks_the_largest_saving_within_the_wer_limit(self):
    text = summary.render(self.results, self.probes,
                          {'command': 'x', 'methods': 'm', 'methods_link': 'm.md'}, [])
    self.assertIn('For the least client traffic per round within +5% relative WER: '
                  f'**{methods.label(methods.OMC_KEY)}** (0.35x dense', text)
    self.assertIn('For the smallest final model within +10% relative WER: '
                  f'**{methods.label(methods.fp_key(0.3))}** (0.70x dense', text)
    self.assertIn('For the least client-step memory within +10% relative WER: '
                  f'**{methods.label(methods.aqt_key("nearest"))}** (0.60x dense', text)
    self.assertRegex(text, r'\| FP column 50% \(adaptive\) \| [\d.]+% \| \*\*\+[\d.]+% \[')
    self.assertIn('| 0.10x | 0.50x | 0.50x |', text)

  def test_states_whether_dense_fedavg_plateaued(self):
    settings = {'command': 'x', 'methods': 'm', 'methods_link': 'm.md'}
    dense = self.results[methods.dense_key()]
    dense['wer_curves'] = {'dev-clean': {'5': 0.10, '10': 0.09, '15': 0.09, '20': 0.09,
                                         '25': 0.09, '30': 0.09, '35': 0.09, '40': 0.09}}
    self.assertIn("dense FedAvg's dev WER has plateaued",
                  summary.render(self.results, self.probes, settings, []))
    dense['wer_curves'] = {'dev-clean': {'5': 0.10, '10': 0.09, '15': 0.08, '20': 0.07,
                                         '25': 0.06, '30': 0.05, '35': 0.04, '40': 0.03}}
    text = summary.render(self.results, self.probes, settings, [])
    self.assertIn("dense FedAvg's dev WER did not meet the plateau rule", text)
    self.assertNotIn('has plateaued', text)

  def test_memory_points_use_each_probes_own_dense_step(self):
    found = {p['key']: p['x'] for p in summary.points(self.results, 'memory', self.probes)}
    self.assertEqual(found, {methods.dense_key(): 1.0, methods.OMC_KEY: 0.8,
                             methods.aqt_key('nearest'): 0.6, methods.fp_key(0.5): 0.5})

  def test_plots_one_figure_per_axis(self):
    out = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    written = summary.plot(self.results, self.probes, out)
    self.assertEqual(written, [name for _, name, _, _ in summary.AXES])
    for name in written:
      with open(os.path.join(out, name), 'rb') as f:
        self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')


if __name__ == '__main__':
  absltest.main()
