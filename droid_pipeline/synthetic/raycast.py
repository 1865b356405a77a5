"""Vectorized rendering of a scene of textured oriented boxes and triangle meshes through a pinhole camera.

The synthetic episodes need images whose geometry is known exactly: every pixel's colour and
true z-depth come from casting the pixel's ray (OpenCV convention, pixel centres at integer
coordinates, +z forward, +y down) against a handful of oriented boxes (room, table, objects,
gripper finger pads). Textures are procedural and deterministic per material seed: sharp-edged
tiles for corners plus value-noise octaves for fine detail, defined on each face in metres, so
a surface looks the same from both lenses of a stereo pair and block matching finds it.
Shading is Lambertian under a fixed light (view-independent, as stereo matching assumes).

Each box is cast only over the pixel rectangle its projected corners cover (the whole image when
it straddles the camera plane), and a static layer can be rendered once and reused as the
background of every frame of a fixed camera. Triangle meshes (the robot's links) are drawn by
z-buffer rasterization (:mod:`droid_pipeline.synthetic.raster`) into the same depth test; their
texture is the material's on the link-frame coordinate plane their face is most parallel to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from droid_pipeline.synthetic.raster import rasterize

NEAR_CLIP_M = 1e-3
LIGHT_DIRECTION = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
AMBIENT = 0.45
BACKGROUND_RGB = np.array([40, 40, 48], dtype=np.uint8)
NOISE_TABLE_BITS = 8
NOISE_TABLE_SIZE = 1 << NOISE_TABLE_BITS


@dataclass(frozen=True)
class Material:
    """Two-colour procedural texture: ``feature_size_m`` is the edge of its coarsest tiles."""

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    feature_size_m: float
    seed: int


@dataclass(frozen=True, eq=False)
class Box:
    """An oriented box: ``pose`` is T_base_box (4x4) about its centre; ``interior`` boxes (the
    room) are seen from inside, on their far faces."""

    pose: np.ndarray
    half_extents: np.ndarray
    material: Material
    interior: bool = False


@dataclass(frozen=True, eq=False)
class TriangleMesh:
    """Triangles (F, 3, 3) in their own frame (a robot link's, metres), placed by ``pose``
    (T_base_mesh, 4x4), in one material."""

    triangles: np.ndarray
    pose: np.ndarray
    material: Material


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """Pinhole camera: intrinsics ``K`` (3x3), ``pose`` T_base_cam (4x4, OpenCV optical frame)."""

    K: np.ndarray
    pose: np.ndarray
    width: int
    height: int

    def shifted(self, dx_m: float) -> PinholeCamera:
        """The same camera moved ``dx_m`` along its own x axis (the right lens of a rectified pair)."""
        pose = self.pose.copy()
        pose[:3, 3] += dx_m * pose[:3, 0]
        return replace(self, pose=pose)


@dataclass(frozen=True, eq=False)
class Rendering:
    """``rgb`` (H,W,3) uint8 and true z-depth ``depth`` (H,W) float64 in metres, 0 where no surface."""

    rgb: np.ndarray
    depth: np.ndarray

    def copy(self) -> Rendering:
        return Rendering(self.rgb.copy(), self.depth.copy())


def empty_rendering(camera: PinholeCamera) -> Rendering:
    """Background colour and no depth anywhere."""
    rgb = np.empty((camera.height, camera.width, 3), dtype=np.uint8)
    rgb[...] = BACKGROUND_RGB
    return Rendering(rgb, np.zeros((camera.height, camera.width)))


def render(boxes: list[Box], camera: PinholeCamera, background: Rendering | None = None,
           meshes: Sequence[TriangleMesh] = ()) -> Rendering:
    """Cast ``camera``'s rays against ``boxes`` and rasterize ``meshes`` over ``background`` (a
    copy; default empty).

    First a z-buffer pass finds, per pixel, the nearest surface (true z-depth); then each box
    and the meshes shade only the pixels they won, so hidden surfaces cost no texturing.
    """
    out = background.copy() if background is not None else empty_rendering(camera)
    owner = np.full((camera.height, camera.width), -1, dtype=np.int16)
    windows = [_pixel_window(box, camera) for box in boxes]
    for index, (box, window) in enumerate(zip(boxes, windows)):
        if window is None:
            continue
        t_hit = _intersect(box, camera, window)
        depth_view = out.depth[window]
        closer = (t_hit > NEAR_CLIP_M) & ((depth_view == 0) | (t_hit < depth_view))
        depth_view[closer] = t_hit[closer]
        owner[window][closer] = index
    faces = _MeshFaces(meshes, camera) if meshes else None
    if faces is not None:
        raster = rasterize(faces.in_camera, camera.K, camera.width, camera.height, NEAR_CLIP_M)
        closer = (raster.triangle >= 0) & ((out.depth == 0) | (raster.depth < out.depth))
        out.depth[closer] = raster.depth[closer]
        owner[closer] = -1
    for index, (box, window) in enumerate(zip(boxes, windows)):
        if window is None:
            continue
        won = owner[window] == index
        if won.any():
            out.rgb[window][won] = _shade(box, camera, window, won, out.depth[window][won])
    if faces is not None and closer.any():
        out.rgb[closer] = faces.shade(camera, closer, raster.triangle[closer], out.depth[closer])
    return out


class _MeshFaces:
    """All faces of the meshes, in the camera frame, with what shading needs per face."""

    def __init__(self, meshes: Sequence[TriangleMesh], camera: PinholeCamera):
        self.meshes = list(meshes)
        self.mesh = np.repeat(np.arange(len(meshes)), [len(m.triangles) for m in meshes])
        self.rotation = np.stack([m.pose[:3, :3] for m in meshes])
        self.camera_from_mesh = [_inverse(camera.pose) @ m.pose for m in meshes]
        self.in_camera = np.concatenate([_rotate(c[:3, :3], m.triangles) + c[:3, 3]
                                         for m, c in zip(meshes, self.camera_from_mesh)])
        local = np.concatenate([m.triangles for m in meshes])
        normals = np.cross(local[:, 1] - local[:, 0], local[:, 2] - local[:, 0])
        self.normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
        self.axis = np.argmax(np.abs(self.normals), axis=1)  # texture plane: the link axis nearest the normal

    def shade(self, camera: PinholeCamera, pixels: np.ndarray, face: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """uint8 colours of the ``pixels`` (mask) where ``face`` is seen at ``depth``."""
        ray_x, ray_y = _camera_rays(camera.K.tobytes(), camera.width, camera.height)
        point = np.stack([ray_x[pixels] * depth, ray_y[pixels] * depth, depth], axis=1)
        mesh = self.mesh[face]
        local = np.empty_like(point)
        for index, camera_from_mesh in enumerate(self.camera_from_mesh):
            mine = mesh == index
            mesh_from_camera = _inverse(camera_from_mesh)
            local[mine] = _rotate(mesh_from_camera[:3, :3], point[mine]) + mesh_from_camera[:3, 3]
        axis = self.axis[face]
        side = 2 * axis + (self.normals[face, axis] > 0)
        u = np.choose(axis, [local[:, 1], local[:, 2], local[:, 0]]).astype(np.float32)
        v = np.choose(axis, [local[:, 2], local[:, 0], local[:, 1]]).astype(np.float32)
        rotation, normal = self.rotation[mesh], self.normals[face]
        world = [rotation[:, k, 0] * normal[:, 0] + rotation[:, k, 1] * normal[:, 1] + rotation[:, k, 2] * normal[:, 2]
                 for k in range(3)]
        lambert = np.clip(world[0] * LIGHT_DIRECTION[0] + world[1] * LIGHT_DIRECTION[1]
                          + world[2] * LIGHT_DIRECTION[2], 0.0, 1.0)
        shade = (AMBIENT + (1.0 - AMBIENT) * lambert).astype(np.float32)
        rgb = np.empty((len(face), 3), dtype=np.float32)
        for index, mesh_item in enumerate(self.meshes):
            mine = mesh == index
            if mine.any():
                rgb[mine] = surface_color(mesh_item.material, u[mine], v[mine], side[mine])
        return (rgb * shade[:, None] * 255.0 + 0.5).astype(np.uint8)


def _inverse(pose: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform."""
    inverse = np.eye(4)
    inverse[:3, :3] = pose[:3, :3].T
    inverse[:3, 3] = -(pose[:3, :3].T @ pose[:3, 3])
    return inverse


