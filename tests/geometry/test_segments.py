"""The segment-vs-meshes query against trimesh's ray intersector (trimesh.ray.ray_triangle), on the
packaged robot meshes posed at random, with targets on their surfaces, inside them and in free space."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation
from trimesh.ray.ray_triangle import ray_triangle_id

from droid_pipeline.geometry.segments import MeshSet, blocked_segments
from droid_pipeline.robot.occlusion import RobotOcclusion

MARGIN_M = 1e-3


@pytest.fixture(scope="module")
def link_meshes() -> list[np.ndarray]:
    """Five of the packaged link meshes (arm and gripper), in their own frames."""
    triangles = RobotOcclusion.load().link_triangles
    return [triangles[name] for name in ("panda_link6", "panda_link7", "robotiq_85_base_link",
                                         "left_inner_knuckle", "right_inner_finger")]


def random_poses(rng: np.random.Generator, steps: int, count: int, spread_m: float) -> np.ndarray:
    poses = np.tile(np.eye(4), (steps, count, 1, 1))
    poses[..., :3, :3] = Rotation.random(steps * count, random_state=rng).as_matrix().reshape(steps, count, 3, 3)
    poses[..., :3, 3] = rng.uniform(-spread_m, spread_m, (steps, count, 3))
    return poses


def look_at(eye: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    forward = (target - eye) / np.linalg.norm(target - eye)
    side = np.cross(forward, rng.normal(size=3))
    side /= np.linalg.norm(side)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([side, np.cross(forward, side), forward])
    pose[:3, 3] = eye
    return pose


def posed_scene(meshes: list[np.ndarray], poses: np.ndarray) -> tuple[trimesh.Trimesh, np.ndarray]:
    """One step's meshes as a single trimesh, and the mesh index of each of its faces."""
    triangles = np.concatenate([m @ p[:3, :3].T + p[:3, 3] for m, p in zip(meshes, poses)])
    owner = np.repeat(np.arange(len(meshes)), [len(m) for m in meshes])
    scene = trimesh.Trimesh(triangles.reshape(-1, 3), np.arange(3 * len(triangles)).reshape(-1, 3), process=False)
    return scene, owner


def reference_blocked(meshes: list[np.ndarray], poses: np.ndarray, camera: np.ndarray, targets: np.ndarray,
                      skip: np.ndarray) -> np.ndarray:
    """trimesh: does the ray from the camera towards each target hit a face of a mesh it may hit
    before the target, by more than the margin?"""
    scene, owner = posed_scene(meshes, poses)
    origin = np.broadcast_to(camera[:3, 3], targets.shape)
    direction = targets - origin
    length = np.linalg.norm(direction, axis=1)
    face, ray, location = ray_triangle_id(scene.triangles, origin, direction / length[:, None], multiple_hits=True)
    hit_distance = np.linalg.norm(location - origin[ray], axis=1)
    counts = (hit_distance < length[ray] - MARGIN_M) & ~skip[ray, owner[face]]
    blocked = np.zeros(len(targets), dtype=bool)
    blocked[ray[counts]] = True
    return blocked


