"""The segment-vs-meshes query against trimesh's ray intersector (trimesh.ray.ray_triangle), on the
packaged robot meshes posed at random, with targets on their surfaces, inside them and in free space."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation
from trimesh.ray.ray_triangle import ray_triangle_id

from droid_pipeline.geometry import segments
from droid_pipeline.geometry.segments import CLUSTER_FACES, LEAF_FACES, MeshSet, blocked_segments
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


@pytest.mark.parametrize("seed, distance_m, pair_chunk", [(0, 0.6, None), (1, 0.25, None), (2, 1.5, None),
                                                       (11, 0.4, 300)])
def test_agrees_with_trimesh_ray_intersector(link_meshes, monkeypatch, seed, distance_m, pair_chunk):
    """``pair_chunk``: the (face, target) pairs are tested in chunks of whole runs, bounding memory;
    with chunks of a few hundred pairs (thousands of chunks) the answers are still trimesh's."""
    if pair_chunk is not None:
        monkeypatch.setattr(segments, "PAIR_CHUNK", pair_chunk)
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


def test_mesh_set_tiles_each_mesh_into_bounded_leaves_and_clusters(link_meshes):
    """Checked from the arrays alone: each mesh's faces are its input triangles, once each, over
    distinct shared vertices; leaves (at most LEAF_FACES) tile clusters (at most CLUSTER_FACES),
    which tile the meshes; every sphere encloses the vertices it bounds; the face planes are
    trimesh's (outward normals) through the faces."""
    icosphere = trimesh.creation.icosphere(subdivisions=3, radius=0.05).triangles   # 1280 faces
    shuffled = icosphere[np.random.default_rng(4).permutation(len(icosphere))]   # list order tells nothing
    meshes = [*link_meshes, shuffled, link_meshes[0][:5]]
    built = MeshSet(meshes)
    assert built.num_meshes == len(meshes)
    rows_of = np.repeat(np.arange(len(meshes)), [len(m) for m in meshes])   # mesh of each face, in order
    leaf_sizes = built.leaf_faces[:, 1] - built.leaf_faces[:, 0]
    cluster_sizes = built.cluster_faces[:, 1] - built.cluster_faces[:, 0]
    assert leaf_sizes.min() >= 1 and leaf_sizes.max() <= LEAF_FACES
    assert cluster_sizes.min() >= 1 and cluster_sizes.max() <= CLUSTER_FACES
    np.testing.assert_array_equal(built.leaf_faces[1:, 0], built.leaf_faces[:-1, 1])   # contiguous, no overlap
    assert built.leaf_faces[0, 0] == 0 and built.leaf_faces[-1, 1] == len(built.faces) == len(rows_of)
    np.testing.assert_array_equal(built.leaf_faces[built.cluster_leaves[:, 0], 0], built.cluster_faces[:, 0])
    np.testing.assert_array_equal(built.leaf_faces[built.cluster_leaves[:, 1] - 1, 1], built.cluster_faces[:, 1])
    np.testing.assert_array_equal(built.cluster_leaves[1:, 0], built.cluster_leaves[:-1, 1])
    for index, triangles in enumerate(meshes):
        first, stop = built.mesh_clusters[index]
        faces = slice(built.cluster_faces[first, 0], built.cluster_faces[stop - 1, 1])
        np.testing.assert_array_equal(rows_of[faces], index)
        vertices = built.vertices[built.vertex_start[index]:built.vertex_start[index + 1]]
        assert len(np.unique(vertices, axis=0)) == len(vertices)
        assert set(built.faces[faces].ravel()) == set(range(len(vertices)))
        rebuilt = vertices[built.faces[faces]]
        # The same triangles, each once (rows compared as sorted arrays of their nine coordinates).
        np.testing.assert_array_equal(np.unique(rebuilt.reshape(-1, 9), axis=0),
                                      np.unique(np.asarray(triangles).reshape(-1, 9), axis=0))
        assert len(rebuilt) == len(triangles)
        enclosing = np.linalg.norm(vertices - built.mesh_centres[index], axis=1).max()
        assert enclosing <= built.mesh_radii[index] + 1e-12
        reference = trimesh.Trimesh(rebuilt.reshape(-1, 3), np.arange(3 * len(rebuilt)).reshape(-1, 3),
                                    process=False)
        unit = built.face_normals[faces] / np.linalg.norm(built.face_normals[faces], axis=1, keepdims=True)
        np.testing.assert_allclose(unit, reference.face_normals, atol=1e-9)
        np.testing.assert_allclose(built.face_offsets[faces], np.einsum("fi,fi->f", built.face_normals[faces],
                                                                          rebuilt[:, 1]), atol=1e-12)
    corners = built.vertices[built.faces + built.vertex_start[rows_of, None]]
    for ranges, centres, radii in ((built.leaf_faces, built.leaf_centres, built.leaf_radii),
                                   (built.cluster_faces, built.cluster_centres, built.cluster_radii)):
        owner = np.repeat(np.arange(len(ranges)), ranges[:, 1] - ranges[:, 0])
        reach = np.linalg.norm(corners - centres[owner, None], axis=2).max(axis=1)
        assert (reach <= radii[owner] + 1e-12).all()
    # The shuffled sphere's leaves and clusters are compact: the cuts split space, not the face list.
    sphere = len(link_meshes)
    for ranges, radii, most in ((built.leaf_faces, built.leaf_radii, 0.35),
                                (built.cluster_faces, built.cluster_radii, 0.5)):   # (they measure 0.28, 0.42)
        assert radii[rows_of[ranges[:, 0]] == sphere].max() < most * built.mesh_radii[sphere]
