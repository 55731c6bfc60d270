import os
import subprocess
import tempfile

from absl.testing import absltest
import numpy as np

from fl_compression.data import corpus
from fl_compression.data import librispeech

_TINY = corpus.CorpusConfig(num_train_speakers=3, num_test_speakers=2,
                            train_utterances_per_speaker=2, dev_utterances_per_speaker=1,
                            test_utterances_per_speaker=1, seed=7)


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


class CorpusTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'corpus')
    cls.manifest = corpus.generate(cls.root, _TINY, log=lambda message: None)

  def test_librispeech_layout_and_audio_format(self):
    self.assertEqual(self.manifest['utterances'],
                     {'train-clean-100': 6, 'dev-clean': 3, 'test-clean': 2})
    for split in corpus.SPLITS:
      for speaker in os.listdir(os.path.join(self.root, split)):
        for chapter in os.listdir(os.path.join(self.root, split, speaker)):
          directory = os.path.join(self.root, split, speaker, chapter)
          files = sorted(os.listdir(directory))
          self.assertIn(f'{speaker}-{chapter}.trans.txt', files)
          for name in files:
            if name.endswith('.flac'):
              self.assertRegex(name, rf'^{speaker}-{chapter}-\d{{4}}\.flac$')
              # Independent check of the format with sox's own reader.
              info = subprocess.run(['soxi', os.path.join(directory, name)],
                                    capture_output=True, text=True, check=True).stdout
              self.assertRegex(info, r'Sample Rate\s+: 16000')
              self.assertRegex(info, r'Channels\s+: 1')
              self.assertRegex(info, r'Precision\s+: 16-bit')
    for text in _transcripts(self.root).values():
      self.assertEqual(text, text.upper())
      self.assertTrue(set(text.split()) <= set(corpus.vocabulary()), text)

  def test_test_speakers_never_appear_in_training(self):
    train = set(os.listdir(os.path.join(self.root, corpus.TRAIN_SPLIT)))
    dev = set(os.listdir(os.path.join(self.root, corpus.DEV_SPLIT)))
    test = set(os.listdir(os.path.join(self.root, corpus.TEST_SPLIT)))
    self.assertEmpty(train & test)
    self.assertEqual(dev, train)
    voices = {(s['accent'], s['variant'], s['rate'], s['pitch'])
              for s in self.manifest['train_speakers'] + self.manifest['test_speakers']}
    self.assertLen(voices, 5)

  def test_same_config_same_corpus_and_reuse(self):
    other = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'corpus')
    corpus.generate(other, _TINY, log=lambda message: None)
    self.assertEqual(_transcripts(other), _transcripts(self.root))
    for utt_id in list(_transcripts(other))[:3]:
      speaker, chapter, _ = utt_id.split('-')
      split = corpus.SPLITS[int(chapter) - 100]
      paths = [os.path.join(root, split, speaker, chapter, utt_id + '.flac')
               for root in (other, self.root)]
      np.testing.assert_array_equal(*[librispeech.decode_flac(p).numpy() for p in paths])
    messages = []
    again = corpus.generate(self.root, _TINY, log=messages.append)
    self.assertEqual(again['fingerprint'], self.manifest['fingerprint'])
    self.assertEmpty(messages, 'an existing corpus was generated again')

  def test_other_config_in_same_directory_is_refused(self):
    with self.assertRaisesRegex(FileExistsError, 'another configuration'):
      corpus.generate(self.root, corpus.CorpusConfig(seed=8), log=lambda message: None)

  def test_vocabulary_and_speaker_space(self):
    self.assertGreaterEqual(len(corpus.vocabulary()), 200)
    rng = np.random.default_rng(0)
    produced = set()
    for _ in range(5000):
      produced.update(corpus.make_sentence(rng).split())
    self.assertEqual(produced, set(corpus.vocabulary()))
    with self.assertRaisesRegex(ValueError, 'distinct speakers'):
      corpus.make_speakers(corpus.CorpusConfig(num_train_speakers=2000))


if __name__ == '__main__':
  absltest.main()
