"""DROID's published calibration files: exact-id lookup through the per-version index, validation
of entries with errors naming file and camera, both cam2cam layouts (poses checked against SciPy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.formats.calibration_files import (
    LAYOUT_LEFT_RIGHT,
    LAYOUT_SERIALS,
    UNSPECIFIED_METRIC_TYPE,
    CalibrationFileError,
    lookup,
    read_cam2base_entry,
    read_cam2cam_entry,
)

EPISODE = "AUTOLab+84bd5053+2023-08-18-12h-01m-10s"
SERIALS = ("13062452", "24259877", "26405488")   # wrist, ext1, ext2
EXT1 = [0.1, -0.7, 0.6, -2.1, 0.05, 0.3]
EXT2 = [0.2, 0.7, 0.5, -2.0, -0.1, 2.9]


def matrix(pose6) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", pose6[3:]).as_matrix()
    out[:3, 3] = pose6[:3]
    return out


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def cam2base(tmp_path: Path, entry, name: str = "cam2base_extrinsic_superset.json"):
    path = write(tmp_path, name, {EPISODE: entry, EPISODE[:-1]: {SERIALS[1]: [0, 0, 1, 0, 0, 0]}})
    return read_cam2base_entry(path, EPISODE, SERIALS, tmp_path / "index")


def test_superset_entry_gives_poses_and_quality_metrics(tmp_path: Path) -> None:
    entry = {SERIALS[1]: EXT1, f"{SERIALS[1]}_quality_metric": 0.42, f"{SERIALS[1]}_metric_type": "Reprojection_error",
             SERIALS[2]: EXT2, f"{SERIALS[2]}_quality_metric": 3, f"{SERIALS[2]}_source": "CtRNet-X", "note": "x"}
    found = cam2base(tmp_path, entry)
    assert found.file == "cam2base_extrinsic_superset.json" and found.entry == entry
    assert list(found.cameras) == [SERIALS[1], SERIALS[2]]
    ext1, ext2 = found.cameras[SERIALS[1]], found.cameras[SERIALS[2]]
    np.testing.assert_array_equal(ext1.pose6, EXT1)
    assert (ext1.quality_metric, ext1.metric_type) == (0.42, "Reprojection_error")
    assert (ext2.quality_metric, ext2.metric_type) == (3.0, UNSPECIFIED_METRIC_TYPE)


def test_plain_entry_with_one_camera_has_no_metric(tmp_path: Path) -> None:
    found = cam2base(tmp_path, {SERIALS[2]: EXT2}, "cam2base_extrinsics.json")
    assert list(found.cameras) == [SERIALS[2]]
    assert found.cameras[SERIALS[2]].quality_metric is None and found.cameras[SERIALS[2]].metric_type is None


def test_only_the_exact_id_is_found(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", {EPISODE[:-1]: {SERIALS[1]: EXT1}, EPISODE + "0": {SERIALS[1]: EXT1},
                                      EPISODE.lower(): {SERIALS[1]: EXT1}})
    assert read_cam2base_entry(path, EPISODE, SERIALS, tmp_path / "index") is None


@pytest.mark.parametrize("entry, phrase", [
    ([1, 2], "entry for this episode is not an object"),
    ({"uuid": EPISODE + "x", SERIALS[1]: EXT1}, "has uuid='" + EPISODE + "x': it is another episode's calibration"),
    ({"11111111": EXT1}, "lists camera(s) 11111111 that the episode's metadata does not name"),
    ({SERIALS[1]: EXT1, "11111111_quality_metric": 0.3}, "lists camera(s) 11111111"),
    ({SERIALS[1]: EXT1[:5]}, f"cam2base entry {SERIALS[1]} is not six finite numbers"),
    ({SERIALS[1]: [0, 0, 0, 0, None, 0]}, f"cam2base entry {SERIALS[1]} is not six finite numbers"),
    ({SERIALS[1]: EXT1, f"{SERIALS[1]}_quality_metric": "good"}, f"{SERIALS[1]}_quality_metric is not a finite number"),
    ({SERIALS[1]: EXT1, f"{SERIALS[1]}_quality_metric": True}, f"{SERIALS[1]}_quality_metric is not a finite number"),
    ({SERIALS[1]: EXT1, f"{SERIALS[1]}_quality_metric": 1, f"{SERIALS[1]}_metric_type": 7},
     f"{SERIALS[1]}_metric_type is not a name"),
], ids=["not-object", "other-episode", "foreign-pose", "foreign-metric", "short-pose", "null-in-pose",
        "text-metric", "bool-metric", "number-type"])
def test_bad_entries_name_the_file_and_camera(tmp_path: Path, entry, phrase: str) -> None:
    with pytest.raises(CalibrationFileError) as info:
        cam2base(tmp_path, entry)
    assert str(info.value).startswith("cam2base_extrinsic_superset.json: ") and phrase in str(info.value)


@pytest.mark.parametrize("text, phrase", [
    ('{"' + EPISODE + '": {"24259877": [0, 0, 1, 0, 0, 0]}', "Expecting ',' delimiter"),
    ("[1, 2]", "the top level is list, not a JSON object keyed by episode id"),
    ("\xff\xfe", "Expecting value: line 1 column 1"),
])
def test_corrupt_file_is_an_error_naming_the_file_and_the_parse_error(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "cam2base_extrinsics.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CalibrationFileError) as info:
        read_cam2base_entry(path, EPISODE, SERIALS, tmp_path / "index")
    assert f"cannot read cam2base file {path}: " in str(info.value) and phrase in str(info.value)
    assert "not in" not in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationFileError, match=r"cannot read cam2cam file .*nope.json: No such file"):
        read_cam2cam_entry(tmp_path / "nope.json", EPISODE, SERIALS[1:], SERIALS, tmp_path / "index")


def test_index_is_built_once_per_file_version(tmp_path: Path) -> None:
    path = write(tmp_path, "cam2base_extrinsics.json", {EPISODE: {SERIALS[1]: EXT1}})
    index_dir = tmp_path / "index"
    assert lookup(path, EPISODE, index_dir, "cam2base") == {SERIALS[1]: EXT1}
    (index,) = index_dir.glob("*.sqlite")
    built = index.stat().st_mtime_ns
    assert lookup(path, "other", index_dir, "cam2base") is None
    assert list(index_dir.glob("*.sqlite")) == [index] and index.stat().st_mtime_ns == built
    write(tmp_path, "cam2base_extrinsics.json", {EPISODE: {SERIALS[2]: EXT2}, "other": {}})
    os.utime(path, ns=(built + 10**9, built + 10**9))
    assert lookup(path, EPISODE, index_dir, "cam2base") == {SERIALS[2]: EXT2}
    assert lookup(path, "other", index_dir, "cam2base") == {}
    (rebuilt,) = index_dir.glob("*.sqlite")   # the stale index is gone
    assert rebuilt != index


def test_floats_come_back_exactly(tmp_path: Path) -> None:
    pose = [0.1 + 0.2, -1 / 3, 1e-300, np.pi, -np.e, 123456.789012345678]
    found = cam2base(tmp_path, {SERIALS[1]: pose})
    assert found.cameras[SERIALS[1]].pose6.tolist() == pose


def relative_truth(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return np.linalg.inv(first) @ second


def test_cam2cam_left_right_layout_with_matrices(tmp_path: Path) -> None:
    left, right = matrix(EXT1), matrix(EXT2)
    entry = {"left_cam": {"pose": np.eye(4).tolist(), "focal": 530.0, "principal_point": [640, 360]},
             "right_cam": {"pose": relative_truth(left, right).tolist()}}
    path = write(tmp_path, "cam2cam_extrinsics.json", {EPISODE: entry})
    found = read_cam2cam_entry(path, EPISODE, SERIALS[1:], SERIALS, tmp_path / "index")
    assert found.layout == LAYOUT_LEFT_RIGHT and found.entry == json.loads(json.dumps(entry))
    np.testing.assert_allclose(np.linalg.inv(found.poses[0]) @ found.poses[1], relative_truth(left, right), atol=1e-12)


def test_cam2cam_serial_layout_with_six_vectors(tmp_path: Path) -> None:
    path = write(tmp_path, "cam2cam_extrinsics.json", {EPISODE: {SERIALS[2]: EXT2, SERIALS[1]: EXT1}})
    found = read_cam2cam_entry(path, EPISODE, SERIALS[1:], SERIALS, tmp_path / "index")
    assert found.layout == LAYOUT_SERIALS
    np.testing.assert_allclose(found.poses[0], matrix(EXT1), atol=1e-12)
    np.testing.assert_allclose(found.poses[1], matrix(EXT2), atol=1e-12)


@pytest.mark.parametrize("entry, phrase", [
    ({"left_cam": {"pose": np.eye(4).tolist()}}, "right_cam (camera 26405488) is not an object with a pose"),
    ({"left_cam": {"pose": np.eye(4).tolist()}, "right_cam": {"pose": (2 * np.eye(4)).tolist()}},
     "right_cam pose (camera 26405488) is not a rigid transform"),
    ({"left_cam": {"pose": [[1, 0], [0, 1]]}, "right_cam": {"pose": EXT2}},
     "left_cam pose (camera 24259877) is neither a 4x4 matrix nor six numbers"),
    ({SERIALS[1]: EXT1}, "nor poses of both exterior cameras (no 26405488"),
    ({SERIALS[1]: EXT1, SERIALS[2]: EXT2, "99999999": EXT2}, "lists camera(s) 99999999"),
    ({"episode_id": EPISODE[:-1], SERIALS[1]: EXT1, SERIALS[2]: EXT2}, "another episode's calibration"),
], ids=["no-right", "not-rigid", "bad-shape", "one-serial", "foreign", "other-episode"])
def test_bad_cam2cam_entries_are_errors(tmp_path: Path, entry, phrase: str) -> None:
    path = write(tmp_path, "cam2cam_extrinsics.json", {EPISODE: entry})
    with pytest.raises(CalibrationFileError) as info:
        read_cam2cam_entry(path, EPISODE, SERIALS[1:], SERIALS, tmp_path / "index")
    assert str(info.value).startswith("cam2cam_extrinsics.json: ") and phrase in str(info.value)


def test_an_index_folder_that_cannot_be_made_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "cam2base_extrinsics.json", {EPISODE: {SERIALS[1]: EXT1}})
    (tmp_path / "taken").write_text("a file where the index folder should be")
    with pytest.raises(CalibrationFileError, match=r"cannot index cam2base file .*cam2base_extrinsics.json in .*taken"):
        read_cam2base_entry(path, EPISODE, SERIALS, tmp_path / "taken")


def test_concurrent_first_lookups_build_one_index(tmp_path: Path) -> None:
    """Four processes look up a fresh 20k-entry file at once: each gets its entry, one index remains."""
    data = {f"LAB+{i:08x}+2023-01-01-00h-00m-00s": {SERIALS[1]: [i, 0, 0, 0, 0, 0]} for i in range(20000)}
    path = write(tmp_path, "cam2base_extrinsics.json", data)
    code = ("import sys, json; from droid_pipeline.formats.calibration_files import lookup; "
            "print(json.dumps(lookup(sys.argv[1], sys.argv[2], sys.argv[3], 'cam2base')))")
    ids = [f"LAB+{i:08x}+2023-01-01-00h-00m-00s" for i in (0, 7, 19999, 12345)]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), episode, str(tmp_path / "index")],
                              stdout=subprocess.PIPE, text=True) for episode in ids]
    outputs = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4
    assert outputs == [data[episode] for episode in ids]
    assert len(list((tmp_path / "index").glob("*.sqlite"))) == 1
    assert not list((tmp_path / "index").glob(".*.tmp"))
