"""mnk: Meta Neural Kernels, MAML and iMAML on Omniglot.

The importable algorithms behind mnk-pipeline; the Snakemake scripts are thin wrappers
around the functions in these modules.
"""

__version__ = "0.1.0"
