"""The embedded speech corpus: synthesized with espeak-ng into the LibriSpeech layout.

No download: speakers are espeak-ng voices (accent x variant x rate x pitch), sentences come
from seeded grammars over fixed English vocabularies, and audio is written as 16 kHz 16-bit mono
FLAC with upper-case transcripts, exactly as LibriSpeech stores them, so one reader serves both:

  <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
  <root>/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Two domains share the root, each with its own speakers and splits (`DOMAINS`):
- `main`: narrative sentences (4 to 14 words). `train-clean-100` (training speakers),
  `dev-clean` (the training speakers, new sentences), `test-clean` (speakers who never appear in
  training: the hard case).
- `short-form`: voice-command-like utterances (2 to 6 words, imperative and question forms)
  spoken with accents that no `main` speaker has: `train-short` (its own training speakers,
  the federated clients of fine-tuning experiments), `dev-short`, `test-short`. Pretraining on
  `main` never sees it.
`corpus.json` records every generated domain (its configuration, speakers, counts); a domain
missing from a generated corpus can be added later without touching the others.
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
from typing import Callable, Optional

import numpy as np

MANIFEST = 'corpus.json'
GENERATOR_VERSION = 3

# espeak-ng's own English accents (no MBROLA voices needed). The short-form domain's accents
# are held out of the main domain, so its speakers are new in accent, not only in voice.
MAIN_ACCENTS = ('en-us', 'en-gb', 'en-gb-x-rp', 'en-gb-x-gbclan', 'en-gb-x-gbcwmd', 'en-us-nyc')
SHORT_FORM_ACCENTS = ('en-gb-scotland', 'en-029')
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


def _main_vocabulary() -> set[str]:
  """Every word the main-domain grammar can produce."""
  words = set(_NAMES + _ADJECTIVES + _NOUNS + _VERBS + _INTRANSITIVE + _ADVERBS + _PREPOSITIONS
              + _NUMBERS + _FUNCTION)
  for phrase in _TIMES:
    words.update(phrase.split())
  words.update(("IT'S", "WASN'T", 'THAT', 'AN'))
  words.update(_plural(noun) for noun in _NOUNS)
  return words


def _plural(noun: str) -> str:
  irregular = {'CHILD': 'CHILDREN', 'FISH': 'FISH'}
  if noun in irregular:
    return irregular[noun]
  return noun + ('ES' if noun.endswith(('S', 'H')) else 'S')


def make_sentence(rng: np.random.Generator) -> str:
  """One main-domain sentence: narrative English from a small grammar (4 to 14 words)."""
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



# The short-form domain: what people say to a phone or a speaker at home.
_DEVICES = ('LIGHTS', 'HEATING', 'RADIO', 'MUSIC', 'FAN', 'OVEN', 'TELEVISION', 'ALARM',
            'KITCHEN LIGHTS', 'WIFI')
_OPENABLE = ('DOOR', 'WINDOW', 'GARAGE', 'GATE', 'CURTAINS')
_PLACES = ('HOME', 'WORK', 'THE MARKET', 'THE SCHOOL', 'THE OFFICE', 'THE STATION',
           'THE AIRPORT', 'THE BRIDGE')
_MEDIA = ('SOME MUSIC', 'THE NEWS', 'MY PLAYLIST', 'JAZZ', 'THE RADIO', 'A STORY')
_APPS = ('CALENDAR', 'PHOTOS', 'MESSAGES', 'EMAILS', 'NOTES', 'CONTACTS')
_SETTINGS = ('VOLUME', 'BRIGHTNESS', 'TEMPERATURE')
_DAYS = ('TODAY', 'TOMORROW', 'TONIGHT', 'ON MONDAY', 'ON FRIDAY')


def _command_forms() -> list[tuple]:
  """The command templates: tuples of alternatives, one picked per slot."""
  return [
      (('TURN',), ('ON', 'OFF'), ('THE',), _DEVICES),
      (('SWITCH OFF', 'SWITCH ON'), _DEVICES),
      (('CALL', 'TEXT'), _NAMES),
      (('CALL',), _NAMES, ('AT HOME', 'AT WORK', 'NOW')),
      (('SET A TIMER FOR',), _NUMBERS, ('MINUTES', 'SECONDS')),
      (('WAKE ME AT',), _NUMBERS),
      (('PLAY',), _MEDIA),
      (('OPEN', 'CLOSE', 'LOCK', 'UNLOCK'), ('THE',), _OPENABLE),
      (('WHAT IS THE WEATHER',), _DAYS),
      (('WHAT TIME IS IT',),),
      (('SEND A MESSAGE TO',), _NAMES),
      (('NAVIGATE TO', 'DIRECTIONS TO'), _PLACES),
      (('SHOW MY', 'OPEN MY'), _APPS),
      (_SETTINGS, ('UP', 'DOWN')),
      (('NEXT', 'PREVIOUS'), ('SONG', 'TRACK', 'PICTURE')),
      (('STOP', 'PAUSE'), ('THE',), ('MUSIC', 'TIMER', 'ALARM', 'RADIO')),
      (('REMIND ME TO CALL',), _NAMES),
  ]


_COMMANDS = _command_forms()


def make_command(rng: np.random.Generator) -> str:
  """One short-form utterance: a voice command or question (2 to 6 words)."""
  form = _COMMANDS[rng.integers(len(_COMMANDS))]
  return ' '.join(slot[rng.integers(len(slot))] for slot in form)


def _short_form_vocabulary() -> set[str]:
  words = set()
  for form in _COMMANDS:
    for slot in form:
      for phrase in slot:
        words.update(phrase.split())
  return words


@dataclasses.dataclass(frozen=True)
class Domain:
  """What a domain is: its split directories, its speakers' accents and its sentence source."""

  name: str
  train_split: str
  dev_split: str
  test_split: str
  accents: tuple[str, ...]
  make_sentence: Callable[[np.random.Generator], str]
  first_speaker_id: int  # Speaker ids of domains never collide.
  stream: int  # Seeds this domain's random draws apart from the other domains'.

  @property
  def splits(self) -> tuple[str, str, str]:
    return (self.train_split, self.dev_split, self.test_split)


