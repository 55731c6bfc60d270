"""Two pretraining runs side by side at the steps both evaluated: training loss, dev WER and
CER, how far block 0 moved relative to the block that moved most (the ffn1 signature) and the
mean of blocks 0-4's, and each block's movement where the run wrote `movement.csv`.

  .venv/bin/python tools/compare_pretraining.py <run_dir_a> <run_dir_b>

A run directory is a `//tff_programs:pretrain` output (or a copy of its CSV files).
"""

import csv
import os
import sys


def _rows(run_dir: str, name: str) -> dict[int, dict]:
  path = os.path.join(run_dir, name)
  if not os.path.exists(path):
    return {}
  with open(path, newline='') as f:
    return {int(row['step']): row for row in csv.DictReader(f)}


def _describe(run_dir: str, step: int) -> str:
  curve = _rows(run_dir, 'curve.csv')[step]
  text = (f"loss {float(curve['loss']):6.1f} WER {100 * float(curve['dev_wer']):5.1f}% "
          f"CER {100 * float(curve['dev_cer']):5.1f}%")
  signature = _rows(run_dir, 'signatures.csv').get(step)
  if signature:
    ffn1 = [float(v) for k, v in signature.items() if k.startswith('signature/ffn1/')]
    text += f' | ffn1 b0 {ffn1[0]:.2f} b0-4 {sum(ffn1[:5]) / 5:.2f}'
  movement = _rows(run_dir, 'movement.csv').get(step)
  if movement:
    moved = [100 * float(v) for k, v in movement.items() if k != 'step']
    text += ' | moved ' + ' '.join(f'{m:.0f}%' for m in moved[:5]) + f' .. {moved[-1]:.0f}%'
  return text


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  for run_dir in argv[1:]:
    if not os.path.exists(os.path.join(run_dir, 'curve.csv')):
      print(f'error: {run_dir} has no curve.csv', file=sys.stderr)
      return 2
  steps = sorted(set(_rows(argv[1], 'curve.csv')) & set(_rows(argv[2], 'curve.csv')))
  print(f'A: {argv[1]}\nB: {argv[2]}')
  for step in steps:
    print(f'{step:6d}  A: {_describe(argv[1], step)}\n        B: {_describe(argv[2], step)}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
