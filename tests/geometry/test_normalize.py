"""Arc-length resampling against independent references: NumPy chords, np.interp, SciPy Slerp."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from droid_pipeline.geometry.normalize import (
    arc_length_sampling,
    interpolate_linear,
    interpolate_rotations,
)


def wiggly_path(num_frames: int = 120, seed: int = 0) -> np.ndarray:
    """A strictly moving 3D path of about 0.4 m, in metres."""
    t = np.linspace(0.0, 1.0, num_frames)
    rng = np.random.default_rng(seed)
    path = np.stack([0.4 + 0.2 * np.sin(3 * t), 0.15 * np.cos(5 * t), 0.3 + 0.1 * t], axis=1)
    return path + rng.normal(scale=5e-4, size=path.shape)


def reference_arc_length_mm(path: np.ndarray, point: np.ndarray) -> float:
    """Arc length (mm) of a point lying on the polyline, found by its nearest segment."""
    starts, ends = path[:-1], path[1:]
    seg = ends - starts
    t = np.clip(np.einsum("ij,ij->i", point - starts, seg) / np.einsum("ij,ij->i", seg, seg), 0, 1)
    distance = np.linalg.norm(starts + t[:, None] * seg - point, axis=1)
    i = int(np.argmin(distance))
    assert distance[i] < 1e-12
    before = np.sum(np.linalg.norm(seg[:i], axis=1))
    return 1000.0 * (before + np.linalg.norm(point - starts[i]))


@pytest.mark.parametrize("step_mm", [1.0, 2.5, 0.7])
def test_samples_are_exactly_k_steps_along_the_path(step_mm: float) -> None:
    path = wiggly_path()
    sampling = arc_length_sampling(path, step_mm)
    samples = interpolate_linear(path, sampling)
    length_mm = 1000.0 * np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1))
    expected_count = int(np.floor(length_mm / step_mm)) + 1 + (length_mm % step_mm > 1e-9)
    assert samples.shape == (expected_count, 3)
    for k, point in enumerate(samples[:-1]):
        assert abs(reference_arc_length_mm(path, point) - k * step_mm) < 1e-6
    assert abs(reference_arc_length_mm(path, samples[-1]) - length_mm) < 1e-6
    np.testing.assert_allclose(samples[-1], path[-1], atol=1e-12)
    np.testing.assert_allclose(samples[0], path[0], atol=1e-12)
    chords_mm = 1000.0 * np.linalg.norm(np.diff(samples, axis=0), axis=1)
    assert chords_mm.max() <= step_mm + 1e-9
    np.testing.assert_allclose(sampling.cumulative_distance_mm,
                               1000.0 * np.concatenate([[0.0], np.cumsum(np.linalg.norm(
                                   np.diff(path, axis=0), axis=1))]), rtol=1e-12)


def test_values_and_rotations_follow_np_interp_and_scipy_slerp() -> None:
    path = wiggly_path(80, seed=1)
    num_frames = path.shape[0]
    # roll near +-pi as at DROID's home pose: Euler angles wrap, Slerp must not care
    euler = np.stack([np.pi - 0.02 + 0.04 * np.sin(np.linspace(0, 9, num_frames)),
                      0.3 * np.sin(np.linspace(0, 4, num_frames)),
                      np.linspace(-1.0, 1.5, num_frames)], axis=1)
    rotations = Rotation.from_euler("xyz", euler)
    opening = np.linspace(0.0, 1.0, num_frames) ** 2
    sampling = arc_length_sampling(path, 1.0)
    arc = 1000.0 * np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    query = np.minimum(np.arange(sampling.num_samples) * 1.0, arc[-1])

    expected = Slerp(arc, rotations)(query).as_matrix()
    np.testing.assert_allclose(interpolate_rotations(rotations.as_matrix(), sampling), expected,
                               atol=1e-9)
    np.testing.assert_allclose(interpolate_linear(opening, sampling), np.interp(query, arc, opening),
                               atol=1e-12)


def test_frame_to_sample_is_nearest_and_non_decreasing() -> None:
    path = wiggly_path(60, seed=2)
    sampling = arc_length_sampling(path, 3.0)
    sample_mm = np.array([reference_arc_length_mm(path, p)
                          for p in interpolate_linear(path, sampling)])
    frame_mm = sampling.cumulative_distance_mm
    nearest = np.argmin(np.abs(frame_mm[:, None] - sample_mm[None, :]), axis=1)
    np.testing.assert_array_equal(sampling.frame_to_sample, nearest)
    assert np.all(np.diff(sampling.frame_to_sample) >= 0)
    assert sampling.frame_to_sample[0] == 0
    assert sampling.frame_to_sample[-1] == sampling.num_samples - 1


def test_stationary_stretch_takes_the_frame_that_leaves_it() -> None:
    # frames 2..5 sit at the same point while the gripper turns; the path then moves on
    path = np.array([[0, 0, 0], [0.002, 0, 0], [0.004, 0, 0], [0.004, 0, 0], [0.004, 0, 0],
                     [0.004, 0, 0], [0.004, 0.003, 0]], dtype=float)
    yaw = np.array([0, 0, 0, 0.3, 0.6, 0.9, 0.9])
    rotations = Rotation.from_euler("z", yaw[:, None]).as_matrix()
    sampling = arc_length_sampling(path, 1.0)
    assert sampling.num_samples == 8
    frames = interpolate_rotations(rotations, sampling)
    np.testing.assert_allclose(Rotation.from_matrix(frames[4]).as_euler("xyz")[2], 0.9, atol=1e-12)
    np.testing.assert_allclose(interpolate_linear(path, sampling)[4], [0.004, 0, 0], atol=1e-15)
    assert np.all(np.isfinite(frames))


@pytest.mark.parametrize("num_frames", [1, 5])
def test_no_motion_gives_one_sample(num_frames: int) -> None:
    path = np.tile([0.5, 0.1, 0.3], (num_frames, 1))
    sampling = arc_length_sampling(path, 1.0)
    assert sampling.num_samples == 1
    assert sampling.path_length_mm == 0.0
    np.testing.assert_array_equal(sampling.frame_to_sample, np.zeros(num_frames))
    np.testing.assert_allclose(interpolate_linear(path, sampling), path[:1])
    rotations = np.tile(np.eye(3), (num_frames, 1, 1))
    np.testing.assert_allclose(interpolate_rotations(rotations, sampling), rotations[:1])


def test_rejects_bad_paths() -> None:
    with pytest.raises(ValueError, match="NaN"):
        arc_length_sampling(np.array([[0, 0, 0], [np.nan, 0, 0]]), 1.0)
    with pytest.raises(ValueError, match="T>=1"):
        arc_length_sampling(np.zeros((0, 3)), 1.0)