def _rotate(rotation: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 3) points times a 3x3 rotation, element-wise in a fixed order: no BLAS and no
    NumPy reduction, whose order may follow memory alignment, so images are bit-identical
    from run to run."""
    return np.stack([rotation[k, 0] * points[..., 0] + rotation[k, 1] * points[..., 1]
                     + rotation[k, 2] * points[..., 2] for k in range(3)], axis=-1)


Window = tuple[slice, slice]


def _pixel_window(box: Box, camera: PinholeCamera) -> Window | None:
    """Pixel rectangle (rows, cols) that can see ``box``, or None when it cannot be seen."""
    signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
    corners_base = (signs * box.half_extents) @ box.pose[:3, :3].T + box.pose[:3, 3]
    corners_cam = (corners_base - camera.pose[:3, 3]) @ camera.pose[:3, :3]
    z = corners_cam[:, 2]
    if box.interior or z.min() <= NEAR_CLIP_M:
        if z.max() <= NEAR_CLIP_M and not box.interior:
            return None
        return slice(0, camera.height), slice(0, camera.width)
    projected = corners_cam @ camera.K.T
    uv = projected[:, :2] / projected[:, 2:]
    col0 = max(int(np.floor(uv[:, 0].min())), 0)
    col1 = min(int(np.ceil(uv[:, 0].max())) + 1, camera.width)
    row0 = max(int(np.floor(uv[:, 1].min())), 0)
    row1 = min(int(np.ceil(uv[:, 1].max())) + 1, camera.height)
    if col0 >= col1 or row0 >= row1:
        return None
    return slice(row0, row1), slice(col0, col1)


def _box_frame_rays(box: Box, camera: PinholeCamera, window: Window
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Camera centre and per-pixel ray directions (z-depth parametrised) in the box's frame."""
    ray_x, ray_y = _camera_rays(camera.K.tobytes(), camera.width, camera.height)
    ray_x, ray_y = ray_x[window], ray_y[window]
    rot_box = box.pose[:3, :3]
    rot_local = (rot_box.T @ camera.pose[:3, :3]).astype(np.float32)
    origin_local = rot_box.T @ (camera.pose[:3, 3] - box.pose[:3, 3])
    dirs = [rot_local[axis, 0] * ray_x + rot_local[axis, 1] * ray_y + rot_local[axis, 2]
            for axis in range(3)]
    return origin_local, dirs


