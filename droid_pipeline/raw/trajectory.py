"""Read and validate trajectory.h5: one reader for every step, open once per step.

:class:`TrajectoryFile` turns every problem (missing key, wrong shape, NaN, row counts that
disagree, unusable control timestamps, a trajectory outside the plausibility envelope of
:mod:`droid_pipeline.raw.plausibility`) into an :class:`EpisodeError` for the step reading it,
naming the dataset and the offending steps, so a bad episode never yields a silently wrong track.
:func:`read_trajectory` is what the tracks step needs of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.config import PlausibilityConfig
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.files import check_input_file
from droid_pipeline.raw.plausibility import (
    ImplausibleTrajectory,
    check_control_rate,
    check_control_timestamps,
    check_joint_positions,
    check_motion,
    check_num_steps,
    timestamp_warning,
)

CARTESIAN_KEY = "observation/robot_state/cartesian_position"
GRIPPER_KEY = "observation/robot_state/gripper_position"
JOINT_KEY = "observation/robot_state/joint_positions"
NUM_ARM_JOINTS = 7   # Franka Panda
CAMERA_EXTRINSICS_GROUP = "observation/camera_extrinsics"
CAMERA_TYPE_GROUP = "observation/camera_type"
CONTROL_TIMESTAMP_GROUP = "observation/timestamp/control"
# Control timestamps are in milliseconds; step_start marks the start of each control step.
PREFERRED_CONTROL_TIMESTAMP = "step_start"
# Control steps within this fraction of the median step count towards the measured rate.
TYPICAL_STEP_SPREAD = 0.25
# observation/camera_type values: DROID's "hand_camera", "varied_camera" and "fixed_camera"; the
# last two are exterior cameras (the metadata's ext1 / ext2).
CAMERA_TYPE_WRIST, CAMERA_TYPE_EXTERIOR, CAMERA_TYPE_FIXED = 0, 1, 2
CAMERA_TYPE_NAMES = {CAMERA_TYPE_WRIST: "wrist", CAMERA_TYPE_EXTERIOR: "exterior", CAMERA_TYPE_FIXED: "fixed"}
# gripper_position outside [0, 1] by more than this is reported (the gripper model clips it).
GRIPPER_RANGE_SLACK = 1e-3
# Listing at most this many offending step indices in an error message.
MAX_LISTED_STEPS = 10


@dataclass(frozen=True)
class Trajectory:
    """The validated per-step robot and wrist-camera data of one episode (T steps)."""

    cartesian_positions: np.ndarray            # (T, 6) flange pose in the base frame, DROID pose
    gripper_positions: np.ndarray              # (T,) 0 open .. 1 closed
    wrist_extrinsics: np.ndarray | None        # (T, 6) wrist camera left lens, base frame
    wrist_gripper_offset: np.ndarray | None    # (T, 6) wrist camera left lens in the flange frame
    fps: float
    fps_source: str
    warnings: list[str] = field(default_factory=list)
    # serial -> observation/camera_type name (CAMERA_TYPE_NAMES), None where the h5 has none
    camera_types: dict[str, str | None] = field(default_factory=dict)
    # The plausibility figures (raw.plausibility.check_motion) and the control timestamps' counts
    # (check_control_timestamps; None without control timestamps), for quality.json.
    plausibility: dict[str, Any] = field(default_factory=dict)
    control_timestamps: dict[str, Any] | None = None

    @property
    def num_frames(self) -> int:
        return int(self.cartesian_positions.shape[0])


@contextlib.contextmanager
def open_trajectory(path: Path, episode_id: str, step: str) -> Iterator[TrajectoryFile]:
    """``path`` (an episode's trajectory.h5) open for reading; a file that cannot be opened fails ``step``."""
    import h5py

    try:
        check_input_file(path)
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise EpisodeError(episode_id, step, f"cannot open {path}: {exc}") from exc
    with h5:
        yield TrajectoryFile(h5, episode_id, step, path)


class TrajectoryFile:
    """Dataset access to an open trajectory.h5 that turns every problem into an EpisodeError of
    ``step`` naming the file and the key."""

    def __init__(self, h5: Any, episode_id: str, step: str, path: Path):
        self.h5, self.episode_id, self.step, self.name = h5, episode_id, step, path.name

    def fail(self, cause: str) -> EpisodeError:
        return EpisodeError(self.episode_id, self.step, f"{self.name}: {cause}")

    def has(self, key: str) -> bool:
        return key in self.h5

    def dataset(self, key: str) -> Any:
        import h5py

        item = self.h5.get(key)
        if not isinstance(item, h5py.Dataset):
            raise self.fail(f"missing dataset {key}")
        return item

    def numbers(self, key: str) -> np.ndarray:
        """The data of ``key`` as float64, of any shape."""
        try:
            return np.asarray(self.dataset(key)[()], dtype=np.float64)
        except (TypeError, ValueError, OSError) as exc:
            raise self.fail(f"cannot read {key} as numbers: {exc}") from exc

    def array(self, key: str, shape: tuple[int | None, ...], *, squeeze_last: bool = False) -> np.ndarray:
        """Float64 data of ``key`` with the given shape (None = any length), all finite."""
        data = self.numbers(key)
        if squeeze_last and data.ndim == 2 and data.shape[1] == 1:
            data = data[:, 0]
        if data.ndim != len(shape) or any(want is not None and got != want
                                          for got, want in zip(data.shape, shape)):
            wanted = "(" + ", ".join("T" if s is None else str(s) for s in shape) + ")"
            raise self.fail(f"{key} has shape {data.shape}, expected {wanted}")
        bad = ~np.isfinite(data).all(axis=tuple(range(1, data.ndim)))
        if bad.any():
            steps = np.flatnonzero(bad)
            listed = ", ".join(map(str, steps[:MAX_LISTED_STEPS])) + (" ..." if steps.size > MAX_LISTED_STEPS else "")
            raise self.fail(f"NaN or inf in {key} at {steps.size} of {data.shape[0]} steps: {listed}")
        return data

    def num_steps(self, limits: PlausibilityConfig | None = None) -> int:
        """T, the rows of ``cartesian_position``, from its shape alone (no data read); more than
        ``limits.max_steps`` fails."""
        steps = self.dataset(CARTESIAN_KEY)
        if steps.ndim < 1:
            raise self.fail(f"missing dataset {CARTESIAN_KEY}")
        if steps.shape[0] == 0:
            raise self.fail(f"{CARTESIAN_KEY} has no steps")
        if limits is not None:
            try:
                check_num_steps(int(steps.shape[0]), limits)
            except ImplausibleTrajectory as exc:
                raise self.fail(str(exc)) from exc
        return int(steps.shape[0])

    def control_timestamp_key(self) -> str | None:
        """The control timestamps the rate is measured from (step_start preferred), None without any."""
        import h5py

        group = self.h5.get(CONTROL_TIMESTAMP_GROUP)
        names = sorted(group.keys()) if isinstance(group, h5py.Group) else []
        if not names:
            return None
        name = PREFERRED_CONTROL_TIMESTAMP if PREFERRED_CONTROL_TIMESTAMP in names else names[0]
        return f"{CONTROL_TIMESTAMP_GROUP}/{name}"

    def control_rate(self, num_steps: int, limits: PlausibilityConfig) -> tuple[float, str]:
        """Control rate (Hz) and the timestamp key it was measured from (step_start preferred),
        within ``plausibility.min_control_hz .. max_control_hz`` (the unit that fits is named)."""
        key = self.control_timestamp_key()
        if key is None:
            raise self.fail(f"no control timestamps under {CONTROL_TIMESTAMP_GROUP} and config fps is null")
        try:
            rate = control_rate_hz(self.array(key, (num_steps,), squeeze_last=True))
        except ValueError as exc:
            raise self.fail(f"{key}: {exc}; set fps in the config") from exc
        try:
            check_control_rate(rate, key, limits)
        except ImplausibleTrajectory as exc:
            raise self.fail(str(exc)) from exc
        return rate, key

    def camera_serials(self) -> set[str]:
        """Serials of the cameras the file has data of: the names under ``observation/camera_type``
        and the ``<serial>_left`` / ``<serial>_right`` poses under ``observation/camera_extrinsics``."""
        return h5_camera_serials(self.h5)

    def check_cameras_named(self, serials: Mapping[str, str], recordings: Collection[str]) -> None:
        """Fail when the file has a camera that has an MP4 among ``recordings`` (file names) but
        that the metadata (``serials``, role -> serial) does not name: its tracks would be silently
        left out. (DROID's files also list stale cameras' poses, without an MP4: not a camera of
        the episode.)"""
        unnamed = sorted(serial for serial in self.camera_serials() - set(serials.values())
                         if {f"{serial}.mp4", f"{serial}-stereo.mp4"} & set(recordings))
        if unnamed:
            named = ", ".join(f"{role}={serial}" for role, serial in serials.items()) or "none"
            raise self.fail(f"camera(s) {', '.join(unnamed)} in {CAMERA_TYPE_GROUP} / {CAMERA_EXTRINSICS_GROUP} "
                            f"but not in the metadata's *_cam_serial fields ({named}), and discovery could not "
                            "tell which role each has")

    def check_camera_roles(self, serials: Mapping[str, str]) -> dict[str, str | None]:
        """Each camera's ``observation/camera_type`` (name, None where absent), checked against the
        metadata's roles (role -> serial): 0 is the wrist camera, 1 and 2 are exterior cameras."""
        types: dict[str, str | None] = {}
        for role, serial in serials.items():
            key = f"{CAMERA_TYPE_GROUP}/{serial}"
            if key not in self.h5:
                types[serial] = None
                continue
            try:
                values = distinct_values(self.dataset(key)[()])
            except (TypeError, ValueError, OSError) as exc:
                raise self.fail(f"cannot read {key}: {exc}") from exc
            if not values:
                types[serial] = None
                continue
            unknown = [v for v in values if v not in CAMERA_TYPE_NAMES]
            if unknown:
                raise self.fail(f"camera {serial} ({role}) has {key} = {unknown}, not a DROID camera type "
                                "(0 = wrist, 1 = exterior, 2 = fixed exterior)")
            if len(values) > 1:
                raise self.fail(f"camera {serial} ({role}) changes type within the episode: {key} holds "
                                f"{values}")
            value = int(values[0])
            expected = (CAMERA_TYPE_WRIST,) if role == "wrist" else (CAMERA_TYPE_EXTERIOR, CAMERA_TYPE_FIXED)
            if value not in expected:
                raise self.fail(f"metadata names camera {serial} as {role} but {key} says "
                                f"{[value]} (0 = wrist, 1 = exterior, 2 = fixed exterior)")
            types[serial] = CAMERA_TYPE_NAMES[value]
        return types


def read_trajectory(h5: TrajectoryFile, serials: Mapping[str, str], metadata: Mapping[str, Any],
                    fps: float | None, limits: PlausibilityConfig, recordings: Collection[str] = ()) -> Trajectory:
    """Flange poses, gripper, the wrist camera's poses and the control rate, validated and
    checked against the plausibility envelope ``limits`` (T first, from the shape alone).

    ``serials`` maps roles to serials (the metadata's); ``fps`` from the config wins, None
    measures it from the control timestamps; ``recordings`` are the episode's MP4 file names (a
    camera with one and data in the file must be among ``serials``).
    """
    num_frames = h5.num_steps(limits)
    h5.check_cameras_named(serials, recordings)
    cartesian = h5.array(CARTESIAN_KEY, (None, 6))
    gripper = h5.array(GRIPPER_KEY, (num_frames,), squeeze_last=True)
    try:
        plausibility = check_motion(cartesian, gripper, limits)
    except ImplausibleTrajectory as exc:
        raise h5.fail(str(exc)) from exc
    camera_types = h5.check_camera_roles(serials)
    wrist = serials.get("wrist")
    wrist_extrinsics = wrist_offset = None
    warnings: list[str] = []
    if wrist is not None:
        wrist_extrinsics = h5.array(f"{CAMERA_EXTRINSICS_GROUP}/{wrist}_left", (num_frames, 6))
        offset_key = f"{CAMERA_EXTRINSICS_GROUP}/{wrist}_left_gripper_offset"
        if h5.has(offset_key):
            wrist_offset = h5.array(offset_key, (None, 6))
            if wrist_offset.shape[0] not in (1, num_frames):
                raise h5.fail(f"{offset_key} has {wrist_offset.shape[0]} rows for {num_frames} steps")
            wrist_offset = np.broadcast_to(wrist_offset, (num_frames, 6))
        else:
            warnings.append(f"{offset_key} missing: wrist pose not cross-checked")
    if fps is not None:
        rate, rate_source = float(fps), "config"
    else:
        rate, rate_source = h5.control_rate(num_frames, limits)
    control_timestamps = _check_control_timestamps(h5, num_frames, limits, warnings)
    low, high = float(gripper.min()), float(gripper.max())
    if low < -GRIPPER_RANGE_SLACK or high > 1.0 + GRIPPER_RANGE_SLACK:
        warnings.append(f"gripper_position spans [{low:.4f}, {high:.4f}] beyond [0, 1]; clipped by the "
                        "gripper model")
    expected = metadata.get("trajectory_length")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
        kind = "text" if isinstance(expected, str) else f"a {type(expected).__name__}"
        raise EpisodeError(h5.episode_id, h5.step, f"metadata trajectory_length is {kind} ({expected!r}), not a "
                           f"whole number ({h5.name} has {num_frames} steps)")
    if expected is not None and expected != num_frames:
        raise EpisodeError(h5.episode_id, h5.step, f"metadata trajectory_length {expected} differs from "
                           f"{num_frames} steps in {h5.name}")
    return Trajectory(cartesian, gripper, wrist_extrinsics, wrist_offset, rate, rate_source, warnings,
                      camera_types, plausibility, control_timestamps)


def _check_control_timestamps(h5: TrajectoryFile, num_frames: int, limits: PlausibilityConfig,
                              warnings: list[str]) -> dict[str, Any] | None:
    """Repeated and backward control timestamps, counted (None without control timestamps);
    beyond ``limits.max_bad_timestamp_fraction`` the step fails. Stamps the rate does not need
    (fps from the config) that cannot be read are a warning."""
    key = h5.control_timestamp_key()
    if key is None:
        return None
    try:
        stamps = h5.array(key, (num_frames,), squeeze_last=True)
    except EpisodeError as exc:
        warnings.append(f"control timestamps not checked: {exc.cause}")
        return {"key": key, "unusable": exc.cause}
    try:
        report = check_control_timestamps(stamps, key, limits)
    except ImplausibleTrajectory as exc:
        raise h5.fail(str(exc)) from exc
    warning = timestamp_warning(report)
    if warning is not None:
        warnings.append(warning)
    return report


def read_joint_positions(h5: TrajectoryFile, num_frames: int, limits: PlausibilityConfig,
                         trajectory: Trajectory) -> np.ndarray | None:
    """(T, 7) arm joint angles (radians) of every step, validated like the rest: the arm's pose
    for the occlusion labels. Angles beyond the Panda's joint limits
    (``plausibility.joint_limit_tolerance_rad``) are an impossible arm: None, so no label is
    computed from it, with a warning in ``trajectory.warnings`` and the figures in
    ``trajectory.plausibility['joint_positions']``."""
    from droid_pipeline.robot.kinematics import arm_joint_names, robot_model

    if not h5.has(JOINT_KEY):
        raise h5.fail(f"missing dataset {JOINT_KEY} (the arm's joint angles, which pose the arm for the "
                      "occlusion labels; with occlusion.enabled: false they are not read)")
    joints = h5.array(JOINT_KEY, (num_frames, NUM_ARM_JOINTS))
    bounds = [robot_model().joint(name).limit for name in arm_joint_names()]
    lower = np.array([-np.inf if b is None else b.lower for b in bounds])
    upper = np.array([np.inf if b is None else b.upper for b in bounds])
    try:
        report = check_joint_positions(joints, lower, upper, limits)
    except ImplausibleTrajectory as exc:
        trajectory.plausibility["joint_positions"] = {"passed": False, "occlusion_labels": "withheld",
                                                      "cause": str(exc)}
        trajectory.warnings.append(f"{JOINT_KEY}: {exc}: occlusion labels withheld (unknown), not computed from "
                                   "an impossible arm")
        return None
    trajectory.plausibility["joint_positions"] = {"passed": True, **report}
    return joints


def h5_camera_serials(h5: Any) -> set[str]:
    """Serials of the cameras an open trajectory.h5 has data of (:meth:`TrajectoryFile.camera_serials`)."""
    import h5py

    serials: set[str] = set()
    types = h5.get(CAMERA_TYPE_GROUP)
    if isinstance(types, h5py.Group):
        serials.update(types.keys())
    poses = h5.get(CAMERA_EXTRINSICS_GROUP)
    if isinstance(poses, h5py.Group):
        serials.update(name.rsplit("_", 1)[0] for name in poses if name.endswith(("_left", "_right")))
    return serials


def distinct_values(data: Any) -> list[Any]:
    """The sorted distinct values of an array (as ``np.unique(...).tolist()``, without the masked
    arrays ``np.unique`` imports, 8 ms of a step command's start)."""
    flat = np.sort(np.asarray(data).ravel())   # NaN sort last; np.unique keeps one
    new = flat[1:] != flat[:-1]
    if flat.dtype.kind in "fc":
        new &= ~(np.isnan(flat[1:]) & np.isnan(flat[:-1]))
    return flat[np.concatenate(([True], new))].tolist() if flat.size else []


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D float array (NaN if any value is NaN), without the masked arrays
    ``np.median`` imports, 8 ms of a step command's start."""
    if np.isnan(values).any():
        return float("nan")
    low, high = (values.size - 1) // 2, values.size // 2
    part = np.partition(values, [low, high])
    return float(part[high]) if low == high else float((part[low] + part[high]) / 2)


def control_rate_hz(stamps_ms: np.ndarray) -> float:
    """Control rate (Hz) from per-step timestamps in milliseconds; ValueError when they give none.

    The period is the mean of the steps within 25 % of the median step: the median alone is
    quantized by the whole-millisecond stamps (67 ms reads as 14.93 Hz), the plain mean is thrown
    off by stalls.
    """
    steps = np.diff(np.asarray(stamps_ms, dtype=np.float64).ravel())
    if steps.size == 0:
        raise ValueError("cannot measure the control rate from one step")
    median = _median(steps)
    if not median > 0:
        raise ValueError(f"timestamps do not increase (median step {median} ms)")
    typical = steps[np.abs(steps - median) <= TYPICAL_STEP_SPREAD * median]
    return 1000.0 / float(typical.mean())
