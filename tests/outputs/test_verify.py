"""python -m droid_pipeline.verify: real pipeline outputs pass; each kind of damage fails the
check that owns it, with a message naming the problem, and the command exits non-zero."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from occlusion_truth import episode_geometry
from synthetic_fixtures import converted_small_dataset, small_dataset

from droid_pipeline.cli.verify import main
from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.outputs.verify import CHECKS, verify_episode
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.occlusion import RobotOcclusion

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    return converted_small_dataset(tmp_path_factory)


def copy_episode(converted: dict, number: int, root: Path, *, manifest: bool = False) -> Path:
    """Episode ``number`` copied to the same relative path under ``root`` (without its manifest
    unless asked, so that each check is seen on its own)."""
    rel = converted["episodes"][number].relative_path
    folder = Path(shutil.copytree(converted["root"] / rel, root / rel))
    if not manifest:
        (folder / "manifest.json").unlink()
    return folder


def edit_npz(path: Path, change: Callable[[dict], None]) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    np.savez_compressed(path, **arrays)


def serial_of(folder: Path, role: str) -> str:
    with np.load(folder / "extrinsics.npz", allow_pickle=False) as data:
        return str(data["serials"][list(data["roles"]).index(role)])


def test_pipeline_outputs_pass(converted, capsys):
    assert main([str(converted["root"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for episode in converted["episodes"]:
        row = next(line for line in out.splitlines() if line.startswith(episode.relative_path))
        assert row.split()[1:] == ["ok", "ok", "ok", "ok", "ok" if episode is converted["episodes"][0] else "n/a", "ok"]
    assert "3 of 3 episodes pass" in out


def test_metadata_repo_copy_without_depth_files_passes_with_a_note(converted, tmp_path):
    folder = copy_episode(converted, 0, tmp_path, manifest=True)
    for path in folder.glob("recordings/*/depth*"):
        path.unlink()
    report = verify_episode(folder, tmp_path)
    assert report.ok and report.status["depth"] == "n/a"
    assert any("metadata repo" in note for note in report.notes)


def shift_2d(folder: Path) -> None:
    serial_of(folder, "ext1")

    def change(arrays):
        arrays["tracks_2d_ext1"][5, 7, 0] += np.float32(0.5)
    edit_npz(folder / "tracks.npz", change)


def move_camera(folder: Path) -> None:
    serial_of(folder, "ext2")

    def change(arrays):
        arrays["T_base_cam_ext2"][0, 3] += 0.01
    edit_npz(folder / "extrinsics.npz", change)


def visible_off_image(folder: Path) -> None:
    serial_of(folder, "wrist")

    def change(arrays):
        arrays["tracks_2d_wrist"][3, 0] = (-20.0, -20.0)
        arrays["visibility_wrist"][3, 0] = True
    edit_npz(folder / "tracks.npz", change)


def drop_key(folder: Path) -> None:
    edit_npz(folder / "tracks.npz", lambda arrays: arrays.pop("normalized_frames"))


def widen_dtype(folder: Path) -> None:
    def change(arrays):
        arrays["tracks_3d"] = arrays["tracks_3d"].astype(np.float64)
    edit_npz(folder / "tracks.npz", change)


def cut_visibility(folder: Path) -> None:
    serial_of(folder, "ext1")

    def change(arrays):
        arrays["visibility_ext1"] = arrays["visibility_ext1"][:, :-1]
    edit_npz(folder / "tracks.npz", change)


def old_schema(folder: Path) -> None:
    for name in ("tracks.npz", "extrinsics.npz"):
        edit_npz(folder / name, lambda arrays: arrays.update(schema_version=np.int32(1)))


def nan_value(folder: Path) -> None:
    def change(arrays):
        arrays["normalized_tracks_3d"][3, 4, 0] = np.nan
    edit_npz(folder / "tracks.npz", change)


def stretch_frame(folder: Path) -> None:
    def change(arrays):
        arrays["contact_frames"][2, :3, :3] *= np.float32(1.01)
    edit_npz(folder / "tracks.npz", change)


def move_centroids(folder: Path) -> None:
    def change(arrays):
        arrays["contact_centroids"][:, 2] += 0.001
    edit_npz(folder / "tracks.npz", change)


def reverse_index(folder: Path) -> None:
    def change(arrays):
        arrays["frame_to_normalized_idx"] = arrays["frame_to_normalized_idx"][::-1].copy()
    edit_npz(folder / "tracks.npz", change)


def change_intrinsics(folder: Path) -> None:
    serial_of(folder, "ext1")

    def change(arrays):
        arrays["intrinsics_ext1"][0, 0] += 1.0
    edit_npz(folder / "tracks.npz", change)


def remove_intrinsics_json(folder: Path) -> None:
    (folder / "recordings" / serial_of(folder, "ext2") / "intrinsics.json").unlink()


def misplace(folder: Path) -> None:
    folder.rename(folder.with_name("Mon_Jan__1_00:00:00_2024"))


LABELS = ("visible", "hidden_by_robot", "hidden_by_scene", "unknown")   # occlusion_<serial> values 0..3


def relabel(folder: Path, role: str, pick: Callable[[np.ndarray, np.ndarray], tuple[int, int]], value: int) -> None:
    """Set one label of the camera, chosen by ``pick(labels, visibility)``, to ``value``, and make
    quality.json's fractions say the same, so that only the label itself is wrong."""
    serial_of(folder, role)
    written = {}

    def change(arrays):
        labels, seen = arrays[f"occlusion_{role}"], arrays[f"visibility_{role}"]
        labels[pick(labels, seen)] = value
        written["labels"], written["seen"] = labels, seen
    edit_npz(folder / "tracks.npz", change)
    quality = json.loads((folder / "quality.json").read_text())
    labels, seen = written["labels"], written["seen"]
    camera = quality["occlusion"]["cameras"][role]
    for name, chosen in (("in_view", labels[seen]), ("all_points", labels)):
        camera[name] = {label: float(np.mean(chosen == number)) for number, label in enumerate(LABELS)}
    with np.load(folder / "tracks.npz", allow_pickle=False) as tracks:
        roles = ("wrist", "ext1", "ext2")
        pooled = np.concatenate([tracks[f"occlusion_{r}"][tracks[f"visibility_{r}"]] for r in roles])
    quality["occlusion"]["in_view"] = {label: float(np.mean(pooled == number)) for number, label in enumerate(LABELS)}
    (folder / "quality.json").write_text(json.dumps(quality))


