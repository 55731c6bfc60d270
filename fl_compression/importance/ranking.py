"""The ablation of a trained Conformer's encoder blocks and its report.

Each block is reset to its initial values (re-initialization) and to fresh draws from its
initializers (re-randomization, several draws), and each module of each block (the two
feed-forward modules, self-attention, the convolution module) is re-initialized alone; the
model is evaluated without retraining after each reset. A block's class follows from the paired
bootstrap interval of its re-initialization's WER against the intact model's (`classify`).
"""

import dataclasses
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fl_compression.evaluation import bootstrap
from fl_compression.evaluation import error_rates
from fl_compression.importance import layers

# Classification of a block by the relative WER change when it is re-initialized, read from the
# paired 95% interval: ambient when its upper end is at most AMBIENT_LIMIT, critical when its
# lower end is at least CRITICAL_LIMIT (the reset at least doubles the WER), else intermediate.
AMBIENT_LIMIT = 0.10
CRITICAL_LIMIT = 1.0
RULE = (f'ambient: the re-initialization\'s relative WER change has its 95% interval\'s upper '
        f'end at most +{100 * AMBIENT_LIMIT:g}%; critical: its lower end at least '
        f'+{100 * CRITICAL_LIMIT:g}% (the reset at least doubles the WER); intermediate: '
        'neither')
COLUMNS = ('re-init', 're-rand') + layers.MODULES

Evaluate = Callable[[Sequence[np.ndarray]], error_rates.UtteranceErrors]


def classify(comparison: bootstrap.WerComparison) -> str:
  low, high = comparison.relative_interval
  if high <= AMBIENT_LIMIT:
    return 'ambient'
  if low >= CRITICAL_LIMIT:
    return 'critical'
  return 'intermediate'


@dataclasses.dataclass
class Ablation:
  """Evaluations of every reset, kept as they are made (a killed run resumes from them)."""

  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  intact: Optional[dict[str, Any]] = None  # UtteranceErrors.as_dict()
  blocks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  @classmethod
  def load(cls, path: str, settings: dict[str, Any]) -> 'Ablation':
    """The evaluations stored at `path` for the same `settings` (a ValueError names what
    differs), or none."""
    if not os.path.exists(path):
      return cls(settings)
    with open(path) as f:
      value = json.load(f)
    changed = [f'{k}={settings[k]} (stored: {value["settings"].get(k)})' for k in settings
               if value['settings'].get(k) != settings[k]]
    if changed:
      raise ValueError(f'{path} holds an ablation of other settings: {"; ".join(changed)}')
    return cls(settings, value.get('intact'), value.get('blocks', {}))

  def save(self, path: str) -> None:
    with open(path + '.tmp', 'w') as f:
      json.dump(dataclasses.asdict(self), f)
    os.replace(path + '.tmp', path)


def run(names: Sequence[str], trained: Sequence[np.ndarray], initial: Sequence[np.ndarray],
        rerandomized: Sequence[Sequence[np.ndarray]], evaluate: Evaluate, *,
        state_path: str, settings: dict[str, Any], log: Callable[[str], None] = print
        ) -> Ablation:
  """Evaluates the intact model and every reset; what `state_path` holds already (for the same
  `settings`) is kept."""
  count = layers.num_blocks(names)
  if not count:
    raise layers.LayerError('the model has no encoder blocks to rank')
  ablation = Ablation.load(state_path, settings)
  if ablation.intact is None:
    ablation.intact = evaluate(trained).as_dict()
    ablation.save(state_path)
  log(f'intact: WER {100 * error_rates.UtteranceErrors.from_dict(ablation.intact).wer:.2f}%')
  for block in range(count):
    entry = ablation.blocks.setdefault(str(block), {})
    resets = [('reinit', lambda: layers.reset(trained, initial, names, block))]
    resets += [(f'rerand_{k}', lambda k=k: layers.reset(trained, rerandomized[k], names, block))
               for k in range(len(rerandomized))]
    resets += [(module, lambda m=module: layers.reset(trained, initial, names, block, m))
               for module in layers.MODULES]
    for name, values in resets:
      if name not in entry:
        entry[name] = evaluate(values()).as_dict()
        ablation.save(state_path)
    wers = {name: error_rates.UtteranceErrors.from_dict(v).wer for name, v in entry.items()}
    log(f'block {block:2d}: re-init {100 * wers["reinit"]:6.2f}%, re-rand '
        + ' '.join(f'{100 * w:6.2f}%' for n, w in wers.items() if n.startswith('rerand'))
        + ', modules ' + ' '.join(f'{m} {100 * wers[m]:.2f}%' for m in layers.MODULES))
  return ablation


