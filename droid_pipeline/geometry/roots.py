"""Brent's root finder in plain Python, step for step as SciPy's ``scipy.optimize.brentq`` (its C
implementation), so that the gripper model finds the same root without importing
``scipy.optimize`` (about 0.35 s, with ``scipy.linalg``, in every command that builds the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable

# SciPy's defaults: relative tolerance 4 machine epsilons, at most 100 iterations.
RELATIVE_TOLERANCE = 4 * 2.220446049250313e-16
MAX_ITERATIONS = 100


def brentq(function: Callable[[float], float], lower: float, upper: float, *, xtol: float = 2e-12,
           rtol: float = RELATIVE_TOLERANCE, max_iterations: int = MAX_ITERATIONS) -> float:
    """A root of ``function`` in [lower, upper], where it changes sign, to within
    ``xtol + rtol * |root|``: inverse quadratic interpolation, secant steps and bisection
    (Brent 1973), the same iterates as SciPy's brentq. Raises ValueError when the function has
    the same sign at both ends, RuntimeError when it does not converge in ``max_iterations``."""
    previous, current = float(lower), float(upper)
    f_previous, f_current = float(function(previous)), float(function(current))
    if f_previous == 0.0:
        return previous
    if f_current == 0.0:
        return current
    if math.copysign(1.0, f_previous) == math.copysign(1.0, f_current):
        raise ValueError(f"the function has the same sign at {lower} and {upper}")
    block, f_block, step_before, step = 0.0, 0.0, 0.0, 0.0
    for _ in range(max_iterations):
        if f_previous != 0.0 and f_current != 0.0 and \
                math.copysign(1.0, f_previous) != math.copysign(1.0, f_current):
            block, f_block = previous, f_previous
            step_before = step = current - previous
        if abs(f_block) < abs(f_current):
            previous, current, block = current, block, current
            f_previous, f_current, f_block = f_current, f_block, f_current
        delta = (xtol + rtol * abs(current)) / 2.0
        bisection = (block - current) / 2.0
        if f_current == 0.0 or abs(bisection) < delta:
            return current
        if abs(step_before) > delta and abs(f_current) < abs(f_previous):
            if previous == block:  # secant
                trial = -f_current * (current - previous) / (f_current - f_previous)
            else:  # inverse quadratic interpolation
                slope_previous = (f_previous - f_current) / (previous - current)
                slope_block = (f_block - f_current) / (block - current)
                trial = -f_current * (f_block * slope_block - f_previous * slope_previous) \
                    / (slope_block * slope_previous * (f_block - f_previous))
            if 2.0 * abs(trial) < min(abs(step_before), 3.0 * abs(bisection) - delta):
                step_before, step = step, trial
            else:
                step_before = step = bisection
        else:
            step_before = step = bisection
        previous, f_previous = current, f_current
        current += step if abs(step) > delta else (delta if bisection > 0.0 else -delta)
        f_current = float(function(current))
    raise RuntimeError(f"no root found in {max_iterations} iterations")
