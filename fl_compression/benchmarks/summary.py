"""One view across methods: Pareto plots and a "which method when" table from the benchmarks.

Reads the equal-budget comparison (`method_experiments`: test WER with paired intervals against
dense FedAvg, client bytes per round, final model bytes) and the client-step memory probes of
the compression and pruning benchmarks (`conformer_l`, tensor memory relative to each probe's
own dense step), and draws every method on one figure per axis.
"""

import os
from typing import Any, Optional, Sequence

from fl_compression.benchmarks import method_experiments as methods
from fl_compression.benchmarks import pruning_experiments as common

AXES = (
    ('client_bytes', 'wer_vs_client_bytes.png', 'client bytes per round (down + up), MB', 1e6),
    ('model_bytes', 'wer_vs_model_bytes.png', 'final model parameter bytes, MB', 1e6),
    ('memory', 'wer_vs_memory.png',
     'client-step tensor memory relative to dense (conformer_l probe)', 1.0),
)
# Which memory probe stands for a method (the probes hold one configuration per codec; the
# partial OMC run holds 90% of its matrices in S1E4M6, the probe all of them).
_MEMORY_PROBES = {
    methods.dense_key(): ('compression', 'dense'),
    methods.TFF_KEY: ('compression', 'dense'),
    methods.OMC_KEY: ('compression', 'omc_11'),
    methods.OMC_NEAREST_KEY: ('compression', 'omc_11'),
    methods.aqt_key('nearest'): ('compression', 'fedaqt_8'),
    methods.aqt_key('stochastic'): ('compression', 'fedaqt_8'),
    methods.fp_key(0.5): ('pruning', 'pruned'),
    methods.fd_key(0.5): ('pruning', 'pruned'),
}
# Relative WER cost limits of the table's advice.
NO_COST = 0.05
SMALL_COST = 0.10


def memory_ratio(key: str, probes: dict[str, Optional[dict[str, Any]]]) -> Optional[float]:
  """Tensor memory of `key`'s client step over the dense step of the same probe."""
  source, name = _MEMORY_PROBES.get(key, (None, None))
  probe = probes.get(source) if source else None
  if not probe or not probe.get(name) or not probe.get('dense'):
    return None
  value, dense = probe[name].get('tensor_peak_bytes'), probe['dense'].get('tensor_peak_bytes')
  return value / dense if value and dense else None


def points(results: dict[str, Any], axis: str, probes: dict[str, Any]
           ) -> list[dict[str, Any]]:
  """The runs of `tiny` with a value on `axis` (memory: those with a probe)."""
  if axis != 'memory':
    return methods.pareto_points(results, axis)
  found = []
  for point in methods.pareto_points(results, 'client_bytes'):
    ratio = memory_ratio(point['key'], probes)
    if ratio is not None:
      found.append(dict(point, x=ratio))
  return found


def plot(results: dict[str, Any], probes: dict[str, Any], output_dir: str) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  written = []
  for axis, name, xlabel, scale in AXES:
    found = points(results, axis, probes)
    if not found:
      continue
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    methods.draw_points(ax, found, scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('test WER (%)')
    ax.set_title('Test WER (bars: paired 95% interval against dense FedAvg)', fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, name), dpi=110)
    plt.close(fig)
    written.append(name)
  return written


def _cost(comparison) -> str:
  if comparison is None:
    return '(baseline)'
  if comparison.within_relative(NO_COST):
    return f'no measurable cost: {comparison.describe_relative()}'
  if comparison.within_relative(SMALL_COST):
    return f'small: {comparison.describe_relative()}'
  return f'**{comparison.describe_relative()}**'


