import os
import re
import shutil
import subprocess
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from fl_compression.data import corpus
from fl_compression.data import features
from fl_compression.data import librispeech
from fl_compression.data import speech_data

_TINY = corpus.CorpusConfig(
    main=corpus.DomainSize(num_train_speakers=3, num_test_speakers=1,
                           train_utterances_per_speaker=3, dev_utterances_per_speaker=1,
                           test_utterances_per_speaker=1),
    short_form=None, seed=3)
_ALPHABET = features.CharTokenizer().alphabet


class ReaderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.pristine = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'c')
    corpus.generate(cls.pristine, _TINY, log=lambda message: None)

  def setUp(self):
    super().setUp()
    self.root = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'c')
    shutil.copytree(self.pristine, self.root)
    self.split = os.path.join(self.root, corpus.TRAIN_SPLIT)
    self.report = librispeech.scan_split(self.split, _ALPHABET)
    self.victim = self.report.utterances[0]

  def _rewrite_transcript(self, utt_id, new_text):
    speaker, chapter, _ = utt_id.split('-')
    path = os.path.join(self.split, speaker, chapter, f'{speaker}-{chapter}.trans.txt')
    with open(path) as f:
      lines = f.readlines()
    with open(path, 'w') as f:
      for line in lines:
        f.write(f'{utt_id} {new_text}\n' if line.startswith(utt_id + ' ') else line)

  def _assert_one_problem(self, file_part, reason_part, utterances_lost=1):
    report = librispeech.scan_split(self.split, _ALPHABET)
    self.assertLen(report.problems, 1, report.problems)
    path, reason = report.problems[0]
    self.assertIn(file_part, path)
    self.assertIn(reason_part, reason)
    self.assertLen(report.utterances, len(self.report.utterances) - utterances_lost)
    self.assertIn('skipped: 1', report.summary())
    with self.assertRaisesRegex(librispeech.CorpusError, re.escape(reason_part)):
      librispeech.scan_split(self.split, _ALPHABET, strict=True)

  def test_clean_corpus_reads_completely(self):
    self.assertEmpty(self.report.problems)
    self.assertLen(self.report.utterances, 9)
    self.assertEqual({u.speaker_id for u in self.report.utterances}, {'1000', '1001', '1002'})
    decoded = librispeech.decode_flac(self.victim.audio_path).numpy()
    self.assertLen(decoded, self.victim.num_samples)
    self.assertLess(np.max(np.abs(decoded)), 1.0)
    self.assertGreater(np.std(decoded), 0.01)

  def _assert_audio_problem(self, reason):
    """One problem, for the victim's file, whose whole reason is `reason` (no decoder op text,
    no repeated path)."""
    self._assert_one_problem(os.path.basename(self.victim.audio_path), reason)
    (_, found), = librispeech.scan_split(self.split, _ALPHABET).problems
    self.assertEqual(found, reason)

  def test_truncated_flac(self):
    with open(self.victim.audio_path, 'r+b') as f:
      f.truncate(os.path.getsize(self.victim.audio_path) // 2)
    found = librispeech.scan_split(self.split, _ALPHABET).problems[0][1]
    self.assertRegex(found, r'^unreadable audio: (truncated \(\d+ of \d+ samples\)|corrupt '
                     r'FLAC data \(the decoder stopped\))$')
    self._assert_one_problem(os.path.basename(self.victim.audio_path), 'unreadable audio')

  def test_truncated_header(self):
    with open(self.victim.audio_path, 'r+b') as f:
      f.truncate(20)
    self._assert_audio_problem('unreadable audio: truncated (the FLAC header is incomplete)')

  def test_empty_file(self):
    open(self.victim.audio_path, 'wb').close()
    self._assert_audio_problem('unreadable audio: empty file')

  def test_corrupt_stream(self):
    # A valid header and garbage frames: the decoder fails; the reason says so in words.
    with open(self.victim.audio_path, 'r+b') as f:
      f.seek(200)
      f.write(bytes(range(256)) * 8)
    found = librispeech.scan_split(self.split, _ALPHABET).problems[0][1]
    self.assertIn(found, ('unreadable audio: corrupt FLAC data (the decoder stopped)',
                          f'unreadable audio: truncated ({found.split("(")[-1]}'))
    self.assertNotIn('Op', found)

  def test_decoded_split_is_not_decoded_again_until_a_file_changes(self):
    stamps = os.path.join(self.root + '.features', 'decoded')
    decode = librispeech.tfio.audio.decode_flac
    with mock.patch.object(librispeech.tfio.audio, 'decode_flac', wraps=decode) as spy:
      first = librispeech.scan_split(self.split, _ALPHABET, decoded_stamps=stamps)
      self.assertEqual(spy.call_count, 9)
      self.assertLen(os.listdir(stamps), 1)
      again = librispeech.scan_split(self.split, _ALPHABET, decoded_stamps=stamps)
      self.assertEqual(spy.call_count, 9, 'a recorded split was decoded again')
    self.assertEqual(again.utterances, first.utterances)
    # Garbage frames behind a valid header, same size: the changed file is decoded and found.
    with open(self.victim.audio_path, 'r+b') as f:
      f.seek(200)
      f.write(bytes(range(256)) * 8)
    for _ in range(2):  # A split with a decoding problem is not recorded: found every time.
      report = librispeech.scan_split(self.split, _ALPHABET, decoded_stamps=stamps)
      self.assertLen(report.problems, 1)
      self.assertIn(os.path.basename(self.victim.audio_path), report.problems[0][0])
    self.assertLen(os.listdir(stamps), 1)

  def test_split_with_any_problem_or_another_alphabet_is_decoded_again(self):
    stamps = os.path.join(self.root + '.features', 'decoded')
    self._rewrite_transcript(self.victim.utterance_id, 'NOT IN THE ALPHABET 123')
    decode = librispeech.tfio.audio.decode_flac
    with mock.patch.object(librispeech.tfio.audio, 'decode_flac', wraps=decode) as spy:
      for _ in range(2):  # The skipped file was never decoded: no record of the split.
        self.assertLen(librispeech.scan_split(self.split, _ALPHABET,
                                              decoded_stamps=stamps).problems, 1)
      self.assertEqual(spy.call_count, 16)
      wider = _ALPHABET | set('0123456789')
      for _ in range(2):  # Clean under a wider alphabet: decoded once, then recorded.
        self.assertEmpty(librispeech.scan_split(self.split, wider,
                                                decoded_stamps=stamps).problems)
      self.assertEqual(spy.call_count, 25)

  def test_not_a_flac(self):
    with open(self.victim.audio_path, 'wb') as f:
      f.write(b'RIFF....WAVEfmt garbage')
    self._assert_audio_problem('unreadable audio: not FLAC (the file does not start with '
                               '"fLaC")')

  def test_wrong_sample_rate(self):
    resampled = self.victim.audio_path + '.8k.flac'
    subprocess.run(['sox', '-D', self.victim.audio_path, '-r', '8000', resampled], check=True)
    os.replace(resampled, self.victim.audio_path)
    self._assert_one_problem(os.path.basename(self.victim.audio_path), '8000 Hz')

  def test_transcript_with_no_audio(self):
    os.remove(self.victim.audio_path)
    self._assert_one_problem('.trans.txt', f'{self.victim.utterance_id}.flac is missing')

  def test_audio_with_no_transcript(self):
    shutil.copy(self.victim.audio_path,
                self.victim.audio_path.replace('-0000.flac', '-0099.flac'))
    self._assert_one_problem('-0099.flac', 'audio with no transcript', utterances_lost=0)

  def test_empty_transcript(self):
    self._rewrite_transcript(self.victim.utterance_id, '')
    self._assert_one_problem('.trans.txt:1', 'empty transcript')

  def test_characters_outside_vocabulary(self):
    self._rewrite_transcript(self.victim.utterance_id, 'HELLO 42 times')
    self._assert_one_problem('.trans.txt:1', 'characters outside the vocabulary')

  def test_missing_split_directory(self):
    with self.assertRaisesRegex(librispeech.CorpusError, 'no such corpus split'):
      librispeech.scan_split(os.path.join(self.root, 'train-other-500'))


class ClientDataTest(absltest.TestCase):

  def test_one_client_per_speaker_and_iid_partition(self):
    utterances = [librispeech.Utterance(f'{s}-1-{i}', str(s), '1', f'/x/{s}-{i}.flac', 'A B', 1)
                  for s in (7, 8, 9) for i in range(4)]
    by_speaker = speech_data.assign_clients(utterances)
    self.assertEqual(list(by_speaker), ['7', '8', '9'])
    self.assertEqual([u.audio_path for u in by_speaker['8']], [f'/x/8-{i}.flac' for i in range(4)])
    iid = speech_data.assign_clients(utterances, 'iid', num_iid_clients=4, seed=1)
    self.assertLen(iid, 4)
    self.assertEqual([len(share) for share in iid.values()], [3, 3, 3, 3])
    self.assertEqual(sorted(u.audio_path for share in iid.values() for u in share),
                     sorted(u.audio_path for u in utterances))
    self.assertNotEqual([u.speaker_id for u in iid['iid_0000']], ['7', '7', '7'])
    with self.assertRaisesRegex(ValueError, "unknown partition 'random'"):
      speech_data.assign_clients(utterances, 'random')

  def test_feature_cache_serves_padded_client_batches(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    root = os.path.join(tmp, 'c')
    corpus.generate(root, _TINY, log=lambda message: None)
    report = librispeech.scan_split(os.path.join(root, corpus.TRAIN_SPLIT), _ALPHABET)
    tokenizer, config = features.CharTokenizer(), features.FeatureConfig()
    clients = speech_data.assign_clients(report.utterances)
    messages = []
    cache = speech_data.build_feature_cache(clients, os.path.join(tmp, 'cache'), tokenizer,
                                            config, log=messages.append)
    self.assertLen(messages, 1)
    again = speech_data.build_feature_cache(clients, os.path.join(tmp, 'cache'), tokenizer,
                                            config, log=messages.append)
    self.assertEqual(again, cache)
    self.assertLen(messages, 1, 'the cache was computed twice')

    client_data = speech_data.make_client_data(cache, 80)
    self.assertEqual(client_data.client_ids, ['1000', '1001', '1002'])
    batch = next(iter(speech_data.padded_batches(
        client_data.create_tf_dataset_for_client('1001'), 4, 80)))
    first = clients['1001'][0]
    self.assertEqual(int(batch['feature_length'][0]), 1 + (first.num_samples - 400) // 160)
    np.testing.assert_allclose(
        batch['features'][0, :int(batch['feature_length'][0])],
        speech_data.utterance_features(first.audio_path, config), rtol=1e-6)
    self.assertEqual(tokenizer.decode(batch['labels'][0].numpy()), first.transcript)
    self.assertEqual(batch['features'].shape[0], 3)
    # Every record, in corpus order, holds exactly the eager features of its utterance (the
    # cache computes them in a graph function on several threads: four here, whatever the
    # machine).
    with mock.patch.object(speech_data.os, 'sched_getaffinity', return_value=set(range(4))):
      cache = speech_data.build_feature_cache(clients, os.path.join(tmp, 'threads'),
                                              tokenizer, config, log=messages.append)
    client_data = speech_data.make_client_data(cache, 80)
    for client_id, utterances in clients.items():
      records = list(client_data.create_tf_dataset_for_client(client_id))
      self.assertEqual([tokenizer.decode(r['labels'].numpy()) for r in records],
                       [u.transcript for u in utterances])
      for record, utterance in zip(records, utterances):
        np.testing.assert_array_equal(
            record['features'].numpy(),
            speech_data.utterance_features(utterance.audio_path, config))


if __name__ == '__main__':
  absltest.main()
