"""The common `main` of the programs: quiet logs, managed TFF context, one-line errors."""

import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from tff_programs import backends
from tff_programs import flag_utils


def make_main(run: Callable[[], None]) -> Callable[[list[str]], None]:
  """Returns an absl `main` that calls `run()` and turns known errors into `error: ...`, exit 2.

  Progress lines and result tables are a program's output; absl INFO logs are opt-in (`-v 0`).
  """

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
      tf.get_logger().setLevel('ERROR')
    backends.disable_unmanaged_default_context()
    try:
      run()
    except (flag_utils.FlagError, backends.BackendError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  return main
