"""Projection and visibility against OpenCV's cv2.projectPoints."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from droid_pipeline.geometry.projection import points_in_camera, project, visible

K = np.array([[530.0, 0.0, 641.3], [0.0, 528.5, 362.7], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_base_cam of an OpenCV camera at ``eye`` looking at ``target`` (base +z roughly up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([right, down, forward])
    pose[:3, 3] = eye
    return pose


def opencv_reference(points_base: np.ndarray, base_from_camera: np.ndarray,
                     distortion: np.ndarray) -> np.ndarray:
    camera_from_base = np.linalg.inv(base_from_camera)
    rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
    pixels, _ = cv2.projectPoints(points_base.reshape(-1, 1, 3), rvec, camera_from_base[:3, 3],
                                  K, distortion)
    return pixels.reshape(-1, 2)


@pytest.mark.parametrize("distortion", [np.zeros(5), np.array([-0.05, 0.02, 1e-3, -5e-4, -3e-3])])
def test_matches_cv2_project_points_static_camera(distortion: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform([0.3, -0.3, 0.0], [0.7, 0.3, 0.4], size=(7, 50, 3))
    pose = look_at(np.array([0.2, -0.8, 0.6]), np.array([0.5, 0.0, 0.2]))
    ours = project(points_in_camera(points, pose), K, distortion)
    for t in range(points.shape[0]):
        np.testing.assert_allclose(ours[t], opencv_reference(points[t], pose, distortion), atol=1e-6)


def test_matches_cv2_project_points_per_frame_camera() -> None:
    rng = np.random.default_rng(2)
    points = rng.uniform([0.3, -0.3, 0.0], [0.7, 0.3, 0.4], size=(5, 30, 3))
    poses = np.stack([look_at(np.array([0.1 + 0.05 * t, -0.7, 0.5]), np.array([0.5, 0.0, 0.2]))
                      for t in range(5)])
    ours = project(points_in_camera(points, poses), K)
    for t in range(5):
        np.testing.assert_allclose(ours[t], opencv_reference(points[t], poses[t], np.zeros(5)),
                                   atol=1e-6)


def test_camera_behind_or_beside_sees_nothing_and_values_stay_finite() -> None:
    points = np.random.default_rng(3).uniform(-0.05, 0.05, size=(4, 20, 3)) + [0.5, 0.0, 0.2]
    facing = look_at(np.array([0.5, -0.8, 0.2]), np.array([0.5, 0.0, 0.2]))
    behind = look_at(np.array([0.5, -0.8, 0.2]), np.array([0.5, -1.6, 0.2]))
    beside = look_at(np.array([0.5, -0.8, 0.2]), np.array([1.3, -0.8, 0.2]))
    inside = look_at(np.array([0.5, 0.0, 0.2]), np.array([0.5, 1.0, 0.2]))  # lens amid the points
    results = {}
    for name, pose in {"facing": facing, "behind": behind, "beside": beside,
                       "inside": inside}.items():
        camera_points = points_in_camera(points, pose)
        pixels = project(camera_points, K)
        assert np.isfinite(pixels).all(), name
        results[name] = visible(pixels, camera_points[..., 2], 1280, 720, 0.1)
    assert results["facing"].all()
    assert not results["behind"].any()
    assert not results["beside"].any()
    assert not results["inside"].any()


def test_min_depth_and_image_border() -> None:
    camera_points = np.array([[0.0, 0.0, 0.05], [0.0, 0.0, 0.5], [10.0, 0.0, 1.0]])
    pixels = project(camera_points, K)
    assert visible(pixels, camera_points[:, 2], 1280, 720, 0.1).tolist() == [False, True, False]
    assert visible(pixels, camera_points[:, 2], 1280, 720, 0.01).tolist() == [True, True, False]
    border = np.array([[-0.5, 0.0], [-0.51, 0.0], [1279.49, 719.49], [1279.5, 0.0], [0.0, 719.5]])
    assert visible(border, np.ones(5), 1280, 720, 0.1).tolist() == [True, False, True, False, False]


def test_points_in_camera_match_rigid_inverse() -> None:
    rotation = Rotation.from_euler("xyz", [2.9, -0.3, 0.7])
    pose = np.eye(4)
    pose[:3, :3] = rotation.as_matrix()
    pose[:3, 3] = [0.4, -0.2, 0.9]
    points = np.random.default_rng(4).normal(size=(2, 6, 3))
    expected = rotation.inv().apply(points.reshape(-1, 3) - pose[:3, 3]).reshape(points.shape)
    np.testing.assert_allclose(points_in_camera(points, pose), expected, atol=1e-12)
