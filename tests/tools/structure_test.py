"""Dependency rules between packages, read from the sources' import statements."""

import ast
import glob
import os

from absl.testing import absltest

from tests import tff_test_utils


def _imports(path: str) -> set[str]:
  """Every module a source file imports, at any depth of the file (lazy imports included)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return found


class StructureTest(absltest.TestCase):

  def test_learning_depends_on_no_variant(self):
    sources = glob.glob(tff_test_utils.repo_path('fl_compression/learning/*.py'))
    self.assertGreater(len(sources), 5)
    for path in sources:
      bad = {m for m in _imports(path)
             if m.startswith(('fl_compression.pruning', 'fl_compression.compression'))}
      self.assertEmpty(bad, f'{os.path.basename(path)} imports {sorted(bad)}')

  def test_bundle_does_not_import_its_verification(self):
    bundle = _imports(tff_test_utils.repo_path('tflite_export/bundle.py'))
    self.assertNotIn('tflite_export.verify', bundle)
    self.assertIn('tflite_export.bundle', _imports(tff_test_utils.repo_path(
        'tflite_export/verify.py')))

  def test_the_rule_sees_lazy_imports(self):
    path = os.path.join(absltest.get_default_test_tmpdir(), 'lazy.py')
    with open(path, 'w') as f:
      f.write('def f():\n  from fl_compression.pruning import process\n  return process\n')
    self.assertIn('fl_compression.pruning.process', _imports(path))


if __name__ == '__main__':
  absltest.main()
