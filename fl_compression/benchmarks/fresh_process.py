"""Runs a module's measurement in a fresh Python process and returns its JSON result.

Peak-memory measurements (and memory-hungry steps such as TFLite conversion) run in their own
process, so nothing the caller allocated hides in the peak and what they allocate is returned
to the system. The child gets the caller's interpreter and import path; it reads one JSON
request from argv[1] and prints one JSON line last.
"""

import json
import os
import subprocess
import sys
from typing import Any


def run_module(module: str, request: dict[str, Any], *, timeout: float, what: str,
               env: dict[str, str] | None = None) -> dict[str, Any]:
  """`python -m module '<request json>'`, with `env` added to the environment; its last
  stdout line parsed, or a `RuntimeError` naming `what` with the end of the child's stderr."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
             TF_CPP_MIN_LOG_LEVEL='2', **(env or {}))
  result = subprocess.run([sys.executable, '-m', module, json.dumps(request)],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)
  if result.returncode != 0:
    raise RuntimeError(f'{what} failed (exit {result.returncode}):\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])
