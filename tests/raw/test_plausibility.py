"""The plausibility envelope: synthetic episodes and the Panda's own reach lie inside it, damaged
and mis-scaled trajectories fail with the measured value, the limit, the key and the unit mistake."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yourdfpy
from scipy.spatial.transform import Rotation
from synthetic_fixtures import small_dataset

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.raw.trajectory import CARTESIAN_KEY, GRIPPER_KEY, open_trajectory, read_trajectory

STAMPS_KEY = "observation/timestamp/control/step_start"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def limits():
    return load_config().plausibility


def trajectory_copy(dataset, tmp_path: Path, index: int = 0) -> Path:
    episode = dataset.episodes[index]
    path = tmp_path / "trajectory.h5"
    shutil.copy(dataset.droid_root / episode.relative_path / "trajectory.h5", path)
    return path


def replace(path: Path, key: str, change) -> None:
    with h5py.File(path, "r+") as h5:
        value = change(h5[key][()])
        del h5[key]
        h5[key] = value


def read(path: Path, limits, serials=None):
    with open_trajectory(path, "LAB+0badc0de+2023-01-01-1h-2m-3s", "tracks") as h5:
        return read_trajectory(h5, serials or {}, {}, None, limits)


def failure(path: Path, limits) -> str:
    with pytest.raises(EpisodeError) as info:
        read(path, limits)
    assert info.value.step == "tracks"
    return info.value.cause


def test_synthetic_episodes_lie_well_inside_the_envelope(dataset, limits):
    for episode in dataset.episodes:
        path = dataset.droid_root / episode.relative_path / "trajectory.h5"
        trajectory = read(path, limits, episode.serials)
        figures = trajectory.plausibility
        assert figures["max_reach_m"] < 0.8 * limits.max_reach_m
        assert figures["max_step_m"] < 0.25 * limits.max_step_m
        # The synthetic wrist turns fast (up to about 2 rad/s), still at most half the limit.
        assert figures["max_step_rotation_rad"] < 0.5 * limits.max_step_rotation_rad
        assert 0.0 <= figures["gripper_range"][0] <= figures["gripper_range"][1] <= 1.0
        assert figures["limits"]["max_reach_m"] == limits.max_reach_m
        stamps = trajectory.control_timestamps
        assert stamps["key"] == STAMPS_KEY and stamps["repeated"] == stamps["backwards"] == 0
        assert not any("timestamp" in w for w in trajectory.warnings)


def test_the_panda_flange_never_reaches_beyond_max_reach(reference_data, limits):
    # Independent reference: yourdfpy's forward kinematics of the URDF over its joint ranges.
    urdf = yourdfpy.URDF.load(str(reference_data / "panda_robotiq.urdf"), load_meshes=False,
                              load_collision_meshes=False)
    arm = [f"panda_joint{i}" for i in range(1, 8)]
    low = np.array([urdf.joint_map[j].limit.lower for j in arm])
    high = np.array([urdf.joint_map[j].limit.upper for j in arm])
    rng = np.random.default_rng(0)
    reach = []
    for q in rng.uniform(low, high, (3000, 7)):
        urdf.update_cfg(dict(zip(arm, q)))
        reach.append(np.linalg.norm(urdf.get_transform("panda_link8", "panda_link0")[:3, 3]))
    # Straight up: the longest the arm gets.
    urdf.update_cfg({**dict.fromkeys(arm, 0.0), "panda_joint4": high[3]})
    reach.append(np.linalg.norm(urdf.get_transform("panda_link8", "panda_link0")[:3, 3]))
    assert 1.1 < max(reach) < limits.max_reach_m


def test_positions_in_millimetres_are_named(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, CARTESIAN_KEY, lambda pose: np.concatenate([pose[:, :3] * 1000.0, pose[:, 3:]], axis=1))
    cause = failure(path, limits)
    assert "m from the robot base at step" in cause and "plausibility.max_reach_m = 1.2 m" in cause
    assert "looks like millimetres, not metres" in cause


def test_a_far_position_that_is_no_unit_mistake_is_not_called_one(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, CARTESIAN_KEY, lambda pose: pose + [[0.0, 0.0, 5000.0, 0.0, 0.0, 0.0]])
    cause = failure(path, limits)
    assert "plausibility.max_reach_m" in cause and "millimetres" not in cause


def test_a_jump_between_steps_names_the_steps_and_the_limit(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)

    def jump(pose):
        pose = pose.copy()
        pose[20:, 1] += 0.3
        return pose
    replace(path, CARTESIAN_KEY, jump)
    cause = failure(path, limits)
    assert "between steps 19 and 20" in cause and "1 of 39 steps beyond" in cause
    assert "plausibility.max_step_m = 0.2 m per step" in cause


def test_rotations_in_degrees_are_named(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, CARTESIAN_KEY, lambda pose: np.concatenate([pose[:, :3], np.degrees(pose[:, 3:])], axis=1))
    cause = failure(path, limits)
    assert "plausibility.max_step_rotation_rad" in cause and "look like degrees" in cause


def test_rotation_rate_is_the_angle_between_consecutive_orientations(dataset, tmp_path, limits):
    # A turn of 0.5 rad about an axis that is no Euler axis, checked against SciPy's own angle.
    path = trajectory_copy(dataset, tmp_path)
    with h5py.File(path, "r") as h5:
        pose = h5[CARTESIAN_KEY][()]
    turn = Rotation.from_rotvec([0.3, 0.4, 0.0])  # 0.5 rad
    pose[10:, 3:] = (turn * Rotation.from_euler("xyz", pose[10:, 3:])).as_euler("xyz")
    replace(path, CARTESIAN_KEY, lambda _: pose)
    cause = failure(path, limits)
    rotations = Rotation.from_euler("xyz", pose[:, 3:])
    expected = (rotations[9].inv() * rotations[10]).magnitude()
    assert f"turns {expected:.4g} rad between steps 9 and 10" in cause


@pytest.mark.parametrize("scale, name", [(255.0, "Robotiq's raw 0..255 register scale"),
                                         (100.0, "a 0..100 (percent) scale")])
def test_gripper_on_another_scale_is_named(dataset, tmp_path, limits, scale, name):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, GRIPPER_KEY, lambda g: g * scale)
    cause = failure(path, limits)
    assert "gripper_position spans [0" in cause and "plausibility.gripper_tolerance = 0.05" in cause
    assert f"the values look like {name}, not 0..1" in cause


def test_gripper_slightly_beyond_range_is_clipped_with_a_warning_and_far_beyond_fails(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, GRIPPER_KEY, lambda g: np.where(np.arange(g.size) == 5, 1.02, g))
    assert any("clipped by the gripper model" in w for w in read(path, limits).warnings)
    replace(path, GRIPPER_KEY, lambda g: np.where(np.arange(g.size) == 5, 1.3, g))
    cause = failure(path, limits)
    assert "beyond [0, 1] by more than plausibility.gripper_tolerance" in cause and "look like" not in cause


def test_too_many_steps_fail_before_any_row_is_read(tmp_path, limits):
    # 10^8 steps would take 4.8 GB to read; the gate reads the shape only.
    path = tmp_path / "trajectory.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset(CARTESIAN_KEY, shape=(10 ** 8, 6), dtype=np.float64, chunks=(4096, 6))
        h5.create_dataset(GRIPPER_KEY, shape=(10 ** 8,), dtype=np.float64, chunks=(4096,))
    assert path.stat().st_size < 1_000_000
    cause = failure(path, limits)
    assert "has 100000000 steps (111111.1 min at 15 Hz), more than plausibility.max_steps = 10000" in cause


def test_swapped_and_repeated_timestamps_are_counted_and_too_many_fail(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)

    def swap_and_repeat(stamps):
        stamps = stamps.copy()
        stamps[[10, 11]] = stamps[[11, 10]]
        stamps[30] = stamps[29]
        return stamps
    replace(path, STAMPS_KEY, swap_and_repeat)
    # 2 bad steps of 39 are 5 %: within 6 %, beyond the default 1 %.
    strict = load_config([], ["plausibility.max_bad_timestamp_fraction=0.01"]).plausibility
    lenient = load_config([], ["plausibility.max_bad_timestamp_fraction=0.06"]).plausibility
    trajectory = read(path, lenient)
    counts = trajectory.control_timestamps
    assert (counts["repeated"], counts["backwards"], counts["intervals"]) == (1, 1, 39)
    assert counts["bad_steps"] == [11, 30] and counts["bad_fraction"] == pytest.approx(2 / 39)
    assert any("1 repeated and 1 backward control timestamp(s) (steps 11, 30)" in w for w in trajectory.warnings)
    assert strict.max_bad_timestamp_fraction == limits.max_bad_timestamp_fraction
    cause = failure(path, strict)
    assert "2 of 39 control steps repeat or go back in time (1 repeated, 1 backwards, at steps 11, 30)" in cause
    assert "plausibility.max_bad_timestamp_fraction = 0.01" in cause


# ---------------------------------------------------------------- control rate and joint positions

@pytest.mark.parametrize("per_millisecond, unit", [(1e-3, "seconds"), (1e3, "microseconds"), (1e6, "nanoseconds")])
def test_control_timestamps_in_another_unit_fail_naming_it(dataset, tmp_path, limits, per_millisecond, unit):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, STAMPS_KEY, lambda stamps: stamps * per_millisecond)
    with pytest.raises(EpisodeError, match=rf"control rate of .* Hz \(read as milliseconds\), outside "
                       rf"plausibility.min_control_hz .. max_control_hz = 5 .. 45 Hz .*look like {unit}, not "
                       rf"milliseconds \(read so, the rate is 1[45]\.\d+ Hz\)"):
        read(path, limits)


def test_a_rate_no_unit_explains_fails_without_a_guess(dataset, tmp_path, limits):
    path = trajectory_copy(dataset, tmp_path)
    replace(path, STAMPS_KEY, lambda stamps: stamps[0] + (stamps - stamps[0]) * 10.0)  # 1.5 Hz
    with pytest.raises(EpisodeError, match=r"control rate of 1.[45]\d* Hz .* around DROID's 15 Hz$"):
        read(path, limits)


@pytest.fixture(scope="module")
def joint_limits(reference_data):
    # Independent reference: the URDF's limits as yourdfpy reads them.
    urdf = yourdfpy.URDF.load(str(reference_data / "panda_robotiq.urdf"), load_meshes=False,
                              load_collision_meshes=False)
    arm = [f"panda_joint{i}" for i in range(1, 8)]
    return (np.array([urdf.joint_map[j].limit.lower for j in arm]),
            np.array([urdf.joint_map[j].limit.upper for j in arm]))


def joints_of(dataset, tmp_path, limits, change=None):
    from droid_pipeline.raw.trajectory import JOINT_KEY, read_joint_positions

    path = trajectory_copy(dataset, tmp_path)
    if change is not None:
        replace(path, JOINT_KEY, change)
    with open_trajectory(path, "EP", "tracks") as h5:
        trajectory = read_trajectory(h5, {}, {}, None, limits)
        return read_joint_positions(h5, trajectory.num_frames, limits, trajectory), trajectory


def test_synthetic_joints_lie_within_the_urdf_limits_and_pass(dataset, tmp_path, limits, joint_limits):
    joints, trajectory = joints_of(dataset, tmp_path, limits)
    lower, upper = joint_limits
    assert ((joints >= lower) & (joints <= upper)).all()
    assert trajectory.plausibility["joint_positions"]["passed"] and not trajectory.warnings


def test_joints_in_degrees_withhold_the_occlusion_labels_naming_the_unit(dataset, tmp_path, limits, joint_limits):
    joints, trajectory = joints_of(dataset, tmp_path, limits, np.degrees)
    assert joints is None
    report = trajectory.plausibility["joint_positions"]
    assert not report["passed"] and report["occlusion_labels"] == "withheld"
    (warning,) = trajectory.warnings
    assert "the angles look like degrees, not radians" in warning and "occlusion labels withheld" in warning
    assert "plausibility.joint_limit_tolerance_rad = 0.1" in warning


def test_one_joint_beyond_its_limit_is_named_without_a_unit(dataset, tmp_path, limits, joint_limits):
    lower, upper = joint_limits

    def bend(joints):
        joints = joints.copy()
        joints[7:, 3] = upper[3] + 0.3  # the elbow straightened beyond its stop
        return joints
    joints, trajectory = joints_of(dataset, tmp_path, limits, bend)
    assert joints is None
    (warning,) = trajectory.warnings
    assert f"joint 4 is {upper[3] + 0.3:.4g} rad at step 7, beyond the Panda's limits" in warning
    assert "degrees" not in warning
