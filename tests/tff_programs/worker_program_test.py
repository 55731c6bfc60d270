"""//tff_programs:worker as users run it: serves on loopback, stops cleanly on SIGTERM/SIGINT."""

import os
import signal
import subprocess
import sys
import time
import uuid

from absl.testing import absltest
import portpicker

from tests import tff_test_utils
from tff_programs import backends


class WorkerProgramTest(absltest.TestCase):

  def _serve_then_signal(self, signum):
    marker = uuid.uuid4().hex
    env = dict(os.environ, FLC_TEST_RUN=marker, PYTHONPATH=os.pathsep.join(sys.path))
    port = portpicker.pick_unused_port()
    process = subprocess.Popen(tff_test_utils.program_command('worker') + [f'--port={port}'], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      backends.connect_to_worker(f'127.0.0.1:{port}', timeout=60)
      self.assertLen(tff_test_utils.processes_with_env(f'FLC_TEST_RUN={marker}'), 2)
      process.send_signal(signum)
      stdout, stderr = process.communicate(timeout=30)
    finally:
      if process.poll() is None:
        process.kill()
    self.assertEqual(process.returncode, 130, stderr[-2000:])
    self.assertIn(f'serving on 127.0.0.1:{port}', stdout)
    self.assertIn('TFF worker stopped.', stdout)
    deadline = time.monotonic() + 10
    while tff_test_utils.processes_with_env(f'FLC_TEST_RUN={marker}'):
      self.assertLess(time.monotonic(), deadline, 'the worker process outlived the program')
      time.sleep(0.1)

  def test_sigterm_stops_the_worker(self):
    self._serve_then_signal(signal.SIGTERM)

  def test_sigint_stops_the_worker(self):
    self._serve_then_signal(signal.SIGINT)

  def test_bad_port_is_named(self):
    result = subprocess.run(tff_test_utils.program_command('worker') + ['--port=70000'], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
                            timeout=120)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr.strip().splitlines()[-1],
                     'error: --port must be in 1..65535, got 70000')


if __name__ == '__main__':
  absltest.main()
