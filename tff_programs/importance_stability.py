"""Compares layer-importance rankings across trainings and model sizes.

  bazel run //tff_programs:importance_stability -- --output_dir=$PWD/reports/layer_importance/stability \\
      --ranking=deep:seed1:$PWD/runs/importance_deep_seed1/ranking.json \\
      --ranking=deep:seed2:$PWD/runs/importance_deep_seed2/ranking.json ...

Each `--ranking` is `configuration:training:path` to a `ranking.json` of
`//tff_programs:layer_importance`. Writes `stability.json` and `report.md`
(`fl_compression/importance/stability.py`).
"""

import json
import os
import sys

from absl import app
from absl import flags

from fl_compression.importance import stability
from tff_programs import flag_utils
from tff_programs import program_main

_RANKINGS = flags.DEFINE_multi_string('ranking', [], 'configuration:training:path of a '
                                      'ranking.json (repeat the flag).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where stability.json and report.md go.')


def _read(spec: str):
  parts = spec.split(':', 2)
  if len(parts) != 3 or not all(parts):
    raise flag_utils.FlagError(f'--ranking={spec}: expected configuration:training:path')
  config, label, path = parts
  path = flag_utils.resolve_path(path)
  try:
    with open(path) as f:
      ranking = json.load(f)
  except (OSError, ValueError) as e:
    raise flag_utils.FlagError(f'--ranking={spec}: {e}') from None
  if not isinstance(ranking, dict) or 'blocks' not in ranking or 'ambient_first' not in ranking:
    raise flag_utils.FlagError(f'--ranking={spec}: {path} is not a ranking.json of '
                               '//tff_programs:layer_importance')
  return config, label, ranking


def run() -> None:
  if not _OUTPUT_DIR.value:
    raise flag_utils.FlagError('--output_dir is required')
  if len(_RANKINGS.value) < 2:
    raise flag_utils.FlagError('--ranking: give at least two rankings to compare')
  rankings = [_read(spec) for spec in _RANKINGS.value]
  try:
    result = stability.compare(rankings)
  except stability.StabilityError as e:
    raise flag_utils.FlagError(f'--ranking: {e}') from None
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  with open(os.path.join(output_dir, 'stability.json'), 'w') as f:
    json.dump(result, f, indent=2)
  report = stability.render(result, ' '.join(
      ['bazel run //tff_programs:importance_stability --'] + sys.argv[1:]))
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(report)
  print(report, flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
