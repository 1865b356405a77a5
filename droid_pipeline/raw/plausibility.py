"""Plausibility gates: the envelope a DROID trajectory must lie in before anything is computed from it.

A trajectory outside it is not a robot's motion but damaged or mis-scaled data, and computing
from it costs without bound: positions in millimetres make the contact path 1000 times longer and
the 1 mm normalized flow 1000 times larger. Each gate reads arrays of T rows only and raises
:class:`ImplausibleTrajectory` naming the measured value, the limit and its config key
(``plausibility.*``, docs/reliability.md), and the unit mistake where the numbers fit one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from droid_pipeline.core.config import PlausibilityConfig
from droid_pipeline.geometry.rotations import euler_xyz_to_quat, quat_angle, quat_multiply

CARTESIAN = "cartesian_position"
GRIPPER = "gripper_position"
# DROID's control rate, for the durations quoted in messages.
NOMINAL_HZ = 15.0
# DROID writes rotations as scipy's xyz Euler angles, within [-pi, pi]; larger ones in a
# trajectory whose rotation moves too fast are degrees.
EULER_LIMIT_RAD = np.pi + 1e-6
DEGREES_LIMIT = 360.0
# Scales gripper_position has been seen on instead of 0..1: (largest value above which the scale
# is named, top of the scale, name).
GRIPPER_SCALES = ((10.0, 100.0, "a 0..100 (percent) scale"), (100.0, 255.0, "Robotiq's raw 0..255 register scale"))
MAX_LISTED_STEPS = 10
# Multiplying a unit quaternion by this gives its inverse (the conjugate).
INVERSE = np.array([-1.0, -1.0, -1.0, 1.0])


class ImplausibleTrajectory(ValueError):
    """A trajectory lies outside the plausibility envelope; the message says where and why."""


def check_num_steps(num_steps: int, limits: PlausibilityConfig) -> None:
    """T against ``plausibility.max_steps``, from the dataset's shape alone (nothing read)."""
    if num_steps > limits.max_steps:
        raise ImplausibleTrajectory(
            f"{CARTESIAN} has {num_steps} steps ({num_steps / NOMINAL_HZ / 60:.1f} min at 15 Hz), more than "
            f"plausibility.max_steps = {limits.max_steps}")


def check_motion(cartesian: np.ndarray, gripper: np.ndarray, limits: PlausibilityConfig) -> dict[str, Any]:
    """Reach, step-to-step translation and rotation of the flange poses (T, 6) and the range of
    gripper_position (T,); returns the measured figures for quality.json."""
    reach = np.linalg.norm(cartesian[:, :3], axis=1)
    worst = int(np.argmax(reach))
    if reach[worst] > limits.max_reach_m:
        hint = ""
        if reach[worst] / 1000.0 <= limits.max_reach_m:
            hint = (f"; {CARTESIAN}[:, :3] looks like millimetres, not metres (divided by 1000 it reaches "
                    f"{reach[worst] / 1000.0:.3f} m)")
        raise ImplausibleTrajectory(
            f"flange position {reach[worst]:.4g} m from the robot base at step {worst}, beyond "
            f"plausibility.max_reach_m = {limits.max_reach_m:g} m{hint}")
    moves = np.linalg.norm(np.diff(cartesian[:, :3], axis=0), axis=1)
    rotations = euler_xyz_to_quat(cartesian[:, 3:])
    turns = quat_angle(quat_multiply(rotations[:-1] * INVERSE, rotations[1:]))
    _check_steps(moves, limits.max_step_m, "plausibility.max_step_m", "m", "moves", "")
    largest_angle = float(np.abs(cartesian[:, 3:]).max())
    degrees = (f"; {CARTESIAN}[:, 3:] reaches {largest_angle:.4g}, beyond pi: the angles look like degrees, "
               "not radians") if EULER_LIMIT_RAD < largest_angle <= DEGREES_LIMIT else ""
    _check_steps(turns, limits.max_step_rotation_rad, "plausibility.max_step_rotation_rad", "rad", "turns",
                 degrees)
    low, high = float(gripper.min()), float(gripper.max())
    tolerance = limits.gripper_tolerance
    if low < -tolerance or high > 1.0 + tolerance:
        scale = next((name for above, top, name in GRIPPER_SCALES
                      if low >= -tolerance and above < high <= top * (1 + tolerance)), None)
        hint = f"; the values look like {scale}, not 0..1" if scale else ""
        raise ImplausibleTrajectory(
            f"{GRIPPER} spans [{low:.4g}, {high:.4g}], beyond [0, 1] by more than "
            f"plausibility.gripper_tolerance = {tolerance:g}{hint}")
    return {"max_reach_m": float(reach[worst]), "max_step_m": float(moves.max(initial=0.0)),
            "max_step_rotation_rad": float(turns.max(initial=0.0)), "gripper_range": [low, high],
            "limits": {"max_steps": limits.max_steps, "max_reach_m": limits.max_reach_m,
                       "max_step_m": limits.max_step_m, "max_step_rotation_rad": limits.max_step_rotation_rad,
                       "gripper_tolerance": tolerance}}