def first(mask: np.ndarray) -> tuple[int, int]:
    step, point = np.argwhere(mask)[0]
    return int(step), int(point)


def label_out_of_range(folder: Path) -> None:
    relabel(folder, "ext1", lambda labels, seen: (4, 2), 9)


def label_where_invisible(folder: Path) -> None:
    relabel(folder, "wrist", lambda labels, seen: first(~seen), 1)


def scene_label_without_depth(folder: Path) -> None:
    relabel(folder, "ext2", lambda labels, seen: first(seen & (labels == 3)), 0)


def fractions_disagree(folder: Path) -> None:
    quality = json.loads((folder / "quality.json").read_text())
    camera = quality["occlusion"]["cameras"]["ext1"]
    camera["in_view"]["unknown"] += 0.01
    (folder / "quality.json").write_text(json.dumps(quality))


def occlusion_said_off(folder: Path) -> None:
    quality = json.loads((folder / "quality.json").read_text())
    quality["occlusion"]["enabled"] = False
    (folder / "quality.json").write_text(json.dumps(quality))


DAMAGE = [
    (shift_2d, "2d", r"ext1 camera \d+: tracks_2d differs .* by up to 0\.500 px"),
    (move_camera, "2d", r"ext2 camera \d+: tracks_2d differs"),
    (visible_off_image, "2d", r"wrist camera \d+: 1 visible points are behind the camera or off the 320x180 image "
                              r"\(first: step 3, point 0\)"),
    (drop_key, "contract", r"tracks.npz: key 'normalized_frames' missing"),
    (widen_dtype, "contract", r"tracks_3d has dtype float64, expected float32"),
    (cut_visibility, "contract", r"visibility_ext1 has shape \(40, 479\), expected \(T, N\) with T=40, M=\d+, N=480"),
    (old_schema, "contract", rf"schema_version 1, readable are \[4, {SCHEMA_VERSION}\]"),
    (nan_value, "values", r"normalized_tracks_3d has NaN or inf"),
    (stretch_frame, "values", r"contact_frames is not a rigid transform"),
    (move_centroids, "values", r"contact_centroids differs from the mean of its points by 1\.0000 mm"),
    (reverse_index, "values", r"frame_to_normalized_idx is not non-decreasing from 0"),
    (change_intrinsics, "values", r"intrinsics_ext1 differs from recordings/\d+/intrinsics.json"),
    (remove_intrinsics_json, "files", r"recordings/\d+/intrinsics.json missing"),
    (misplace, "files", r"folder is .*Mon_Jan__1_00:00:00_2024 but quality.json names"),
    (label_out_of_range, "values", r"occlusion_\w+ holds 1 values outside 0\.\.3 \(first: step 4, point 2\)"),
    (label_where_invisible, "values", r"occlusion_\w+ is not 3 \(unknown\) at 1 points whose visibility is False"),
    (scene_label_without_depth, "values", r"occlusion_\w+ has 1 points labelled 0 \(visible\) or 2 \(hidden "
                                          r"by the scene\), which need depth, but quality.json says the camera "
                                          r"had none"),
    (fractions_disagree, "values", r"quality.json occlusion in_view fractions of camera \w+ differ from occlusion_"),
    (occlusion_said_off, "values", r"occlusion_\w+ is not 3 everywhere although quality.json says occlusion was off"),
]


