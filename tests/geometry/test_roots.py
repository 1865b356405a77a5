"""Brent's root finder against SciPy's brentq (the oracle): the very same root, iterate for iterate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq as scipy_brentq

from droid_pipeline.geometry.roots import brentq
from droid_pipeline.robot.gripper import SEPARATION_TABLE_SIZE, GripperModel

FUNCTIONS = [
    (lambda x: x * x - 2.0, 0.0, 2.0),
    (lambda x: math.cos(x) - x, 0.0, 1.0),
    (lambda x: x ** 3 - 2.0 * x - 5.0, 2.0, 3.0),
    (lambda x: math.exp(x) - 1e-3, -10.0, 1.0),
    (lambda x: math.atan(x - 0.3), -5.0, 50.0),
    (lambda x: x ** 3 - 1e-3, -1.0, 3.0),           # flat near the root: bisection steps
    (lambda x: math.tanh(20.0 * (x - 0.123)), -1.0, 1.0),
]


@pytest.mark.parametrize("xtol", [2e-12, 1e-14, 1e-6])
@pytest.mark.parametrize("index", range(len(FUNCTIONS)))
def test_the_same_root_as_scipy(index, xtol):
    function, lower, upper = FUNCTIONS[index]
    calls: list[list[float]] = [[], []]

    def recorded(which):
        def call(x):
            calls[which].append(float(x))
            return function(x)
        return call

    assert brentq(recorded(0), lower, upper, xtol=xtol) == scipy_brentq(recorded(1), lower, upper, xtol=xtol)
    assert calls[0] == calls[1]


def test_an_end_that_is_a_root_and_no_sign_change():
    assert brentq(lambda x: x, 0.0, 1.0) == 0.0
    assert brentq(lambda x: x - 1.0, 0.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="same sign"):
        brentq(lambda x: x * x + 1.0, -1.0, 1.0)


def test_no_convergence_where_scipy_has_none():
    with pytest.raises(RuntimeError):
        scipy_brentq(lambda x: (x - 1.0) ** 5, 0.0, 3.0)
    with pytest.raises(RuntimeError, match="100 iterations"):
        brentq(lambda x: (x - 1.0) ** 5, 0.0, 3.0)


def test_the_gripper_closes_where_scipy_puts_it():
    """The pads-meeting angle of the packaged gripper, found as the model finds it, equals SciPy's."""
    model = GripperModel.load()
    angles, separation = model._separation_curve()
    search = np.linspace(angles[0], angles[0] + 2.0 * (model._finger_limit.upper - angles[0]), SEPARATION_TABLE_SIZE)
    values = model._separation(search)
    crossing = int(np.flatnonzero(values <= 0.0)[0])
    expected = scipy_brentq(lambda a: float(model._separation(np.array(a))), search[crossing - 1], search[crossing],
                            xtol=1e-14)
    assert angles[-1] == expected