def _check_steps(values: np.ndarray, limit: float, key: str, unit: str, verb: str, hint: str) -> None:
    """Fail on the first step-to-step change beyond ``limit``, naming how many there are."""
    over = np.flatnonzero(values > limit)
    if over.size:
        first = int(over[0])
        raise ImplausibleTrajectory(
            f"the flange {verb} {values[first]:.4g} {unit} between steps {first} and {first + 1} "
            f"({over.size} of {values.size} steps beyond), more than {key} = {limit:g} {unit} per step{hint}")


def check_control_timestamps(stamps: np.ndarray, key: str, limits: PlausibilityConfig) -> dict[str, Any]:
    """Steps whose control timestamp repeats or goes back, counted; more than
    ``plausibility.max_bad_timestamp_fraction`` of the steps raises. Returns the counts."""
    steps = np.diff(np.asarray(stamps, dtype=np.float64).ravel())
    repeated, backwards = np.flatnonzero(steps == 0) + 1, np.flatnonzero(steps < 0) + 1
    bad = np.sort(np.concatenate([repeated, backwards]))
    fraction = bad.size / steps.size if steps.size else 0.0
    report = {"key": key, "intervals": int(steps.size), "repeated": int(repeated.size),
              "backwards": int(backwards.size), "bad_fraction": fraction,
              "max_bad_fraction": limits.max_bad_timestamp_fraction,
              "bad_steps": bad[:MAX_LISTED_STEPS].tolist()}
    if fraction > limits.max_bad_timestamp_fraction:
        listed = ", ".join(map(str, bad[:MAX_LISTED_STEPS])) + (" ..." if bad.size > MAX_LISTED_STEPS else "")
        raise ImplausibleTrajectory(
            f"{key}: {bad.size} of {steps.size} control steps repeat or go back in time ({repeated.size} "
            f"repeated, {backwards.size} backwards, at steps {listed}): {fraction:.2%} of the steps, more than "
            f"plausibility.max_bad_timestamp_fraction = {limits.max_bad_timestamp_fraction:g}")
    return report


def timestamp_warning(report: dict[str, Any]) -> str | None:
    """The quality.json warning for repeated or backward control timestamps, None when there are none."""
    if not report["repeated"] and not report["backwards"]:
        return None
    return (f"{report['key']}: {report['repeated']} repeated and {report['backwards']} backward control "
            f"timestamp(s) (steps {', '.join(map(str, report['bad_steps']))}), within "
            f"plausibility.max_bad_timestamp_fraction = {report['max_bad_fraction']:g}")


# Units control timestamps have been seen in instead of milliseconds: (name, milliseconds per unit).
TIMESTAMP_UNITS = (("seconds", 1e3), ("microseconds", 1e-3), ("nanoseconds", 1e-6))


def check_control_rate(rate_hz: float, key: str, limits: PlausibilityConfig) -> None:
    """The control rate measured from ``key`` (read as milliseconds) within
    ``plausibility.min_control_hz`` .. ``max_control_hz``; beyond, the unit that fits is named."""
    if limits.min_control_hz <= rate_hz <= limits.max_control_hz:
        return
    fitting = next((f"; the timestamps look like {name}, not milliseconds (read so, the rate is "
                    f"{rate_hz / per_unit:.4g} Hz)" for name, per_unit in TIMESTAMP_UNITS
                    if limits.min_control_hz <= rate_hz / per_unit <= limits.max_control_hz), "")
    raise ImplausibleTrajectory(
        f"{key} gives a control rate of {rate_hz:.4g} Hz (read as milliseconds), outside "
        f"plausibility.min_control_hz .. max_control_hz = {limits.min_control_hz:g} .. "
        f"{limits.max_control_hz:g} Hz around DROID's {NOMINAL_HZ:g} Hz{fitting}")


def check_joint_positions(joints: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                          limits: PlausibilityConfig) -> dict[str, Any]:
    """Arm joint angles (T, J) within the joint limits ``lower`` .. ``upper`` (J,) by
    ``plausibility.joint_limit_tolerance_rad``; raises naming the first joint beyond (and degrees
    when the angles fit them). Returns the largest excess for quality.json."""
    tolerance = limits.joint_limit_tolerance_rad
    excess = np.maximum(lower - tolerance - joints, joints - upper - tolerance)
    worst = float(excess.max(initial=-np.inf))
    report = {"max_excess_rad": max(worst + tolerance, 0.0), "tolerance_rad": tolerance}
    if worst <= 0:
        return report
    step, joint = np.unravel_index(int(np.argmax(excess)), excess.shape)
    over = int(np.count_nonzero((excess > 0).any(axis=1)))
    radians = np.radians(joints)
    degrees = ("; the angles look like degrees, not radians (in radians they lie within the limits)"
               if float(np.abs(joints).max()) > 2 * np.pi
               and bool(((radians >= lower - tolerance) & (radians <= upper + tolerance)).all()) else "")
    raise ImplausibleTrajectory(
        f"joint {joint + 1} is {joints[step, joint]:.4g} rad at step {step}, beyond the Panda's limits "
        f"[{lower[joint]:.4g}, {upper[joint]:.4g}] by more than plausibility.joint_limit_tolerance_rad = "
        f"{tolerance:g} ({over} of {len(joints)} steps beyond){degrees}")
