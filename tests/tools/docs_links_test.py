"""README.md and docs/: every relative link points at a file of the repository, and every
#anchor at a heading of its page (GitHub's heading slugs)."""

import glob
import os
import re

from absl.testing import absltest

from tests import tff_test_utils

_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
  text = heading.strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)
  return text.replace(' ', '-')


def _anchors(path: str) -> set[str]:
  with open(path) as f:
    lines = f.read().split('\n')
  found, fenced = set(), False
  for line in lines:
    if line.startswith('```'):
      fenced = not fenced
    elif not fenced and line.startswith('#'):
      found.add(_slug(line.lstrip('#')))
  return found


class DocsLinksTest(absltest.TestCase):

  def test_every_link_resolves(self):
    root = tff_test_utils.repo_path('')
    pages = [os.path.join(root, 'README.md')] + sorted(glob.glob(os.path.join(root, 'docs',
                                                                                '*.md')))
    self.assertGreater(len(pages), 5)
    checked = 0
    for page in pages:
      with open(page) as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)
      for target in _LINK.findall(text):
        if re.match(r'^[a-z]+://', target):
          continue
        path, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        where = f'{os.path.relpath(page, root)}: link {target}'
        self.assertTrue(os.path.exists(resolved), f'{where}: {resolved} does not exist')
        if anchor:
          self.assertIn(anchor, _anchors(resolved), f'{where}: no such heading')
        checked += 1
    self.assertGreater(checked, 10)

  def test_slugs_follow_github(self):
    self.assertEqual(_slug(' The training program: `//tff_programs:train`'),
                     'the-training-program-tff_programstrain')
    self.assertEqual(_slug('OMC and FedAQT: `--algorithm=omc`'), 'omc-and-fedaqt---algorithmomc')


if __name__ == '__main__':
  absltest.main()
