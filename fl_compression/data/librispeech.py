"""Reads LibriSpeech-layout corpora (real LibriSpeech or the embedded one) into tf.data.

One reader for both: it scans `<split>/<speaker>/<chapter>/`, pairs each transcript line with
its FLAC file, checks every pair before TensorFlow sees it, and reports each problem with the
file name. The default policy skips a bad utterance and counts it; `strict=True` raises instead.
Audio is decoded with tensorflow-io (`tfio.audio.decode_flac`).
"""

import collections
import dataclasses
import hashlib
import json
import os
import struct
from typing import Optional

import tensorflow as tf
import tensorflow_io as tfio

SAMPLE_RATE = 16000
_FLAC_MAGIC = b'fLaC'


class CorpusError(ValueError):
  """A corpus file is unusable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Utterance:
  utterance_id: str
  speaker_id: str
  chapter_id: str
  audio_path: str
  transcript: str
  num_samples: int


@dataclasses.dataclass
class ScanReport:
  """The usable utterances of a split and the problems found, one per skipped item."""

  split_dir: str
  utterances: list[Utterance]
  problems: list[tuple[str, str]]

  def summary(self) -> str:
    kinds = collections.Counter(reason.split(':')[0] for _, reason in self.problems)
    skipped = ', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items())) or 'none'
    return (f'{self.split_dir}: {len(self.utterances)} utterances from '
            f'{len({u.speaker_id for u in self.utterances})} speakers; skipped: {skipped}')


def read_flac_streaminfo(path: str) -> tuple[int, int, int, int]:
  """(sample_rate, channels, bits_per_sample, total_samples) from a FLAC file's STREAMINFO;
  a `CorpusError` `<path>: <reason>` with reason `empty file`, `not FLAC` or `truncated`."""
  with open(path, 'rb') as f:
    header = f.read(42)
  if not header:
    raise CorpusError(f'{path}: empty file')
  if header[:4] != _FLAC_MAGIC:
    raise CorpusError(f'{path}: not FLAC (the file does not start with "fLaC")')
  if len(header) < 42 or header[4] & 0x7F != 0:
    raise CorpusError(f'{path}: truncated (the FLAC header is incomplete)')
  info = header[8:42]
  packed = struct.unpack('>Q', info[10:18])[0]
  sample_rate = packed >> 44
  channels = ((packed >> 41) & 0x7) + 1
  bits = ((packed >> 36) & 0x1F) + 1
  total_samples = packed & 0xFFFFFFFFF
  return sample_rate, channels, bits, total_samples


def decode_flac(path) -> tf.Tensor:
  """float32 mono samples in [-1, 1) of a 16-bit FLAC file (a path string or string tensor)."""
  audio = tfio.audio.decode_flac(tf.io.read_file(path), dtype=tf.int16)
  return tf.cast(audio[:, 0], tf.float32) / 32768.0


def decoded_stamps_dir(data_dir: str) -> str:
  """Where scans of `data_dir`'s splits record the splits that decoded in full (next to the
  corpus's feature caches, `<data_dir>.features/`)."""
  return os.path.join(data_dir.rstrip(os.sep) + '.features', 'decoded')


