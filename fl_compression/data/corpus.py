"""The embedded speech corpus: synthesized with espeak-ng into the LibriSpeech layout.

No download: speakers are espeak-ng voices (accent x variant x rate x pitch), sentences come
from a seeded grammar over a fixed English vocabulary, and audio is written as 16 kHz 16-bit mono
FLAC with upper-case transcripts, exactly as LibriSpeech stores them, so one reader serves both:

  <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
  <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Splits: `train-clean-100` (training speakers), `dev-clean` (the training speakers, new
sentences), `test-clean` (speakers that never appear in training: the hard case).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Optional

import numpy as np

TRAIN_SPLIT = 'train-clean-100'
DEV_SPLIT = 'dev-clean'
TEST_SPLIT = 'test-clean'
SPLITS = (TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT)
MANIFEST = 'corpus.json'
GENERATOR_VERSION = 2

# espeak-ng's own English accents (no MBROLA voices needed) and voice variants.
ACCENTS = ('en-us', 'en-gb', 'en-gb-scotland', 'en-gb-x-rp', 'en-gb-x-gbclan',
           'en-gb-x-gbcwmd', 'en-029', 'en-us-nyc')
VARIANTS = ('m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'f1', 'f2', 'f3', 'f4', 'f5')
RATES = (135, 150, 165, 180)
PITCHES = (30, 45, 60, 75)

_NAMES = ('ALICE BOB CAROL DAVID EMMA FRANK GRACE HENRY IRENE JACK KATE LIAM MARY NOAH OLIVIA '
          'PETER ROSE SAM TOM VICTOR').split()
_ADJECTIVES = ('BIG SMALL OLD NEW RED BLUE GREEN YELLOW DARK BRIGHT QUIET LOUD WARM COLD HAPPY '
               'TIRED QUICK SLOW HEAVY LIGHT CLEAN EMPTY FULL STRONG GENTLE FAMOUS STRANGE '
               'SIMPLE SOFT SHORT').split()
_NOUNS = ('HOUSE GARDEN RIVER MOUNTAIN WINDOW DOOR TABLE CHAIR BOOK LETTER PHONE CAR TRAIN BOAT '
          'CITY VILLAGE FOREST FIELD BRIDGE ROAD STREET MARKET SCHOOL TEACHER DOCTOR FARMER '
          'CHILD FRIEND BROTHER SISTER MOTHER FATHER DOG CAT HORSE BIRD FISH APPLE BREAD WATER '
          'COFFEE MORNING EVENING WINTER SUMMER STORY MUSIC PICTURE KITCHEN OFFICE').split()
_VERBS = ('FOUND SAW OPENED CLOSED CARRIED BOUGHT SOLD PAINTED CLEANED MOVED WATCHED VISITED '
          'FOLLOWED CALLED HELPED BUILT REPAIRED LEFT BROUGHT WANTED LIKED REMEMBERED SHOWED '
          'TOOK KEPT READ WROTE DREW HEARD MET').split()
_INTRANSITIVE = ('WALKED RAN SLEPT WAITED LAUGHED SANG STAYED ARRIVED SMILED WORKED').split()
_ADVERBS = ('SLOWLY QUICKLY QUIETLY CAREFULLY TODAY YESTERDAY AGAIN ALWAYS OFTEN SOON').split()
_PREPOSITIONS = ('NEAR BEHIND UNDER ABOVE INSIDE ACROSS BESIDE AROUND').split()
_NUMBERS = ('TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN TWELVE TWENTY').split()
_TIMES = ('EVERY DAY', 'LAST NIGHT', 'THIS MORNING', 'AFTER LUNCH', 'BEFORE DINNER',
          'ON MONDAY', 'ON FRIDAY', 'IN APRIL')
_FUNCTION = ('THE A AND BUT THEY SHE HE WE I IT WAS WERE IS NOT VERY ALWAYS').split()


def vocabulary() -> list[str]:
  """Every word the sentence grammar can produce."""
  words = set(_NAMES + _ADJECTIVES + _NOUNS + _VERBS + _INTRANSITIVE + _ADVERBS + _PREPOSITIONS
              + _NUMBERS + _FUNCTION)
  for phrase in _TIMES:
    words.update(phrase.split())
  words.update(("IT'S", "WASN'T", 'THAT', 'AN'))
  words.update(_plural(noun) for noun in _NOUNS)
  return sorted(words)


def _plural(noun: str) -> str:
  irregular = {'CHILD': 'CHILDREN', 'FISH': 'FISH'}
  if noun in irregular:
    return irregular[noun]
  return noun + ('ES' if noun.endswith(('S', 'H')) else 'S')


def make_sentence(rng: np.random.Generator) -> str:
  """One sentence from a small English grammar (4 to 14 words)."""
  pick = lambda words: words[rng.integers(len(words))]

  def noun_phrase():
    parts = [pick(('THE', 'A', 'THE', pick(_NUMBERS)))]
    if rng.random() < 0.6:
      parts.append(pick(_ADJECTIVES))
    noun = pick(_NOUNS)
    if parts[0] in _NUMBERS:
      noun = _plural(noun)
    if parts[0] == 'A' and (parts[1:] or [noun])[0][0] in 'AEIOU':
      parts[0] = 'AN'
    return ' '.join(parts + [noun])

  subject = pick(_NAMES) if rng.random() < 0.4 else noun_phrase()
  form = rng.integers(5)
  if form == 0:
    words = [subject, pick(_VERBS), noun_phrase()]
  elif form == 1:
    words = [subject, pick(_INTRANSITIVE), pick(_PREPOSITIONS), noun_phrase()]
  elif form == 2:
    words = [subject, pick(_VERBS), noun_phrase(), pick(_PREPOSITIONS), noun_phrase()]
  elif form == 3:
    words = [pick(_TIMES), subject, pick(_INTRANSITIVE), pick(_ADVERBS)]
  else:
    words = [pick(('SHE', 'HE', 'THEY', 'WE', 'I')), pick(('WAS', 'WERE', 'IS')),
             pick(('NOT', 'VERY', 'ALWAYS')), pick(_ADJECTIVES), pick(('AND', 'BUT')),
             pick(('IT', 'THAT')), pick(("WASN'T", "IT'S", 'IS')), pick(_ADJECTIVES)]
  if rng.random() < 0.3 and form != 3:
    words.append(pick(_TIMES))
  return ' '.join(words)


@dataclasses.dataclass(frozen=True)
class Speaker:
  speaker_id: int
  accent: str
  variant: str
  rate: int
  pitch: int

  @property
  def voice(self) -> str:
    return f'{self.accent}+{self.variant}'


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What to generate. The defaults let the demo train in minutes on 2 cores."""

  num_train_speakers: int = 40
  num_test_speakers: int = 8
  train_utterances_per_speaker: int = 40
  dev_utterances_per_speaker: int = 4
  test_utterances_per_speaker: int = 10
  seed: int = 0

  def fingerprint(self) -> str:
    payload = json.dumps({**dataclasses.asdict(self), 'version': GENERATOR_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def make_speakers(config: CorpusConfig) -> tuple[list[Speaker], list[Speaker]]:
  """Distinct (accent, variant, rate, pitch) speakers: (training speakers, test speakers)."""
  total = config.num_train_speakers + config.num_test_speakers
  combos = len(ACCENTS) * len(VARIANTS) * len(RATES) * len(PITCHES)
  if total > combos:
    raise ValueError(f'at most {combos} distinct speakers can be made, asked for {total}')
  rng = np.random.default_rng([config.seed, 1])
  chosen = rng.choice(combos, size=total, replace=False)
  speakers = []
  for n, index in enumerate(chosen):
    index, pitch = divmod(int(index), len(PITCHES))
    index, rate = divmod(index, len(RATES))
    accent, variant = divmod(index, len(VARIANTS))
    speakers.append(Speaker(1000 + n, ACCENTS[accent], VARIANTS[variant], RATES[rate],
                            PITCHES[pitch]))
  return speakers[:config.num_train_speakers], speakers[config.num_train_speakers:]


def _synthesize(job: tuple[str, str, Speaker]) -> None:
  text, path, speaker = job
  espeak = subprocess.run(
      ['espeak-ng', '-v', speaker.voice, '-s', str(speaker.rate), '-p', str(speaker.pitch),
       '--stdout', text], capture_output=True, check=True)
  # -D: no dither, so the same text and voice give the same samples on every run.
  subprocess.run(
      ['sox', '-q', '-D', '-t', 'wav', '-', '-r', '16000', '-b', '16', '-c', '1', path],
      input=espeak.stdout, capture_output=True, check=True)


def generate(root: str, config: CorpusConfig = CorpusConfig(), *,
             num_workers: Optional[int] = None, log=print) -> dict:
  """Generates the corpus under `root` unless the same config is already there.

  Returns the manifest (config, speakers, counts, seconds of audio, generation time, bytes).
  Writing goes to a staging directory renamed into place, so an interrupted run leaves nothing
  half-written under `root`.
  """
  manifest_path = os.path.join(root, MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest.get('fingerprint') == config.fingerprint():
      return manifest
    raise FileExistsError(f'{root} holds a corpus generated with another configuration; '
                          'choose another directory or delete it')
  for tool in ('espeak-ng', 'sox'):
    if shutil.which(tool) is None:
      raise RuntimeError(f'{tool} is not installed; run tools/setup.sh')

  started = time.monotonic()
  train_speakers, test_speakers = make_speakers(config)
  sentence_rng = np.random.default_rng([config.seed, 2])
  plan = ([(TRAIN_SPLIT, s, config.train_utterances_per_speaker) for s in train_speakers]
          + [(DEV_SPLIT, s, config.dev_utterances_per_speaker) for s in train_speakers]
          + [(TEST_SPLIT, s, config.test_utterances_per_speaker) for s in test_speakers])
  parent = os.path.dirname(os.path.abspath(root))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.corpus_staging_', dir=parent)
  jobs, counts = [], {split: 0 for split in SPLITS}
  try:
    for split, speaker, count in plan:
      chapter = 100 + SPLITS.index(split)
      directory = os.path.join(staging, split, str(speaker.speaker_id), str(chapter))
      os.makedirs(directory)
      lines = []
      for utt in range(count):
        utt_id = f'{speaker.speaker_id}-{chapter}-{utt:04d}'
        text = make_sentence(sentence_rng)
        lines.append(f'{utt_id} {text}\n')
        jobs.append((text, os.path.join(directory, utt_id + '.flac'), speaker))
      with open(os.path.join(directory, f'{speaker.speaker_id}-{chapter}.trans.txt'), 'w') as f:
        f.writelines(lines)
      counts[split] += count
    log(f'synthesizing {len(jobs)} utterances from {len(train_speakers) + len(test_speakers)} '
        f'speakers into {root} ...')
    with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
      list(pool.map(_synthesize, jobs))
    size = sum(os.path.getsize(job[1]) for job in jobs)
    manifest = {
        'fingerprint': config.fingerprint(),
        'config': dataclasses.asdict(config),
        'train_speakers': [dataclasses.asdict(s) for s in train_speakers],
        'test_speakers': [dataclasses.asdict(s) for s in test_speakers],
        'utterances': counts,
        'vocabulary_size': len(vocabulary()),
        'flac_bytes': size,
        'generation_seconds': round(time.monotonic() - started, 1),
    }
    with open(os.path.join(staging, MANIFEST), 'w') as f:
      json.dump(manifest, f, indent=2)
    if os.path.exists(root):
      os.rmdir(root)  # Only an empty directory may be replaced.
    os.rename(staging, root)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  log(f'corpus ready: {counts} utterances, {size / 1e6:.1f} MB, '
      f'{manifest["generation_seconds"]} s')
  return manifest
