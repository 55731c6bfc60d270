"""Client traffic of the compressed processes against FedAvg's at any model size.

The bytes a client receives and sends depend only on the model's variable shapes, so they are
computed from the types of what the processes send (`process.client_traffic`, the same
accounting as the processes' own `communication` measurements) for configurations too large
to train here. One fresh process builds each model (conformer_l holds 0.5 GB of weights).
"""

from typing import Any, Sequence

from fl_compression.benchmarks import fresh_process

# Name -> (algorithm, options) of `process.CONFIGS`.
SETTINGS = (('omc_11', ('omc', {'format': 'S1E4M6'})),
            ('omc_16', ('omc', {'format': 'S1E5M10'})),
            ('fedaqt_8', ('fedaqt', {'bits': 8})))


def measure(model_names: Sequence[str]) -> dict[str, Any]:
  """Per model: parameters (all, and in variables of rank < 2), FedAvg's client traffic and
  each setting's, in bytes."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fl_compression.compression import process  # pylint: disable=g-import-not-at-top
  from fl_compression.models import asr  # pylint: disable=g-import-not-at-top

  out = {}
  for name in model_names:
    weights_type = process.weights_type_of(asr.named_config(name))
    shapes = [tuple(t.shape) for t in list(weights_type.trainable) +
              list(weights_type.non_trainable)]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    entry = {'parameters': sum(sizes),
             'vector_parameters': sum(n for n, s in zip(sizes, shapes) if len(s) < 2),
             'fedavg': dict(process.float_client_traffic(weights_type))}
    for setting, (algorithm, options) in SETTINGS:
      entry[setting] = dict(process.client_traffic(process.CONFIGS[algorithm](options),
                                                   weights_type))
    out[name] = entry
  return out


def measure_in_subprocess(model_names: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
  return fresh_process.run_module('fl_compression.benchmarks.traffic',
                                  {'models': list(model_names)}, timeout=timeout,
                                  what=f'client traffic of {", ".join(model_names)}')


if __name__ == '__main__':
  import gc  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from tensorflow_federated.python.core.impl.context_stack import runtime_error_context  # pylint: disable=g-import-not-at-top

  # Only types are computed: no TFF execution context (and no worker) is needed.
  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
  gc.collect()
  print(json.dumps(measure(json.loads(sys.argv[1])['models'])), flush=True)
