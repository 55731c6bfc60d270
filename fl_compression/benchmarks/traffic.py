"""Client traffic of the compressed processes against FedAvg's at any model size.

The bytes a client receives and sends depend only on the model's variable shapes, so they are
computed from the types of what the processes send (`process.client_traffic`, the same
accounting as the processes' own `communication` measurements) for configurations too large
to train here. Benchmarks run it in a fresh process (`experiment_runs.traffic_in_subprocess`).
"""

from typing import Any, Sequence

import numpy as np

from fl_compression.compression import process
from fl_compression.models import asr

# Name -> (algorithm, options) of `process.CONFIGS`.
SETTINGS = (('omc_11', ('omc', {'format': 'S1E4M6'})),
            ('omc_16', ('omc', {'format': 'S1E5M10'})),
            ('fedaqt_8', ('fedaqt', {'bits': 8})))


def measure(model_names: Sequence[str]) -> dict[str, Any]:
  """Per model: parameters (all, and in variables of rank < 2), FedAvg's client traffic and
  each setting's, in bytes."""
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