def rows(results: dict[str, Any], probes: dict[str, Any]) -> list[dict[str, Any]]:
  """Per `tiny` run: WER, its comparison with dense, and each saving as a ratio to dense."""
  dense = results.get(methods.dense_key())
  if not dense:
    return []
  found = []
  for key in methods.table_keys(results):
    if key == methods.dense_key(seed=methods.NOISE_SEED):
      continue
    run = results[key]
    comparison = methods.compare(results, key, methods.dense_key()) if key != methods.DENSE \
        else None
    found.append({
        'key': key, 'label': methods.label(key), 'comparison': comparison,
        'wer': run['error_rates'][methods.test_split(results)]['wer'],
        'traffic': methods.client_bytes(run) / methods.client_bytes(dense),
        'model': run['model_parameter_bytes'] / dense['model_parameter_bytes'],
        'memory': memory_ratio(key, probes)})
  return found


def _best(found: Sequence[dict[str, Any]], field: str, limit: float) -> Optional[dict]:
  candidates = [r for r in found if r[field] is not None and r['comparison'] is not None
                and r['comparison'].within_relative(limit) and r[field] < 0.999]
  return min(candidates, key=lambda r: r[field]) if candidates else None


def _budget(results: dict[str, Any]) -> str:
  """The equal budget, with what the plateau rule says of dense FedAvg's dev curve."""
  dense = results.get(methods.dense_key()) or {}
  curve = (dense.get('wer_curves') or {}).get(methods.dev_split(results))
  rule = methods.plateau(curve) if curve else None
  if rule is None:
    return 'an equal budget (dense FedAvg\'s dev curve not measured)'
  if rule['plateaued']:
    return 'an equal budget at which dense FedAvg\'s dev WER has plateaued'
  return ('an equal budget at whose end dense FedAvg\'s dev WER did not meet the plateau rule '
          f'({100 * -rule["improvement"]:+.1f}% over the last rounds; see the report)')


def render(results: dict[str, Any], probes: dict[str, Any], settings: dict[str, Any],
           figures: Sequence[str]) -> str:
  found = rows(results, probes)
  lines = ['# Which method when', '', f'`{settings["command"]}`', '',
           f'From [`{settings["methods"]}`]({settings["methods_link"]}) (every method from the '
           f'same pretrained `tiny` model, the same clients and {_budget(results)}; each run '
           'reported at its best dev round) and the '
           '`conformer_l` client-step memory probes of the compression and pruning benchmarks. '
           'WER differences are relative to dense FedAvg on the same test utterances, with '
           'their paired bootstrap 95% interval. Ratios are to dense FedAvg.', '']
  if not found:
    return '\n'.join(lines + ['No results yet.', ''])
  lines += ['## Advice', '']
  for field, what, limit in (
      ('traffic', 'the least client traffic per round', NO_COST),
      ('model', 'the smallest final model', SMALL_COST),
      ('memory', 'the least client-step memory', SMALL_COST)):
    best = _best(found, field, limit)
    if best is None:
      lines.append(f'- For {what}: no method saves it within +{100 * limit:g}% relative WER '
                   '(interval upper end) at this budget.')
    else:
      lines.append(f'- For {what} within +{100 * limit:g}% relative WER: **{best["label"]}** '
                   f'({best[field]:.2f}x dense; WER {best["comparison"].describe_relative()}).')
  lines += ['', '## Every method', '',
            '| method | test WER | WER cost vs dense [95% CI] | client bytes per round | '
            'final model bytes | client-step memory (conformer_l) |', '|---|---|---|---|---|---|']
  for r in found:
    memory = f'{r["memory"]:.2f}x' if r['memory'] is not None else 'not probed'
    lines.append(f'| {r["label"]} | {common.pct(r["wer"])} | {_cost(r["comparison"])} | '
                 f'{r["traffic"]:.2f}x | {r["model"]:.2f}x | {memory} |')
  lines += ['', f'"No measurable cost": the interval\'s upper end is within +{100 * NO_COST:g}%; '
            f'"small": within +{100 * SMALL_COST:g}%. Memory: tensor memory (parameters, '
            'activations, gradients, temporaries) of one training step at batch 4, measured '
            'for dense, OMC S1E4M6 (all matrices), FedAQT int8 and 50% column pruning (which '
            'stands for federated dropout at 50% too: its clients train the same sub-model '
            'size); other rows were not probed.', '']
  for figure in figures:
    lines += [f'![{figure}]({figure})', '']
  return '\n'.join(lines)