def _intersect(box: Box, camera: PinholeCamera, window: Window) -> np.ndarray:
    """Ray parameter (= z-depth) of the first visible hit per window pixel; -1 where none.

    Slab method in the box frame; interior boxes are hit where the ray leaves them.
    """
    origin, dirs = _box_frame_rays(box, camera, window)
    nears, fars = [], []
    for axis, d in enumerate(dirs):
        d[np.abs(d) < 1e-12] = 1e-12
        inv = 1.0 / d
        low = (-box.half_extents[axis] - origin[axis]) * inv
        high = (box.half_extents[axis] - origin[axis]) * inv
        nears.append(np.minimum(low, high))
        fars.append(np.maximum(low, high))
    t_enter = np.maximum(np.maximum(nears[0], nears[1]), nears[2])
    t_exit = np.minimum(np.minimum(fars[0], fars[1]), fars[2])
    t_hit = t_exit if box.interior else t_enter
    return np.where(t_enter <= t_exit, t_hit, -1.0)


def _shade(box: Box, camera: PinholeCamera, window: Window, pixels: np.ndarray,
           depth: np.ndarray) -> np.ndarray:
    """uint8 colours of the ``pixels`` (mask over ``window``) where ``box`` is seen at ``depth``."""
    origin, dirs = _box_frame_rays(box, camera, window)
    depth = depth.astype(np.float32)
    point = [np.float32(origin[k]) + depth * dirs[k][pixels] for k in range(3)]
    # The face hit is the one whose coordinate reaches the half extent.
    reach = np.stack([np.abs(p) / np.float32(h) for p, h in zip(point, box.half_extents)])
    axis = np.argmax(reach, axis=0)
    positive = np.choose(axis, point) > 0
    face = 2 * axis + positive
    u = np.choose(axis, [point[1], point[2], point[0]])
    v = np.choose(axis, [point[2], point[0], point[1]])
    shade = _face_shading(box)[face]
    rgb = surface_color(box.material, u, v, face) * shade[:, None]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _face_shading(box: Box) -> np.ndarray:
    """Lambertian shade of the six faces, indexed 2 * axis + (outward side is +)."""
    normals = np.repeat(box.pose[:3, :3].T, 2, axis=0) * np.tile([-1.0, 1.0], 3)[:, None]
    if box.interior:
        normals = -normals
    lambert = np.clip(normals @ LIGHT_DIRECTION, 0.0, 1.0)
    return (AMBIENT + (1.0 - AMBIENT) * lambert).astype(np.float32)


