"""//tff_programs:train on a speech task end to end: transducer rounds on TFF, WER reports."""

import csv
import json
import os
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest

from fl_compression.data import corpus
from tests import tff_test_utils

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                           train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=2),
    short_form=None, seed=5)


class SpeechProgramTest(absltest.TestCase):

  def test_transducer_trains_federatedly_and_reports_wer_per_split(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir, root = os.path.join(tmp, 'corpus'), os.path.join(tmp, 'run')
    corpus.generate(data_dir, _TINY, log=lambda message: None)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        tff_test_utils.program_command('train') + [
            '--task=speech_transducer', f'--data_dir={data_dir}', f'--root_output_dir={root}',
            '--total_rounds=1', '--clients_per_round=2', '--batch_size=2'],
        capture_output=True, text=True, env=env, timeout=900)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    out = result.stdout
    self.assertRegex(out, r'evaluation of the initial model \| held-out loss [\d.]+ \| '
                          r'WER dev-clean [\d.]+% \| CER dev-clean [\d.]+% \| WER test-clean')
    self.assertRegex(out, r'round 1/1 \| loss [\d.]+')
    # The final WER table: both splits, initial and final rates.
    row = re.search(r'test-clean +2 +(\d+) +([\d.]+)% +([\d.]+)% +([\d.]+)% +([\d.]+)%', out)
    self.assertIsNotNone(row, out)

    with open(os.path.join(root, 'final_model', 'config.json')) as f:
      self.assertEqual(json.load(f)['model']['name'], 'conformer_transducer')
    with open(os.path.join(root, 'evaluation_metrics.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([int(r['key']) for r in rows], [0, 1])
    final_wer = float(rows[-1]['transcription/test-clean/wer'])
    self.assertAlmostEqual(100 * final_wer, float(row.group(3)), places=2)

    # The evaluation program scores the saved model the same way.
    evaluated = subprocess.run(
        tff_test_utils.program_command('evaluate') + [
            f'--model_dir={os.path.join(root, "final_model")}', f'--data_dir={data_dir}',
            '--splits=test-clean', f'--output_json={os.path.join(tmp, "wer.json")}'],
        capture_output=True, text=True, env=env, timeout=300)
    self.assertEqual(evaluated.returncode, 0, evaluated.stderr[-3000:])
    with open(os.path.join(tmp, 'wer.json')) as f:
      self.assertAlmostEqual(json.load(f)['test-clean']['wer'], final_wer, places=6)


if __name__ == '__main__':
  absltest.main()
