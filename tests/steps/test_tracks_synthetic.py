"""The intrinsics and tracks steps end to end on a rendered synthetic episode, checked against
its ground truth: true camera poses and intrinsics, and the rendered depth of the finger pads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.depth_codec import DepthWriter
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks
from droid_pipeline.synthetic.generator import CONTROL_HZ, generate_dataset

FRAMES = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    info = generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=1, frames=FRAMES)
    config = load_config([info.config_path])
    episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
    output_dir = config.output_root / episode.relative_path
    extract_intrinsics(config, episode, output_dir)
    summary = generate_tracks(config, episode, output_dir)
    truth_dir = info.ground_truth_path(info.episodes[0])
    with np.load(output_dir / "tracks.npz", allow_pickle=False) as tracks, \
            np.load(output_dir / "extrinsics.npz", allow_pickle=False) as extrinsics:
        return {"summary": summary, "tracks": dict(tracks), "extrinsics": dict(extrinsics),
                "quality": json.loads((output_dir / "quality.json").read_text()),
                "truth": json.loads((truth_dir / "cameras.json").read_text()), "truth_dir": truth_dir,
                "output_dir": output_dir, "relative_path": episode.relative_path,
                "output_root": config.output_root}


def true_poses(run: dict, serial: str) -> np.ndarray:
    """(T, 4, 4) true T_base_cam: exterior as given, wrist as flange pose x its true offset."""
    camera = run["truth"][serial]
    if camera["role"] != "wrist":
        return np.broadcast_to(np.array(camera["T_base_cam"]), (FRAMES, 4, 4))
    cartesian = run["tracks"]["cartesian_positions"]
    flange = np.array([np.eye(4)] * FRAMES)
    flange[:, :3, :3] = Rotation.from_euler("xyz", cartesian[:, 3:]).as_matrix()
    flange[:, :3, 3] = cartesian[:, :3]
    return flange @ np.array(camera["T_flange_cam"])


def test_written_under_output_root_mirroring_the_input(run: dict) -> None:
    assert run["output_dir"] == run["output_root"] / run["relative_path"]
    assert run["summary"]["warnings"] == []
    assert set(run["summary"]["files"]) == {"tracks.npz", "extrinsics.npz", "quality.json"}


def test_fps_measured_from_whole_millisecond_stamps(run: dict) -> None:
    # stamps jitter by up to 3 ms at either end of 11 steps: at most ~0.06 Hz off
    assert float(run["tracks"]["fps"]) == pytest.approx(CONTROL_HZ, abs=0.1)


def test_camera_poses_and_intrinsics_equal_the_ground_truth(run: dict) -> None:
    for serial, camera in run["truth"].items():
        np.testing.assert_allclose(np.broadcast_to(run["extrinsics"][f"T_base_cam_{camera['role']}"], (FRAMES, 4, 4)),
                                   true_poses(run, serial), atol=1e-9)
        np.testing.assert_allclose(run["tracks"][f"intrinsics_{camera['role']}"], camera["K"], atol=1e-6)
        assert run["tracks"][f"image_size_{camera['role']}"].tolist() == [camera["width"], camera["height"]]
    assert run["quality"]["wrist_pose_deviation"]["max_translation_mm"] < 1e-6


def test_2d_tracks_equal_cv2_projection_with_true_cameras(run: dict) -> None:
    points = run["tracks"]["tracks_3d"].astype(np.float64)
    for serial, camera in run["truth"].items():
        poses = true_poses(run, serial)
        for t in range(FRAMES):
            camera_from_base = np.linalg.inv(poses[t])
            rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
            expected, _ = cv2.projectPoints(points[t], rvec, camera_from_base[:3, 3],
                                            np.array(camera["K"]), np.zeros(5))
            np.testing.assert_allclose(run["tracks"][f"tracks_2d_{camera['role']}"][t], expected[:, 0], atol=1e-3)


def test_wrist_tracks_land_on_the_rendered_pads(run: dict) -> None:
    """Where the wrist camera sees a contact point, the rendered depth there is that point's depth
    (most points: the rest sit on pad edges or behind the other finger)."""
    serial, camera = next((s, c) for s, c in run["truth"].items() if c["role"] == "wrist")
    depth_mm = np.load(run["truth_dir"] / camera["depth_file"])
    camera_from_base = np.linalg.inv(true_poses(run, serial))
    points = run["tracks"]["tracks_3d"].astype(np.float64)
    z_mm = 1000.0 * (np.einsum("tj,tnj->tn", camera_from_base[:, 2, :3], points) + camera_from_base[:, None, 2, 3])
    t, n = np.nonzero(run["tracks"][f"visibility_{camera['role']}"])
    assert t.size > 0.5 * points.shape[0] * points.shape[1]
    pixels = np.rint(run["tracks"][f"tracks_2d_{camera['role']}"][t, n]).astype(int)
    rendered = depth_mm[t, pixels[:, 1], pixels[:, 0]].astype(np.float64)
    difference = np.abs(rendered - z_mm[t, n])
    assert np.median(difference) < 1.0
    assert np.mean(difference < 3.0) > 0.6


def _write_depth(output_dir: Path, serial: str, size: tuple[int, int], num_frames: int, missing: set[int]) -> None:
    """depth.mkv + depth_meta.json of a ``size`` (W, H) image as the depth step writes them, some
    frames missing."""
    config = load_config()
    width, height = size
    path = output_dir / "recordings" / serial / "depth.mkv"
    with DepthWriter(path, width, height, CONTROL_HZ, config.ffv1,
                     source={"backend": "stereo", "valid_fraction": 0.5}) as writer:
        for index in range(num_frames):
            if index in missing:
                writer.write_missing()
            else:
                writer.write(np.full((height, width), 1000 + index, dtype=np.uint16))


def test_missing_depth_frames_are_counted_in_quality_and_depth_of_another_length_fails(
        run: dict, tmp_path: Path) -> None:
    config = load_config([run["output_root"].parent / "config.yaml"])
    episode = build_index(config.droid_root, config.index_path).get(run["quality"]["episode"]["episode_id"])
    serial = episode.serials["ext1"]
    size = (run["truth"][serial]["width"], run["truth"][serial]["height"])
    output_dir = Path(shutil.copytree(run["output_dir"], tmp_path / "episode"))
    _write_depth(output_dir, serial, size, FRAMES, missing={0, 7})
    summary = generate_tracks(config, episode, output_dir)
    quality = json.loads((output_dir / "quality.json").read_text())
    assert quality["depth"]["ext1"]["missing_frames"] == [0, 7]
    assert quality["depth"]["ext1"]["num_frames"] == FRAMES
    assert any(serial in w and "2 depth frame(s)" in w for w in summary["warnings"])

    _write_depth(output_dir, serial, size, FRAMES - 1, missing=set())
    with pytest.raises(EpisodeError) as info:
        generate_tracks(config, episode, output_dir)
    assert info.value.step == "tracks" and f"{FRAMES - 1} frames" in info.value.cause
