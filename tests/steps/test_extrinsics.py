"""Camera-pose resolution: source order, exact-id lookup, wrist cross-check (SciPy references)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.raw.trajectory import Trajectory
from droid_pipeline.steps.extrinsics import CalibrationSources, camera_poses, pose_deviation

EPISODE = "AUTOLab+84bd5053+2023-08-18-12h-01m-10s"
SERIALS = {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
EXT1 = [0.1, -0.7, 0.6, -2.1, 0.05, 0.3]
EXT2 = [0.2, 0.7, 0.5, -2.0, -0.1, 2.9]
OFFSET = [0.01, -0.08, 0.03, -0.3, 0.02, 0.01]


def matrix(pose6) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", pose6[3:]).as_matrix()
    out[:3, 3] = pose6[:3]
    return out


def trajectory(num_frames: int = 8, offset: bool = True) -> tuple[Trajectory, np.ndarray]:
    rng = np.random.default_rng(5)
    cartesian = np.column_stack([rng.uniform(0.3, 0.6, (num_frames, 3)),
                                 np.pi + rng.normal(0, 0.1, num_frames), rng.normal(0, 0.2, (num_frames, 2))])
    flange = np.stack([matrix(p) for p in cartesian])
    wrist = flange @ matrix(OFFSET)
    wrist6 = np.column_stack([wrist[:, :3, 3], Rotation.from_matrix(wrist[:, :3, :3]).as_euler("xyz")])
    traj = Trajectory(cartesian, np.zeros(num_frames), wrist6,
                      np.tile(OFFSET, (num_frames, 1)) if offset else None, 15.0, "config")
    return traj, flange


def write_cam2base(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cam2base_extrinsics.json"
    path.write_text(json.dumps(data))
    return path


def resolve(tmp_path: Path, cam2base: dict | None, metadata: dict | None = None, **kwargs):
    traj, flange = trajectory(**kwargs)
    path = None if cam2base is None else write_cam2base(tmp_path, cam2base)
    metadata = {"ext1_cam_extrinsics": [0, 0, 1, 0, 0, 0], "ext2_cam_extrinsics": EXT2} \
        if metadata is None else metadata
    sources = CalibrationSources(tmp_path / "index", () if path is None else (path,))
    return camera_poses(EPISODE, SERIALS, metadata, traj, flange, sources, 5.0), traj


def test_exact_entry_first_then_metadata(tmp_path: Path) -> None:
    result, _ = resolve(tmp_path, {EPISODE: {SERIALS["ext1"]: EXT1}})
    np.testing.assert_allclose(result.cameras[SERIALS["ext1"]].base_from_camera, matrix(EXT1), atol=1e-12)
    np.testing.assert_allclose(result.cameras[SERIALS["ext2"]].base_from_camera, matrix(EXT2), atol=1e-12)
    assert result.cameras[SERIALS["ext1"]].source == "cam2base:cam2base_extrinsics.json"
    assert result.cameras[SERIALS["ext2"]].source == "metadata:ext2_cam_extrinsics"
    assert result.calibration_entry == {SERIALS["ext1"]: EXT1}
    assert list(result.cameras) == list(SERIALS.values())


def test_no_cam2base_file_uses_metadata(tmp_path: Path) -> None:
    result, _ = resolve(tmp_path, None)
    assert result.calibration_file is None and result.calibration_entry is None
    assert result.cameras[SERIALS["ext1"]].source == "metadata:ext1_cam_extrinsics"
    assert result.warnings == []


def test_wrist_pose_per_step_from_h5_and_cross_check(tmp_path: Path) -> None:
    result, traj = resolve(tmp_path, None)
    wrist = result.cameras[SERIALS["wrist"]]
    assert wrist.base_from_camera.shape == (8, 4, 4)
    np.testing.assert_allclose(wrist.base_from_camera, np.stack([matrix(p) for p in traj.wrist_extrinsics]),
                               atol=1e-12)
    assert result.wrist_check["max_translation_mm"] < 1e-9
    assert result.wrist_check["max_rotation_deg"] < 1e-6
    arrays = result.arrays()
    assert str(arrays["wrist_serial"]) == SERIALS["wrist"]
    assert arrays["roles"].tolist() == ["wrist", "ext1", "ext2"]


def test_wrist_without_offset_is_not_cross_checked(tmp_path: Path) -> None:
    result, _ = resolve(tmp_path, None, offset=False)
    assert result.wrist_check is None


def test_pose_deviation_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    a = np.stack([matrix(np.r_[rng.normal(size=3), rng.normal(size=3)]) for _ in range(6)])
    b = np.stack([matrix(np.r_[rng.normal(size=3), rng.normal(size=3)]) for _ in range(6)])
    translation, rotation = pose_deviation(a, b)
    expected_angle = (Rotation.from_matrix(a[:, :3, :3]).inv() * Rotation.from_matrix(b[:, :3, :3])).magnitude()
    np.testing.assert_allclose(translation, 1000 * np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=1))
    np.testing.assert_allclose(rotation, np.degrees(expected_angle), atol=1e-9)


@pytest.mark.parametrize("cam2base, metadata, phrase", [
    ({EPISODE: {"11111111": EXT1}}, None, "lists camera(s) 11111111 that the episode does not have"),
    ({EPISODE: {"episode_id": EPISODE + "x", SERIALS["ext1"]: EXT1}}, None, "another episode's calibration"),
    ({EPISODE: [1, 2, 3]}, None, "entry for this episode is not an object"),
    ({EPISODE: {SERIALS["ext1"]: [0, 0, 0, 0, np.nan, 0]}}, None, "is not six finite numbers"),
    ({}, {"ext2_cam_extrinsics": EXT2}, "no calibration for ext1 camera 24259877"),
    (None, {"ext1_cam_extrinsics": EXT1, "ext2_cam_extrinsics": [1, 2]}, "metadata ext2_cam_extrinsics"),
], ids=["foreign-serial", "entry-names-other-episode", "entry-not-object", "nan-pose",
        "no-source", "short-metadata-pose"])
def test_bad_calibration_fails_naming_episode_and_cause(tmp_path: Path, cam2base, metadata, phrase) -> None:
    with pytest.raises(EpisodeError) as info:
        resolve(tmp_path, cam2base, metadata)
    assert info.value.episode_id == EPISODE and info.value.step == "tracks"
    assert phrase in info.value.cause


def test_unreadable_cam2base_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "cam2base_extrinsics.json"
    path.write_text("{not json")
    traj, flange = trajectory()
    with pytest.raises(EpisodeError, match="cannot read cam2base file"):
        camera_poses(EPISODE, SERIALS, {}, traj, flange, CalibrationSources(tmp_path / "index", (path,)), 5.0)
