"""CNTK by neural-tangents, the second reference for tests/test_kernels.py.

Runs in the separate venv ``.venv-nt`` (pins: envs/neural_tangents.txt), never imported
by the main test process:

    .venv-nt/bin/python tests/nt_reference.py IN.npz OUT.npz

IN.npz: n_cases, and for each case k: X_k (n, C, H, W), Z_k (m, C, H, W) float64,
depth_k, gap_k, fix_k (ints).  OUT.npz: K_k (n, m) float64 for each case.

The network (parameterization 'ntk', no bias) whose NTK equals Arora et al.'s CNTK
(see mnk.kernels.cntk_cpu for why the constants cancel):
    [Conv(k, (3,3), SAME, W_std=sqrt(2C)), Relu()] + [Conv(.., W_std=sqrt(2)), Relu()] * (depth-2)
    + GlobalAvgPool() + Dense(1, W_std=1)                       (gap)
    + Flatten() + Dense(1, W_std=sqrt(H W))                     (no gap: trace)
fix=True (first and last layer fixed): the first conv's output kernel enters the rest of
the network with a zero NTK, and the last layer's own contribution (its output NNGP) is
subtracted.
"""

import sys

import numpy as np


def cntk_nt(X: np.ndarray, Z: np.ndarray, depth: int, gap: bool, fix: bool) -> np.ndarray:
    import jax.numpy as jnp
    from neural_tangents import stax

    _, C, H, W = X.shape
    Xn = jnp.asarray(X.transpose(0, 2, 3, 1))  # NHWC
    Zn = jnp.asarray(Z.transpose(0, 2, 3, 1))
    width = 1  # irrelevant for the infinite-width kernel
    _, _, first_kernel = stax.Conv(width, (3, 3), padding="SAME", W_std=np.sqrt(2.0 * C), b_std=None)
    rest_layers = [stax.Relu()]
    for _ in range(depth - 2):
        rest_layers += [stax.Conv(width, (3, 3), padding="SAME", W_std=np.sqrt(2.0), b_std=None), stax.Relu()]
    if gap:
        rest_layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=1.0, b_std=None)]
    else:
        rest_layers += [stax.Flatten(), stax.Dense(1, W_std=np.sqrt(float(H * W)), b_std=None)]
    _, _, rest_kernel = stax.serial(*rest_layers)
    k1 = first_kernel(Xn, Zn)
    if fix:
        k1 = k1.replace(ntk=jnp.zeros_like(k1.ntk))
    kout = rest_kernel(k1)
    K = kout.ntk - kout.nngp if fix else kout.ntk
    return np.asarray(K, dtype=np.float64).reshape(len(X), len(Z))


def main(inp: str, out: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platform_name", "cpu")
    d = np.load(inp)
    res = {}
    for k in range(int(d["n_cases"])):
        res[f"K_{k}"] = cntk_nt(
            np.asarray(d[f"X_{k}"], dtype=np.float64),
            np.asarray(d[f"Z_{k}"], dtype=np.float64),
            int(d[f"depth_{k}"]),
            bool(int(d[f"gap_{k}"])),
            bool(int(d[f"fix_{k}"])),
        )
    np.savez(out, **res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
