import contextlib
import csv
import io
import os
import tempfile

from absl.testing import absltest

from tools import compare_pretraining


def _write(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def _run_dir(root, name, steps, movement):
  run = os.path.join(root, name)
  os.makedirs(run)
  _write(os.path.join(run, 'curve.csv'),
         [{'step': s, 'loss': 100.0 / s, 'dev_wer': 0.5, 'dev_cer': 0.25,
           'elapsed_seconds': s} for s in steps])
  _write(os.path.join(run, 'signatures.csv'),
         [{'step': s, **{f'signature/ffn1/block_{b:02d}': (b + 1) / 6 for b in range(6)}}
          for s in steps])
  if movement:
    _write(os.path.join(run, 'movement.csv'),
           [{'step': s, **{f'movement/block_{b:02d}': 0.1 * (b + 1) for b in range(6)}}
            for s in steps])
  return run


class ComparePretrainingTest(absltest.TestCase):

  def test_rows_at_the_common_steps(self):
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    a = _run_dir(root, 'a', [2, 4, 6], movement=False)
    b = _run_dir(root, 'b', [4, 6, 8], movement=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      self.assertEqual(compare_pretraining.main(['x', a, b]), 0)
    lines = out.getvalue().splitlines()
    self.assertEqual([line.split()[0] for line in lines[2::2]], ['4', '6'])
    self.assertEqual(lines[2], '     4  A: loss   25.0 WER  50.0% CER  25.0% | ffn1 b0 0.17 '
                     'b0-4 0.50')
    self.assertEqual(lines[3].strip(), 'B: loss   25.0 WER  50.0% CER  25.0% | ffn1 b0 0.17 '
                     'b0-4 0.50 | moved 10% 20% 30% 40% 50% .. 60%')

  def test_a_directory_without_a_curve_is_named(self):
    root = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      self.assertEqual(compare_pretraining.main(['x', root, root]), 2)
    self.assertEqual(err.getvalue().strip(), f'error: {root} has no curve.csv')


if __name__ == '__main__':
  absltest.main()