def ranking(ablation: Ablation, signature: Optional[dict[str, list[float]]] = None,
            seed: int = 0) -> dict[str, Any]:
  """`ranking.json`'s content: the intact WER, one entry per block in order, and the blocks
  from most ambient to most critical (by re-initialization WER)."""
  intact = error_rates.UtteranceErrors.from_dict(ablation.intact)
  blocks = []
  for block in range(len(ablation.blocks)):
    entry = ablation.blocks[str(block)]
    reinit = error_rates.UtteranceErrors.from_dict(entry['reinit'])
    rerand = [error_rates.UtteranceErrors.from_dict(v).wer for n, v in sorted(entry.items())
              if n.startswith('rerand_')]
    comparison = bootstrap.paired_bootstrap(intact, reinit, seed=seed)
    blocks.append({
        'block': block, 'reinit_wer': reinit.wer,
        'rerand_wer': float(np.mean(rerand)), 'rerand_wer_std': float(np.std(rerand)),
        'rerand_wers': rerand,
        'delta_ci': list(comparison.relative_interval),
        'reinit_relative': comparison.relative,
        'modules': {m: error_rates.UtteranceErrors.from_dict(entry[m]).wer
                    for m in layers.MODULES},
        'class': classify(comparison)})
  order = sorted(range(len(blocks)),
                 key=lambda b: (blocks[b]['reinit_wer'], blocks[b]['rerand_wer'], b))
  result = {'intact_wer': intact.wer, 'num_utterances': len(intact.utterance_ids),
            'num_words': int(sum(intact.words)), 'rule': RULE, 'blocks': blocks,
            'ambient_first': order}
  if signature is not None:
    result['signatures'] = signature
    result['signature_correlations'] = correlations(blocks, signature)
  return result


def correlations(blocks: Sequence[dict[str, Any]], signature: dict[str, list[float]]
                 ) -> dict[str, Optional[float]]:
  """Per signature module, Spearman's rank correlation across blocks between the signature and
  the damage of re-initializing the block (its WER); None where either is constant."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  damage = [b['reinit_wer'] for b in blocks]
  found = {}
  for module, values in signature.items():
    if len(set(values)) < 2 or len(set(damage)) < 2:
      found[module] = None
    else:
      found[module] = float(stats.spearmanr(values, damage).correlation)
  return found


def write_csv(path: str, result: dict[str, Any]) -> None:
  header = ['block', 'class', 'reinit_wer', 'delta_low', 'delta_high', 'rerand_wer',
            'rerand_wer_std'] + [f'{m}_wer' for m in layers.MODULES]
  lines = [','.join(header)]
  for b in result['blocks']:
    lines.append(','.join(str(v) for v in [
        b['block'], b['class'], b['reinit_wer'], *b['delta_ci'], b['rerand_wer'],
        b['rerand_wer_std']] + [b['modules'][m] for m in layers.MODULES]))
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def plot(result: dict[str, Any], output_dir: str) -> list[str]:
  """`heatmap.png` (blocks x resets, WER) and, with signatures, `signatures.png`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  written = []
  blocks = result['blocks']
  grid = np.array([[b['reinit_wer'], b['rerand_wer']] + [b['modules'][m] for m in layers.MODULES]
                   for b in blocks]) * 100
  fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(blocks) + 1.6))
  image = ax.imshow(grid, aspect='auto', cmap='viridis')
  ax.set_xticks(range(len(COLUMNS)), COLUMNS, fontsize=8)
  ax.set_yticks(range(len(blocks)), [f'{b["block"]} ({b["class"][:3]})' for b in blocks],
                fontsize=8)
  for (row, column), value in np.ndenumerate(grid):
    ax.text(column, row, f'{value:.0f}', ha='center', va='center', fontsize=6, color='w')
  ax.set_title(f'WER (%) after resetting each block (intact {100 * result["intact_wer"]:.1f}%)',
               fontsize=9)
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  fig.savefig(os.path.join(output_dir, 'heatmap.png'), dpi=110)
  plt.close(fig)
  written.append('heatmap.png')
  signature = result.get('signatures')
  if signature:
    modules = list(signature)
    grid = np.array([signature[m] for m in modules])
    fig, ax = plt.subplots(figsize=(0.4 * len(blocks) + 2.5, 3.2))
    image = ax.imshow(grid, aspect='auto', cmap='magma', vmin=0, vmax=1)
    ax.set_yticks(range(len(modules)), modules, fontsize=8)
    ax.set_xticks(range(len(blocks)), [str(b['block']) for b in blocks], fontsize=8)
    ax.set_xlabel('encoder block')
    ax.set_title('||W(t) - W(0)||_F over the largest block, per module', fontsize=9)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, 'signatures.png'), dpi=110)
    plt.close(fig)
    written.append('signatures.png')
  return written


