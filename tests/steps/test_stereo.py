"""Stereo backend against scenes whose disparities are known by construction.

The scene is two fronto-parallel textured planes, rendered into a rectified pair by sampling
each plane's texture at ``x`` (left view) and ``x + d`` (right view), with the nearer plane
occluding the farther one; the true disparity of every left pixel and the strip of background
the right camera cannot see follow from the geometry, not from the code under test.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from droid_pipeline.core.config import load_config
from droid_pipeline.steps.stereo import (
    StereoMatcher,
    consistent,
    disparity_to_depth_mm,
    split_side_by_side,
    to_gray,
)

HEIGHT, WIDTH = 180, 320
FAR_D, NEAR_D = 10.3, 61.7  # disparities (pixels) of the background and of the near square
ROWS, COLS = slice(50, 130), (150, 230)  # near square in the left view


def _texture(seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).random((HEIGHT, WIDTH + 200)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.0)
    return (noise - noise.min()) / (noise.max() - noise.min()) * 255


def _sample(texture: np.ndarray, columns: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(HEIGHT, dtype=np.float32)[:, None], WIDTH, axis=1)
    return cv2.remap(texture, columns.astype(np.float32), rows, cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    far, near = _texture(1), _texture(2)
    x = np.tile(np.arange(WIDTH, dtype=np.float32), (HEIGHT, 1))
    near_left = np.zeros((HEIGHT, WIDTH), bool)
    near_left[ROWS, COLS[0]:COLS[1]] = True
    near_right = np.zeros((HEIGHT, WIDTH), bool)
    near_right[ROWS] = ((x + NEAR_D >= COLS[0]) & (x + NEAR_D < COLS[1]))[ROWS]
    left = np.where(near_left, _sample(near, x), _sample(far, x))
    right = np.where(near_right, _sample(near, x + NEAR_D), _sample(far, x + FAR_D))
    occluded = np.zeros((HEIGHT, WIDTH), bool)  # background hidden from the right camera
    occluded[ROWS, COLS[0] - int(NEAR_D - FAR_D) + 1:COLS[0] - 1] = True
    return {"left": left.astype(np.uint8), "right": right.astype(np.uint8),
            "truth": np.where(near_left, NEAR_D, FAR_D).astype(np.float32), "occluded": occluded}


@pytest.fixture(scope="module")
def settings():
    return load_config().stereo


def test_split_side_by_side_returns_halves_and_rejects_odd_width():
    frame = np.arange(2 * 3 * 8).reshape(2, 8, 3)
    left, right = split_side_by_side(frame)
    np.testing.assert_array_equal(left, frame[:, :4])
    np.testing.assert_array_equal(right, frame[:, 4:])
    with pytest.raises(ValueError, match="odd width"):
        split_side_by_side(np.zeros((2, 7)))


def test_to_gray_uses_luma_weights():
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 0, 0] = rgb[0, 1, 1] = rgb[0, 2, 2] = 200
    # ITU-R BT.601 luma: 0.299 R + 0.587 G + 0.114 B
    np.testing.assert_array_equal(to_gray(rgb)[0], np.rint(200 * np.array([0.299, 0.587, 0.114])))


def test_disparity_to_depth_is_fx_baseline_over_d_and_nan_when_not_positive():
    depth = disparity_to_depth_mm(np.array([[20.0, 40.0, 0.0, -3.0, np.nan]]), fx=500.0, baseline_m=0.12)
    np.testing.assert_allclose(depth[0, :2], [3000.0, 1500.0], rtol=1e-6)
    assert np.isnan(depth[0, 2:]).all()
    assert depth.dtype == np.float32


def test_consistency_check_keeps_only_mutually_agreeing_matches():
    left = np.array([[np.nan, 1.0, 1.0, 2.0, 3.0, 3.0]], np.float32)
    right = np.array([[1.0, 1.0, 2.5, 0.5, 3.0, np.nan]], np.float32)
    # x=1 -> xr=0 (1 vs 1 ok); x=2 -> xr=1 (ok); x=3 -> xr=1 (2 vs 1: off by 1, at the limit);
    # x=4 -> xr=1 (3 vs 1: rejected); x=5 -> xr=2 (3 vs 2.5: ok).
    out = consistent(left, right, max_diff=1.0)
    np.testing.assert_array_equal(out, [[np.nan, 1.0, 1.0, 2.0, np.nan, 3.0]])
    assert np.isnan(consistent(left, right, max_diff=0.4)[0, [0, 3, 4, 5]]).all()
    # a disparity pointing left of the image has no partner
    assert np.isnan(consistent(np.array([[5.0, 5.0]], np.float32), np.zeros((1, 2), np.float32), 9.0)).all()


def test_sgbm_recovers_known_disparities_to_a_third_of_a_pixel(scene, settings):
    disparity = StereoMatcher(settings).disparity(scene["left"], scene["right"])
    valid = np.isfinite(disparity)
    error = np.abs(disparity - scene["truth"])[valid]
    # SGBM's 1/16 px parabola fit locks towards whole pixels: at most ~1/4 px off on this scene.
    assert np.median(error) < 0.3
    assert np.percentile(error, 99) < 0.5
    visible = ~scene["occluded"]
    assert valid[visible].mean() > 0.85  # the left border is matched too (no dead SGBM band)
    assert valid[:, :settings.num_disparities][visible[:, :settings.num_disparities]].mean() > 0.8


def test_left_right_check_only_removes_pixels_and_rejects_occluded_background(scene, settings):
    unchecked = StereoMatcher(dataclasses.replace(settings, lr_check=False))
    raw = unchecked.disparity(scene["left"], scene["right"])
    kept = StereoMatcher(settings).disparity(scene["left"], scene["right"])
    valid = np.isfinite(kept)
    assert not (valid & ~np.isfinite(raw)).any()
    np.testing.assert_array_equal(kept[valid], raw[valid])
    assert np.isfinite(kept[scene["occluded"]]).mean() < 0.05
    # a zero tolerance keeps only pixels whose two matches agree exactly
    strict = StereoMatcher(dataclasses.replace(settings, lr_max_diff_px=0.0))
    assert np.isfinite(strict.disparity(scene["left"], scene["right"])).sum() < valid.sum()


def test_depth_mm_matches_fx_baseline_over_true_disparity(scene, settings):
    fx, baseline_m = 262.5, 0.12
    depth = StereoMatcher(settings).depth_mm(scene["left"], scene["right"], fx, baseline_m)
    truth = fx * baseline_m * 1000.0 / scene["truth"]
    valid = np.isfinite(depth)
    relative = np.abs(depth - truth)[valid] / truth[valid]
    assert np.median(relative) < 0.03


def test_mismatched_views_are_rejected(settings):
    with pytest.raises(ValueError, match="differ in size"):
        StereoMatcher(settings).disparity(np.zeros((10, 40), np.uint8), np.zeros((10, 42), np.uint8))
