"""The renderer's triangle rasterizer against trimesh's ray intersector: each pixel centre's depth
is the z of the first hit of that pixel's ray, and pixels whose ray misses stay empty."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from trimesh.ray.ray_triangle import ray_triangle_id

from droid_pipeline.robot.occlusion import RobotOcclusion
from droid_pipeline.synthetic.raster import rasterize
from droid_pipeline.synthetic.raycast import Material, PinholeCamera, TriangleMesh, render

K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 160, 120


def pixel_rays() -> np.ndarray:
    columns, rows = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    return np.stack([(columns - K[0, 2]) / K[0, 0], (rows - K[1, 2]) / K[1, 1], np.ones_like(columns, float)],
                    axis=-1).reshape(-1, 3)


def first_hit_depth(triangles: np.ndarray, near_m: float) -> np.ndarray:
    """(H, W) z of trimesh's nearest hit beyond ``near_m`` along each pixel centre's ray (inf: none)."""
    rays = pixel_rays()
    origins = np.zeros_like(rays)
    face, ray, location = ray_triangle_id(triangles, origins, rays / np.linalg.norm(rays, axis=1, keepdims=True),
                                          multiple_hits=True)
    depth = np.full(len(rays), np.inf)
    ahead = location[:, 2] > near_m
    np.minimum.at(depth, ray[ahead], location[ahead, 2])
    return depth.reshape(HEIGHT, WIDTH)


def link_in_view(distance_m: float, seed: int) -> np.ndarray:
    """The gripper base mesh, turned at random, centred ``distance_m`` in front of the camera."""
    rng = np.random.default_rng(seed)
    triangles = RobotOcclusion.load().link_triangles["robotiq_85_base_link"]
    rotation = trimesh.transformations.random_rotation_matrix(rng.random(3))[:3, :3]
    centred = triangles - triangles.reshape(-1, 3).mean(axis=0)
    return centred @ rotation.T + [0.01, -0.005, distance_m]


@pytest.mark.parametrize("distance_m, seed", [(0.25, 0), (0.12, 1)])
def test_rasterized_depth_is_trimesh_first_hit(distance_m, seed):
    triangles = link_in_view(distance_m, seed)
    raster = rasterize(triangles, K, WIDTH, HEIGHT, 1e-3)
    expected = first_hit_depth(triangles, 1e-3)
    covered = np.isfinite(expected)
    assert 500 < covered.sum() < covered.size
    # Pixel centres on a silhouette edge can go either way; everywhere else the two agree.
    edge = covered != np.roll(covered, 1, 0)
    for shift in ((1, 0), (0, 1), (0, -1), (-1, 0)):
        edge |= covered != np.roll(covered, shift, (0, 1))
    assert np.array_equal(np.isfinite(raster.depth)[~edge], covered[~edge])
    both = covered & np.isfinite(raster.depth)
    np.testing.assert_allclose(raster.depth[both], expected[both], rtol=1e-9, atol=1e-9)
    # The triangle recorded at each pixel lies at that depth along the pixel's ray.
    rays = pixel_rays().reshape(HEIGHT, WIDTH, 3)[both]
    seen = triangles[raster.triangle[both]]
    normal = np.cross(seen[:, 1] - seen[:, 0], seen[:, 2] - seen[:, 0])
    z = np.einsum("pi,pi->p", normal, seen[:, 0]) / np.einsum("pi,pi->p", normal, rays)
    np.testing.assert_allclose(z, raster.depth[both], rtol=1e-9)


def test_triangles_crossing_the_near_plane_are_cut_there():
    """The camera inside the mesh's bounds: faces reach behind it; what lies beyond the near
    plane is drawn as trimesh sees it from there."""
    triangles = link_in_view(0.0, 2)
    near_m = 0.005
    assert (triangles[..., 2] < 0).any() and (triangles[..., 2] > near_m).any()
    raster = rasterize(triangles, K, WIDTH, HEIGHT, near_m)
    expected = first_hit_depth(triangles, near_m)
    covered = np.isfinite(expected) & np.isfinite(raster.depth)
    assert covered.sum() > 1000
    np.testing.assert_allclose(raster.depth[covered], expected[covered], rtol=1e-6)
    assert (raster.depth[np.isfinite(raster.depth)] >= near_m - 1e-12).all()


def test_render_draws_meshes_in_the_depth_test_with_boxes():
    """A mesh in front of the empty background and a mesh's depth winning over nothing: the
    rendering's depth is the rasterized depth, its colours textured and lit."""
    triangles = link_in_view(0.25, 3)
    camera = PinholeCamera(K, np.eye(4), WIDTH, HEIGHT)
    material = Material((0.2, 0.3, 0.4), (0.9, 0.8, 0.7), 0.01, 3)
    rendering = render([], camera, meshes=[TriangleMesh(triangles, np.eye(4), material)])
    raster = rasterize(triangles, K, WIDTH, HEIGHT, 1e-3)
    drawn = np.isfinite(raster.depth)
    np.testing.assert_array_equal(rendering.depth[drawn], raster.depth[drawn])
    assert (rendering.depth[~drawn] == 0).all()
    assert rendering.rgb[drawn].astype(float).std(axis=0).min() > 5
    moved = np.eye(4)
    moved[:3, 3] = [0.0, 0.0, 0.05]  # the same mesh placed by its pose, 5 cm farther
    farther = render([], camera, meshes=[TriangleMesh(triangles, moved, material)])
    assert np.median(farther.depth[farther.depth > 0]) == pytest.approx(np.median(rendering.depth[drawn]) + 0.05,
                                                                        abs=0.01)
