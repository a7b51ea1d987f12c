"""Branch-free ``pi - arccos(c)`` for numba loops that LLVM can vectorise.

Uses the rational approximation of ``asin`` on ``[0, 0.5]`` from fdlibm (``e_asin.c`` /
``e_acos.c``, Sun Microsystems, freely redistributable), with the usual reductions

* ``|c| <= 1/2``: ``pi - acos(c) = pi/2 + asin(c)``
* ``c > 1/2``:    ``pi - acos(c) = pi - 2 asin(sqrt((1 - c) / 2))``
* ``c < -1/2``:   ``pi - acos(c) = 2 asin(sqrt((1 + c) / 2))``

The absolute error is a few ulp of pi (measured < 1e-15 against ``numpy.arccos``), far
below what the kernel tests need, and the function is made only of mul/add/div/sqrt and
selects, so the arc-cosine step vectorises (libm's ``acos`` does not).
"""

from __future__ import annotations

import math

from mnk.kernels._jit import kernel_jit

_PS0 = 1.66666666666666657415e-01
_PS1 = -3.25565818622400915405e-01
_PS2 = 2.01212532134862925881e-01
_PS3 = -4.00555345006794114027e-02
_PS4 = 7.91534994289814532176e-04
_PS5 = 3.47933107596021167570e-05
_QS1 = -2.40339491173441421878e00
_QS2 = 2.02094576023350569471e00
_QS3 = -6.88283971605453293030e-01
_QS4 = 7.70381505559019352791e-02

_PI = math.pi
_PIO2 = math.pi / 2.0


@kernel_jit(fastmath=False, error_model="numpy", inline="always")
def pi_minus_acos(c):
    """``pi - arccos(c)`` for ``c`` in [-1, 1] (caller clips)."""
    a = abs(c)
    small = a <= 0.5
    z = c * c if small else 0.5 * (1.0 - a)
    s = math.sqrt(z)
    p = z * (_PS0 + z * (_PS1 + z * (_PS2 + z * (_PS3 + z * (_PS4 + z * _PS5)))))
    q = 1.0 + z * (_QS1 + z * (_QS2 + z * (_QS3 + z * _QS4)))
    r = p / q
    t = 2.0 * (s + s * r)  # acos(|c|) for |c| > 1/2
    big = _PI - t if c > 0.0 else t
    return _PIO2 + (c + c * r) if small else big


# ---- float32: theta = arccos(1 - u) = sqrt(u) g(u), u = 1 - |c| in [0, 1] ----
# g is a degree-6 polynomial fitted (iteratively reweighted least squares towards minimax)
# to arccos(1 - u) / sqrt(u): |sqrt(u) g(u) - arccos(1 - u)| <= 9e-8 rad in exact
# arithmetic on [0, 1] and <= 3e-7 rad (about 2 ulp of pi/2) evaluated in float32
# (tests/test_cntk_cpu_float32.py checks both against numpy.arccos).  Only mul/add and
# one sqrt: the loop that uses it vectorises.
ACOS1M_COEFFS = (  # highest power first (numpy.polyval order)
    0.0026113142222421444,
    -0.003665696267677543,
    0.006920321631661165,
    0.005946104450427372,
    0.02696270868128345,
    0.11780664822270012,
    1.4142148373718177,
)
ACOS1M_ERROR_BOUND = 9e-8  # rad, the polynomial itself
ACOS1M_ERROR_BOUND_F32 = 3e-7  # rad, evaluated in float32

# sin(theta) = sqrt(1 - c^2) = sqrt(u) sqrt(2 - u): the second factor as a degree-6
# polynomial on [0, 1] (same fit), relative error <= 1.5e-7 in exact arithmetic, so the
# step needs one sqrt per entry.
SQRT2M_COEFFS = (  # highest power first
    -0.0026671397575492944,
    0.0030343802005401432,
    -0.006935841491330047,
    -0.009655320943146277,
    -0.04445396556668218,
    -0.3535353213115789,
    1.4142133553022878,
)
SQRT2M_REL_ERROR_BOUND = 1.5e-7


def polyval_f32(coeffs, u):
    """NumPy float32 Horner evaluation, as the kernel does it (for tests)."""
    import numpy as np  # noqa: PLC0415

    u = np.asarray(u, dtype=np.float32)
    p = np.full_like(u, np.float32(coeffs[0]))
    for coef in coeffs[1:]:
        p = p * u + np.float32(coef)
    return p
