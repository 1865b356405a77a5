"""The NumPy rotations against SciPy's Rotation and Slerp (the oracle), to 1e-12, on random
inputs and on the edge cases: angles near +-pi (DROID's roll at home), gimbal lock, the identity,
rotations by pi, identical and antipodal quaternions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from droid_pipeline.geometry.normalize import ArcLengthSampling, interpolate_rotations
from droid_pipeline.geometry.poses import pose6_to_matrix
from droid_pipeline.geometry.rotations import (
    euler_xyz_to_matrix,
    euler_xyz_to_quat,
    matrix_to_quat,
    quat_angle,
    quat_multiply,
    quat_to_matrix,
    rotation_angle,
    slerp_matrices,
    slerp_quats,
)

TOLERANCE = 1e-12
TINY = 1e-9


def same_rotation_quats(a: np.ndarray, b: np.ndarray) -> None:
    """Quaternions equal up to the sign that gives the same rotation."""
    sign = np.where(np.einsum("...i,...i->...", a, b) < 0.0, -1.0, 1.0)[..., None]
    np.testing.assert_allclose(a, sign * b, rtol=0, atol=TOLERANCE)


def edge_angles() -> np.ndarray:
    """Euler angles at and next to +-pi, +-pi/2 (gimbal lock of xyz) and 0, in every slot."""
    values = np.array([0.0, TINY, -TINY, np.pi, -np.pi, np.pi - TINY, -np.pi + TINY, np.pi / 2, -np.pi / 2,
                       np.pi / 2 - TINY, -np.pi / 2 + TINY, 1e-4, 3.0])
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261207)


def random_angles(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(-np.pi, np.pi, (count, 3))


def test_euler_xyz_matches_scipy_on_random_and_edge_angles(rng):
    angles = np.concatenate([random_angles(rng, 5000), edge_angles()])
    expected = Rotation.from_euler("xyz", angles)
    same_rotation_quats(euler_xyz_to_quat(angles), expected.as_quat())
    np.testing.assert_allclose(euler_xyz_to_matrix(angles), expected.as_matrix(), rtol=0, atol=TOLERANCE)


def test_euler_xyz_keeps_leading_axes_and_rejects_other_shapes(rng):
    angles = random_angles(rng, 24).reshape(2, 3, 4, 3)
    expected = Rotation.from_euler("xyz", angles.reshape(-1, 3)).as_matrix().reshape(2, 3, 4, 3, 3)
    np.testing.assert_allclose(euler_xyz_to_matrix(angles), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(euler_xyz_to_matrix(angles[0, 0, 0]), expected[0, 0, 0], rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="3 values"):
        euler_xyz_to_quat(np.zeros((4, 2)))


def test_pose6_to_matrix_matches_scipy(rng):
    poses = np.concatenate([rng.uniform(-1, 1, (500, 3)), random_angles(rng, 500)], axis=1)
    expected = np.tile(np.eye(4), (500, 1, 1))
    expected[:, :3, :3] = Rotation.from_euler("xyz", poses[:, 3:]).as_matrix()
    expected[:, :3, 3] = poses[:, :3]
    np.testing.assert_allclose(pose6_to_matrix(poses), expected, rtol=0, atol=TOLERANCE)


def test_matrix_and_quaternion_conversions_match_scipy(rng):
    rotations = Rotation.concatenate([
        Rotation.random(5000, random_state=1),
        Rotation.from_euler("xyz", edge_angles()),
        # rotations by pi and next to it about every axis and a diagonal: the trace is smallest there
        Rotation.from_rotvec(np.outer([np.pi, np.pi - TINY, TINY, 0.0], [1.0, 0.0, 0.0])),
        Rotation.from_rotvec(np.outer([np.pi, np.pi - TINY], [0.0, 1.0, 0.0])),
        Rotation.from_rotvec(np.outer([np.pi, np.pi - TINY], [0.0, 0.0, 1.0])),
        Rotation.from_rotvec(np.outer([np.pi, np.pi - TINY], np.ones(3) / np.sqrt(3.0))),
    ])
    matrices = rotations.as_matrix()
    quats = matrix_to_quat(matrices)
    same_rotation_quats(quats, Rotation.from_matrix(matrices).as_quat())
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(quat_to_matrix(rotations.as_quat()), matrices, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(quat_to_matrix(-rotations.as_quat()), matrices, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(rotation_angle(matrices), rotations.magnitude(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(quat_angle(-rotations.as_quat()), rotations.magnitude(), rtol=0, atol=TOLERANCE)
    assert matrix_to_quat(matrices[:5000].reshape(10, -1, 3, 3)).shape == (10, 500, 4)


def test_quaternion_product_composes_as_scipy(rng):
    a, b = Rotation.random(1000, random_state=2), Rotation.random(1000, random_state=3)
    same_rotation_quats(quat_multiply(a.as_quat(), b.as_quat()), (a * b).as_quat())


def test_slerp_of_matrices_matches_scipy_slerp(rng):
    starts = Rotation.random(2000, random_state=4)
    # ends: random, nearly the start (the small-angle series), the start itself, and half a turn away
    ends = Rotation.concatenate([
        Rotation.random(1000, random_state=5),
        starts[1000:1500] * Rotation.from_rotvec(rng.normal(size=(500, 3)) * 1e-5),
        starts[1500:1800],
        starts[1800:] * Rotation.from_rotvec(np.pi * rng.normal(size=(200, 3)) * 0.999999
                                             / np.linalg.norm(rng.normal(size=(200, 3)), axis=1, keepdims=True)),
    ])
    fractions = rng.uniform(0.0, 1.0, len(starts))
    fractions[:10] = [0.0, 1.0, 0.5, 1e-12, 1 - 1e-12, 0.25, 0.75, 0.0, 1.0, 0.5]
    expected = np.stack([Slerp([0.0, 1.0], Rotation.concatenate([s, e]))([f]).as_matrix()[0]
                         for s, e, f in zip(starts, ends, fractions)])
    got = slerp_matrices(starts.as_matrix(), ends.as_matrix(), fractions)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_slerp_of_quaternions_takes_the_shorter_arc(rng):
    starts = Rotation.random(500, random_state=6).as_quat()
    ends = Rotation.random(500, random_state=7).as_quat()
    fractions = rng.uniform(0.0, 1.0, 500)
    expected = np.stack([Slerp([0.0, 1.0], Rotation.from_quat([s, e]))([f]).as_quat()[0]
                         for s, e, f in zip(starts, ends, fractions)])
    same_rotation_quats(slerp_quats(starts, ends, fractions), expected)
    same_rotation_quats(slerp_quats(starts, -ends, fractions), expected)   # antipodal end: the same rotation
    for fraction in (0.0, 0.3, 1.0):  # identical and antipodal quaternions stay where they are
        same_rotation_quats(slerp_quats(starts, starts, np.full(500, fraction)), starts)
        same_rotation_quats(slerp_quats(starts, -starts, np.full(500, fraction)), starts)
    same_rotation_quats(slerp_quats(starts, ends, np.zeros(500)), starts)
    same_rotation_quats(slerp_quats(starts, ends, np.ones(500)), ends)


def test_interpolate_rotations_matches_scipy_rotvec_route(rng):
    rotations = Rotation.from_euler("xyz", np.cumsum(rng.normal(0.0, 0.2, (50, 3)), axis=0)).as_matrix()
    lower = rng.integers(0, 49, 300)
    sampling = ArcLengthSampling(cumulative_distance_mm=np.zeros(50), sample_distance_mm=np.zeros(300), lower=lower,
                                 upper=lower + 1, fraction=rng.uniform(0.0, 1.0, 300),
                                 frame_to_sample=np.zeros(50, dtype=np.int64))
    relative = Rotation.from_matrix(np.swapaxes(rotations[lower], -1, -2) @ rotations[lower + 1])
    expected = rotations[lower] @ Rotation.from_rotvec(relative.as_rotvec() * sampling.fraction[:, None]).as_matrix()
    np.testing.assert_allclose(interpolate_rotations(rotations, sampling), expected, rtol=0, atol=TOLERANCE)
