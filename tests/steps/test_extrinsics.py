"""Camera-pose resolution: source order across published files, exact-id lookup, quality bounds, the
cam2cam check and the wrist cross-check (SciPy references)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.core.config import CalibrationQualityConfig
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
    arrays = result.arrays(8)
    assert str(arrays["wrist_serial"]) == SERIALS["wrist"]
    assert arrays["roles"].tolist() == ["wrist", "ext1", "ext2"]
    assert arrays["serials"].tolist() == [SERIALS["wrist"], SERIALS["ext1"], SERIALS["ext2"]]
    np.testing.assert_allclose(arrays["T_base_cam_wrist"], np.stack([matrix(p) for p in traj.wrist_extrinsics]),
                               atol=1e-12)


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
    ({EPISODE: {"11111111": EXT1}}, None, "lists camera(s) 11111111 that the episode's metadata does not name"),
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


# ---------------------------------------------------------------- several published files

def resolve_files(tmp_path: Path, files: dict[str, dict], cam2cam: dict | None = None, metadata: dict | None = None,
                  **quality):
    """Resolve with the cam2base files ``files`` (name -> contents, tried in this order)."""
    traj, flange = trajectory()
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(data))
    cam2cam_path = None
    if cam2cam is not None:
        cam2cam_path = tmp_path / "cam2cam_extrinsics.json"
        cam2cam_path.write_text(json.dumps(cam2cam))
    bounds = CalibrationQualityConfig(quality.get("at_least", {}), quality.get("at_most", {}),
                                      quality.get("action", "warn"))
    sources = CalibrationSources(tmp_path / "index", tuple(paths), cam2cam_path, bounds)
    metadata = {"ext1_cam_extrinsics": [0, 0, 1, 0, 0, 0], "ext2_cam_extrinsics": [0, 0, 2, 0, 0, 0]} \
        if metadata is None else metadata
    return camera_poses(EPISODE, SERIALS, metadata, traj, flange, sources, 5.0)


SUPERSET = "cam2base_extrinsic_superset.json"
PLAIN = "cam2base_extrinsics.json"
EXT1_METRIC = {f"{SERIALS['ext1']}_quality_metric": 0.8, f"{SERIALS['ext1']}_metric_type": "iou"}


def test_each_camera_takes_the_first_file_that_has_it(tmp_path: Path) -> None:
    other = [0.3, 0.1, 0.9, -2.2, 0.0, 1.0]
    result = resolve_files(tmp_path, {
        SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, **EXT1_METRIC}},
        PLAIN: {EPISODE: {SERIALS["ext1"]: other, SERIALS["ext2"]: EXT2}}})
    ext1, ext2 = result.cameras[SERIALS["ext1"]], result.cameras[SERIALS["ext2"]]
    np.testing.assert_allclose(ext1.base_from_camera, matrix(EXT1), atol=1e-12)
    np.testing.assert_allclose(ext2.base_from_camera, matrix(EXT2), atol=1e-12)
    assert (ext1.source, ext2.source) == (f"cam2base:{SUPERSET}", f"cam2base:{PLAIN}")
    quality = result.quality()  # keyed by role: DROID's serial-keyed entries given per role
    assert quality["cameras"]["ext1"] == {
        "role": "ext1", "source": f"cam2base:{SUPERSET}", "file": SUPERSET, "fallback": False,
        "quality_metric": 0.8, "metric_type": "iou", "quality_check": None}
    assert quality["cameras"]["ext2"]["quality_metric"] is None
    assert quality["cam2base_files"] == [
        {"file": SUPERSET, "entry": {
            "wrist": None, "other": None,
            "ext1": {"serial": SERIALS["ext1"], "pose": EXT1, "quality_metric": 0.8, "metric_type": "iou"},
            "ext2": None}},
        {"file": PLAIN, "entry": {
            "wrist": None, "other": None,
            "ext1": {"serial": SERIALS["ext1"], "pose": other, "quality_metric": None, "metric_type": None},
            "ext2": {"serial": SERIALS["ext2"], "pose": EXT2, "quality_metric": None, "metric_type": None}}}]
    assert quality["cam2base_file"] == SUPERSET and result.warnings == []
    arrays = result.arrays(8)
    assert arrays["calibration_fallback"].tolist() == [False, False, False]
    assert arrays["calibration_quality"].tolist() == [0.0, 0.8, 0.0]
    assert arrays["calibration_metric_types"].tolist() == ["", "iou", ""]


def test_a_camera_in_no_file_falls_back_to_the_metadata_with_a_warning(tmp_path: Path) -> None:
    result = resolve_files(tmp_path, {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1}}, PLAIN: {}})
    ext2 = result.cameras[SERIALS["ext2"]]
    assert ext2.fallback and ext2.source == "metadata:ext2_cam_extrinsics"
    np.testing.assert_allclose(ext2.base_from_camera, matrix([0, 0, 2, 0, 0, 0]), atol=1e-12)
    assert result.warnings == [f"cam2base entry lacks ext2 camera {SERIALS['ext2']}: used metadata "
                               f"ext2_cam_extrinsics (tried {SUPERSET}, {PLAIN})"]
    assert result.arrays(8)["calibration_fallback"].tolist() == [False, False, True]
    none = resolve_files(tmp_path, {PLAIN: {}})
    assert none.warnings == [f"no cam2base entry for this episode in {PLAIN}: {role} camera {SERIALS[role]} "
                             f"used metadata {role}_cam_extrinsics" for role in ("ext1", "ext2")]


def test_a_bad_entry_in_a_later_file_fails_even_when_an_earlier_one_has_the_camera(tmp_path: Path) -> None:
    with pytest.raises(EpisodeError, match=f"{PLAIN}: the entry for this episode lists camera.s. 99999999"):
        resolve_files(tmp_path, {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, SERIALS["ext2"]: EXT2}},
                                 PLAIN: {EPISODE: {"99999999": EXT2}}})


@pytest.mark.parametrize("bounds, passed", [
    ({"at_least": {"iou": 0.7}}, True), ({"at_least": {"iou": 0.9}}, False),
    ({"at_most": {"iou": 0.9}}, True), ({"at_most": {"iou": 0.5}}, False),
    ({"at_most": {"Reprojection_error": 0.1}}, None),
], ids=["above-min", "below-min", "below-max", "above-max", "other-type"])
def test_quality_bounds_judge_only_their_metric_type(tmp_path: Path, bounds: dict, passed) -> None:
    files = {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, SERIALS["ext2"]: EXT2, **EXT1_METRIC}}}
    result = resolve_files(tmp_path, files, **bounds)
    check = result.cameras[SERIALS["ext1"]].quality_check
    assert result.cameras[SERIALS["ext2"]].quality_check is None      # no metric: never judged
    if passed is None:
        assert check is None and result.warnings == []
        return
    ((name, per_type),) = bounds.items()
    ((kind, bound),) = per_type.items()
    assert check == {"bounds": {name: bound}, "passed": passed, "action": "warn"}
    assert result.warnings == ([] if passed else [
        f"ext1 camera {SERIALS['ext1']}: {SUPERSET} quality metric iou = 0.8 is "
        f"{'below' if name == 'at_least' else 'above'} min_calibration_quality.{name}.{kind} = {bound:g}"])
    if not passed:
        with pytest.raises(EpisodeError, match="quality metric iou = 0.8 is"):
            resolve_files(tmp_path, files, action="fail", **bounds)


def test_unspecified_metric_type_can_be_bounded(tmp_path: Path) -> None:
    files = {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, SERIALS["ext2"]: EXT2,
                                  f"{SERIALS['ext2']}_quality_metric": 4.0}}}
    result = resolve_files(tmp_path, files, at_most={"unspecified": 2.0})
    assert result.cameras[SERIALS["ext2"]].quality_check["passed"] is False
    assert result.arrays(8)["calibration_metric_types"].tolist() == ["", "", "unspecified"]


def perturbed(pose: np.ndarray, shift_m: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    out = pose.copy()
    out[:3, :3] = pose[:3, :3] @ Rotation.from_rotvec(rotvec).as_matrix()
    out[:3, 3] += pose[:3, :3] @ shift_m
    return out


@pytest.mark.parametrize("layout", ["left_cam/right_cam", "serials"])
def test_cam2cam_disagreement_in_mm_and_degrees_both_directions(tmp_path: Path, layout: str) -> None:
    """Reference: ext2's pose in ext1's frame from SciPy, the cam2cam ext2 moved by 5 mm along its x
    and turned by 1 degree about its y; read inverted, the disagreement is that of the inverse."""
    ext1, ext2 = matrix(EXT1), matrix(EXT2)
    truth = np.linalg.inv(ext1) @ ext2
    frame = matrix([0.4, -0.3, 0.2, 0.3, -0.2, 0.1])     # the file's common frame is arbitrary
    shifted = perturbed(ext2, np.array([0.005, 0.0, 0.0]), np.radians([0.0, 1.0, 0.0]))
    poses = (frame @ np.linalg.inv(ext1) @ ext1, frame @ np.linalg.inv(ext1) @ shifted)
    if layout == "serials":
        entry = {SERIALS["ext1"]: poses[0].tolist(), SERIALS["ext2"]: poses[1].tolist()}
    else:
        entry = {"left_cam": {"pose": poses[0].tolist()}, "right_cam": {"pose": poses[1].tolist()}}
    result = resolve_files(tmp_path, {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, SERIALS["ext2"]: EXT2}}},
                           cam2cam={EPISODE: entry})
    report = result.quality()["cam2cam"]
    assert report["file"] == "cam2cam_extrinsics.json" and report["layout"] == layout
    (pair,) = report["pairs"]
    assert pair["cameras"] == [SERIALS["ext1"], SERIALS["ext2"]] and pair["closer"] == "assumed"
    assert pair["pose_sources"] == [f"cam2base:{SUPERSET}"] * 2
    from_file = np.linalg.inv(poses[0]) @ poses[1]
    assert pair["assumed"]["translation_mm"] == pytest.approx(
        1000 * np.linalg.norm(from_file[:3, 3] - truth[:3, 3]), abs=1e-9)
    assert pair["assumed"]["translation_mm"] == pytest.approx(5.0, abs=1e-9)
    assert pair["assumed"]["rotation_deg"] == pytest.approx(1.0, abs=1e-9)
    inverse = np.linalg.inv(from_file)
    expected_angle = np.degrees((Rotation.from_matrix(inverse[:3, :3]).inv()
                                 * Rotation.from_matrix(truth[:3, :3])).magnitude())
    assert pair["inverse"]["translation_mm"] == pytest.approx(1000 * np.linalg.norm(inverse[:3, 3] - truth[:3, 3]))
    assert pair["inverse"]["rotation_deg"] == pytest.approx(expected_angle)
    assert pair["baseline_mm"]["cam2base"] == pytest.approx(1000 * np.linalg.norm(ext1[:3, 3] - ext2[:3, 3]))


def test_cam2cam_without_an_entry_or_not_configured(tmp_path: Path) -> None:
    files = {SUPERSET: {EPISODE: {SERIALS["ext1"]: EXT1, SERIALS["ext2"]: EXT2}}}
    assert resolve_files(tmp_path, files).quality()["cam2cam"] is None
    report = resolve_files(tmp_path, files, cam2cam={"other": {}}).quality()["cam2cam"]
    assert report == {"file": "cam2cam_extrinsics.json", "layout": None, "entry": None, "pairs": []}
    with pytest.raises(EpisodeError, match="cam2cam_extrinsics.json: left_cam .camera 24259877. is not an object"):
        resolve_files(tmp_path, files, cam2cam={EPISODE: {"left_cam": [1], "right_cam": {"pose": EXT2}}})
