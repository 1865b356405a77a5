"""Rotations in NumPy: the few conversions the pipeline needs, so that no command imports SciPy's
``scipy.spatial`` (about 0.3 s of imports) for them.

Quaternions are scalar-last ``(x, y, z, w)``, as SciPy's ``Rotation`` writes them. Each function
follows the algorithm SciPy's ``Rotation`` uses (composition of elementary quaternions for
Euler angles, Markley's method from matrices, the same small-angle series for rotation vectors),
so results agree with SciPy to rounding (tests/geometry/test_rotations.py holds them to 1e-12).
Every function is vectorized over leading axes.
"""

from __future__ import annotations

import numpy as np

# Below this angle (radians) rotation vectors use SciPy's Taylor series instead of sin(angle) / angle.
SMALL_ANGLE = 1e-3


def euler_xyz_to_quat(angles: np.ndarray) -> np.ndarray:
    """(..., 3) extrinsic x-y-z Euler angles (DROID's ``Rotation.from_euler("xyz", ...)``:
    R = Rz @ Ry @ Rx) -> (..., 4) quaternions."""
    angles = np.asarray(angles, dtype=np.float64)
    if angles.shape[-1] != 3:
        raise ValueError(f"x-y-z Euler angles have 3 values, got shape {angles.shape}")
    half = 0.5 * angles
    sine, cosine = np.sin(half), np.cos(half)
    zero = np.zeros_like(half[..., 0])
    elementary = [np.stack([sine[..., 0], zero, zero, cosine[..., 0]], axis=-1),
                  np.stack([zero, sine[..., 1], zero, cosine[..., 1]], axis=-1),
                  np.stack([zero, zero, sine[..., 2], cosine[..., 2]], axis=-1)]
    # Extrinsic: each further rotation is applied after (on the left of) the ones before.
    return quat_multiply(elementary[2], quat_multiply(elementary[1], elementary[0]))


def euler_xyz_to_matrix(angles: np.ndarray) -> np.ndarray:
    """(..., 3) extrinsic x-y-z Euler angles -> (..., 3, 3) rotation matrices."""
    return quat_to_matrix(euler_xyz_to_quat(angles))


def quat_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(..., 4) Hamilton products p * q (the rotation q, then p)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    cross = np.cross(p[..., :3], q[..., :3])
    vector = p[..., 3:] * q[..., :3] + q[..., 3:] * p[..., :3] + cross
    scalar = p[..., 3] * q[..., 3] - np.einsum("...i,...i->...", p[..., :3], q[..., :3])
    return np.concatenate([vector, scalar[..., None]], axis=-1)


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3, 3) rotation matrices."""
    quat = np.asarray(quat, dtype=np.float64)
    x, y, z, w = (quat[..., k] for k in range(4))
    x2, y2, z2, w2 = x * x, y * y, z * z, w * w
    xy, zw, xz, yw, yz, xw = x * y, z * w, x * z, y * w, y * z, x * w
    rows = [[x2 - y2 - z2 + w2, 2 * (xy - zw), 2 * (xz + yw)],
            [2 * (xy + zw), -x2 + y2 - z2 + w2, 2 * (yz - xw)],
            [2 * (xz - yw), 2 * (yz + xw), -x2 - y2 + z2 + w2]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quat(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (Markley's method: from the
    largest of the diagonal and the trace, so no branch loses precision)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices are 3x3, got shape {matrix.shape}")
    lead = matrix.shape[:-2]
    m = matrix.reshape(-1, 3, 3)
    diagonal = np.einsum("nii->ni", m)
    decision = np.concatenate([diagonal, diagonal.sum(axis=1, keepdims=True)], axis=1)
    choice = decision.argmax(axis=1)
    quat = np.empty((len(m), 4))
    rows = np.flatnonzero(choice != 3)
    i = choice[rows]
    j, k = (i + 1) % 3, (i + 2) % 3
    quat[rows, i] = 1.0 - decision[rows, 3] + 2.0 * m[rows, i, i]
    quat[rows, j] = m[rows, j, i] + m[rows, i, j]
    quat[rows, k] = m[rows, k, i] + m[rows, i, k]
    quat[rows, 3] = m[rows, k, j] - m[rows, j, k]
    rows = np.flatnonzero(choice == 3)
    quat[rows, 0] = m[rows, 2, 1] - m[rows, 1, 2]
    quat[rows, 1] = m[rows, 0, 2] - m[rows, 2, 0]
    quat[rows, 2] = m[rows, 1, 0] - m[rows, 0, 1]
    quat[rows, 3] = 1.0 + decision[rows, 3]
    x, y, z, w = (quat[:, k] for k in range(4))
    quat /= np.sqrt(x * x + y * y + z * z + w * w)[:, None]
    return quat.reshape(*lead, 4)


def quat_angle(quat: np.ndarray) -> np.ndarray:
    """(...,) rotation angles in [0, pi] of (..., 4) unit quaternions."""
    quat = np.asarray(quat, dtype=np.float64)
    return 2.0 * np.arctan2(_norm3(quat[..., :3]), np.abs(quat[..., 3]))


def rotation_angle(matrix: np.ndarray) -> np.ndarray:
    """(...,) rotation angles in [0, pi] of (..., 3, 3) rotation matrices."""
    return quat_angle(matrix_to_quat(matrix))


def quat_to_rotvec(quat: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3) rotation vectors (axis times angle, angle in [0, pi])."""
    quat = np.asarray(quat, dtype=np.float64)
    quat = np.where(quat[..., 3:] < 0.0, -quat, quat)  # the shorter way round
    angle = 2.0 * np.arctan2(_norm3(quat[..., :3]), quat[..., 3])
    small, squared = angle <= SMALL_ANGLE, angle * angle
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(small, 2.0 + squared / 12.0 + 7.0 * squared * squared / 2880.0, angle / np.sin(angle / 2.0))
    return scale[..., None] * quat[..., :3]


def rotvec_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 4) unit quaternions."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = _norm3(rotvec)
    small, squared = angle <= SMALL_ANGLE, angle * angle
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(small, 0.5 - squared / 48.0 + squared * squared / 3840.0, np.sin(angle / 2.0) / angle)
    return np.concatenate([scale[..., None] * rotvec, np.cos(angle / 2.0)[..., None]], axis=-1)


def slerp_matrices(start: np.ndarray, end: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations ``fraction`` (...,) of the way from ``start`` to ``end`` along the
    shorter arc at constant speed: start @ exp(fraction * log(start^T @ end))."""
    start = np.asarray(start, dtype=np.float64)
    relative = matrix_to_quat(np.swapaxes(start, -1, -2) @ np.asarray(end, dtype=np.float64))
    partial = rotvec_to_quat(quat_to_rotvec(relative) * np.asarray(fraction, dtype=np.float64)[..., None])
    return start @ quat_to_matrix(partial)


def slerp_quats(start: np.ndarray, end: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions ``fraction`` (...,) of the way from ``start`` to ``end`` along the
    shorter arc (``end`` and ``-end`` give the same rotation); equal inputs give that rotation."""
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    inverse = start * np.array([-1.0, -1.0, -1.0, 1.0])
    partial = rotvec_to_quat(quat_to_rotvec(quat_multiply(inverse, end))
                             * np.asarray(fraction, dtype=np.float64)[..., None])
    return quat_multiply(start, partial)


def _norm3(vectors: np.ndarray) -> np.ndarray:
    """(...,) lengths of (..., 3) vectors, summed in SciPy's order (x, y, then z)."""
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    return np.sqrt(x * x + y * y + z * z)
