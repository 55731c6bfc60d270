"""Generates the embedded speech corpus and its clients' feature caches, and says what it holds.

  bazel run //tff_programs:corpus -- --data_dir=$PWD/data/embedded_corpus --domain=all

`--domain` picks the domains to generate (main, short-form, or all); a domain already there is
kept, a missing one is added. `--preset=small` is the few-speaker corpus the tests use. Then the
log-mel features of every split's clients are cached as the training programs read them (one
TFRecord file per speaker), so a first training run starts at once. Prints per split the
speakers, utterances, words and audio hours, and the time each step took.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import dataclasses
import time

from absl import app
from absl import flags

from fl_compression.data import corpus
from fl_compression.data import features
from fl_compression.data import librispeech
from fl_compression.data import speech_data
from tff_programs import flag_utils
from tff_programs import program_main

_DATA_DIR = flags.DEFINE_string('data_dir', 'data/embedded_corpus', 'Where the corpus goes.')
_DOMAIN = flags.DEFINE_enum('domain', 'all', ['all'] + list(corpus.DOMAINS),
                            'Domains to generate: all, or one of them.')
_PRESET = flags.DEFINE_enum('preset', 'default', ['default', 'small'],
                            'default: the sizes every program uses; small: the tests\' corpus.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of speakers and sentences.')
_FEATURES = flags.DEFINE_bool('features', True, 'Also cache the clients\' log-mel features.')


def run() -> None:
  data_dir = flag_utils.resolve_path(_DATA_DIR.value)
  config = corpus.CorpusConfig(seed=_SEED.value) if _PRESET.value == 'default' else \
      dataclasses.replace(corpus.SMALL, seed=_SEED.value)
  domains = list(config.sizes()) if _DOMAIN.value == 'all' else [_DOMAIN.value]
  missing = [d for d in domains if d not in config.sizes()]
  if missing:
    raise flag_utils.FlagError(f'--domain={_DOMAIN.value}: --preset={_PRESET.value} has no '
                               f'{", ".join(missing)} domain')
  started = time.monotonic()
  try:
    manifest = corpus.generate(data_dir, config.restricted_to(domains))
  except (FileExistsError, RuntimeError, OSError) as e:
    raise flag_utils.FlagError(f'--data_dir={_DATA_DIR.value}: {e}') from None
  generated = time.monotonic() - started
  tokenizer, feature_config = features.CharTokenizer(), features.FeatureConfig()
  print(f'\n{"domain":<11} {"split":<16} {"speakers":>8} {"utterances":>10} {"words":>7} '
        f'{"hours":>6}')
  for name in domains:
    for split in corpus.domain(name).splits:
      report = librispeech.scan_split(os.path.join(data_dir, split), tokenizer.alphabet,
                                      decoded_stamps=librispeech.decoded_stamps_dir(data_dir))
      utterances = report.utterances
      hours = sum(u.num_samples for u in utterances) / librispeech.SAMPLE_RATE / 3600
      print(f'{name:<11} {split:<16} {len({u.speaker_id for u in utterances}):>8} '
            f'{len(utterances):>10} {sum(len(u.transcript.split()) for u in utterances):>7} '
            f'{hours:>6.2f}')
      if _FEATURES.value:
        speech_data.build_feature_cache(
            speech_data.assign_clients(utterances), data_dir.rstrip(os.sep) + '.features',
            tokenizer, feature_config, log=lambda message: None)
  total = time.monotonic() - started
  print(f'\ngeneration {generated:.0f} s'
        + (f', feature caches {total - generated:.0f} s' if _FEATURES.value else '')
        + f', total {total:.0f} s on {os.cpu_count()} cores; manifest '
        f'{os.path.join(data_dir, corpus.MANIFEST)} (generator version '
        f'{manifest["generator_version"]})', flush=True)


if __name__ == '__main__':
  app.run(program_main.make_main(run))
