"""Every learning-process variant, imported so that each registers its `--algorithm` name.

`fl_compression.learning.algorithms` holds the registry and FedAvg; the variants live in their
own packages and register themselves at import. Programs, benchmarks and tests import this
module before looking an algorithm up.
"""

# pylint: disable=unused-import
from fl_compression.compression import process as _compression  # omc, fedaqt
from fl_compression.learning import algorithms as _algorithms  # fedavg, tff_compression
from fl_compression.pruning import process as _pruning  # fp, fd
from fl_compression.zerofl import process as _zerofl  # zerofl