def _split_fingerprint(split_dir: str, alphabet: Optional[set[str]]) -> str:
  """A hash of the alphabet and of every file's path, size, inode, modification and change
  times under `split_dir` (a file that cannot be stat'ed counts as such: the scan names it)."""
  entries = [sorted(alphabet) if alphabet is not None else None]
  for directory, _, files in sorted(os.walk(split_dir)):
    for name in sorted(files):
      path = os.path.join(directory, name)
      try:
        stat = os.stat(path)
        entries.append((os.path.relpath(path, split_dir), stat.st_size, stat.st_ino,
                        stat.st_mtime_ns, stat.st_ctime_ns))
      except OSError:
        entries.append((os.path.relpath(path, split_dir), None))
  return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def scan_split(split_dir: str, alphabet: Optional[set[str]] = None, *, strict: bool = False,
               decode_check: bool = True, decoded_stamps: Optional[str] = None) -> ScanReport:
  """Pairs transcripts and audio under `split_dir` and checks each pair.

  Checks: transcript lines are `<id> <TEXT>` with non-empty text in `alphabet`; each line has
  its audio and each audio file its line; FLAC header says 16 kHz, mono, 16-bit; with
  `decode_check`, the file decodes to the number of samples its header promises (truncation).

  `decoded_stamps`: a directory recording splits that a decode-checked scan found without any
  problem (every audio file decoded in full). A split recorded there with the same files (paths,
  sizes, inodes, modification and change times) and alphabet is not decoded again; corruption
  that keeps all of these (bit rot) goes unnoticed until the audio is read.
  """
  if not os.path.isdir(split_dir):
    raise CorpusError(f'{split_dir}: no such corpus split directory')
  stamp = None
  if decode_check and decoded_stamps:
    stamp = os.path.join(decoded_stamps, f'{os.path.basename(os.path.normpath(split_dir))}-'
                         f'{_split_fingerprint(split_dir, alphabet)}')
    decode_check = not os.path.exists(stamp)
  utterances, problems = [], []

  def problem(path, reason):
    if strict:
      raise CorpusError(f'{path}: {reason}')
    problems.append((path, reason))

  for directory, _, files in sorted(os.walk(split_dir)):
    files = sorted(files)
    audio = {f[:-5]: os.path.join(directory, f) for f in files if f.endswith('.flac')}
    transcripts = {}
    for name in (f for f in files if f.endswith('.trans.txt')):
      path = os.path.join(directory, name)
      with open(path, encoding='utf-8', errors='replace') as fh:
        for number, line in enumerate(fh, 1):
          utt_id, _, text = line.strip().partition(' ')
          if not utt_id:
            continue
          text = ' '.join(text.split())
          where = f'{path}:{number}'
          if not text:
            problem(where, f'empty transcript: {utt_id}')
          elif alphabet is not None and not set(text) <= alphabet:
            bad = ''.join(sorted(set(text) - alphabet))
            problem(where, f'characters outside the vocabulary: {bad!r} in {utt_id}')
          elif utt_id not in audio:
            problem(where, f'transcript line with no audio: {utt_id}.flac is missing')
          else:
            transcripts[utt_id] = text
          transcripts.setdefault(utt_id, None)
    for utt_id, path in audio.items():
      if utt_id not in transcripts:
        problem(path, 'audio with no transcript')
        continue
      text = transcripts[utt_id]
      if text is None:
        continue
      try:
        rate, channels, bits, total = read_flac_streaminfo(path)
      except CorpusError as e:
        problem(path, f'unreadable audio: {str(e)[len(path) + 2:]}')
        continue
      except OSError as e:
        problem(path, f'unreadable audio: {e.strerror}')
        continue
      if (rate, channels, bits) != (SAMPLE_RATE, 1, 16):
        problem(path, f'unsupported audio format: {rate} Hz, {channels} channel(s), '
                f'{bits}-bit (want 16000 Hz, 1 channel, 16-bit)')
        continue
      if total == 0:
        problem(path, 'unreadable audio: empty (the FLAC header promises no samples)')
        continue
      if decode_check:
        try:
          decoded = int(tfio.audio.decode_flac(tf.io.read_file(path), dtype=tf.int16).shape[0])
        except (tf.errors.OpError, ValueError):
          # The decoder's own message is op text; what it means for the file is the reason.
          problem(path, 'unreadable audio: corrupt FLAC data (the decoder stopped)')
          continue
        if decoded != total:
          problem(path, f'unreadable audio: truncated ({decoded} of {total} samples)')
          continue
      parts = utt_id.split('-')
      utterances.append(Utterance(utt_id, parts[0], parts[1] if len(parts) > 1 else '',
                                  path, text, total))
  if decode_check and stamp and not problems:
    try:
      os.makedirs(decoded_stamps, exist_ok=True)
      open(stamp, 'w').close()
    except OSError:
      pass  # A read-only place: the next scan decodes again.
  return ScanReport(split_dir, utterances, problems)
