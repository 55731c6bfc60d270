import csv
import os
import tempfile

from absl.testing import absltest
import numpy as np

from fl_compression.importance import findings
from fl_compression.importance import signatures

_PARAMETERS = {'deep': 1_738_333, 'deep_narrow': 987_341, 'tiny': 600_000}
_MODULES = tuple(signatures.KERNELS)


def _ranking(relative, classes=None, rerand=None, signature=None, correlations=None):
  """A ranking.json: block i's re-init WER is 0.1 * (1 + relative[i])."""
  blocks = [{'block': i, 'reinit_relative': r, 'reinit_wer': 0.1 * (1 + r),
             'rerand_wer': (rerand or [0.1 * (1 + x) for x in relative])[i],
             'class': (classes or ['intermediate'] * len(relative))[i]}
            for i, r in enumerate(relative)]
  ranking = {'intact_wer': 0.1, 'blocks': blocks,
             'ambient_first': sorted(range(len(relative)), key=lambda b: relative[b])}
  if signature is not None:
    ranking['signatures'] = signature
    ranking['signature_correlations'] = correlations or {}
  return ranking


def _by_key(found):
  return {f.key: f for f in found}


class SizeTest(absltest.TestCase):

  def test_larger_more_robust_and_more_ambient_is_reproduced(self):
    ranked = [
        findings.Ranked('deep', 'seed1', _ranking([0.0, 0.05, 2.0], ['ambient'] * 2 + ['critical'])),
        findings.Ranked('deep_narrow', 'seed1', _ranking([0.5, 0.8, 3.0],
                                                         ['ambient', 'intermediate', 'critical'])),
        # Another training of deep only: not like-for-like, left out of the comparison.
        findings.Ranked('deep', 'shipped', _ranking([5.0, 5.0, 5.0])),
    ]
    found = findings.size(ranked, _PARAMETERS)
    self.assertEqual(found.verdict, findings.REPRODUCED)
    self.assertIn('median re-init WER change +5.0% against +80.0%', found.evidence)
    self.assertIn('ambient blocks 67% against 33%', found.evidence)

  def test_one_part_holding_is_partly_and_none_is_not_reproduced(self):
    robust_only = [findings.Ranked('deep', 's', _ranking([0.1, 0.2, 0.3])),
                   findings.Ranked('deep_narrow', 's', _ranking([0.5, 0.6, 0.7]))]
    self.assertEqual(findings.size(robust_only, _PARAMETERS).verdict, findings.PARTLY)
    reversed_ = [findings.Ranked('deep', 's', _ranking([0.5, 0.6, 0.7])),
                 findings.Ranked('deep_narrow', 's', _ranking([0.0, 0.1, 0.2], ['ambient'] * 3))]
    self.assertEqual(findings.size(reversed_, _PARAMETERS).verdict, findings.NOT_REPRODUCED)

  def test_undecided_without_two_sizes_of_one_depth_or_a_shared_training(self):
    one_size = [findings.Ranked('deep', 's1', _ranking([0.1, 0.2])),
                findings.Ranked('tiny', 's1', _ranking([0.1, 0.2, 0.3]))]
    self.assertEqual(findings.size(one_size, _PARAMETERS).verdict, findings.UNDECIDED)
    unshared = [findings.Ranked('deep', 's1', _ranking([0.1, 0.2])),
                findings.Ranked('deep_narrow', 's2', _ranking([0.1, 0.2]))]
    found = findings.size(unshared, _PARAMETERS)
    self.assertEqual(found.verdict, findings.UNDECIDED)
    self.assertIn('share no training label', found.evidence)


class RerandAndStabilityTest(absltest.TestCase):

  def test_rerand_agreeing_in_order_is_similar_and_reversed_is_not(self):
    same_order = findings.Ranked('deep', 'a', _ranking([0.1, 0.5, 0.3],
                                                       rerand=[0.2, 0.9, 0.4]))
    self.assertEqual(findings.reinit_like_rerand([same_order]).verdict, findings.REPRODUCED)
    reversed_ = findings.Ranked('deep', 'b', _ranking([0.1, 0.5, 0.3], rerand=[0.9, 0.2, 0.4]))
    found = findings.reinit_like_rerand([same_order, reversed_])
    self.assertEqual(found.verdict, findings.PARTLY)
    self.assertIn('deep b -1.00', found.evidence)

  def test_stability_and_its_size_comparison(self):
    a, b = [0.1, 0.5, 0.3, 0.9], [0.1, 0.3, 0.5, 0.9]  # Spearman 0.8.
    ranked = [findings.Ranked('deep', 's1', _ranking(a)), findings.Ranked('deep', 's2',
                                                                         _ranking(b))]
    stable, larger = findings.stable_across_trainings(ranked, _PARAMETERS)
    self.assertEqual(stable.verdict, findings.REPRODUCED)
    self.assertIn('`deep` +0.80 over 1 pairs', stable.evidence)
    self.assertEqual(larger.verdict, findings.UNDECIDED)
    ranked += [findings.Ranked('deep_narrow', 's1', _ranking(a)),
               findings.Ranked('deep_narrow', 's2', _ranking(a[::-1]))]
    stable, larger = findings.stable_across_trainings(ranked, _PARAMETERS)
    self.assertEqual(stable.verdict, findings.PARTLY)  # deep_narrow: -1.00.
    self.assertEqual(larger.verdict, findings.REPRODUCED)
    self.assertIn('`deep` +0.80 against `deep_narrow` -1.00', larger.evidence)


