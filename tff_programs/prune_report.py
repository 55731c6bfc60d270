"""Zero-parameter ratio of federated pruning per sparsity level (the paper's Table 1 shape).

  bazel run //tff_programs:prune_report -- --model=conformer_l --pattern=column \\
      --sparsities=0.1,0.2,0.3,0.4,0.5 --output_json=/tmp/table1.json

For each sparsity: the fraction of parameters removed among the prunable variables (the
Conformer blocks' feed-forward and attention kernels), and the whole model's parameter count
before and after (the reduced model is built, so the counts are of real variables; index
vectors are not counted). Builds models only; no training.
"""

import json

from absl import app
from absl import flags
import tensorflow as tf

from fl_compression.models import asr
from fl_compression.models import registry
from fl_compression.pruning import plan as plan_lib
from tff_programs import flag_utils
from tff_programs import program_main

_MODEL = flags.DEFINE_string('model', 'tiny', f'One of: {", ".join(asr.NAMED_CONFIGS)}.')
_PATTERN = flags.DEFINE_string('pattern', 'column', f'One of: {", ".join(plan_lib.PATTERNS)}.')
_SPARSITIES = flags.DEFINE_list('sparsities', ['0.1', '0.2', '0.3', '0.4', '0.5'],
                                'Comma-separated sparsity levels in [0, 1).')
_OUTPUT_JSON = flags.DEFINE_string('output_json', '', 'Also write the table as JSON here.')


def _trainable_count(model) -> int:
  return int(sum(v.shape.num_elements() for v in model.trainable_variables))


def run() -> None:
  try:
    config = asr.named_config(_MODEL.value)
  except ValueError as e:
    raise flag_utils.FlagError(f'--model={_MODEL.value}: {e}') from None
  try:
    plan_lib.validate_pattern(_PATTERN.value)
    sparsities = [float(s) for s in _SPARSITIES.value]
  except ValueError as e:
    raise flag_utils.FlagError(str(e) if isinstance(e, plan_lib.PlanError) else
                               f'--sparsities={",".join(_SPARSITIES.value)}: {e}') from None
  for sparsity in sparsities:
    try:
      plan_lib.validate_sparsity(sparsity, 'sparsities')
    except plan_lib.PlanError as e:
      raise flag_utils.FlagError(str(e)) from None
  full = registry.build_keras_model(config)
  layers = plan_lib.prunable_layers(full)
  full_count = _trainable_count(full)
  prunable = sum(layer.size for layer in layers)
  del full
  rows = {}
  print(f'{_MODEL.value}: {full_count:,} parameters, {prunable:,} in {len(layers)} prunable '
        f'kernels; pattern {_PATTERN.value}')
  print(f'{"sparsity":>8} {"zero-param ratio":>16} {"parameters after":>17} {"of dense":>9}')
  for sparsity in sparsities:
    plan = plan_lib.make_plan(layers, _PATTERN.value, sparsity)
    tf.keras.backend.clear_session()
    reduced = registry.build_keras_model(dict(config, pruning=plan))
    after = _trainable_count(reduced)
    del reduced
    if after != full_count - plan_lib.removed_parameters(plan):
      raise AssertionError('reduced model size disagrees with the plan')
    ratio = plan_lib.zero_parameter_ratio(plan)
    rows[f'{sparsity:g}'] = {'zero_parameter_ratio': ratio, 'parameters_before': full_count,
                             'parameters_after': after}
    print(f'{sparsity:>8g} {ratio:>16.4f} {after:>17,} {after / full_count:>8.3f}x')
  if _OUTPUT_JSON.value:
    with open(flag_utils.resolve_path(_OUTPUT_JSON.value), 'w') as f:
      json.dump({'model': _MODEL.value, 'pattern': _PATTERN.value,
                 'prunable_parameters': prunable, 'sparsities': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
