"""`--omc_allocation=importance`: per-block float formats from a layer-importance ranking."""

from absl.testing import absltest

from fl_compression.compression import codecs
from fl_compression.compression import float_format as ff
from fl_compression.compression import process
from fl_compression.models import asr
from fl_compression.models import registry


class ImportanceCodecsTest(absltest.TestCase):

  def test_ambient_third_loses_a_bit_the_critical_third_gains_one(self):
    config = asr.tiny_config(29)
    config['encoder']['num_blocks'] = 6
    model = registry.build_keras_model(config)
    names = [v.name for v in model.trainable_variables]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    base = codecs.OmcCodec(ff.parse('S1E4M6'))
    found = process.importance_codecs(base, names, {'ambient_first': [4, 1, 0, 5, 2, 3]})
    by_block = {}
    for name, codec in zip(names, found):
      block = name.split('/')[1] if '/block_' in name else 'other'
      by_block.setdefault(block, set()).add(codec.fmt.name)
    self.assertEqual(by_block, {'block_04': {'S1E4M5'}, 'block_01': {'S1E4M5'},
                                'block_00': {'S1E4M6'}, 'block_05': {'S1E4M6'},
                                'block_02': {'S1E4M7'}, 'block_03': {'S1E4M7'},
                                'other': {'S1E4M6'}})  # Subsampling and head.
    # Equal blocks: the weight matrices' packed bytes are the uniform format's, within the
    # rounding of each variable's packed words.
    matrices = [i for i, s in enumerate(shapes) if len(s) >= 2]
    uniform = sum(base.nbytes(shapes[i]) for i in matrices)
    allocated = sum(found[i].nbytes(shapes[i]) for i in matrices)
    self.assertAlmostEqual(allocated / uniform, 1.0, delta=1e-3)


if __name__ == '__main__':
  absltest.main()
