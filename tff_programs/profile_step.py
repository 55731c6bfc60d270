"""Memory profile of one client training step: the tensors alive at its peak, by op.

  bazel run //tff_programs:profile_step -- --model=conformer_l --batch_size=4 --seconds=4 \\
      --compression=aqt:8 --rematerialize --top=15

Runs the client-step probe (`fl_compression.benchmarks.client_step`) in a fresh process with
TF's BFC allocator: it builds the model, runs plain SGD steps on random features, then one more
step under TF's profiler, and prints the step's tensor memory and the largest groups of
allocations alive at the allocator's peak (`fl_compression.benchmarks.memory_profile`; op
names with block indices and numeric suffixes folded, so a tensor of every Conformer block is
one row). `--compression`: `none` (float32), `omc:<format>` (e.g. `omc:S1E4M6`) or
`aqt:<bits>` (FedAQT, 4 to 8), the decompress-on-use steps of the compression benchmark.
"""

import json

from absl import app
from absl import flags

from fl_compression.benchmarks import client_step
from fl_compression.models import asr
from tff_programs import flag_utils
from tff_programs import program_main

_MODEL = flags.DEFINE_string('model', 'tiny', f'One of: {", ".join(asr.NAMED_CONFIGS)}.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 4, 'Utterances per step.')
_SECONDS = flags.DEFINE_float('seconds', 4.0, 'Duration of each utterance (100 frames/s).')
_LABEL_LENGTH = flags.DEFINE_integer('label_length', 20, 'Tokens per utterance.')
_COMPRESSION = flags.DEFINE_string('compression', 'none',
                                   'none, omc:<format> (e.g. omc:S1E4M6) or aqt:<bits>.')
_REMATERIALIZE = flags.DEFINE_bool('rematerialize', False,
                                   'Recompute the Conformer activations in the backward pass.')
_TOP = flags.DEFINE_integer('top', 15, 'How many op groups to list.')
_OUTPUT_JSON = flags.DEFINE_string('output_json', '', 'Also write the probe result here.')


def run() -> None:
  try:
    config = asr.named_config(_MODEL.value)
  except ValueError as e:
    raise flag_utils.FlagError(f'--model={_MODEL.value}: {e}') from None
  for name in ('batch_size', 'seconds', 'label_length', 'top'):
    flag_utils.require_positive(name, flags.FLAGS[name].value)
  try:
    compression = client_step.parse_compression(_COMPRESSION.value)
  except ValueError as e:
    raise flag_utils.FlagError(f'--compression={_COMPRESSION.value}: {e}') from None
  result = client_step.measure_in_subprocess(
      config, batch_size=_BATCH_SIZE.value, seconds=_SECONDS.value,
      label_length=_LABEL_LENGTH.value, steps=2, compression=compression,
      rematerialize=_REMATERIALIZE.value, profile_top=_TOP.value)
  mib = lambda b: f'{b / 2**20:,.1f}'  # noqa: E731
  profile = result['profile']
  print(f'{_MODEL.value}, batch {_BATCH_SIZE.value} x {result["frames"]} frames, '
        f'compression {_COMPRESSION.value}, '
        f'{"rematerialized" if _REMATERIALIZE.value else "plain"} step:')
  print(f'  parameters held {mib(result["held_parameter_bytes"])} MiB, step tensors '
        f'{mib(result["step_tensor_bytes"])} MiB (profiled step: '
        f'{mib(profile["step_tensor_bytes"])} MiB), step {result["step_seconds"]:.2f} s')
  print(f'  alive at the profiled step\'s peak (allocated during it), top {_TOP.value}:')
  print(f'  {"MiB":>9} {"count":>5}  op')
  for row in profile['peak_live_tensors']:
    print(f'  {mib(row["bytes"]):>9} {row["count"]:>5}  {row["op"]}')
  if _OUTPUT_JSON.value:
    with open(flag_utils.resolve_path(_OUTPUT_JSON.value), 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