class SignatureTest(absltest.TestCase):

  def _signature(self, attention_spread, blocks=4):
    values = np.linspace(1.0 - attention_spread, 1.0, blocks)
    return {m: (list(values) if m.startswith('attention') else [1.0] * blocks) for m in _MODULES}

  def test_signature_findings_from_rankings_and_history(self):
    strong = self._signature(0.6)
    reference = findings.Ranked('deep', 'shipped', _ranking(
        [0.1, 0.2, 0.3, 0.4], signature=strong,
        correlations={'attention/query': 0.9, 'attention/key': -0.7, 'attention/value': 0.6,
                      'attention/output': None}))
    other = findings.Ranked('deep', 'seed1', _ranking([0.1, 0.2, 0.3, 0.4], signature=strong))
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    path = os.path.join(tmp, 'signatures.csv')
    rows = [(250, self._signature(0.1)), (500, strong)]
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, ['step'] + list(signatures.flat(strong)))
      writer.writeheader()
      for step, signature in rows:
        writer.writerow({'step': step, **signatures.flat(signature)})
    history = findings.read_signature_history(path)
    self.assertEqual([s for s, _ in history], [250, 500])
    np.testing.assert_allclose(history[1][1]['attention/key'], strong['attention/key'])

    found = _by_key(findings.attention_signatures([reference, other], reference, history))
    self.assertEqual(found['signature_strong'].verdict, findings.REPRODUCED)
    spread = float(np.std(strong['attention/query']))
    self.assertIn(f'{spread:.3f} for the attention matrices against 0.000',
                  found['signature_strong'].evidence)
    self.assertEqual(found['signature_emerges'].verdict, findings.REPRODUCED)
    self.assertEqual(found['signature_stable'].verdict, findings.REPRODUCED)
    self.assertEqual(found['signature_shares_damage'].verdict, findings.REPRODUCED)
    # The undefined correlation counts as 0: (0.9 + 0.7 + 0.6 + 0) / 4.
    self.assertIn('attention/output n/a (constant) (mean absolute 0.55)',
                  found['signature_shares_damage'].evidence)
    # Without history or a second training, those parts are undecided, not guessed.
    found = _by_key(findings.attention_signatures([reference], reference))
    self.assertEqual(found['signature_emerges'].verdict, findings.UNDECIDED)
    self.assertEqual(found['signature_stable'].verdict, findings.UNDECIDED)

  def test_decide_needs_every_size_and_renders_a_table(self):
    ranked = [findings.Ranked('deep', 'a', _ranking([0.1, 0.2]))]
    with self.assertRaisesRegex(ValueError, 'no parameter count for deep'):
      findings.decide(ranked, {}, ranked[0])
    found = findings.decide(ranked, _PARAMETERS, ranked[0])
    self.assertEqual([f.key for f in found],
                     ['size', 'reinit_like_rerand', 'stable', 'stable_when_larger',
                      'signature_strong', 'signature_emerges', 'signature_stable',
                      'signature_shares_damage', 'normalization'])
    self.assertEqual({f.verdict for f in found[4:]}, {findings.UNDECIDED})
    table = findings.render(found + [findings.Finding('x', 'a | b', 'partly', 'c', '')])
    self.assertIn('| Re-initialization and re-randomization give similar pictures. | '
                  '**reproduced** |', table)
    self.assertIn('| a \\| b | **partly** | c | - |', table)  # A pipe stays in its cell.

  def test_bounds_are_decided_at_the_printed_rounding(self):
    # Spearman 0.6 for these four blocks: below 0.7; an undefined one never counts as similar.
    ranked = [findings.Ranked('deep', 'a', _ranking([0.1, 0.2, 0.3, 0.4],
                                                    rerand=[0.3, 0.1, 0.5, 0.4]))]
    found = findings.reinit_like_rerand(ranked)
    self.assertIn('deep a +0.60', found.evidence)
    self.assertEqual(found.verdict, findings.NOT_REPRODUCED)
    self.assertTrue(findings._at_least(0.696, 0.7))
    self.assertFalse(findings._at_least(0.694, 0.7))
    self.assertFalse(findings._at_least(None, 0.0))
    constant = [findings.Ranked('deep', 'b', _ranking([0.1, 0.2], rerand=[0.3, 0.3]))]
    found = findings.reinit_like_rerand(constant)
    self.assertEqual((found.verdict, found.evidence),
                     (findings.NOT_REPRODUCED, 'Spearman deep b n/a (constant).'))

  def test_signature_history_errors_say_what_is_wrong(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    cases = {'header.csv': ('a,b\n1,2\n', 'first column is not step'),
             'ragged.csv': ('step,signature/ffn1/block_00\n250,0.5,0.7\n', 'line 2 has'),
             'value.csv': ('step,signature/ffn1/block_00\n250,x\n', 'line 2:'),
             'empty.csv': ('step,signature/ffn1/block_00\n', 'no rows')}
    for name, (text, message) in cases.items():
      path = os.path.join(tmp, name)
      with open(path, 'w') as f:
        f.write(text)
      with self.assertRaisesRegex(findings.SignatureHistoryError, message, msg=name):
        findings.read_signature_history(path)


if __name__ == '__main__':
  absltest.main()
