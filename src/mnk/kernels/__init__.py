"""Stage 3, base kernels: prepared images in, Gram matrices out.

Takes `KernelOptions` (`options`, plain Python, built once from the `kernel` section) and
image arrays; gives the exact CNTK of Arora et al. 2019 and the fully connected ReLU NTK
(`gram.cntk_gram`, `gram.ntk_gram`), on the CPU (numba: `cntk_cpu` float64, `cntk_cpu32`
float32) or a CUDA GPU (`cntk_cuda`); `reference` is the slow direct float64 recursion for tests.
Nothing is imported here, so that `options` stays importable without numpy.
"""
