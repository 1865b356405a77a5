"""DROID's pose convention: ``[x, y, z, rx, ry, rz]`` with ``Rotation.from_euler("xyz", ...)``.

Lower-case "xyz" is extrinsic x-y-z, R = Rz @ Ry @ Rx (in NumPy: :mod:`.rotations`). Every
function is vectorized over leading axes; Euler angles are only converted, never interpolated
(roll sits near +-pi at home).
"""

from __future__ import annotations

import numpy as np

from droid_pipeline.geometry.rotations import euler_xyz_to_matrix

EULER_ORDER = "xyz"


def pose6_to_matrix(pose: np.ndarray) -> np.ndarray:
    """(..., 6) DROID poses -> (..., 4, 4) homogeneous transforms."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape[-1] != 6:
        raise ValueError(f"a DROID pose has 6 values, got shape {pose.shape}")
    lead = pose.shape[:-1]
    flat = pose.reshape(-1, 6)
    out = np.zeros((flat.shape[0], 4, 4))
    out[:, :3, :3] = euler_xyz_to_matrix(flat[:, 3:])
    out[:, :3, 3] = flat[:, :3]
    out[:, 3, 3] = 1.0
    return out.reshape(*lead, 4, 4)


def matrix_to_pose6(matrix: np.ndarray) -> np.ndarray:
    """(..., 4, 4) homogeneous transforms -> (..., 6) DROID poses. Only the synthetic data writes
    poses, and it needs SciPy anyway: its Euler angles come from SciPy's ``Rotation``."""
    from scipy.spatial.transform import Rotation

    matrix = np.asarray(matrix, dtype=np.float64)
    lead = matrix.shape[:-2]
    flat = matrix.reshape(-1, 4, 4)
    out = np.empty((flat.shape[0], 6))
    out[:, :3] = flat[:, :3, 3]
    out[:, 3:] = Rotation.from_matrix(flat[:, :3, :3]).as_euler(EULER_ORDER)
    return out.reshape(*lead, 6)


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of (..., 4, 4) rigid transforms."""
    transform = np.asarray(transform, dtype=np.float64)
    rot_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    out = np.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, transform[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply (..., 4, 4) transforms to (..., N, 3) points (broadcasting over leading axes)."""
    transform = np.asarray(transform, dtype=np.float64)
    return points @ np.swapaxes(transform[..., :3, :3], -1, -2) + transform[..., None, :3, 3]
