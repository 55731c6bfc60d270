import json
import os
import tempfile

from absl.testing import absltest

from fl_compression.importance import targets
from fl_compression.models import asr


def _ranking(order, blocks=4, encoder=None):
  return {'ambient_first': order, 'blocks': [{'block': b} for b in range(blocks)],
          'model': {'encoder': encoder or asr.tiny_config(29)['encoder']}}


class TargetsTest(absltest.TestCase):

  def test_targets_pick_blocks_in_ranking_order(self):
    ranking = _ranking([2, 0, 3, 1])
    pick = lambda spec: targets.target_blocks(spec, 4, ranking, 'fd_target', 'fd_ranking')  # noqa: E731
    self.assertIsNone(pick('flat'))
    self.assertEqual(pick('ambient:2'), [2, 0])
    self.assertEqual(pick('critical:3'), [1, 3, 0])
    self.assertEqual(pick('blocks:3,1'), [3, 1])
    self.assertEqual(pick('ambient:4'), [2, 0, 3, 1])

  def test_bad_targets_are_one_line_errors_naming_the_flag(self):
    ranking = _ranking([2, 0, 3, 1])
    cases = [('ambient:5', '--fd_target=ambient:5: N must be in 1..4 (the encoder blocks)'),
             ('critical:0', 'N must be in 1..4'), ('ambient:x', 'N must be an integer'),
             ('blocks:1,9', 'blocks must be in 0..3'), ('middle:2', 'is unknown; known: flat')]
    for spec, message in cases:
      with self.assertRaises(targets.TargetError) as raised:
        targets.target_blocks(spec, 4, ranking, 'fd_target', 'fd_ranking')
      self.assertIn(message, str(raised.exception))
      self.assertTrue(str(raised.exception).startswith(f'--fd_target={spec}'))
    with self.assertRaisesRegex(targets.TargetError, 'ambient:2 needs --fd_ranking'):
      targets.target_blocks('ambient:2', 4, None, 'fd_target', 'fd_ranking')
    for rate in (0.0, 1.0, -0.5):
      with self.assertRaisesRegex(targets.TargetError, f'--fd_rate={rate} is outside'):
        targets.check_rate(rate, 'fd_rate')

  def test_a_ranking_of_another_model_is_refused(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    config = asr.tiny_config(29)
    path = os.path.join(tmp, 'ranking.json')
    for ranking, message in (
        (_ranking([0, 1, 2], blocks=3), 'ranks 3 encoder blocks; the trained model has 4'),
        (_ranking([0, 1, 2, 3], encoder=dict(config['encoder'], model_dim=192)),
         'ranks another model \\(its encoder differs in model_dim\\)'),
        ({'something': 'else'}, 'not a ranking file')):
      with open(path, 'w') as f:
        json.dump(ranking, f)
      with self.assertRaisesRegex(targets.TargetError, message):
        targets.load_ranking(path, config, 'fd_ranking')
    with open(path, 'w') as f:
      json.dump(_ranking([1, 0, 2, 3]), f)
    self.assertEqual(targets.load_ranking(path, config, 'fd_ranking')['ambient_first'],
                     [1, 0, 2, 3])
    # A ranking saved before an encoder field existed ranks the model with its default value;
    # another value of it is another model.
    older = {k: v for k, v in config['encoder'].items() if k != 'block_output_norm'}
    with open(path, 'w') as f:
      json.dump(_ranking([1, 0, 2, 3], encoder=older), f)
    self.assertEqual(targets.load_ranking(path, config, 'fd_ranking')['ambient_first'],
                     [1, 0, 2, 3])
    with self.assertRaisesRegex(targets.TargetError, 'differs in block_output_norm'):
      targets.load_ranking(path, dict(config, encoder=dict(config['encoder'],
                                                           block_output_norm=False)),
                           'fd_ranking')
    with self.assertRaisesRegex(targets.TargetError, '--fd_ranking=/nowhere.json: No such file'):
      targets.load_ranking('/nowhere.json', config, 'fd_ranking')


if __name__ == '__main__':
  absltest.main()
