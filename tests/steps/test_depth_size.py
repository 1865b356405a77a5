"""depth_size: an exact integer downscale of the stored depth, its method against a brute-force
reference, its intrinsics against a plane rendered directly at the stored size (cv2.projectPoints
convention), and the depth step writing it with depth_meta.json's record, read back by ffmpeg."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from synthetic_fixtures import SMALL_SIZE, small_dataset

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.intrinsics import IntrinsicsRecord
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.depth import downscale_depth, downscale_factor, extract_depth, scaled_intrinsics
from droid_pipeline.steps.intrinsics import extract_intrinsics


def reference_downscale(frame: np.ndarray, factor: int) -> np.ndarray:
    """Block by block in plain Python: the lower median of the non-zero values, 0 if under half."""
    out = np.zeros((frame.shape[0] // factor, frame.shape[1] // factor), np.uint16)
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            block = frame[row * factor:(row + 1) * factor, col * factor:(col + 1) * factor].ravel().tolist()
            valid = sorted(v for v in block if v)
            if 2 * len(valid) >= len(block):
                out[row, col] = valid[(len(valid) - 1) // 2]
    return out


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downscale_is_the_lower_median_of_valid_pixels(factor):
    rng = np.random.default_rng(factor)
    frame = rng.integers(300, 5000, (36, 48)).astype(np.uint16)
    frame[rng.random(frame.shape) < 0.4] = 0
    frame[:factor, :factor] = 0  # a block with nothing valid
    frame[-1, -1] = 65535
    got = downscale_depth(frame, factor)
    np.testing.assert_array_equal(got, reference_downscale(frame, factor))
    assert got[0, 0] == 0
    assert set(np.unique(got)) <= set(np.unique(frame))  # only measured values, never an average


def test_a_depth_edge_keeps_one_side_never_a_mix():
    frame = np.full((4, 4), 800, np.uint16)
    frame[:, 2:] = 3000
    frame[1, 1] = 3000  # a block three quarters near, one quarter far
    assert downscale_depth(frame, 2).tolist() == [[800, 3000], [800, 3000]]


def plane_depth_mm(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Depth (mm along the optical axis) of the plane z = 2 m + 0.5 x, rendered by rays through
    the pixel centres of K."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    return 2000.0 / (1.0 - 0.5 * x) + 0.0 * v


def test_scaled_intrinsics_put_each_stored_pixel_at_the_centre_of_its_block():
    K = np.array([[700.0, 0.0, 641.3], [0.0, 700.0, 359.2], [0.0, 0.0, 1.0]])
    native = plane_depth_mm(K, 1280, 720)
    scaled = scaled_intrinsics(K, (1280, 720), 2)
    assert (scaled["width"], scaled["height"]) == (640, 360)
    K2 = np.array(scaled["K"])
    blocks = native.reshape(360, 2, 640, 2).transpose(0, 2, 1, 3).reshape(360, 640, 4)
    direct = plane_depth_mm(K2, 640, 360)  # rays through the stored pixels' centres
    assert np.abs(direct - blocks.mean(axis=-1)).max() < 0.01  # = the block's centre (cx / 2 would be 1 mm off)
    stored = downscale_depth(np.rint(native).astype(np.uint16), 2)
    assert ((stored >= np.rint(blocks.min(-1))) & (stored <= np.rint(blocks.max(-1)))).all()
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.8, 0.8, 500), rng.uniform(-0.45, 0.45, 500), rng.uniform(1, 3, 500)])
    native_px = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K, None)[0].reshape(-1, 2)
    stored_px = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K2, None)[0].reshape(-1, 2)
    # a point lands in the stored pixel whose block holds the native pixel it lands in
    np.testing.assert_array_equal(np.floor(np.floor(native_px + 0.5) / 2), np.floor(stored_px + 0.5))


def test_depth_size_must_be_an_exact_downscale():
    assert downscale_factor("native", 1280, 720) == 1
    assert downscale_factor("640x360", 1280, 720) == 2
    assert downscale_factor("320X180", 1280, 720) == 4
    for bad in ("600x360", "640x320", "2560x1440", "half"):
        with pytest.raises(ValueError, match="depth_size"):
            downscale_factor(bad, 1280, 720)


def test_the_depth_step_stores_the_downscale_and_records_its_intrinsics(tmp_path_factory, tmp_path):
    info = small_dataset(tmp_path_factory)
    width, height = SMALL_SIZE
    stored_w, stored_h = width // 2, height // 2
    results = {}
    for size in ("native", f"{stored_w}x{stored_h}"):
        config = load_config([info.config_path], [f"depth_size={size}", f"episode_index_path={tmp_path / 'i.json'}"])
        episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
        out = tmp_path / size
        extract_intrinsics(config, episode, out)
        result = extract_depth(config, episode, out, backend="stereo", cameras=["ext1"])
        camera = next(iter(result.cameras.values()))
        frames = subprocess.run(["ffmpeg", "-v", "error", "-i", str(camera.depth_path), "-f", "rawvideo",
                                 "-pix_fmt", "gray16le", "-"], check=True, capture_output=True).stdout
        results[size] = (camera, np.frombuffer(frames, "<u2").reshape(-1, camera.meta.height, camera.meta.width),
                         IntrinsicsRecord.load(out / "recordings" / camera.serial / "intrinsics.json"))
    native, native_frames, record = results["native"]
    small, small_frames, _ = results[f"{stored_w}x{stored_h}"]
    assert "depth_size" not in native.meta.source
    assert (small.meta.width, small.meta.height) == (stored_w, stored_h) == small_frames.shape[2:0:-1]
    np.testing.assert_array_equal(small_frames, np.stack([reference_downscale(f, 2) for f in native_frames]))
    recorded = json.loads(small.meta_path.read_text())["source"]["depth_size"]
    assert recorded["native"] == [width, height] and recorded["stored"] == [stored_w, stored_h]
    assert recorded["factor"] == 2 and "median" in recorded["method"]
    expected_K = [[record.fx / 2, 0.0, (record.cx + 0.5) / 2 - 0.5], [0.0, record.fy / 2, (record.cy + 0.5) / 2 - 0.5],
                  [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(recorded["intrinsics"]["K"], expected_K, rtol=0, atol=1e-12)
    config = load_config([info.config_path], [f"depth_size={width - 1}x{height}",
                                              f"episode_index_path={tmp_path / 'i.json'}"])
    episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
    with pytest.raises(EpisodeError, match="not an exact integer downscale"):
        extract_depth(config, episode, tmp_path / "bad", backend="stereo", cameras=["ext1"])
