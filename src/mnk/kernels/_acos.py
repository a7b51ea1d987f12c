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

from numba import njit

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


@njit(cache=True, fastmath=False, error_model="numpy", inline="always")
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
