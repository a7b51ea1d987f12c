"""mnk: Meta Neural Kernels, MAML and iMAML on Omniglot.

The importable algorithms behind mnk-pipeline; the Snakemake scripts are thin wrappers
around the functions in these modules.

Importing mnk pins the CPU numerics of this process and its children to one code path
(:mod:`mnk.infra.numerics`): import it before torch, numba and numpy.
"""

from mnk.infra.numerics import pin_cpu_numerics

pin_cpu_numerics()

__version__ = "0.1.0"
