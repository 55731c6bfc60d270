"""Compares two runs of the training program side by side: WER with a paired interval, bytes.

  bazel run //tff_programs:compare -- --baseline_run=runs/demo/fedavg --run=runs/demo/fp

Both runs must have been evaluated on the same utterances (the same corpus and domain). Reads
each run's summary.json (its last evaluation's per-utterance word errors, bytes per round),
its final model and, when present, the TFLite bundle in `<run>/tflite/`. Prints one table:
WER per split with the run's relative difference to the baseline and its paired bootstrap 95%
interval, client bytes per round, final model parameters and bytes, and the TFLite files.
"""

import csv
import json
import os

from absl import app
from absl import flags
import numpy as np

from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates
from tff_programs import flag_utils
from tff_programs import program_main

_BASELINE_RUN = flags.DEFINE_string('baseline_run', None, 'The baseline run\'s '
                                    '--root_output_dir.')
_RUN = flags.DEFINE_string('run', None, 'The compared run\'s --root_output_dir.')
_WITHIN = flags.DEFINE_float('within', 0.10, 'Relative WER limit the verdict line checks.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', None, 'Also write the comparison here.')


def _load_run(flag) -> dict:
  """What the table needs from one run directory; one-line errors name the flag."""
  if not flag.value:
    raise flag_utils.FlagError(f'--{flag.name} is required')
  root = flag_utils.resolve_path(flag.value)
  path = os.path.join(root, 'summary.json')
  if not os.path.isfile(path):
    raise flag_utils.FlagError(f'--{flag.name}={flag.value}: {path} is missing (not a '
                               'finished run of //tff_programs:train)')
  with open(path) as f:
    summary = json.load(f)
  if not summary.get('utterance_errors'):
    raise flag_utils.FlagError(f'--{flag.name}={flag.value}: the run has no per-utterance '
                               'errors (not a speech task, or evaluated before they were kept)')
  weights_path = os.path.join(root, 'final_model', 'weights.npz')
  with np.load(weights_path) as npz:
    parameters = sum(npz[k].size for k in npz.files)
    parameter_bytes = sum(npz[k].nbytes for k in npz.files)
  # Bytes averaged over every round of the run (pruning's change with its phases).
  with open(os.path.join(root, 'metrics.csv')) as f:
    rows = list(csv.DictReader(f))
  client_bytes = float(np.mean([float(r['communication/client_bytes_down']) +
                                float(r['communication/client_bytes_up']) for r in rows]))
  bundle = {}
  manifest = os.path.join(root, 'tflite', 'manifest.json')
  if os.path.isfile(manifest):
    with open(manifest) as f:
      bundle = {name: entry['bytes'] for name, entry in json.load(f)['files'].items()
                if name.endswith('.tflite')}
  return {
      'name': summary.get('algorithm', os.path.basename(root)), 'rounds': summary['rounds'],
      'rates': summary['eval_metrics']['transcription'],
      'utterances': {split: error_rates.UtteranceErrors.from_dict(value)
                     for split, value in summary['utterance_errors'].items()},
      'client_bytes': client_bytes,
      'parameters': int(parameters), 'parameter_bytes': int(parameter_bytes),
      'tflite': bundle}


def run() -> None:
  flag_utils.require_positive('within', _WITHIN.value)
  base, other = _load_run(_BASELINE_RUN), _load_run(_RUN)
  splits = [s for s in base['utterances'] if s in other['utterances']]
  if not splits:
    raise flag_utils.FlagError(f'--run={_RUN.value} was evaluated on other splits than '
                               f'--baseline_run={_BASELINE_RUN.value}')
  comparisons = {}
  for split in splits:
    try:
      comparisons[split] = bootstrap.paired_bootstrap(base['utterances'][split],
                                                      other['utterances'][split])
    except ValueError as e:
      raise flag_utils.FlagError(f'--run={_RUN.value}: {split}: {e}') from None
  names = (f'{base["name"]} ({base["rounds"]} rounds)', f'{other["name"]} '
           f'({other["rounds"]} rounds)')
  rows = [('', *names, 'difference [95% CI]')]
  for split, c in comparisons.items():
    rows.append((f'{split} WER', f'{100 * c.baseline_wer:.2f}%', f'{100 * c.system_wer:.2f}%',
                 c.describe_relative()))
  ratio = lambda a, b: f'{a / b:.2f}x' if b else ''  # noqa: E731
  for label, field in (('client bytes per round (down + up, mean)', 'client_bytes'),
                       ('final model parameters', 'parameters'),
                       ('final model bytes (float32)', 'parameter_bytes')):
    rows.append((label, f'{base[field]:,.0f}', f'{other[field]:,.0f}', ratio(other[field],
                                                                           base[field])))
  for name in sorted(set(base['tflite']) | set(other['tflite'])):
    b, o = base['tflite'].get(name), other['tflite'].get(name)
    rows.append((f'TFLite {name}', f'{b:,}' if b else 'not exported',
                 f'{o:,}' if o else 'not exported', ratio(o, b) if b and o else ''))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  print('\n'.join('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))) for r in rows))
  test_split = next((s for s in splits if s.startswith('test')), splits[-1])
  test = comparisons[test_split]
  verdict = ('within' if test.within_relative(_WITHIN.value) else 'not shown within')
  print(f'\n{test_split}: {other["name"]} is {verdict} +{100 * _WITHIN.value:g}% relative WER '
        f'of {base["name"]} (upper end of the interval: '
        f'{100 * test.relative_interval[1]:+.1f}%; paired bootstrap over '
        f'{test.num_utterances} utterances, {test.num_words:,} words)', flush=True)
  if _OUTPUT_JSON.value:
    with open(flag_utils.resolve_path(_OUTPUT_JSON.value), 'w') as f:
      json.dump({'baseline': {k: v for k, v in base.items() if k != 'utterances'},
                 'run': {k: v for k, v in other.items() if k != 'utterances'},
                 'comparisons': {s: c.as_dict() for s, c in comparisons.items()}}, f, indent=1)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
