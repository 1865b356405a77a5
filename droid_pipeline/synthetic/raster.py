"""Z-buffer rasterization of triangle meshes through a pinhole camera, vectorized over pixels.

The synthetic renderer draws the robot (arm and gripper links) with this, so its depth is an
independent truth for the occlusion labels, which come from ray-triangle tests
(:mod:`droid_pipeline.geometry.segments`): here every triangle is clipped against the near
plane, projected, and scanned row by row; on each row of pixel centres the span inside its
three edge functions (edges included) is found analytically, and each covered pixel's depth is
the perspective-correct interpolation of the vertex depths (1/z is affine in the image). The
nearest covering triangle wins each pixel. No face is culled, so the result does not depend on
the meshes' winding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Raster:
    """Per pixel: z-depth (metres, inf where no triangle) and the index of the triangle seen (-1: none)."""

    depth: np.ndarray
    triangle: np.ndarray


def rasterize(triangles: np.ndarray, K: np.ndarray, width: int, height: int, near_m: float) -> Raster:
    """Rasterize (F, 3, 3) triangles given in the camera frame (OpenCV: +z forward, pixel centres at
    integer coordinates) into a width x height image; only what lies beyond ``near_m`` is drawn."""
    triangles = np.asarray(triangles, dtype=np.float64).reshape(-1, 3, 3)
    clipped, source = _clip_near(triangles, near_m)
    z = clipped[..., 2]
    u = (K[0, 0] * clipped[..., 0] + K[0, 1] * clipped[..., 1]) / z + K[0, 2]
    v = K[1, 1] * clipped[..., 1] / z + K[1, 2]
    # Edge functions w_i = e_i . (px, py) + f_i of the edge opposite vertex i, signed so that
    # inside means all three >= 0; and 1/z = g . (px, py) + h, affine in the image.
    following, opposite = np.roll(np.arange(3), -1), np.roll(np.arange(3), -2)
    du, dv = u[:, opposite] - u[:, following], v[:, opposite] - v[:, following]
    area = (u[:, 1] - u[:, 0]) * (v[:, 2] - v[:, 0]) - (v[:, 1] - v[:, 0]) * (u[:, 2] - u[:, 0])
    sign = np.sign(area)[:, None]
    edge_x, edge_y = -dv * sign, du * sign
    edge_0 = (dv * u[:, following] - du * v[:, following]) * sign
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = 1.0 / (z * np.abs(area)[:, None])
    slope_x, slope_y, offset = (_sum3(part * weight) for part in (edge_x, edge_y, edge_0))
    row0 = np.maximum(np.ceil(v.min(axis=1)), 0)
    row1 = np.minimum(np.floor(v.max(axis=1)), height - 1)
    col0 = np.maximum(np.ceil(u.min(axis=1)), 0)
    col1 = np.minimum(np.floor(u.max(axis=1)), width - 1)
    drawn = np.flatnonzero((row0 <= row1) & (col0 <= col1) & (area != 0.0))
    rows = (row1 - row0 + 1)[drawn].astype(np.int64)
    # One item per (triangle, row): the span of pixel centres inside all three edges.
    item = np.repeat(drawn, rows)
    py = row0[item] + _ramp(rows)
    lo, hi = col0[item], col1[item]
    for k in range(3):
        a, b = edge_x[item, k], edge_y[item, k] * py + edge_0[item, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -b / a
        lo = np.where(a > 0, np.maximum(lo, np.ceil(bound)), lo)
        hi = np.where(a < 0, np.minimum(hi, np.floor(bound)), hi)
        hi = np.where((a == 0) & (b < 0), lo - 1, hi)
    length = np.maximum(hi - lo + 1, 0).astype(np.int64)
    pixel_item = np.repeat(np.arange(len(item)), length)
    px = lo[pixel_item] + _ramp(length)
    triangle = item[pixel_item]
    inverse_depth = slope_x[triangle] * px + (slope_y[triangle] * py[pixel_item] + offset[triangle])
    pixel = (py[pixel_item] * width + px).astype(np.int64)
    candidate_depth = 1.0 / inverse_depth
    depth = np.full(height * width, np.inf)
    np.minimum.at(depth, pixel, candidate_depth)
    nearest = candidate_depth == depth[pixel]  # ties at the nearest depth: the lowest source index
    owner = np.full(height * width, np.iinfo(np.int64).max)
    np.minimum.at(owner, pixel[nearest], source[triangle[nearest]])
    owner[owner == np.iinfo(np.int64).max] = -1
    return Raster(depth.reshape(height, width), owner.reshape(height, width))


def _sum3(values: np.ndarray) -> np.ndarray:
    """Row sums of (N, 3) values, element-wise in a fixed order (NumPy's reductions may order
    the additions by memory alignment, which would make images differ from run to run)."""
    return values[:, 0] + values[:, 1] + values[:, 2]


def _ramp(count: np.ndarray) -> np.ndarray:
    """0, 1, ..., count[0] - 1, 0, 1, ..., count[1] - 1, ... as one array."""
    return np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)


def _clip_near(triangles: np.ndarray, near_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangles cut to z >= near_m (one vertex behind: a quad, as two triangles; two behind: one
    smaller triangle; three: none), and the index of the triangle each piece came from."""
    behind = triangles[..., 2] < near_m
    count = behind.sum(axis=1)
    pieces, sources = [triangles[count == 0]], [np.flatnonzero(count == 0)]
    for number in (1, 2):
        which = np.flatnonzero(count == number)
        if which.size == 0:
            continue
        # Roll each triangle so its odd vertex (the one behind, or the one in front) comes first.
        odd = np.argmax(behind[which] if number == 1 else ~behind[which], axis=1)
        order = (odd[:, None] + np.arange(3)) % 3
        a, b, c = (triangles[which[:, None], order][:, k] for k in range(3))
        ab = a + ((near_m - a[:, 2]) / (b[:, 2] - a[:, 2]))[:, None] * (b - a)
        ac = a + ((near_m - a[:, 2]) / (c[:, 2] - a[:, 2]))[:, None] * (c - a)
        if number == 1:
            pieces += [np.stack([b, c, ac], axis=1), np.stack([b, ac, ab], axis=1)]
            sources += [which, which]
        else:
            pieces.append(np.stack([a, ab, ac], axis=1))
            sources.append(which)
    return np.concatenate(pieces), np.concatenate(sources)
