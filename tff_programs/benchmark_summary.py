"""One view across methods: Pareto plots and a "which method when" table.

  bazel run //tff_programs:benchmark_summary -- --output_dir=$PWD/reports/summary

Reads the stored results of `benchmark_methods` (WER with intervals, bytes) and the
`conformer_l` memory probes of `benchmark_compression` and `benchmark_pruning`; runs nothing.
Writes `summary.md` and one PNG per axis (client bytes per round, final model bytes, client-step
memory).
"""

import os

import json
import sys

from absl import app
from absl import flags

from fl_compression.benchmarks import method_experiments as methods
from fl_compression.benchmarks import summary
from tff_programs import flag_utils
from tff_programs import program_main

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'reports/summary', 'Where to write.')
_METHODS = flags.DEFINE_string('methods_results', 'reports/methods/results.json',
                               'results.json of //tff_programs:benchmark_methods.')
_COMPRESSION = flags.DEFINE_string('compression_results', 'reports/compression/results.json',
                                   'results.json of //tff_programs:benchmark_compression.')
_PRUNING = flags.DEFINE_string('pruning_results', 'reports/federated_pruning/results.json',
                               'results.json of //tff_programs:benchmark_pruning.')


def _read(flag, required: bool, with_rounds: bool = False):
  path = flag_utils.resolve_path(flag.value)
  if not os.path.exists(path):
    if required:
      raise flag_utils.FlagError(f'--{flag.name}={flag.value}: no such file (run the '
                                 'benchmark first)')
    return None
  try:
    with open(path) as f:
      data = json.load(f)
    if with_rounds:  # The methods' plan needs its rounds to tell current results.
      return methods.current(dict(data['results'], total_rounds=data['settings']['total_rounds']))
    return data['results']
  except (OSError, ValueError, KeyError) as e:
    raise flag_utils.FlagError(f'--{flag.name}={flag.value}: not a benchmark results file '
                               f'({e})') from None


def run() -> None:
  results = _read(_METHODS, required=True, with_rounds=True)
  probes = {}
  for name, flag in (('compression', _COMPRESSION), ('pruning', _PRUNING)):
    found = _read(flag, required=False)
    probes[name] = (found or {}).get('memory')
  output_dir = flag_utils.ensure_writable_dir('output_dir',
                                              flag_utils.resolve_path(_OUTPUT_DIR.value))
  figures = summary.plot(results, probes, output_dir)
  methods_path = flag_utils.resolve_path(_METHODS.value)
  settings = {
      'command': ' '.join(['bazel run //tff_programs:benchmark_summary --'] + sys.argv[1:]),
      'methods': _METHODS.value,
      'methods_link': os.path.relpath(os.path.join(os.path.dirname(methods_path), 'report.md'),
                                      output_dir)}
  text = summary.render(results, probes, settings, figures)
  with open(os.path.join(output_dir, 'summary.md'), 'w') as f:
    f.write(text)
  print(text + f'\nsummary: {os.path.join(output_dir, "summary.md")}', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