MAIN = 'main'
SHORT_FORM = 'short-form'
DOMAINS = {
    MAIN: Domain(MAIN, 'train-clean-100', 'dev-clean', 'test-clean', MAIN_ACCENTS,
                 make_sentence, 1000, 0),
    SHORT_FORM: Domain(SHORT_FORM, 'train-short', 'dev-short', 'test-short', SHORT_FORM_ACCENTS,
                       make_command, 5000, 1),
}
# The main domain's splits, by the names programs and benchmarks use.
TRAIN_SPLIT, DEV_SPLIT, TEST_SPLIT = DOMAINS[MAIN].splits
SPLITS = DOMAINS[MAIN].splits


def domain(name: str) -> Domain:
  """The domain called `name`; a ValueError names the known ones."""
  if name not in DOMAINS:
    raise ValueError(f'unknown domain {name!r}; known: {", ".join(DOMAINS)}')
  return DOMAINS[name]


def vocabulary(domain_name: Optional[str] = None) -> list[str]:
  """Every word the grammar of `domain_name` (default: both domains) can produce."""
  parts = {MAIN: _main_vocabulary, SHORT_FORM: _short_form_vocabulary}
  names = [domain(domain_name).name] if domain_name else list(DOMAINS)
  return sorted(set().union(*(parts[n]() for n in names)))


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
class DomainSize:
  """How many speakers and utterances a domain's splits have."""

  num_train_speakers: int
  num_test_speakers: int
  train_utterances_per_speaker: int
  dev_utterances_per_speaker: int
  test_utterances_per_speaker: int


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What to generate: the size of each domain (None: not generated) and the seed.

  The defaults give held-out splits large enough for confidence intervals that separate a few
  percent of relative WER (`test-clean`: 24 new speakers x 25 utterances, about 4,300 words;
  `dev-clean` about 2,300 words) while a training round stays in tens of seconds on 2 cores.
  """

  main: Optional[DomainSize] = DomainSize(num_train_speakers=40, num_test_speakers=24,
                                          train_utterances_per_speaker=40,
                                          dev_utterances_per_speaker=8,
                                          test_utterances_per_speaker=25)
  short_form: Optional[DomainSize] = DomainSize(num_train_speakers=24, num_test_speakers=16,
                                                train_utterances_per_speaker=30,
                                                dev_utterances_per_speaker=8,
                                                test_utterances_per_speaker=40)
  seed: int = 0

  def sizes(self) -> dict[str, DomainSize]:
    """The generated domains and their sizes."""
    found = {MAIN: self.main, SHORT_FORM: self.short_form}
    return {name: size for name, size in found.items() if size is not None}

  def restricted_to(self, domain_names) -> 'CorpusConfig':
    """This configuration with only the domains `domain_names`."""
    return dataclasses.replace(self, **{
        field: getattr(self, field) if name in domain_names else None
        for field, name in (('main', MAIN), ('short_form', SHORT_FORM))})

  def domain_fingerprint(self, domain_name: str) -> str:
    payload = json.dumps({'domain': domain_name, 'size': dataclasses.asdict(
        self.sizes()[domain_name]), 'seed': self.seed, 'version': GENERATOR_VERSION},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# A few speakers and utterances per split, for tests that need real audio quickly.
SMALL = CorpusConfig(
    main=DomainSize(num_train_speakers=2, num_test_speakers=1, train_utterances_per_speaker=2,
                    dev_utterances_per_speaker=1, test_utterances_per_speaker=2),
    short_form=None)


def make_speakers(domain_name: str, size: DomainSize, seed: int
                  ) -> tuple[list[Speaker], list[Speaker]]:
  """Distinct (accent, variant, rate, pitch) speakers of a domain: (training, test)."""
  spec = domain(domain_name)
  total = size.num_train_speakers + size.num_test_speakers
  combos = len(spec.accents) * len(VARIANTS) * len(RATES) * len(PITCHES)
  if total > combos:
    raise ValueError(f'domain {domain_name}: at most {combos} distinct speakers can be made, '
                     f'asked for {total}')
  rng = np.random.default_rng([seed, 1, spec.stream])
  chosen = rng.choice(combos, size=total, replace=False)
  speakers = []
  for n, index in enumerate(chosen):
    index, pitch = divmod(int(index), len(PITCHES))
    index, rate = divmod(index, len(RATES))
    accent, variant = divmod(index, len(VARIANTS))
    speakers.append(Speaker(spec.first_speaker_id + n, spec.accents[accent], VARIANTS[variant],
                            RATES[rate], PITCHES[pitch]))
  return speakers[:size.num_train_speakers], speakers[size.num_train_speakers:]


@dataclasses.dataclass(frozen=True)
class PlannedUtterance:
  split: str
  speaker: Speaker
  chapter: int
  utterance_id: str
  text: str


def plan_domain(domain_name: str, size: DomainSize, seed: int) -> list[PlannedUtterance]:
  """Every utterance of a domain (speaker, split, id, text), without synthesizing audio."""
  spec = domain(domain_name)
  train_speakers, test_speakers = make_speakers(domain_name, size, seed)
  sentence_rng = np.random.default_rng([seed, 2, spec.stream])
  plan = ([(spec.train_split, s, size.train_utterances_per_speaker) for s in train_speakers]
          + [(spec.dev_split, s, size.dev_utterances_per_speaker) for s in train_speakers]
          + [(spec.test_split, s, size.test_utterances_per_speaker) for s in test_speakers])
  utterances = []
  for split, speaker, count in plan:
    chapter = 100 + spec.splits.index(split)
    for utt in range(count):
      utterances.append(PlannedUtterance(
          split, speaker, chapter, f'{speaker.speaker_id}-{chapter}-{utt:04d}',
          spec.make_sentence(sentence_rng)))
  return utterances


def _synthesize(job: tuple[str, str, Speaker]) -> None:
  text, path, speaker = job
  espeak = subprocess.run(
      ['espeak-ng', '-v', speaker.voice, '-s', str(speaker.rate), '-p', str(speaker.pitch),
       '--stdout', text], capture_output=True, check=True)
  # -D: no dither, so the same text and voice give the same samples on every run.
  subprocess.run(
      ['sox', '-q', '-D', '-t', 'wav', '-', '-r', '16000', '-b', '16', '-c', '1', path],
      input=espeak.stdout, capture_output=True, check=True)


def read_manifest(root: str) -> Optional[dict]:
  """The manifest of a generated corpus under `root`, or None where there is none."""
  path = os.path.join(root, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get('generator_version') != GENERATOR_VERSION:
    raise FileExistsError(f'{root} holds a corpus of generator version '
                          f'{manifest.get("generator_version", 2)} (this is version '
                          f'{GENERATOR_VERSION}); choose another directory or delete it')
  return manifest


def generate(root: str, config: CorpusConfig = CorpusConfig(), *,
             num_workers: Optional[int] = None, log=print) -> dict:
  """Generates under `root` every domain of `config` that is not there yet.

  Returns the manifest: per domain its configuration, speakers, utterance and word counts,
  seconds of generation and FLAC bytes. A domain already generated with the same size and seed
  is kept; with another, generation is refused. Each domain is written to a staging directory
  whose splits are moved into place before the manifest names them, so an interrupted run leaves
  nothing half-written under `root`.
  """
  manifest = read_manifest(root)
  if manifest is None:
    if os.path.isdir(root) and os.listdir(root):
      raise FileExistsError(f'{root} is not empty and holds no generated corpus ({MANIFEST} '
                            'is missing); choose another directory')
    manifest = {'generator_version': GENERATOR_VERSION, 'seed': config.seed, 'domains': {}}
  pending = []
  for name in config.sizes():
    existing = manifest['domains'].get(name)
    if existing is None:
      pending.append(name)
    elif existing['fingerprint'] != config.domain_fingerprint(name):
      raise FileExistsError(f'{root} holds a {name} domain generated with another '
                            'configuration; choose another directory or delete it')
  if not pending:
    return manifest
  for tool in ('espeak-ng', 'sox'):
    if shutil.which(tool) is None:
      raise RuntimeError(f'{tool} is not installed; run tools/setup.sh')
  os.makedirs(root, exist_ok=True)
  for name in pending:
    manifest['domains'][name] = _generate_domain(root, name, config, num_workers, log)
    _write_json_atomically(os.path.join(root, MANIFEST), manifest)
  return manifest


def _generate_domain(root: str, name: str, config: CorpusConfig, num_workers, log) -> dict:
  started = time.monotonic()
  spec, size = domain(name), config.sizes()[name]
  planned = plan_domain(name, size, config.seed)
  # Staged next to `root`, not in it: a hard kill leaves `root` as it was.
  staging = tempfile.mkdtemp(prefix='.corpus_staging_',
                             dir=os.path.dirname(os.path.abspath(root)))
  try:
    jobs, lines = [], {}
    for u in planned:
      directory = os.path.join(staging, u.split, str(u.speaker.speaker_id), str(u.chapter))
      if directory not in lines:
        os.makedirs(directory)
        lines[directory] = []
      lines[directory].append(f'{u.utterance_id} {u.text}\n')
      jobs.append((u.text, os.path.join(directory, u.utterance_id + '.flac'), u.speaker))
    for directory, texts in lines.items():
      speaker, chapter = directory.split(os.sep)[-2:]
      with open(os.path.join(directory, f'{speaker}-{chapter}.trans.txt'), 'w') as f:
        f.writelines(texts)
    train_speakers, test_speakers = make_speakers(name, size, config.seed)
    log(f'synthesizing {len(jobs)} {name} utterances from '
        f'{len(train_speakers) + len(test_speakers)} speakers into {root} ...')
    with concurrent.futures.ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
      list(pool.map(_synthesize, jobs))
    flac_bytes = sum(os.path.getsize(job[1]) for job in jobs)
    for split in spec.splits:
      target = os.path.join(root, split)
      if os.path.exists(target):
        raise FileExistsError(f'{target} exists but the manifest has no {name} domain; '
                              'choose another directory or delete it')
    for split in spec.splits:
      os.rename(os.path.join(staging, split), os.path.join(root, split))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  counts = {split: sum(u.split == split for u in planned) for split in spec.splits}
  words = {split: sum(len(u.text.split()) for u in planned if u.split == split)
           for split in spec.splits}
  seconds = round(time.monotonic() - started, 1)
  log(f'{name} domain ready: {counts} utterances, {flac_bytes / 1e6:.1f} MB, {seconds} s')
  return {
      'fingerprint': config.domain_fingerprint(name),
      'size': dataclasses.asdict(size),
      'splits': dict(zip(('train', 'dev', 'test'), spec.splits)),
      'train_speakers': [dataclasses.asdict(s) for s in train_speakers],
      'test_speakers': [dataclasses.asdict(s) for s in test_speakers],
      'utterances': counts,
      'words': words,
      'vocabulary_size': len(vocabulary(name)),
      'flac_bytes': flac_bytes,
      'generation_seconds': seconds,
  }


def _write_json_atomically(path: str, value: dict) -> None:
  staging = path + '.tmp'
  with open(staging, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(staging, path)
