"""Pinhole projection of base-frame points into a camera, and which of them the camera sees.

The camera model is OpenCV's (``cv2.projectPoints``): optical frame +z forward, +x right, +y
down, pixel centres at integer coordinates, radial k1 k2 k3 and tangential p1 p2 distortion
(all zero for the rectified images DROID's MP4s hold). Everything is vectorized over frames and
points; points behind or beside the camera keep their (finite) projected values and are marked
invisible.
"""

from __future__ import annotations

import numpy as np

from droid_pipeline.geometry.poses import invert

# Depths closer to zero than this (metres) are clamped before dividing, so a point in the
# camera's plane projects to large finite values instead of inf/NaN (it is invisible anyway).
MIN_ABS_DEPTH_M = 1e-6


def points_in_camera(points_base: np.ndarray, base_from_camera: np.ndarray) -> np.ndarray:
    """(T, N, 3) base-frame points -> camera frame, for a (4, 4) or per-frame (T, 4, 4) pose."""
    camera_from_base = invert(base_from_camera)
    rotation = camera_from_base[..., :3, :3]
    translation = camera_from_base[..., None, :3, 3]
    return points_base @ np.swapaxes(rotation, -1, -2) + translation


def project(points_camera: np.ndarray, camera_matrix: np.ndarray,
            distortion: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) camera-frame points -> (..., 2) pixels, as ``cv2.projectPoints`` computes them.

    Uses fx, fy, cx, cy of ``camera_matrix`` (OpenCV ignores skew too); ``distortion`` is
    (k1, k2, p1, p2, k3), None or zeros for rectified images.
    """
    depth = points_camera[..., 2]
    safe_depth = np.where(np.abs(depth) < MIN_ABS_DEPTH_M,
                          np.where(depth < 0, -MIN_ABS_DEPTH_M, MIN_ABS_DEPTH_M), depth)
    x = points_camera[..., 0] / safe_depth
    y = points_camera[..., 1] / safe_depth
    if distortion is not None and np.any(distortion):
        k1, k2, p1, p2, k3 = (float(v) for v in distortion)
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        x, y = (x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
                y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y)
    k = np.asarray(camera_matrix, dtype=np.float64)
    u = k[0, 0] * x + k[0, 2]
    v = k[1, 1] * y + k[1, 2]
    return np.stack([u, v], axis=-1)


def visible(pixels: np.ndarray, depth: np.ndarray, width: int, height: int,
            min_depth: float) -> np.ndarray:
    """Points in front of the camera beyond ``min_depth`` (metres) whose pixel is in the image.

    A pixel (u, v) is in a width x height image when -0.5 <= u < width - 0.5 and likewise for v
    (pixel centres at integers, as in OpenCV).
    """
    u, v = pixels[..., 0], pixels[..., 1]
    return ((depth > min_depth) & (u >= -0.5) & (u < width - 0.5)
            & (v >= -0.5) & (v < height - 0.5))
