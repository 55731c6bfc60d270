"""//tff_programs:train's flag checks, in process: each bad value is one FlagError naming the
flag, raised before anything is written (not even the output directory)."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import flagsaver
import portpicker

from fl_compression.data import corpus
from tests import tff_test_utils
from tff_programs import backends
from tff_programs import flag_utils
from tff_programs import train


class TrainFlagsTest(absltest.TestCase):

  def _assert_fails(self, message: str, **flags):
    root = os.path.join(tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir()), 'run')
    flags = {'root_output_dir': root, 'num_train_clients': 8, 'examples_per_client': 8,
             'clients_per_round': 3, **flags}
    with flagsaver.as_parsed(**{name: str(value) for name, value in flags.items()}):
      # program_main prints either as the one-line `error: ...` with exit status 2.
      with self.assertRaises((flag_utils.FlagError, backends.BackendError), msg=flags) as raised:
        train.run()
    text = str(raised.exception)
    self.assertIn(message, text, flags)
    self.assertNotIn('\n', text, flags)
    if flags['root_output_dir'] == root:
      self.assertFalse(os.path.exists(root), f'{flags}: the output directory was created')

  def test_numbers_must_be_positive_and_finite(self):
    for name in ('total_rounds', 'clients_per_round', 'evaluation_period', 'batch_size',
                 'local_epochs', 'num_train_clients', 'num_eval_clients',
                 'examples_per_client', 'keep_program_states'):
      for value in (0, -1):
        self._assert_fails(f'--{name} must be positive and finite, got {value}', **{name: value})
    for name in ('client_learning_rate', 'server_learning_rate', 'worker_connect_timeout'):
      for value in ('0', '-0.1', 'nan', 'inf'):
        self._assert_fails(f'--{name} must be positive and finite, got {float(value)}',
                           **{name: value})

  def test_names_and_algorithm_settings(self):
    cases = [
        ({'task': 'speech_lm'}, '--task=speech_lm is unknown; known: speech_ctc'),
        ({'algorithm': 'nope'}, '--algorithm=nope is unknown'),
        ({'model': 'conformer_s'}, '--model=conformer_s: --task=synthetic_mlp has one model'),
        ({'task': 'speech_ctc', 'model': 'conformer_xl'},
         '--model=conformer_xl is unknown; known: tiny, tiny_transducer, micro, '
         'micro_transducer, wide, deep, deep_narrow, deep_preln, conformer_s'),
        ({'backend': 'cloud'}, '--backend=cloud is unknown'),
        ({'evaluation_splits': 'test,train'}, '--evaluation_splits=test,train: give dev, test '
         'or dev,test'),
        ({'backend': 'workers', 'workers': 'localhost'}, "--workers entry 'localhost'"),
        ({'clients_per_round': 9}, '--clients_per_round=9: must be between 1 and 8, the '
         'number of training clients'),
        ({'algorithm': 'fp'}, 'the mlp model has nothing prunable'),
        ({'algorithm': 'fp', 'fp_sparsity': 1.0}, '--fp_sparsity=1.0 is outside [0, 1)'),
        ({'algorithm': 'fp', 'fp_pattern': 'diagonal'}, "--fp_pattern='diagonal' is unknown"),
        ({'algorithm': 'fp', 'fp_refine_start': 2, 'fp_finetune_start': 1},
         '--fp_finetune_start=1 must be in'),
        ({'algorithm': 'fp', 'fp_ramp_steps': 0}, '--fp_ramp_steps=0 must be positive'),
        ({'algorithm': 'fp', 'fp_sparsity': 0.5, 'fp_max_layer_sparsity': 0.4},
         '--fp_max_layer_sparsity=0.4 must be in [--fp_sparsity, 1)'),
        ({'algorithm': 'fp', 'fp_momentum': 1.0}, '--fp_momentum=1.0 is outside [0, 1)'),
        ({'algorithm': 'fp', 'fp_prunable': 'all'}, "--fp_prunable='all' is unknown; known: "
         'paper, extended'),
        ({'algorithm': 'omc', 'omc_format': 'E4M6'}, "--omc_format='E4M6': 'E4M6' is not a "
         'format name'),
        ({'algorithm': 'omc', 'omc_fraction': 1.5}, '--omc_fraction=1.5 is outside [0, 1]'),
        ({'algorithm': 'fedaqt', 'aqt_bits': 3}, '--aqt_bits=3: 3-bit quantization is outside '
         'the supported 4..8'),
        ({'algorithm': 'fedaqt', 'aqt_variant': 'fedprox'}, "--aqt_variant='fedprox' is unknown"),
        ({'algorithm': 'fp', 'omc_format': 'S1E4M6'}, '--omc_format does not apply to '
         '--algorithm=fp without --fp_compress=omc'),
        ({'algorithm': 'fp', 'fp_compress': 'zip'}, "--fp_compress='zip' is unknown; known: "
         'none, omc, fedaqt'),
        ({'aqt_bits': 4}, '--aqt_bits does not apply to --algorithm=fedavg'),
        ({'algorithm': 'fd', 'fp_compress': 'omc'}, '--fp_compress does not apply to '
         '--algorithm=fd'),
        ({'algorithm': 'fd', 'fp_sparsity': 0.3}, '--fp_sparsity does not apply to '
         '--algorithm=fd'),
        ({'algorithm': 'omc', 'omc_allocation': 'importance'}, '--omc_allocation=importance '
         'needs --omc_ranking'),
        ({'algorithm': 'omc', 'omc_allocation': 'bits'}, "--omc_allocation='bits' is unknown"),
        ({'algorithm': 'fp', 'fp_compress': 'omc', 'omc_allocation': 'importance'},
         '--omc_allocation does not apply to --algorithm=fp'),
        ({'algorithm': 'fp', 'fp_allocation': 'importance'}, '--fp_allocation=importance needs '
         '--fp_ranking'),
        ({'algorithm': 'fd', 'fd_rate': 1.5}, '--fd_rate=1.5 is outside (0, 1)'),
        ({'algorithm': 'fd', 'fd_target': 'ambient:2'}, '--fd_target=ambient:2: N must be in '
         '1..0 (the encoder blocks)'),
        ({'algorithm': 'zerofl', 'zerofl_sparsity': 1.0}, '--zerofl_sparsity=1.0 is outside '
         '[0, 1)'),
        ({'algorithm': 'zerofl', 'zerofl_mask_ratio': -0.1}, '--zerofl_mask_ratio=-0.1 is '
         'outside [0, 1]'),
        ({'algorithm': 'zerofl', 'zerofl_sparsity': 0.5, 'zerofl_mask_ratio': 0.6},
         'uploads more than the whole matrix'),
        ({'zerofl_sparsity': 0.5}, '--zerofl_sparsity does not apply to --algorithm=fedavg'),
        ({'algorithm': 'tff_compression', 'fp_sparsity': 0.5},
         '--fp_sparsity does not apply to --algorithm=tff_compression'),
        ({'initial_model_dir': '/nonexistent/model'}, '--initial_model_dir=/nonexistent/model: '
         '/nonexistent/model is not a model directory'),
    ]
    for flags, message in cases:
      self._assert_fails(message, **flags)

  def test_targeted_dropout_checks_its_ranking_against_the_model(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    data_dir = os.path.join(tmp, 'corpus')
    corpus.generate(data_dir, corpus.SMALL, log=lambda message: None)
    ranking = os.path.join(tmp, 'ranking.json')
    with open(ranking, 'w') as f:  # A ranking of a 16-block model; tiny has 4 blocks.
      json.dump({'ambient_first': list(range(16)), 'blocks': [{}] * 16}, f)
    speech = {'task': 'speech_ctc', 'data_dir': data_dir, 'algorithm': 'fd',
              'clients_per_round': 1}
    self._assert_fails(f'--fd_ranking={ranking} ranks 16 encoder blocks; the trained model '
                       'has 4', **speech, fd_target='ambient:2', fd_ranking=ranking)
    self._assert_fails('--fd_target=critical:5: N must be in 1..4', **speech,
                       fd_target='critical:5')
    self._assert_fails('--fd_target=ambient:2 needs --fd_ranking', **speech,
                       fd_target='ambient:2')
    speech = dict(speech, algorithm='fedavg')
    self._assert_fails('--trainable=critical:9: N must be in 1..4', **speech,
                       trainable='critical:9')
    self._assert_fails(f'--ranking={ranking} ranks 16 encoder blocks; the trained model has 4',
                       **speech, trainable='ambient:1', ranking=ranking)
    self._assert_fails('--trainable=blocks:1: --task=synthetic_mlp has no encoder blocks',
                       trainable='blocks:1')
    self._assert_fails('--ranking applies to --trainable=critical:N or ambient:N',
                       ranking=ranking)
    # The shipped model's config was saved before `block_output_norm` existed: it is the same
    # model as `tiny` (the run gets past that check to the ranking's), not as `deep_preln`.
    shipped = tff_test_utils.repo_path('checkpoints/conformer_ctc_tiny')
    self._assert_fails(f'--fd_ranking={ranking} ranks 16 encoder blocks; the trained model '
                       'has 4', **dict(speech, algorithm='fd'), fd_target='ambient:2',
                       fd_ranking=ranking, initial_model_dir=shipped)
    self._assert_fails(f'--initial_model_dir={shipped} holds a conformer_ctc model whose '
                       'config differs', **speech, model='deep_preln', initial_model_dir=shipped)

  def test_unusable_paths_and_backends(self):
    tmp = tempfile.mkdtemp(dir=absltest.get_default_test_tmpdir())
    a_file = os.path.join(tmp, 'file')
    with open(a_file, 'w') as f:
      f.write('x')
    self._assert_fails(f'--root_output_dir={a_file}/run cannot be created: {a_file} is not a '
                       'directory', root_output_dir=f'{a_file}/run')
    self._assert_fails(f'--data_dir={a_file}', task='speech_ctc', data_dir=a_file)
    port = portpicker.pick_unused_port()
    self._assert_fails(f'127.0.0.1:{port} is unreachable', backend='workers',
                       workers=f'127.0.0.1:{port}', worker_connect_timeout=2)


if __name__ == '__main__':
  absltest.main()