@lru_cache(maxsize=16)
def _camera_rays(k_bytes: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every pixel's ray direction in the camera frame, scaled to z = 1 (so the ray
    parameter of a hit is its z-depth); (H, W) float32 each. Element-wise (no BLAS), so the
    rays, and the images, are bit-identical from run to run."""
    k_inv = np.linalg.inv(np.frombuffer(k_bytes, dtype=np.float64).reshape(3, 3))
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x, y, z = (k_inv[i, 0] * cols + k_inv[i, 1] * rows + k_inv[i, 2] for i in range(3))
    return (x / z).astype(np.float32), (y / z).astype(np.float32)


def surface_color(material: Material, u: np.ndarray, v: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(N,3) colours in [0,1] of a material at face coordinates ``u, v`` (metres) of face ``face``
    (0..5): sharp tiles of the coarse scale blended with three finer value-noise octaves."""
    table = _noise_table(material.seed)
    cell = material.feature_size_m
    offset = (face * 97).astype(np.float32)
    tiles = _lattice(table, np.floor(u / cell) + offset, np.floor(v / cell) + 3.0 * offset)
    detail = np.zeros_like(u)
    weight_sum = 0.0
    for octave in range(3):
        scale = cell / 2.0 ** (octave + 1)
        weight = 0.5 ** octave
        detail += weight * _value_noise(table, u / scale + offset + 31.0 * octave,
                                        v / scale + 3.0 * offset + 17.0 * octave)
        weight_sum += weight
    mix = 0.55 * tiles + 0.45 * detail / weight_sum
    color_a = np.asarray(material.color_a, dtype=np.float32)
    color_b = np.asarray(material.color_b, dtype=np.float32)
    return color_a + mix[:, None] * (color_b - color_a)


@lru_cache(maxsize=64)
def _noise_table(seed: int) -> np.ndarray:
    """Deterministic lattice of random values in [0, 1) for one material, flattened (row-major)."""
    return np.random.default_rng(seed).random(NOISE_TABLE_SIZE * NOISE_TABLE_SIZE, dtype=np.float32)


def _lattice(table: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Table values at integer lattice points (float arrays of whole numbers), wrapping around."""
    return table.take(_lattice_index(i.astype(np.int32), j.astype(np.int32)))


def _lattice_index(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    mask = NOISE_TABLE_SIZE - 1
    return ((i & mask) << NOISE_TABLE_BITS) | (j & mask)


def _value_noise(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smoothly interpolated lattice noise in [0, 1) (one octave, lattice spacing 1)."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    sx, sy = fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy)
    i, j = x0.astype(np.int32), y0.astype(np.int32)
    v00, v10 = table.take(_lattice_index(i, j)), table.take(_lattice_index(i + 1, j))
    v01, v11 = table.take(_lattice_index(i, j + 1)), table.take(_lattice_index(i + 1, j + 1))
    top = v00 + sx * (v10 - v00)
    bottom = v01 + sx * (v11 - v01)
    return top + sy * (bottom - top)