@pytest.mark.parametrize("damage, check, message", DAMAGE, ids=[d[0].__name__ for d in DAMAGE])
def test_damage_fails_its_check(converted, tmp_path, damage, check, message):
    folder = copy_episode(converted, 1, tmp_path)
    damage(folder)
    folder = next(p for p in tmp_path.glob("*/*/*/*") if p.is_dir())
    report = verify_episode(folder, tmp_path)
    assert not report.ok
    earlier = CHECKS[:CHECKS.index(check)]
    assert [report.status[c] for c in earlier] == ["ok"] * len(earlier), report.problems
    assert report.status[check] == "FAIL"
    assert any(re.search(message, p) for p in report.problems[check]), report.problems


def test_a_back_facing_point_not_labelled_hidden_fails_the_2d_check(converted, tmp_path_factory, tmp_path):
    """A point in view of ext1 whose pad faces away from the camera (by the gripper model and the
    true camera of the synthetic episode) relabelled unknown: a valid label for a camera without
    depth, but not for a pad seen from behind."""
    dataset = small_dataset(tmp_path_factory)
    synthetic = next(e for e in dataset.episodes if e.episode_id == converted["episodes"][1].episode_id)
    geometry = episode_geometry(dataset, synthetic, RobotOcclusion.load(), GripperModel.load())
    camera = next(c for c in geometry.cameras if c.role == "ext1")
    toward = camera.poses[:, None, :3, 3] - geometry.points
    cosine = np.einsum("tni,tni->tn", toward, geometry.normals) / np.linalg.norm(toward, axis=-1)
    folder = copy_episode(converted, 1, tmp_path)
    assert verify_episode(folder, tmp_path).ok
    relabel(folder, "ext1", lambda labels, seen: first(seen & (cosine < -0.1)), 3)
    report = verify_episode(folder, tmp_path)
    assert [report.status[c] for c in ("files", "contract", "values")] == ["ok"] * 3, report.problems
    assert report.status["2d"] == "FAIL"
    assert re.fullmatch(r"ext1 camera \d+: 1 visible points whose pad faces away from the camera are not labelled 1 "
                        r"\(hidden by the robot\) in occlusion_ext1 \(first: step \d+, point \d+\)",
                        report.problems["2d"][0]), report.problems


def test_depth_damage_fails_the_depth_check(converted, tmp_path):
    folder = copy_episode(converted, 0, tmp_path)
    serial = serial_of(folder, "ext1")
    meta_path = folder / "recordings" / serial / "depth_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["checksum"]["value"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    report = verify_episode(folder, tmp_path)
    assert report.status["depth"] == "FAIL" and "sha256" in report.problems["depth"][0]
    assert [report.status[c] for c in CHECKS[:-1]] == ["ok"] * 4
    assert verify_episode(folder, tmp_path, decode_depth=False).ok     # metadata only
    depth = folder / "recordings" / serial / "depth.mkv"
    depth.write_bytes(depth.read_bytes()[: depth.stat().st_size // 2])
    assert verify_episode(folder, tmp_path).status["depth"] == "FAIL"
    meta_path.unlink()
    report = verify_episode(folder, tmp_path)
    assert "must come together" in report.problems["depth"][0]


def test_manifest_catches_changed_and_missing_files(converted, tmp_path):
    folder = copy_episode(converted, 2, tmp_path, manifest=True)
    quality = json.loads((folder / "quality.json").read_text())
    (folder / "quality.json").write_text(json.dumps(quality, indent=1))
    report = verify_episode(folder, tmp_path)
    assert report.status["files"] == "FAIL"
    assert any("quality.json: " in p for p in report.problems["files"])
    (folder / "extrinsics.npz").unlink()
    report = verify_episode(folder, tmp_path)
    assert report.problems["files"] == ["extrinsics.npz missing"]


def test_manifest_listing_a_file_outside_the_contract_fails(converted, tmp_path):
    folder = copy_episode(converted, 2, tmp_path, manifest=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "notes.txt").write_text("hello")
    manifest["files"].append({"path": "notes.txt", "size": 5, "sha256": "0" * 64, "kind": "metadata"})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify_episode(folder, tmp_path)
    assert report.status["files"] == "FAIL"
    assert "notes.txt listed in manifest.json is not a file of the output contract" in report.problems["files"]


def run_verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "droid_pipeline.verify", *args, "--no-progress"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_command_line_exit_status_and_table(converted, tmp_path):
    result = run_verify(str(converted["root"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].split() == ["episode", *CHECKS, "result"]
    copy_episode(converted, 1, tmp_path / "damaged")
    nan_value(next((tmp_path / "damaged").glob("*/*/*/*")))
    result = run_verify(str(tmp_path / "damaged"))
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "normalized_tracks_3d has NaN or inf" in result.stdout
    (tmp_path / "empty").mkdir()
    result = run_verify(str(tmp_path / "empty"))
    assert result.returncode == 1 and "no episode" in result.stderr