def scene_targets(meshes: list[np.ndarray], poses: np.ndarray, rng: np.random.Generator, count: int,
                  spread_m: float) -> np.ndarray:
    """A third on the posed mesh surfaces, a third inside the meshes' bounds, a third anywhere."""
    scene, _ = posed_scene(meshes, poses)
    on_surface = trimesh.sample.sample_surface(scene, count // 3, seed=int(rng.integers(1 << 31)))[0]
    near = scene.bounds[0] + rng.random((count // 3, 3)) * (scene.bounds[1] - scene.bounds[0])
    anywhere = rng.uniform(-1.5 * spread_m, 1.5 * spread_m, (count - 2 * (count // 3), 3))
    return np.concatenate([on_surface, near, anywhere])


def camera_outside(meshes: list[np.ndarray], poses: np.ndarray, rng: np.random.Generator, spread_m: float,
                   distance_m: float) -> np.ndarray:
    for _ in range(100):
        direction = rng.normal(size=3)
        eye = distance_m * direction / np.linalg.norm(direction)
        if not any(trimesh.Trimesh((m @ p[:3, :3].T + p[:3, 3]).reshape(-1, 3),
                                   np.arange(3 * len(m)).reshape(-1, 3)).contains([eye])[0]
                   for m, p in zip(meshes, poses)):
            return look_at(eye, rng.uniform(-spread_m, spread_m, 3), rng)
    raise AssertionError("no camera position outside the meshes")


@pytest.mark.parametrize("seed, distance_m", [(0, 0.6), (1, 0.25), (2, 1.5)])
def test_agrees_with_trimesh_ray_intersector(link_meshes, seed, distance_m):
    rng = np.random.default_rng(seed)
    steps, count, spread = 4, 600, 0.08
    poses = random_poses(rng, steps, len(link_meshes), spread)
    cameras = np.stack([camera_outside(link_meshes, poses[t], rng, spread, distance_m) for t in range(steps)])
    targets = np.stack([scene_targets(link_meshes, poses[t], rng, count, spread) for t in range(steps)])
    result = blocked_segments(MeshSet(link_meshes), poses, cameras, targets, margin_m=MARGIN_M)
    for t in range(steps):
        in_front = np.einsum("ij,j->i", targets[t] - cameras[t, :3, 3], cameras[t, :3, 2]) > 0
        expected = reference_blocked(link_meshes, poses[t], cameras[t], targets[t],
                                     np.zeros((count, len(link_meshes)), bool)) & in_front
        assert expected.sum() > 50 and (~expected & in_front).sum() > 50
        np.testing.assert_array_equal(result[t], expected, err_msg=f"step {t}")
    assert not result[np.einsum("tni,ti->tn", targets - cameras[:, None, :3, 3], cameras[:, :3, 2]) <= 0].any()


def test_groups_skip_their_excluded_meshes_and_untested_targets_stay_false(link_meshes):
    rng = np.random.default_rng(5)
    steps, count, spread = 3, 450, 0.06
    poses = random_poses(rng, steps, len(link_meshes), spread)
    cameras = np.stack([camera_outside(link_meshes, poses[t], rng, spread, 0.5) for t in range(steps)])
    targets = np.stack([scene_targets(link_meshes, poses[t], rng, count, spread) for t in range(steps)])
    groups = rng.integers(0, 3, count)
    excluded = np.zeros((3, len(link_meshes)), bool)
    excluded[1, [0, 2]] = True
    excluded[2, :] = True
    tested = rng.random((steps, count)) < 0.8
    result = blocked_segments(MeshSet(link_meshes), poses, cameras, targets, margin_m=MARGIN_M, tested=tested,
                              groups=groups, excluded=excluded)
    for t in range(steps):
        in_front = np.einsum("ij,j->i", targets[t] - cameras[t, :3, 3], cameras[t, :3, 2]) > 0
        expected = reference_blocked(link_meshes, poses[t], cameras[t], targets[t], excluded[groups])
        np.testing.assert_array_equal(result[t], expected & in_front & tested[t], err_msg=f"step {t}")
    assert not result[:, groups == 2].any() and result[:, groups == 1].any() and result[:, groups == 0].any()


def test_faces_crossing_the_camera_plane_still_block(link_meshes):
    """A camera a few millimetres off a link's surface, looking along it: faces reach behind it."""
    rng = np.random.default_rng(9)
    mesh = link_meshes[2]
    poses = np.eye(4)[None, None]
    scene, _ = posed_scene([mesh], poses[0])
    point, face = trimesh.sample.sample_surface(scene, 1, seed=3)
    normal = scene.face_normals[face[0]]
    eye = point[0] + 0.003 * normal
    forward = np.cross(normal, [0.3, 0.5, 0.8])
    forward /= np.linalg.norm(forward)
    camera = np.eye(4)
    camera[:3, :3] = np.column_stack([normal, np.cross(forward, normal), forward])
    camera[:3, 3] = eye
    targets = scene_targets([mesh], poses[0], rng, 900, 0.05)[None]
    depth = (targets[0] - eye) @ camera[:3, 2]
    result = blocked_segments(MeshSet([mesh]), poses, camera, targets, margin_m=MARGIN_M)[0]
    expected = reference_blocked([mesh], poses[0], camera, targets[0], np.zeros((900, 1), bool)) & (depth > 0)
    camera_frame = (scene.vertices - eye) @ camera[:3, :3]
    assert (camera_frame[:, 2] < 0).any() and (camera_frame[:, 2] > 0).any()  # the mesh straddles the camera
    assert expected.sum() > 20
    np.testing.assert_array_equal(result, expected)


def test_bad_shapes_are_refused(link_meshes):
    meshes = MeshSet(link_meshes[:2])
    with pytest.raises(ValueError, match="mesh poses have shape"):
        blocked_segments(meshes, np.tile(np.eye(4), (2, 3, 1, 1)), np.eye(4), np.zeros((2, 5, 3)), margin_m=0.0)
    with pytest.raises(ValueError, match="do not fit"):
        blocked_segments(meshes, np.tile(np.eye(4), (2, 2, 1, 1)), np.eye(4), np.zeros((2, 5, 3)), margin_m=0.0,
                         groups=np.array([0, 1, 0, 0, 0]), excluded=np.zeros((1, 2), bool))
    with pytest.raises(ValueError, match=r"need \(F>=1, 3, 3\) triangles"):
        MeshSet([np.zeros((0, 3, 3))])
