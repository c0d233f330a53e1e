"""ARX's numerical helpers, ported line by line so that the population models give ARX's own figures.

* :func:`digamma` and :func:`trigamma` port ``org/deidentifier/arx/risk/Gamma.java`` (arx-deidentifier/arx, commit
  aacd487, ARX 3.9.2) *including its quirk*: after reducing the argument to at least 8, ``trigamma`` applies the
  asymptotic tail only when the argument is at least 12, so for most arguments it returns the partial sum alone.
  ``trigamma`` feeds only the Jacobian of Pitman's Newton-Raphson step, so the root is the same, but the path to
  it (and so the last digits ARX reports) follows ARX only if the Jacobian does too.
* :func:`solve` ports ``de.linearbits.newtonraphson.NewtonRaphson2D._solve`` (prasser/newtonraphson, the
  ``newtonraphson-0.0.1.jar`` ARX ships) configured as ``ARXSolverConfiguration.create()``: accuracy 1e-6,
  1,000 iterations per try, the 16 deterministic start values (0, 0.33, 0.66, 0.99)^2 tried after the given one,
  and the library's rule that the last prepared start value gets one step only. ARX's time limits (100 ms a try,
  1 s in all) are left out: they make a result depend on the machine's speed; only the iteration limits apply.

Arithmetic is done on ``numpy.float64`` under ``numpy.errstate(all="ignore")`` by the callers, so that division
by zero, ``pow`` of a negative base and ``log`` of a negative number give inf / NaN as they do in Java instead of
raising.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

_B10 = 5.0 / 66.0
_B2 = 1.0 / 6.0
_B4 = -1.0 / 30.0
_B6 = 1.0 / 42.0
_B8 = -1.0 / 30.0
_DIGAMMA_1 = -0.57721566490153286060651209008240243104215933593992
_LARGE_DIGAMMA = 12.0
_LARGE_TRIGAMMA = 8.0
_S3 = 1.0 / 12.0
_S4 = 1.0 / 120.0
_S5 = 1.0 / 252.0
_S6 = 1.0 / 240.0
_S7 = 1.0 / 132.0
_SMALL_DIGAMMA = 1e-6
_SMALL_TRIGAMMA = 1e-4
_TETRAGAMMA_1 = -2.0 * 1.202056903159594285399738161511449990764986292
_TRIGAMMA_1 = (math.pi * math.pi) / 6.0

F64 = np.float64
NAN = F64("nan")


def _guarded(func: Callable[[np.float64], np.float64]) -> Callable[[float], np.float64]:
    """The guards ARX's ``digamma`` and ``trigamma`` both start with: the argument taken as a double, NaN for an
    infinite or NaN argument, -inf at 0 (checked in this order); ``func`` for every other argument."""

    @functools.wraps(func)
    def guarded(x: float) -> np.float64:
        x = F64(x)
        if np.isinf(x) or np.isnan(x):
            return NAN
        if x == 0.0:
            return F64("-inf")
        return func(x)

    return guarded


@_guarded
def digamma(x: np.float64) -> np.float64:
    """ARX ``Gamma.digamma``."""
    if x < 0.0:
        return digamma(1.0 - x) + (math.pi / np.tan(-math.pi * x))
    if x <= _SMALL_DIGAMMA:
        return (_DIGAMMA_1 - (1.0 / x)) + (_TRIGAMMA_1 * x)
    result = F64(0.0)
    while x < _LARGE_DIGAMMA:
        result -= 1.0 / x
        x += 1
    if x >= _LARGE_DIGAMMA:
        r = 1.0 / x
        result += np.log(x) - (0.5 * r)
        r *= r
        result -= r * (_S3 - (r * (_S4 - (r * (_S5 - (r * (_S6 - (r * _S7))))))))
    return result


@_guarded
def trigamma(x: np.float64) -> np.float64:
    """ARX ``Gamma.trigamma``, with its tail applied only from 12 on (see the module's docstring)."""
    if x < 0.0:
        r = math.pi / np.sin(-math.pi * x)
        return -trigamma(1.0 - x) + (r * r)
    if x <= _SMALL_TRIGAMMA:
        return (1.0 / (x * x)) + _TRIGAMMA_1 + (_TETRAGAMMA_1 * x)
    result = F64(0.0)
    while x < _LARGE_TRIGAMMA:
        result += 1.0 / (x * x)
        x += 1
    if x >= _LARGE_DIGAMMA:  # sic: ARX tests against LARGE_DIGAMMA here
        r = 1.0 / (x * x)
        result += (0.5 * r) + ((1.0 + (r * (_B2 + (r * (_B4 + (r * (_B6 + (r * (_B8 + (r * _B10)))))))))) / x)
    return result


def log_gamma(x: float) -> float:
    """commons-math3 ``Gamma.logGamma``: NaN for x <= 0."""
    if math.isnan(x) or x <= 0.0:
        return math.nan
    try:
        return math.lgamma(x)
    except (OverflowError, ValueError):
        return math.inf


def gamma(x: float) -> float:
    """commons-math3 ``Gamma.gamma``: NaN at the poles, inf past the double range."""
    if math.isnan(x) or (x == math.floor(x) and x <= 0):
        return math.nan
    try:
        return math.gamma(x)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


# ARXSolverConfiguration.getDefaultStartValues(): for (d1 = 0; d1 < 1; d1 += 0.33) for (d2 ...): 16 pairs, built
# with the same floating-point additions.
def _start_values() -> list[tuple[float, float]]:
    values = []
    d1 = 0.0
    while d1 < 1.0:
        d2 = 0.0
        while d2 < 1.0:
            values.append((d1, d2))
            d2 += 0.33
        d1 += 0.33
    return values


START_VALUES = _start_values()
ACCURACY = 1e-6
ITERATIONS_PER_TRY = 1000
ITERATIONS_TOTAL = (len(START_VALUES) + 1) * ITERATIONS_PER_TRY  # NewtonRaphson2D.configure

Vec = tuple[float, float]
Mat = tuple[float, float, float, float]  # x1, x2, y1, y2


def solve(
    *,
    master: Callable[[np.float64, np.float64], tuple[Vec, Mat]] | None = None,
    objective: Callable[[np.float64, np.float64], Vec] | None = None,
    derivatives: Callable[[np.float64, np.float64], Mat] | None = None,
    start: Vec = (1.0, 1.0),
    constraint: Callable[[np.float64, np.float64], bool] | None = None,
) -> tuple[np.float64, np.float64]:
    """``NewtonRaphson2D._solve`` with ARX's solver configuration: the root, or (NaN, NaN) if none was found.

    Give either ``master`` (object function and Jacobian at once) or ``objective`` and ``derivatives``."""
    with np.errstate(all="ignore"):
        sx = sy = None
        total_iterations = 0
        offset = 0
        while total_iterations <= ITERATIONS_TOTAL:
            iterations = 0
            if sx is None:
                sx, sy = F64(start[0]), F64(start[1])
            else:
                sx, sy = F64(START_VALUES[offset][0]), F64(START_VALUES[offset][1])
                offset += 1
            while True:
                total_iterations += 1
                if master is None:
                    assert objective is not None and derivatives is not None
                    ox, oy = objective(sx, sy)
                    if abs(ox) <= ACCURACY and abs(oy) <= ACCURACY:
                        return sx, sy
                    x1, x2, y1, y2 = derivatives(sx, sy)
                else:
                    (ox, oy), (x1, x2, y1, y2) = master(sx, sy)
                    if abs(ox) <= ACCURACY and abs(oy) <= ACCURACY:
                        return sx, sy
                # SquareMatrix2D.inverse, Vector2D.times, Vector2D.minus
                scalar = F64(1.0) / (F64(x1) * y2 - F64(x2) * y1)
                ix1, ix2, iy1, iy2 = y2 * scalar, -x2 * scalar, -y1 * scalar, x1 * scalar
                dx = ix1 * ox + ix2 * oy
                dy = iy1 * ox + iy2 * oy
                sx = F64(sx - dx)
                sy = F64(sy - dy)
                if offset == len(START_VALUES):
                    return NAN, NAN
                if constraint is not None and not constraint(sx, sy):
                    break
                if np.isnan(sx) or np.isnan(sy):
                    break
                if iterations >= ITERATIONS_PER_TRY:
                    break
                iterations += 1
        return NAN, NAN


def hypergeometric_p1(population: int, successes: int, draws: int) -> float:
    """P(X = 1) for X ~ Hypergeometric(population N, successes K, draws n), as commons-math3's
    ``HypergeometricDistribution(N, K, n).probability(1)``: 0 outside the support."""
    lower = max(0, successes - (population - draws))
    upper = min(successes, draws)
    if 1 < lower or 1 > upper:
        return 0.0

    # K * C(N-K, n-1) / C(N, n) = K * n/N * prod_{i=1}^{K-1} (N-n-i+1)/(N-i): exact up to rounding, no lgamma of
    # large arguments (whose absolute error would be ~1e-9 here).
    i = np.arange(1, successes, dtype=np.float64)
    with np.errstate(all="ignore"):
        rest = float(np.prod((population - draws - i + 1.0) / (population - i))) if successes > 1 else 1.0
    return successes * (draws / population) * rest
