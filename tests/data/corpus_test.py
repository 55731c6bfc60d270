import dataclasses
import os
import subprocess
import tempfile

from absl.testing import absltest
import numpy as np

from fl_compression.data import corpus
from fl_compression.data import librispeech

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=3, num_test_speakers=2,
                           train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=1),
    short_form=corpus.DomainSize(num_train_speakers=2, num_test_speakers=1,
                                 train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                                 test_utterances_per_speaker=2),
    seed=7)


def _transcripts(root):
  found = {}
  for directory, _, files in os.walk(root):
    for name in files:
      if name.endswith('.trans.txt'):
        with open(os.path.join(directory, name)) as f:
          for line in f:
            utt_id, text = line.rstrip('\n').split(' ', 1)
            found[utt_id] = text
  return found


def _new_root():
  return os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'corpus')


class CorpusTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = _new_root()
    cls.manifest = corpus.generate(cls.root, _TINY, log=lambda message: None)

  def test_librispeech_layout_and_audio_format(self):
    self.assertEqual(self.manifest['domains']['main']['utterances'],
                     {'train-clean-100': 6, 'dev-clean': 3, 'test-clean': 2})
    self.assertEqual(self.manifest['domains']['short-form']['utterances'],
                     {'train-short': 4, 'dev-short': 2, 'test-short': 2})
    for name, spec in corpus.DOMAINS.items():
      for split in spec.splits:
        for speaker in os.listdir(os.path.join(self.root, split)):
          for chapter in os.listdir(os.path.join(self.root, split, speaker)):
            directory = os.path.join(self.root, split, speaker, chapter)
            files = sorted(os.listdir(directory))
            self.assertIn(f'{speaker}-{chapter}.trans.txt', files)
            for file_name in files:
              if file_name.endswith('.flac'):
                self.assertRegex(file_name, rf'^{speaker}-{chapter}-\d{{4}}\.flac$')
                # Independent check of the format with sox's own reader.
                info = subprocess.run(['soxi', os.path.join(directory, file_name)],
                                      capture_output=True, text=True, check=True).stdout
                self.assertRegex(info, r'Sample Rate\s+: 16000')
                self.assertRegex(info, r'Channels\s+: 1')
                self.assertRegex(info, r'Precision\s+: 16-bit')
        reference = librispeech.scan_split(os.path.join(self.root, split))
        self.assertEmpty(reference.problems, split)
        words = sum(len(u.transcript.split()) for u in reference.utterances)
        self.assertEqual(self.manifest['domains'][name]['words'][split], words)
        for u in reference.utterances:
          self.assertEqual(u.transcript, u.transcript.upper())
          self.assertTrue(set(u.transcript.split()) <= set(corpus.vocabulary(name)), u)

  def test_test_speakers_never_appear_in_training(self):
    for spec in corpus.DOMAINS.values():
      train = set(os.listdir(os.path.join(self.root, spec.train_split)))
      dev = set(os.listdir(os.path.join(self.root, spec.dev_split)))
      test = set(os.listdir(os.path.join(self.root, spec.test_split)))
      self.assertEmpty(train & test)
      self.assertEqual(dev, train)
    speakers = [s for d in self.manifest['domains'].values()
                for s in d['train_speakers'] + d['test_speakers']]
    voices = {(s['accent'], s['variant'], s['rate'], s['pitch']) for s in speakers}
    self.assertLen(voices, 8)
    self.assertLen({s['speaker_id'] for s in speakers}, 8)

  def test_short_form_accents_are_not_in_main_training(self):
    main = self.manifest['domains']['main']
    short = self.manifest['domains']['short-form']
    main_accents = {s['accent'] for s in main['train_speakers'] + main['test_speakers']}
    short_accents = {s['accent'] for s in short['train_speakers'] + short['test_speakers']}
    self.assertEmpty(main_accents & short_accents)
    self.assertEmpty(set(corpus.MAIN_ACCENTS) & set(corpus.SHORT_FORM_ACCENTS))

  def test_same_config_same_corpus_and_reuse(self):
    other = _new_root()
    corpus.generate(other, _TINY, log=lambda message: None)
    self.assertEqual(_transcripts(other), _transcripts(self.root))
    for utt_id in list(_transcripts(other))[:3]:
      speaker, chapter, _ = utt_id.split('-')
      split = next(s for d in corpus.DOMAINS.values() for s in d.splits
                   if os.path.isdir(os.path.join(other, s, speaker, chapter)))
      paths = [os.path.join(root, split, speaker, chapter, utt_id + '.flac')
               for root in (other, self.root)]
      np.testing.assert_array_equal(*[librispeech.decode_flac(p).numpy() for p in paths])
    messages = []
    again = corpus.generate(self.root, _TINY, log=messages.append)
    self.assertEqual(again, self.manifest)
    self.assertEmpty(messages, 'an existing corpus was generated again')

  def test_domain_added_later_equals_generating_both(self):
    root = _new_root()
    corpus.generate(root, _TINY.restricted_to([corpus.MAIN]), log=lambda message: None)
    self.assertFalse(os.path.exists(os.path.join(root, 'train-short')))
    manifest = corpus.generate(root, _TINY, log=lambda message: None)
    self.assertEqual(_transcripts(root), _transcripts(self.root))
    self.assertEqual(
        {name: d['fingerprint'] for name, d in manifest['domains'].items()},
        {name: d['fingerprint'] for name, d in self.manifest['domains'].items()})

  def test_other_config_or_foreign_directory_is_refused(self):
    with self.assertRaisesRegex(FileExistsError, 'main domain generated with another'):
      corpus.generate(self.root, dataclasses.replace(_TINY, seed=8), log=lambda message: None)
    foreign = _new_root()
    os.makedirs(foreign)
    with open(os.path.join(foreign, 'notes.txt'), 'w') as f:
      f.write('not a corpus')
    with self.assertRaisesRegex(FileExistsError, 'corpus.json is missing'):
      corpus.generate(foreign, _TINY, log=lambda message: None)
    self.assertEqual(os.listdir(foreign), ['notes.txt'])

  def test_grammars_cover_their_vocabularies_and_differ_in_style(self):
    self.assertGreaterEqual(len(corpus.vocabulary(corpus.MAIN)), 200)
    rng = np.random.default_rng(0)
    main, short = set(), set()
    main_first, short_first, short_lengths = set(), set(), set()
    for _ in range(5000):
      sentence = corpus.make_sentence(rng).split()
      main.update(sentence)
      main_first.add(sentence[0])
      command = corpus.make_command(rng).split()
      short.update(command)
      short_first.add(command[0])
      short_lengths.add(len(command))
    self.assertEqual(main, set(corpus.vocabulary(corpus.MAIN)))
    self.assertEqual(short, set(corpus.vocabulary(corpus.SHORT_FORM)))
    self.assertEqual(min(short_lengths), 2)
    self.assertEqual(max(short_lengths), 6)
    self.assertNotEmpty(main & short)  # Vocabulary overlaps ...
    self.assertEmpty(main_first & short_first)  # ... but no command opens like a sentence.

  def test_default_held_out_splits_are_large(self):
    config = corpus.CorpusConfig()
    planned = corpus.plan_domain(corpus.MAIN, config.main, config.seed)
    test = [u for u in planned if u.split == corpus.TEST_SPLIT]
    dev = [u for u in planned if u.split == corpus.DEV_SPLIT]
    self.assertGreaterEqual(len({u.speaker.speaker_id for u in test}), 24)
    self.assertGreaterEqual(min(sum(u.speaker == s for u in test)
                                for s in {u.speaker for u in test}), 25)
    self.assertGreaterEqual(sum(len(u.text.split()) for u in test), 4000)
    self.assertGreaterEqual(sum(len(u.text.split()) for u in dev), 2000)

  def test_speaker_space_is_bounded(self):
    with self.assertRaisesRegex(ValueError, 'distinct speakers'):
      corpus.make_speakers(corpus.SHORT_FORM, dataclasses.replace(
          corpus.CorpusConfig().short_form, num_train_speakers=2000), 0)
    with self.assertRaisesRegex(ValueError, 'unknown domain'):
      corpus.domain('long-form')


if __name__ == '__main__':
  absltest.main()
