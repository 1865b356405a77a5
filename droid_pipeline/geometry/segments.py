"""Which segments from a camera to target points pass through rigidly posed closed triangle meshes.

The query behind occlusion labels: per step t, a camera at the origin of ``camera_poses[t]`` and
N targets; a target is blocked when the segment from the camera to it crosses a mesh triangle
closer to the camera than the target by more than ``margin_m`` (so the surface the target lies
on does not hide it). Targets fall into groups (e.g. the two pads, which different meshes may
hide). Vectorized over steps, targets and triangles (no loop over any of them; below the meshes
the arrays are component-major, (3, M) rather than (M, 3), as NumPy runs one inner loop per row),
with culling at four levels, each dropping only what cannot cross a segment of a group it may hide:

1. **Pyramids**: per step, each group's targets span a box on the camera's z = 1 plane
   (normalized image coordinates); every segment to them lies in the pyramid from the camera
   over that box, up to the group's farthest target (six planes: x <= upper z, x >= lower z,
   the same in y, z >= 0, z <= the farthest depth).
2. **Meshes, clusters, leaves**: each mesh's faces are split into spatial clusters of at most
   ``CLUSTER_FACES``, each cluster into leaves of at most ``LEAF_FACES``, with a bounding
   sphere each. A mesh is kept at a step when its sphere, posed into camera coordinates,
   reaches within its radius of all six planes of the pyramid of a group it may hide; then its
   clusters (all of them at all its kept steps at once) and then their leaves, alike.
3. **Faces**: only front faces (facing the camera) are kept. The meshes are closed with outward
   winding, so a segment starting outside a mesh enters it through a front face first; a camera
   inside a mesh is not hidden by that mesh. Faces behind the camera, beyond the group's
   farthest target, or whose projection's box misses the group's box are dropped.
4. **Image-space bins**: per step the targets' bounding box on the z = 1 plane is split into
   ``GRID_CELLS`` x ``GRID_CELLS`` cells; a face is tested only against the targets of its
   groups in the cells covered by the bounding box of its projection (of its part in front of
   the camera).

The exact test per (face, target) pair is in camera coordinates, camera at 0, face A, B, C,
target D: the ray through D crosses the face when D lies on the inner side of the three planes
through the camera and each edge (signs of D.(A x B), D.(B x C), D.(C x A)), and the crossing
lies at s = A.(B x C) / (D.N) of the way to D, N = (B - A) x (C - A); it blocks when
0 < s < 1 - margin / |D|. Edges count as inside.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from droid_pipeline.geometry.poses import invert

# Cells per side of the image-space grid over each step's targets.
GRID_CELLS = 16
# Largest number of faces in one culling cluster.
CLUSTER_FACES = 24
# Largest number of faces in one leaf of a cluster (each cluster is split again, as finely).
LEAF_FACES = 6
# Targets and vertices nearer the camera plane than this (metres) count as on or behind it.
MIN_DEPTH_M = 1e-6
# Slack (metres) of the pyramid tests against rounding: a sphere or face this close to a plane counts as reaching it.
PLANE_SLACK_M = 1e-9
# Upper bound on (face, target) pairs evaluated at once, which bounds memory.
PAIR_CHUNK = 1 << 19


class MeshSet:
    """Closed, outward-wound triangle meshes, each in its own frame, prepared for segment queries:
    shared vertices, face planes, and each mesh's faces grouped into spatial clusters, each split
    into leaves; bounding spheres of every mesh, cluster and leaf. Arrays of all meshes are
    concatenated, mesh by mesh (faces leaf by leaf, leaves cluster by cluster). Built with whole-
    array passes (one sort per level of the cluster tree, sphere bounds by ``reduceat``)."""

    def __init__(self, meshes: Sequence[np.ndarray]):
        """``meshes``: one (F, 3, 3) triangle array per mesh (metres, outward winding)."""
        triangles = [np.asarray(mesh, dtype=np.float64) for mesh in meshes]
        for index, mesh in enumerate(triangles):
            if mesh.ndim != 3 or mesh.shape[1:] != (3, 3) or len(mesh) == 0:
                raise ValueError(f"mesh {index}: need (F>=1, 3, 3) triangles, got shape {mesh.shape}")
        self.num_meshes = len(triangles)
        shared = [_unique_rows(mesh.reshape(-1, 3)) for mesh in triangles]
        self.vertex_start = np.concatenate([[0], np.cumsum([len(rows) for rows, _ in shared])])  # (L + 1,)
        self.vertices = np.concatenate([rows for rows, _ in shared])     # (V, 3) in their mesh's frame
        local = np.concatenate([inverse.reshape(-1, 3) for _, inverse in shared])   # (F, 3) rows within the mesh
        face_start = np.concatenate([[0], np.cumsum([len(mesh) for mesh in triangles])])
        mesh_of_face = np.repeat(np.arange(self.num_meshes), np.diff(face_start))
        corners = self.vertices[local + self.vertex_start[mesh_of_face, None]]
        # The median-cut tree over face centroids: meshes split into clusters, clusters into leaves.
        centroids = corners.mean(axis=1)
        order, cluster_start = _split(centroids, np.arange(len(local)), face_start, CLUSTER_FACES)
        order, leaf_start = _split(centroids, order, cluster_start, LEAF_FACES)
        self.faces = local[order]                         # (F, 3) vertex rows within the mesh's block
        corners = corners[order]
        self.cluster_faces = np.stack([cluster_start[:-1], cluster_start[1:]], axis=1)   # (C, 2) face range
        self.leaf_faces = np.stack([leaf_start[:-1], leaf_start[1:]], axis=1)            # (C', 2) face range
        first_leaf = np.searchsorted(leaf_start, cluster_start)
        self.cluster_leaves = np.stack([first_leaf[:-1], first_leaf[1:]], axis=1)  # (C, 2) each cluster's leaf range
        first_cluster = np.searchsorted(cluster_start, face_start)
        self.mesh_clusters = np.stack([first_cluster[:-1], first_cluster[1:]], axis=1)   # (L, 2) cluster range
        self.cluster_centres, self.cluster_radii = _bounding_spheres(corners, cluster_start)   # (C, 3), (C,)
        self.leaf_centres, self.leaf_radii = _bounding_spheres(corners, leaf_start)            # (C', 3), (C',)
        self.mesh_centres, self.mesh_radii = _bounding_spheres(self.vertices[:, None], self.vertex_start)  # (L, 3)
        self.face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # outward
        self.face_offsets = np.einsum("fi,fi->f", self.face_normals, corners[:, 0])
        self.face_normal_columns = self.face_normals.T.copy()    # (3, F) the same, component-major
        self.leaf_centre_columns = self.leaf_centres.T.copy()    # (3, C') the same, component-major
        self.cluster_centre_columns = self.cluster_centres.T.copy()   # (3, C)


def _unique_rows(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``points`` (P, 3) in lexicographic order and each row's index among
    them (as np.unique(axis=0, return_inverse=True), by one lexsort)."""
    order = np.lexsort(points.T[::-1])
    ordered = points[order]
    new = np.ones(len(points), dtype=bool)
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    inverse = np.empty(len(points), dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def _split(centroids: np.ndarray, order: np.ndarray, start: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Split runs of faces (``order`` (F,) face indices, run boundaries ``start`` (R + 1,)) by
    recursive median cuts along each run's longest centroid extent until every run holds at most
    ``limit``: a run of n splits into its n // 2 lowest and the rest, in that order (stable sort).
    All runs of a level are cut at once. Returns the new order and run boundaries."""
    order, start = order.copy(), np.asarray(start)
    while True:
        size = np.diff(start)
        big = np.flatnonzero(size > limit)
        if not big.size:
            return order, start
        points = centroids[order]
        low = np.minimum.reduceat(points, start[:-1], axis=0)[big]
        high = np.maximum.reduceat(points, start[:-1], axis=0)[big]
        axis = np.argmax(high - low, axis=1)      # each run's longest extent (the first of equals)
        run = np.repeat(np.arange(len(big)), size[big])
        member = np.repeat(start[big], size[big]) + _ramp(size[big])
        resorted = member[np.lexsort((points[member, axis[run]], run))]
        order[member] = order[resorted]
        start = np.sort(np.concatenate([start, start[big] + size[big] // 2]))


def _bounding_spheres(corners: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, 3) centres and (R,) radii of spheres enclosing runs of faces' (or points') corners,
    ``corners`` (F, k, 3), runs ``start`` (R + 1,): centred on each run's bounding box. (Corner
    by corner and axis by axis: NumPy is slow along short axes.)"""
    first, each = start[:-1], range(corners.shape[1])
    low = np.minimum.reduceat(functools.reduce(np.minimum, (corners[:, k] for k in each)), first, axis=0)
    high = np.maximum.reduceat(functools.reduce(np.maximum, (corners[:, k] for k in each)), first, axis=0)
    centre = 0.5 * (low + high)
    offset = corners - np.repeat(centre, np.diff(start), axis=0)[:, None]
    square = offset * offset
    reach = np.sqrt(square[..., 0] + square[..., 1] + square[..., 2])   # (the sum in np.linalg.norm's order)
    return centre, np.maximum.reduceat(functools.reduce(np.maximum, (reach[:, k] for k in each)), first)


@dataclass(frozen=True, eq=False)
class _Grid:
    """Each step's tested targets in camera coordinates, binned on the z = 1 plane."""

    local: np.ndarray        # (T*N, 3) targets in camera coordinates
    lower: np.ndarray        # (T, 2) lower corner of the targets' bounding box on the z = 1 plane
    upper: np.ndarray        # (T, 2) upper corner
    cell: np.ndarray         # (T, 2) cell width and height
    farthest: np.ndarray     # (T,) largest target depth (-inf: nothing tested)
    groups: int              # K, the number of target groups
    boxes: np.ndarray        # (K, 5, T) each group's z = 1 plane box (lower x, y, upper x, y) widened by the
                             # slack (0 where it has no targets), then its largest target depth (-inf: none)
    box_scales: np.ndarray   # (K, 4, T) sqrt(1 + bound ** 2) of each of those bounds: |normal| of its pyramid side
    live: np.ndarray         # (T, K) whether the group has a tested target at the step
    flat: np.ndarray         # flat indices (t * N + n) of the tested targets, ascending
    keys: np.ndarray         # their cell keys ((t * K + group) * G + row) * G + column
    summed: np.ndarray       # (T, K, G + 1, G + 1) summed-area tables of each group's targets per cell

    def cells(self, step: np.ndarray, low: np.ndarray, high: np.ndarray,
              groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell ranges (M, 2) [column, row] of z = 1 plane boxes at ``step`` (bounds may be
        infinite), clipped to the grid, and whether each range holds a target of the groups
        ``groups`` (K,) or (M, K) marks."""
        first = np.clip(np.floor((low - self.lower[step]) / self.cell[step]), 0, GRID_CELLS).astype(np.int64)
        last = np.clip(np.floor((high - self.lower[step]) / self.cell[step]), -1, GRID_CELLS - 1).astype(np.int64)
        c0, r0 = np.minimum(first[:, 0], GRID_CELLS - 1), np.minimum(first[:, 1], GRID_CELLS - 1)
        c1, r1 = np.maximum(last[:, 0], 0) + 1, np.maximum(last[:, 1], 0) + 1
        table, side = self.summed.reshape(-1), GRID_CELLS + 1
        count = np.zeros(len(step), dtype=np.int32)
        marks = np.broadcast_to(groups, (len(step), self.groups))
        for group in np.flatnonzero(marks.any(axis=0)):
            base = (step * self.groups + group) * side * side
            found = (table[base + r1 * side + c1] - table[base + r0 * side + c1] - table[base + r1 * side + c0]
                     + table[base + r0 * side + c0])
            count += np.where(marks[:, group], found, 0)
        return first, last, (count > 0) & (first[:, 0] <= last[:, 0]) & (first[:, 1] <= last[:, 1])


@dataclass(frozen=True, eq=False)
class _Bins:
    """The tested targets of the steps that have candidate faces, ordered by cell (built only then)."""

    sorted_keys: np.ndarray  # their cell keys (as _Grid.keys), ascending
    order: np.ndarray        # flat target index of each sorted key
    points: np.ndarray       # (3, n) their camera coordinates, component-major
    row_columns: np.ndarray  # (T * K * G, 2) first and last occupied column of each group's row (G, -1: none)


@dataclass(frozen=True, eq=False)
class _Candidates:
    """Front faces that may block targets, one step each, and the cells they cover."""

    step: np.ndarray      # (M,)
    mesh: np.ndarray      # (M,)
    groups: np.ndarray    # (M, K) the target groups the face may hide
    columns: np.ndarray   # (M, 2) first and last cell column covered
    rows: np.ndarray      # (M, 2)
    edges: np.ndarray     # (9, M) A x B, B x C, C x A of the vertices in camera coordinates, component by component
    volume: np.ndarray    # (M,) A . (B x C), negative (front faces)


def blocked_segments(meshes: MeshSet, mesh_poses: np.ndarray, camera_poses: np.ndarray, targets: np.ndarray, *,
                     margin_m: float, tested: np.ndarray | None = None, groups: np.ndarray | None = None,
                     excluded: np.ndarray | None = None) -> np.ndarray:
    """(T, N) True where the segment from the camera to the target crosses a mesh before it.

    ``mesh_poses`` (T, L, 4, 4) pose each of the L meshes in the base frame per step;
    ``camera_poses`` is one (4, 4) T_base_cam or (T, 4, 4), its z axis the viewing direction;
    ``targets`` (T, N, 3) are base-frame points. Only targets in front of the camera (and where
    ``tested`` (T, N) is True) are tested; the others are False. Targets fall into ``groups``
    (N,) ints 0..K-1 (default all 0); ``excluded`` (K, L) True skips mesh l for group k's
    targets (e.g. the body they lie on). Hits within ``margin_m`` of the target (along the
    segment) do not block.
    """
    targets = np.asarray(targets, dtype=np.float64)
    num_steps, num_targets = targets.shape[:2]
    mesh_poses = np.asarray(mesh_poses, dtype=np.float64)
    if mesh_poses.shape != (num_steps, meshes.num_meshes, 4, 4):
        raise ValueError(f"mesh poses have shape {mesh_poses.shape}, "
                         f"expected {(num_steps, meshes.num_meshes, 4, 4)}")
    group = np.zeros(num_targets, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    skip = (np.zeros((int(group.max(initial=0)) + 1, meshes.num_meshes), dtype=bool) if excluded is None
            else np.asarray(excluded, dtype=bool))
    if group.shape != (num_targets,) or skip.ndim != 2 or skip.shape[1] != meshes.num_meshes \
            or group.min(initial=0) < 0 or group.max(initial=0) >= len(skip):
        raise ValueError(f"groups {group.shape} and exclusions {skip.shape} do not fit {num_targets} targets "
                         f"and {meshes.num_meshes} meshes")
    cam_from_base = invert(np.broadcast_to(np.asarray(camera_poses, dtype=np.float64), (num_steps, 4, 4)))
    local = targets @ np.swapaxes(cam_from_base[:, :3, :3], -1, -2) + cam_from_base[:, None, :3, 3]
    mask = local[..., 2] > MIN_DEPTH_M
    if tested is not None:
        mask &= np.asarray(tested, dtype=bool)
    blocked = np.zeros(num_steps * num_targets, dtype=bool)
    if mask.any():
        grid = _bin_targets(local, mask, group, len(skip))
        candidates = _candidate_faces(meshes, ~skip, cam_from_base[:, None] @ mesh_poses, grid)
        if len(candidates.step):
            bins = _order_targets(grid, candidates.step, num_targets)
            for face, start, length in _pairs(candidates, grid, bins):
                blocked[bins.order[_crosses_before(candidates, bins, face, start, length, margin_m)]] = True
    return blocked.reshape(num_steps, num_targets)


def _bin_targets(local: np.ndarray, mask: np.ndarray, group: np.ndarray, num_groups: int) -> _Grid:
    num_steps, num_targets = mask.shape
    depth = np.where(mask, local[..., 2], 1.0)
    plane = [local[..., axis] / depth for axis in range(2)]  # per axis: reductions over N stay contiguous
    group_lower, group_upper = np.empty((num_steps, num_groups, 2)), np.empty((num_steps, num_groups, 2))
    deepest = np.empty((num_steps, num_groups))
    for index in range(num_groups):
        members = _members(group, index)
        tested = mask[:, members]
        for axis, p in enumerate(plane):
            group_lower[:, index, axis] = p[:, members].min(axis=1, initial=np.inf, where=tested)
            group_upper[:, index, axis] = p[:, members].max(axis=1, initial=-np.inf, where=tested)
        deepest[:, index] = local[:, members, 2].max(axis=1, initial=-np.inf, where=tested)
    lower, upper = group_lower.min(axis=1), group_upper.max(axis=1)
    empty = ~mask.any(axis=1)
    lower[empty], upper[empty] = 0.0, 0.0
    cell = np.maximum(upper - lower, 1e-12) / GRID_CELLS
    flat = np.flatnonzero(mask)
    step, member = np.divmod(flat, num_targets)
    column, row = (np.clip(np.floor((np.take(p, flat) - np.take(lower[:, axis], step)) / np.take(cell[:, axis], step)),
                           0, GRID_CELLS - 1).astype(np.int64) for axis, p in enumerate(plane))
    row_key = (step * num_groups + group[member]) * GRID_CELLS + row
    keys = row_key * GRID_CELLS + column
    summed = np.zeros((num_steps, num_groups, GRID_CELLS + 1, GRID_CELLS + 1), dtype=np.int32)
    summed[:, :, 1:, 1:] = np.bincount(keys, minlength=num_steps * num_groups * GRID_CELLS * GRID_CELLS).reshape(
        num_steps, num_groups, GRID_CELLS, GRID_CELLS)
    for below in range(2, GRID_CELLS + 1):  # a row and a column at a time: faster than cumsum along short axes
        summed[:, :, below] += summed[:, :, below - 1]
    for right in range(2, GRID_CELLS + 1):
        summed[..., right] += summed[..., right - 1]
    farthest = deepest.max(axis=1)
    live = np.isfinite(deepest)
    boxes = np.where(live[..., None], np.concatenate([group_lower - PLANE_SLACK_M, group_upper + PLANE_SLACK_M],
                                                     axis=2), 0.0).transpose(1, 2, 0)
    return _Grid(local.reshape(-1, 3), lower, upper, cell, farthest, num_groups,
                 np.concatenate([boxes, deepest.T[:, None]], axis=1), np.sqrt(1.0 + boxes * boxes), live, flat, keys,
                 summed)


def _order_targets(grid: _Grid, steps: np.ndarray, num_targets: int) -> _Bins:
    """Sort the tested targets of ``steps`` (the steps of candidate faces) by cell, for pair enumeration."""
    used = np.zeros(len(grid.lower), dtype=bool)
    used[steps] = True
    chosen = used[grid.flat // num_targets]
    keys, flat = grid.keys[chosen], grid.flat[chosen]
    sort = np.argsort(keys, kind="stable")  # (faster here: the keys come in runs, one per step)
    row_key, column = np.divmod(keys, GRID_CELLS)
    row_columns = np.empty((len(grid.lower) * grid.groups * GRID_CELLS, 2), dtype=np.int64)
    row_columns[:, 0], row_columns[:, 1] = GRID_CELLS, -1
    np.minimum.at(row_columns[:, 0], row_key, column)
    np.maximum.at(row_columns[:, 1], row_key, column)
    flat = flat[sort]
    return _Bins(keys[sort], flat, np.take(grid.local, flat, axis=0).T.copy(), row_columns)


def _members(group: np.ndarray, index: int) -> slice | np.ndarray:
    """The targets of one group: a slice when they are contiguous (the usual case), else their indices."""
    members = np.flatnonzero(group == index)
    if members.size and members[-1] - members[0] + 1 == members.size:
        return slice(int(members[0]), int(members[-1]) + 1)
    return members


def _candidate_faces(meshes: MeshSet, allowed: np.ndarray, cam_from_mesh: np.ndarray, grid: _Grid) -> _Candidates:
    """Front faces, per step, of the leaves (of clusters, of meshes) whose bounding spheres reach
    the pyramid of a group the mesh may hide (``allowed`` (K, L)), in front of the camera, before
    that group's farthest target and over its box; which groups each face may hide; and the cells
    its projection covers. Arrays are component-major ((3, ...) coordinates, (K, M) group marks):
    NumPy then runs long loops rather than one per short row."""
    rotation, translation = cam_from_mesh[..., :3, :3], cam_from_mesh[..., :3, 3]   # (T, L, ...)
    camera = invert(cam_from_mesh)[..., :3, 3]  # the camera in each mesh's frame
    centre = (rotation[..., 0] * meshes.mesh_centres[:, 0, None] + rotation[..., 1] * meshes.mesh_centres[:, 1, None]
              + rotation[..., 2] * meshes.mesh_centres[:, 2, None] + translation)   # (T, L, 3)
    reach = np.zeros((*centre.shape[:2], grid.groups), dtype=bool)   # (T, L, K)
    every, (x, y, z) = np.arange(len(centre))[:, None], np.moveaxis(centre, -1, 0)
    for group in np.flatnonzero(grid.live.any(axis=0)).tolist():
        reach[..., group] = (_in_pyramid(grid, every, group, x, y, z, meshes.mesh_radii)
                             & allowed[group] & grid.live[:, group, None])
    num_groups = grid.groups
    found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((3, 3, 0)), np.zeros((num_groups, 0), bool),
              np.zeros((2, 0)), np.zeros((2, 0)))]
    for index in np.flatnonzero(reach.any(axis=(0, 2))):
        steps = np.flatnonzero(reach[:, index].any(axis=1))
        first_cluster, stop_cluster = meshes.mesh_clusters[index]
        turn, shift = rotation[steps, index], translation[steps, index]
        # The cluster spheres, all clusters at every step at once, posed into camera coordinates
        # (S, clusters) and tested against each group's pyramid.
        x, y, z = _posed_points(turn[..., None], shift[..., None],
                                meshes.cluster_centre_columns[:, None, first_cluster:stop_cluster])
        radius = meshes.cluster_radii[first_cluster:stop_cluster]
        inside = np.zeros((num_groups, len(steps), stop_cluster - first_cluster), dtype=bool)
        for group in np.flatnonzero(reach[steps, index].any(axis=0)).tolist():
            inside[group] = _in_pyramid(grid, steps[:, None], group, x, y, z, radius) & reach[steps, index, group, None]
        which, cluster = np.nonzero(inside.any(axis=0))
        marks = inside[:, which, cluster]   # (K, M)
        cluster += first_cluster
        # Their leaves inside a pyramid, then the faces of those that face the camera (it lies on
        # the outer side of their plane).
        count = meshes.cluster_leaves[cluster, 1] - meshes.cluster_leaves[cluster, 0]
        which, marks = np.repeat(which, count), np.repeat(marks, count, axis=1)
        leaf = np.repeat(meshes.cluster_leaves[cluster, 0], count) + _ramp(count)
        x, y, z = _posed_points(np.take(turn.reshape(len(steps), 9).T.copy(), which, axis=1).reshape(3, 3, -1),
                                np.take(shift.T.copy(), which, axis=1),
                                np.take(meshes.leaf_centre_columns, leaf, axis=1), rows_first=True)
        for group in np.flatnonzero(marks.any(axis=1)).tolist():
            marks[group] &= _in_pyramid(grid, steps[which], group, x, y, z, meshes.leaf_radii[leaf])
        kept = marks.any(axis=0)
        which, leaf, marks = which[kept], leaf[kept], marks[:, kept]
        size = meshes.leaf_faces[leaf, 1] - meshes.leaf_faces[leaf, 0]
        which, marks = np.repeat(which, size), np.repeat(marks, size, axis=1)
        face = np.repeat(meshes.leaf_faces[leaf, 0], size) + _ramp(size)
        x, y, z = np.take(camera[steps, index].T, which, axis=1)
        nx, ny, nz = np.take(meshes.face_normal_columns, face, axis=1)
        front = (x * nx + z * nz) + y * ny > meshes.face_offsets[face]   # (the order of einsum's sum: same bits)
        which, face, marks = which[front], face[front], marks[:, front]
        corners = _posed_corners(meshes.vertices[meshes.vertex_start[index]:meshes.vertex_start[index + 1]],
                                 meshes.faces[face], which, turn, shift)
        # Faces before the group's farthest target whose projection overlaps the group's box.
        depth = corners[:, 2]
        nearest = np.minimum(np.minimum(depth[0], depth[1]), depth[2])
        farthest = np.maximum(np.maximum(depth[0], depth[1]), depth[2])
        keep = farthest > MIN_DEPTH_M
        if not keep.all():
            which, corners, nearest, marks = which[keep], corners[..., keep], nearest[keep], marks[:, keep]
        low, high = _projected_bounds(corners, nearest > MIN_DEPTH_M)
        at = steps[which]
        for group in range(num_groups):
            box = np.take(grid.boxes[group], at, axis=1)
            marks[group] &= ((nearest < box[4]) & (low[0] <= box[2]) & (low[1] <= box[3])
                             & (high[0] >= box[0]) & (high[1] >= box[1]))
        keep = marks.any(axis=0)
        found.append((at[keep], np.full(int(keep.sum()), index), corners[..., keep], marks[:, keep], low[:, keep],
                      high[:, keep]))
    step, owner = np.concatenate([part[0] for part in found]), np.concatenate([part[1] for part in found])
    corners, marks, low, high = (np.concatenate([part[k] for part in found], axis=-1) for k in range(2, 6))
    first, last, occupied = grid.cells(step, low.T, high.T, marks.T)
    a, b, c = (corners[k][:, occupied] for k in range(3))
    opposite = _cross(b, c)
    return _Candidates(step[occupied], owner[occupied], marks[:, occupied].T,
                       np.stack([first[occupied, 0], last[occupied, 0]], axis=1),
                       np.stack([first[occupied, 1], last[occupied, 1]], axis=1),
                       np.concatenate([_cross(a, b), opposite, _cross(c, a)]),
                       np.einsum("pi,pi->p", a.T.copy(), opposite.T.copy()))


def _posed_points(turn: np.ndarray, shift: np.ndarray, points: np.ndarray, *,
                  rows_first: bool = False) -> list[np.ndarray]:
    """x, y, z of ``R p + t``, component-major: ``points`` (3, ...) p, ``turn`` R and ``shift`` t
    broadcasting against them, as (S, 3, 3, ...) and (S, 3, ...) or, ``rows_first``, (3, 3, ...)
    and (3, ...)."""
    rows = turn if rows_first else np.moveaxis(turn, (1, 2), (0, 1))
    moved = shift if rows_first else np.moveaxis(shift, 1, 0)
    return [rows[axis, 0] * points[0] + rows[axis, 1] * points[1] + rows[axis, 2] * points[2] + moved[axis]
            for axis in range(3)]


def _in_pyramid(grid: _Grid, step: np.ndarray, group: int, x: np.ndarray, y: np.ndarray, z: np.ndarray,
                radius: np.ndarray) -> np.ndarray:
    """Whether spheres (camera coordinates x, y, z, one step each, ``step`` broadcasting to them)
    reach each of the six planes of the group's pyramid (within radius plus the slack): the
    camera plane, the group's deepest target, and the four sides through the camera over its
    (slack-widened) box, x <= upper z etc., the distance to each (x - upper z) / |(1, -upper)|."""
    reach = np.asarray(radius) + PLANE_SLACK_M
    box, scale = np.take(grid.boxes[group], step, axis=1), np.take(grid.box_scales[group], step, axis=1)
    inside = (z >= -reach) & (z <= box[4] + reach)
    for axis, coordinate in enumerate((x, y)):
        inside &= coordinate - box[2 + axis] * z <= reach * scale[2 + axis]
        inside &= box[axis] * z - coordinate <= reach * scale[axis]
    return inside


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(3, M) cross products of (3, M) vectors (as np.cross computes them, component-major)."""
    return np.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _posed_corners(vertices: np.ndarray, faces: np.ndarray, which: np.ndarray, turn: np.ndarray,
                   shift: np.ndarray) -> np.ndarray:
    """(3 corners, 3 axes, P) camera coordinates of faces (vertex rows ``faces`` (P, 3) of
    ``vertices`` (V, 3)) at steps ``which`` of the transforms ``R x + t`` (``turn`` (S, 3, 3) R,
    ``shift`` (S, 3) t): all vertices at every step by batched matrix products when the faces use
    most of them, else each face's own three, summed term by term in the order of einsum's (the
    same bits), one long loop per corner and axis."""
    if 3 * len(faces) >= len(turn) * len(vertices):
        return (vertices @ np.swapaxes(turn, -1, -2) + shift[:, None])[which[:, None], faces].transpose(1, 2, 0)
    rows = np.take(turn.reshape(len(turn), 9).T, which, axis=1).reshape(3, 3, -1)   # rows[j, i] = R[j, i]
    moved = np.take(shift.T, which, axis=1)
    corners = np.empty((3, 3, len(which)))
    for corner in range(3):
        x, y, z = np.take(vertices, faces[:, corner], axis=0).T
        out = corners[corner]
        np.multiply(x, rows[:, 0], out=out)
        out += y * rows[:, 1]
        out += z * rows[:, 2]
        out += moved
    return corners


def _projected_bounds(corners: np.ndarray, ahead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(2, M) lower and upper corners of the z = 1 plane projection of each face's part in front
    of the camera (z >= MIN_DEPTH_M), ``corners`` (3 corners, 3 axes, M). ``ahead``: faces wholly
    in front (their vertices bound it); for the others the edges' crossings of z = MIN_DEPTH_M
    bound it too."""
    inverse = 1.0 / np.maximum(corners[:, 2], MIN_DEPTH_M)
    low, high = np.empty((2, corners.shape[-1])), np.empty((2, corners.shape[-1]))
    for axis in range(2):
        x0, x1, x2 = (corners[k, axis] * inverse[k] for k in range(3))
        low[axis] = np.minimum(np.minimum(x0, x1), x2)
        high[axis] = np.maximum(np.maximum(x0, x1), x2)
    crossing = np.flatnonzero(~ahead)
    if crossing.size:
        part = corners[..., crossing].transpose(2, 0, 1)   # (M', corner, axis)
        depth = part[..., 2]
        before = depth >= MIN_DEPTH_M
        following = np.roll(part, -1, axis=1)
        crosses = before != np.roll(before, -1, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            fraction = np.where(crosses, (MIN_DEPTH_M - depth) / (following[..., 2] - depth), 0.0)
        points = np.concatenate([part, part + fraction[..., None] * (following - part)], axis=1)
        valid = np.concatenate([before, crosses], axis=1)[..., None]
        projected = points[..., :2] / np.maximum(points[..., 2:], MIN_DEPTH_M)
        low[:, crossing] = np.where(valid, projected, np.inf).min(axis=1).T
        high[:, crossing] = np.where(valid, projected, -np.inf).max(axis=1).T
    return low, high


def _pairs(candidates: _Candidates, grid: _Grid, bins: _Bins) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield runs of (face, sorted target) pairs, as arrays (face index, first sorted position,
    count): every tested target in a face's cells whose group the face may hide (one run per
    face and cell row)."""
    face, group = np.nonzero(candidates.groups)
    rows = candidates.rows[face]
    count = rows[:, 1] - rows[:, 0] + 1
    item = np.repeat(np.arange(len(face)), count)
    face = face[item]
    row_key = (candidates.step[face] * grid.groups + group[item]) * GRID_CELLS + rows[item, 0] + _ramp(count)
    first = np.maximum(candidates.columns[face, 0], bins.row_columns[row_key, 0])
    last = np.minimum(candidates.columns[face, 1], bins.row_columns[row_key, 1])
    occupied = first <= last
    face, row_key, first, last = face[occupied], row_key[occupied], first[occupied], last[occupied]
    start = np.searchsorted(bins.sorted_keys, row_key * GRID_CELLS + first, side="left")
    length = np.searchsorted(bins.sorted_keys, row_key * GRID_CELLS + last, side="right") - start
    bounds = np.concatenate([[0], np.cumsum(length)])
    begin = 0
    while begin < len(length):
        end = max(int(np.searchsorted(bounds, bounds[begin] + PAIR_CHUNK, side="right")) - 1, begin + 1)
        yield face[begin:end], start[begin:end], length[begin:end]
        begin = end


def _ramp(count: np.ndarray) -> np.ndarray:
    """0, 1, ..., count[0] - 1, 0, 1, ..., count[1] - 1, ... as one array."""
    return np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)


def _crosses_before(candidates: _Candidates, bins: _Bins, face: np.ndarray, start: np.ndarray, length: np.ndarray,
                    margin_m: float) -> np.ndarray:
    """Sorted positions of the targets whose segment from the camera crosses a face before them,
    beyond the margin, among the runs of pairs (``face``, targets ``start`` .. + ``length``)."""
    position = np.repeat(start, length) + _ramp(length)
    x, y, z = (np.take(coordinate, position) for coordinate in bins.points)
    owner = np.repeat(face, length)
    edge = [functools.partial(np.take, row) for row in candidates.edges]   # a row at a time: bounded memory
    sides = [x * edge[3 * k](owner) + y * edge[3 * k + 1](owner) + z * edge[3 * k + 2](owner) for k in range(3)]
    toward = sides[0] + sides[1] + sides[2]
    inside = np.flatnonzero((sides[0] <= 0.0) & (sides[1] <= 0.0) & (sides[2] <= 0.0) & (toward < 0.0))
    position = position[inside]
    point = np.ascontiguousarray(bins.points[:, position].T)
    distance = np.sqrt(np.einsum("ni,ni->n", point, point))
    volume = candidates.volume[owner[inside]]
    return position[volume > (1.0 - margin_m / distance) * toward[inside]]
