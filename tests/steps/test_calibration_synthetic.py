"""Real DROID calibration and cameras on rendered synthetic episodes, checked against their ground
truth: exterior cameras calibrated in different published files (or in none), a fixed camera
(camera_type 2), MP4s a frame short, and the depth step's alignment of the same short video."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.depth_codec import DepthMeta
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks
from droid_pipeline.synthetic.generator import DatasetInfo, generate_dataset

FRAMES = 12
# The metadata's exterior poses are off by this much (base frame, metres), as DROID's originals are noisy.
METADATA_NOISE_M = np.array([0.015, -0.01, 0.02])
SUPERSET, PLAIN = "cam2base_extrinsic_superset.json", "cam2base_extrinsics.json"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> DatasetInfo:
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=1, frames=FRAMES)


def copy_dataset(dataset: DatasetInfo, tmp_path: Path) -> dict:
    """A private copy of the raw episode (metadata exterior poses made noisy) and its ground truth."""
    episode = dataset.episodes[0]
    root = tmp_path / "data"
    shutil.copytree(dataset.droid_root, root / "droid_raw")
    folder = root / "droid_raw" / episode.relative_path
    (metadata_path,) = folder.glob("metadata_*.json")
    metadata = json.loads(metadata_path.read_text())
    for role in ("ext1", "ext2"):
        metadata[f"{role}_cam_extrinsics"][:3] = (np.array(metadata[f"{role}_cam_extrinsics"][:3])
                                                  + METADATA_NOISE_M).tolist()
    metadata_path.write_text(json.dumps(metadata))
    truth = json.loads((dataset.ground_truth_path(episode) / "cameras.json").read_text())
    return {"root": root, "folder": folder, "episode": episode, "metadata": metadata, "truth": truth,
            "zed": dataset.zed_calibration_dir, "intrinsics": dataset.intrinsics_path, "cam2cam": dataset.cam2cam_path}


def write_config(data: dict, files: dict[str, dict], cam2cam: bool = True) -> Path:
    """A config over the copy: the cam2base files ``files`` (name -> contents) in this order."""
    root = data["root"]
    for name, contents in files.items():
        (root / name).write_text(json.dumps(contents))
    lines = [f"droid_root: {root / 'droid_raw'}", f"output_root: {root / 'output'}", f"run_root: {root / 'runs'}",
             f"cam2base_extrinsics_paths: {json.dumps([str(root / name) for name in files])}",
             f"intrinsics_path: {data['intrinsics']}", f"zed_calibration_dir: {data['zed']}",
             "outcomes: [success, failure]", "intrinsics_sources: [published]", "depth_backend: stereo"]
    if cam2cam:
        lines.append(f"cam2cam_extrinsics_path: {data['cam2cam']}")
    path = root / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(data: dict, config_path: Path, name: str, *, depth: tuple[str, ...] = ()) -> dict:
    config = load_config([config_path])
    episode = build_index(config.droid_root, config.index_path, rescan=True).get(data["episode"].episode_id)
    out = data["root"] / name
    extract_intrinsics(config, episode, out)
    if depth:
        extract_depth(config, episode, out, backend="stereo", cameras=list(depth))
    generate_tracks(config, episode, out)
    with np.load(out / "tracks.npz", allow_pickle=False) as tracks, \
            np.load(out / "extrinsics.npz", allow_pickle=False) as extrinsics:
        return {"tracks": dict(tracks), "extrinsics": dict(extrinsics), "out": out,
                "quality": json.loads((out / "quality.json").read_text())}


def pose6(matrix: np.ndarray) -> list[float]:
    matrix = np.asarray(matrix)
    return [*matrix[:3, 3], *Rotation.from_matrix(matrix[:3, :3]).as_euler("xyz")]


def matrix(pose: list[float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", pose[3:]).as_matrix()
    out[:3, 3] = pose[:3]
    return out


def split_files(data: dict, ext2_in_plain: bool = True) -> dict[str, dict]:
    """ext1 only in the superset (with a quality metric), ext2 only in the plain file (or nowhere)."""
    serials, truth = data["episode"].serials, data["truth"]
    ext1, ext2 = serials["ext1"], serials["ext2"]
    superset = {ext1: pose6(truth[ext1]["T_base_cam"]), f"{ext1}_quality_metric": 0.31,
                f"{ext1}_metric_type": "Reprojection_error"}
    plain = {ext2: pose6(truth[ext2]["T_base_cam"])} if ext2_in_plain else {}
    episode_id = data["episode"].episode_id
    return {SUPERSET: {episode_id: superset}, PLAIN: {episode_id: plain} if plain else {}}


def reprojected(result: dict, serial: str, truth: dict) -> np.ndarray:
    """tracks_3d through cv2.projectPoints with the TRUE pose and intrinsics of ``serial``."""
    camera_from_base = np.linalg.inv(np.array(truth[serial]["T_base_cam"]))
    rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
    points = result["tracks"]["tracks_3d"].astype(np.float64).reshape(-1, 3)
    uv, _ = cv2.projectPoints(points, rvec, camera_from_base[:3, 3], np.array(truth[serial]["K"]), np.zeros(5))
    return uv.reshape(FRAMES, -1, 2)


def test_exterior_cameras_take_their_pose_from_the_file_that_has_them(dataset: DatasetInfo, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    files = split_files(data)
    result = run(data, write_config(data, files), "split")
    serials, truth = data["episode"].serials, data["truth"]
    ext1, ext2 = serials["ext1"], serials["ext2"]
    extrinsics, quality = result["extrinsics"], result["quality"]
    for role, serial in (("ext1", ext1), ("ext2", ext2)):
        np.testing.assert_allclose(extrinsics[f"T_base_cam_{role}"], truth[serial]["T_base_cam"], atol=1e-9)
        np.testing.assert_allclose(result["tracks"][f"tracks_2d_{role}"], reprojected(result, serial, truth),
                                   atol=1e-3)
    cameras = quality["calibration"]["cameras"]
    assert (cameras["ext1"]["source"], cameras["ext1"]["file"]) == (f"cam2base:{SUPERSET}", SUPERSET)
    assert (cameras["ext1"]["quality_metric"], cameras["ext1"]["metric_type"]) == (0.31, "Reprojection_error")
    assert (cameras["ext2"]["source"], cameras["ext2"]["file"]) == (f"cam2base:{PLAIN}", PLAIN)
    assert cameras["ext2"]["quality_metric"] is None
    assert not cameras["ext1"]["fallback"] and not cameras["ext2"]["fallback"]
    order = extrinsics["serials"].tolist()
    assert extrinsics["sources"].tolist() == [cameras[r]["source"] for r in extrinsics["roles"].tolist()]
    assert extrinsics["calibration_quality"][order.index(ext1)] == 0.31
    assert extrinsics["calibration_metric_types"].tolist()[order.index(ext1)] == "Reprojection_error"
    assert extrinsics["calibration_metric_types"].tolist()[order.index(ext2)] == ""
    assert not extrinsics["calibration_fallback"].any()
    assert [f["file"] for f in quality["calibration"]["cam2base_files"]] == [SUPERSET, PLAIN]
    (pair,) = quality["calibration"]["cam2cam"]["pairs"]   # the generated cam2cam file holds the truth
    assert pair["assumed"]["translation_mm"] < 1e-6 and pair["assumed"]["rotation_deg"] < 1e-6
    assert pair["closer"] == "assumed" and quality["warnings"] == []


def test_a_camera_in_neither_file_keeps_the_noisy_metadata_pose(dataset: DatasetInfo, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    result = run(data, write_config(data, split_files(data, ext2_in_plain=False)), "neither")
    serials, truth = data["episode"].serials, data["truth"]
    ext1, ext2 = serials["ext1"], serials["ext2"]
    np.testing.assert_allclose(result["extrinsics"]["T_base_cam_ext1"], truth[ext1]["T_base_cam"], atol=1e-9)
    np.testing.assert_allclose(result["extrinsics"]["T_base_cam_ext2"],
                               matrix(data["metadata"]["ext2_cam_extrinsics"]), atol=1e-12)
    quality = result["quality"]
    camera = quality["calibration"]["cameras"]["ext2"]
    assert camera["fallback"] and camera["source"] == "metadata:ext2_cam_extrinsics" and camera["file"] is None
    order = result["extrinsics"]["serials"].tolist()
    assert result["extrinsics"]["calibration_fallback"].tolist() == [s == ext2 for s in order]
    assert quality["warnings"] == [f"cam2base entry lacks ext2 camera {ext2}: used metadata ext2_cam_extrinsics "
                                   f"(tried {SUPERSET}, {PLAIN})"]
    # cam2cam (the truth) now disagrees by the metadata's noise, seen from ext1
    (pair,) = quality["calibration"]["cam2cam"]["pairs"]
    assert pair["pose_sources"] == [f"cam2base:{SUPERSET}", "metadata:ext2_cam_extrinsics"]
    assert pair["assumed"]["translation_mm"] == pytest.approx(1000 * np.linalg.norm(METADATA_NOISE_M), rel=1e-6)
    assert pair["assumed"]["rotation_deg"] < 1e-6 and pair["closer"] == "assumed"


def test_fixed_camera_gets_the_same_2d_tracks_as_an_exterior_one(dataset: DatasetInfo, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    config = write_config(data, split_files(data))
    before = run(data, config, "exterior")
    ext2 = data["episode"].serials["ext2"]
    with h5py.File(data["folder"] / "trajectory.h5", "r+") as h5:
        h5[f"observation/camera_type/{ext2}"][...] = 2
    after = run(data, config, "fixed")
    assert after["tracks"]["tracks_2d_status"][2] == "ok" and after["tracks"]["camera_serials"][2] == ext2
    np.testing.assert_array_equal(after["tracks"]["tracks_2d_ext2"], before["tracks"]["tracks_2d_ext2"])
    np.testing.assert_array_equal(after["tracks"]["visibility_ext2"], before["tracks"]["visibility_ext2"])
    assert after["tracks"]["visibility_ext2"].mean() > 0.3
    assert after["quality"]["camera_types"]["ext2"] == "fixed"
    assert before["quality"]["camera_types"]["ext2"] == "exterior"


def drop_last_frames(path: Path, keep: int) -> None:
    """Re-encode the first ``keep`` frames of ``path`` in place (FFmpeg)."""
    tmp = path.with_name(f"cut-{path.name}")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", str(keep), "-c:v", "libx264",
                    "-crf", "10", "-pix_fmt", "yuv420p", str(tmp)], check=True)
    tmp.replace(path)


def test_mp4_one_frame_short_completes_with_the_last_step_invisible(dataset: DatasetInfo, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    config = write_config(data, split_files(data))
    full = run(data, config, "full")
    ext1 = data["episode"].serials["ext1"]
    for name in (f"{ext1}.mp4", f"{ext1}-stereo.mp4"):
        drop_last_frames(data["folder"] / "recordings" / "MP4" / name, FRAMES - 1)
    short = run(data, config, "short", depth=("ext1",))
    seen, full_seen = short["tracks"]["visibility_ext1"], full["tracks"]["visibility_ext1"]
    assert full_seen[-1].any() and not seen[-1].any()
    np.testing.assert_array_equal(seen[:-1], full_seen[:-1])
    np.testing.assert_array_equal(short["tracks"]["tracks_3d"], full["tracks"]["tracks_3d"])
    quality = short["quality"]
    assert quality["video_alignment"]["ext1"] == {"file": f"{ext1}.mp4", "frame_count": FRAMES - 1,
                                                "steps_without_frame": [FRAMES - 1], "extra_frames": 0,
                                                "frames_aligned": False}
    # the depth step pads the same step: frame i is step i in both
    meta = DepthMeta.load(short["out"] / "recordings" / ext1 / "depth_meta.json")
    assert meta.num_frames == FRAMES and meta.missing_frames == [FRAMES - 1]
    assert quality["depth"]["ext1"]["missing_frames"] == quality["video_alignment"]["ext1"]["steps_without_frame"]
    assert quality["depth"]["ext1"]["frame_count_mismatch"] == -1


def test_mp4_three_frames_short_fails(dataset: DatasetInfo, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    ext1 = data["episode"].serials["ext1"]
    drop_last_frames(data["folder"] / "recordings" / "MP4" / f"{ext1}.mp4", FRAMES - 3)
    with pytest.raises(EpisodeError) as info:
        run(data, write_config(data, split_files(data)), "short")
    assert info.value.step == "tracks"
    assert info.value.cause == (f"ext1 camera {ext1}: {ext1}.mp4 has {FRAMES - 3} frames but trajectory.h5 has "
                                f"{FRAMES} steps, more than video_frame_mismatch.tolerance_frames = 2")