def render(result: dict[str, Any], settings: dict[str, Any], figures: Sequence[str]) -> str:
  lines = ['# Layer importance', '', f'`{settings["command"]}`', '',
           f'Model `{settings["model_dir"]}`, evaluated on `{settings["split"]}` '
           f'({result["num_utterances"]} utterances, {result["num_words"]:,} words) without '
           f'retraining after each reset; {settings["draws"]} re-randomization draws per block. '
           f'Intact WER {100 * result["intact_wer"]:.2f}%.', '',
           f'**Rule.** {RULE}. The interval is the paired bootstrap 95% interval over '
           'utterances (1,000 resamples).', '',
           '| block | class | re-init WER | re-init vs intact [95% CI] | re-rand WER (mean ± sd) '
           '| ' + ' | '.join(f'{m} re-init' for m in layers.MODULES) + ' |',
           '|---|---|---|---|---|' + '---|' * len(layers.MODULES)]
  for b in result['blocks']:
    low, high = b['delta_ci']
    lines.append(
        f'| {b["block"]} | {b["class"]} | {100 * b["reinit_wer"]:.2f}% | '
        f'{100 * b["reinit_relative"]:+.1f}% [{100 * low:+.1f}%, {100 * high:+.1f}%] | '
        f'{100 * b["rerand_wer"]:.2f}% ± {100 * b["rerand_wer_std"]:.2f} | '
        + ' | '.join(f'{100 * b["modules"][m]:.2f}%' for m in layers.MODULES) + ' |')
  order = ', '.join(str(b) for b in result['ambient_first'])
  counts = {c: sum(b['class'] == c for b in result['blocks'])
            for c in ('ambient', 'intermediate', 'critical')}
  lines += ['', f'From most ambient to most critical (by re-initialization WER): {order}. '
            f'{counts["ambient"]} ambient, {counts["intermediate"]} intermediate, '
            f'{counts["critical"]} critical.', '']
  if result.get('signature_correlations'):
    lines += ['## Numerical signatures', '',
              'Per module, Spearman\'s rank correlation across blocks between the signature at '
              'the final step and the WER after re-initializing the block:', '',
              '| module | Spearman |', '|---|---|']
    for module, value in result['signature_correlations'].items():
      lines.append(f'| {module} | {"n/a" if value is None else f"{value:+.2f}"} |')
    lines.append('')
  for figure in figures:
    lines += [f'![{figure}]({figure})', '']
  return '\n'.join(lines)
