"""Compares layer-importance rankings across trainings and model sizes.

  bazel run //tff_programs:importance_stability -- --output_dir=$PWD/reports/layer_importance/stability \\
      --ranking=deep:seed1:$PWD/runs/importance_deep_seed1/ranking.json \\
      --ranking=deep:seed2:$PWD/runs/importance_deep_seed2/ranking.json ...

Each `--ranking` is `configuration:training:path` to a `ranking.json` of
`//tff_programs:layer_importance`; the configuration is a named model (its size enters the
findings). Writes `stability.json` and `report.md`: the stability tables
(`fl_compression/importance/stability.py`) and the paper's findings, each decided by its rule
(`fl_compression/importance/findings.py`). `--reference=configuration:training` names the
training whose signature findings are reported (default: the first ranking), and
`--signature_history` its `signatures.csv`.
"""

import json
import os
import sys

from absl import app
from absl import flags

from fl_compression.importance import findings
from fl_compression.importance import stability
from fl_compression.models import asr
from fl_compression.models import registry
from tff_programs import flag_utils
from tff_programs import program_main

_RANKINGS = flags.DEFINE_multi_string('ranking', [], 'configuration:training:path of a '
                                      'ranking.json (repeat the flag).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where stability.json and report.md go.')
_REFERENCE = flags.DEFINE_string('reference', None, 'configuration:training whose signature '
                                 'findings are reported (default: the first --ranking).')
_SIGNATURE_HISTORY = flags.DEFINE_string('signature_history', None, 'signatures.csv of the '
                                         'reference training (pretraining output).')


_BLOCK_KEYS = ('block', 'reinit_wer', 'rerand_wer', 'reinit_relative', 'class')


def _read(spec: str):
  parts = spec.split(':', 2)
  if len(parts) != 3 or not all(parts):
    raise flag_utils.FlagError(f'--ranking={spec}: expected configuration:training:path')
  config, label, path = parts
  if config not in asr.NAMED_CONFIGS:
    raise flag_utils.FlagError(f'--ranking={spec}: {config!r} is not a named model; known: '
                               f'{", ".join(asr.NAMED_CONFIGS)}')
  path = flag_utils.resolve_path(path)
  try:
    with open(path) as f:
      ranking = json.load(f)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--ranking={spec}: {e}') from None
  if (not isinstance(ranking, dict) or 'blocks' not in ranking or 'ambient_first' not in ranking
      or not all(isinstance(b, dict) and all(k in b for k in _BLOCK_KEYS)
                 for b in ranking['blocks'])):
    raise flag_utils.FlagError(f'--ranking={spec}: {path} is not a ranking.json of '
                               '//tff_programs:layer_importance')
  blocks = asr.NAMED_CONFIGS[config](0, 0)['encoder']['num_blocks']
  if len(ranking['blocks']) != blocks:
    raise flag_utils.FlagError(f'--ranking={spec}: ranks {len(ranking["blocks"])} blocks; '
                               f'`{config}` has {blocks}')
  return config, label, ranking


def _figures(specs, output_dir: str) -> str:
  """Links to each ranking's heatmap and signature map (`layer_importance`'s figures), from
  the report's directory."""
  lines = []
  for spec in specs:
    config, label, path = spec.split(':', 2)
    directory = os.path.dirname(flag_utils.resolve_path(path))
    for figure, what in (('heatmap.png', 'WER after each reset'),
                         ('signatures.png', 'numerical signatures')):
      if os.path.exists(os.path.join(directory, figure)):
        relative = os.path.relpath(os.path.join(directory, figure), output_dir)
        lines.append(f'![{config} {label}: {what}]({relative})')
  return '\n## Figures\n\n' + '\n\n'.join(lines) + '\n' if lines else ''


def run() -> None:
  if not _OUTPUT_DIR.value:
    raise flag_utils.FlagError('--output_dir is required')
  if len(_RANKINGS.value) < 2:
    raise flag_utils.FlagError('--ranking: give at least two rankings to compare')
  rankings = [_read(spec) for spec in _RANKINGS.value]
  seen = set()
  for config, label, _ in rankings:
    if (config, label) in seen:
      raise flag_utils.FlagError(f'--ranking: {config}:{label} is given twice')
    seen.add((config, label))
  ranked = [findings.Ranked(*r) for r in rankings]
  reference = ranked[0]
  if _REFERENCE.value:
    matches = [r for r in ranked if f'{r.config}:{r.label}' == _REFERENCE.value]
    if not matches:
      raise flag_utils.FlagError(f'--reference={_REFERENCE.value}: no --ranking has that '
                                 'configuration:training')
    reference = matches[0]
  history = None
  if _SIGNATURE_HISTORY.value:
    path = flag_utils.resolve_path(_SIGNATURE_HISTORY.value)
    try:
      history = findings.read_signature_history(path)
    except (OSError, findings.SignatureHistoryError) as e:
      raise flag_utils.FlagError(f'--signature_history={path}: {e}') from None
    counts = {len(v) for _, signature in history for v in signature.values()}
    if counts != {len(reference.ranking['blocks'])}:
      raise flag_utils.FlagError(
          f'--signature_history={path}: has {sorted(counts)} blocks per module; the reference '
          f'{reference.config}:{reference.label} ranks {len(reference.ranking["blocks"])}')
  try:
    result = stability.compare(rankings)
  except stability.StabilityError as e:
    raise flag_utils.FlagError(f'--ranking: {e}') from None
  parameters = {config: registry.build_keras_model(asr.NAMED_CONFIGS[config](0, 0)).count_params()
                for config in sorted({r.config for r in ranked})}
  found = findings.decide(ranked, parameters, reference, history)
  result['parameters'] = parameters
  result['findings'] = [f.as_dict() for f in found]
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  with open(os.path.join(output_dir, 'stability.json'), 'w') as f:
    json.dump(result, f, indent=2)
  report = stability.render(result, ' '.join(
      ['bazel run //tff_programs:importance_stability --'] + sys.argv[1:]))
  report += '\n## The paper\'s findings\n\n' + findings.render(found) + '\n'
  report += _figures(_RANKINGS.value, output_dir)

  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(report, flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
