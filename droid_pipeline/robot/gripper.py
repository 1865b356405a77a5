"""Robotiq 2F-85 model: DROID gripper_position -> finger angle, finger poses and pad contact points.

DROID records ``gripper_position = 1 - width / max_width`` (0 open, 1 closed). The model turns
that width into the ``finger_joint`` angle by inverting the pad-separation(angle) curve of the
URDF's four-bar linkage, so the pads sit where the commanded width puts them (a linear scaling
of the angle would not: the linkage is not linear). ``max_width`` is the pad separation at
``finger_joint = 0`` in the URDF geometry (about 78.5 mm), not the product's 85 mm stroke: the
tracked points live on the URDF's finger meshes, so the URDF geometry is the consistent choice.
``gripper_position = 1`` maps to the angle where the pads meet, which lies a few milliradians
beyond the URDF's 0.725 upper limit; the limit is not applied (at 0.725 the pads are still
0.6 mm apart).

Frames: flange (panda_link8) -> gripper (robotiq_85_base_link, after the fixed mount) ->
finger (left_inner_finger / right_inner_finger, the links carrying the pads). The mount is the
URDF's fixed joint unless :meth:`GripperModel.load` is given another :class:`GripperMount`;
every flange-frame pose the model returns includes it.
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from droid_pipeline.geometry.poses import transform_points
from droid_pipeline.geometry.roots import brentq
from droid_pipeline.robot.kinematics import (
    GRIPPER_BASE_LINK,
    GripperMount,
    gripper_mount_transform,
    read_asset,
    robot_model,
)
from droid_pipeline.robot.urdf import JointLimit, Robot

FINGER_JOINT = "finger_joint"
LEFT_FINGER_LINK = "left_inner_finger"
RIGHT_FINGER_LINK = "right_inner_finger"
FINGER_MESH = "meshes/inner_finger_fine.STL"
# Angle tolerance (degrees) for triangles to count as facing the other finger, and the
# tolerance (degrees / metres) for triangles to count as part of one flat contact face.
FACING_TOLERANCE_DEG = 10.0
COPLANAR_ANGLE_DEG = 1.0
COPLANAR_DISTANCE_M = 1e-4
# Samples of the separation(angle) curve that finger_angle interpolates.
SEPARATION_TABLE_SIZE = 4097


class GripperModel:
    """Finger kinematics and pad geometry of the Robotiq 2F-85, vectorized over gripper_position."""

    def __init__(self, robot: Robot, finger_triangles: np.ndarray, mount: np.ndarray):
        """``finger_triangles`` (F, 3, 3): the inner finger mesh in its link frame, metres."""
        self._robot = robot
        self._mount = np.array(mount, dtype=np.float64)
        limit = robot.joint(FINGER_JOINT).limit
        if limit is None:
            raise ValueError(f"joint {FINGER_JOINT!r} has no limits in the URDF")
        self._finger_limit: JointLimit = limit
        left_open, right_open = self._finger_link_poses(np.array(self._finger_limit.lower))
        toward_right = left_open[:3, :3].T @ (right_open[:3, 3] - left_open[:3, 3])
        self._face_triangles, self._face_normal = _contact_face(finger_triangles, toward_right)
        _, face_areas = _triangle_normals(self._face_triangles)
        self._face_point = face_areas @ self._face_triangles.mean(axis=1) / face_areas.sum()
        # Reflection across the gripper's mid-plane (the gripper-frame coordinate plane facing the
        # pads), as a map from left finger link coordinates to right finger link coordinates.
        across = np.eye(3)[np.argmax(np.abs(left_open[:3, :3] @ self._face_normal))]
        reflection = np.eye(3) - 2.0 * np.outer(across, across)
        self._mirror = right_open[:3, :3].T @ reflection @ left_open[:3, :3]
        self._pad_box = _pad_box(finger_triangles, self._face_triangles, self._face_normal)
        self._angle_table, self._separation_table = self._separation_curve()
        self.max_width = float(self._separation_table[0])
        self.closed_angle = float(self._angle_table[-1])

    @classmethod
    def load(cls, mount: GripperMount | None = None) -> GripperModel:
        """The model built from the packaged URDF and finger mesh (built once, then shared), on the
        URDF's mount or on ``mount`` (one shared model per mount)."""
        return _packaged_model() if mount is None else _mounted_model(mount)

    def with_mount(self, mount: np.ndarray) -> GripperModel:
        """This model on another flange-to-gripper transform (4x4); the finger geometry is shared."""
        moved = copy.copy(self)
        moved._mount = np.array(mount, dtype=np.float64)
        return moved

    def finger_angle(self, gripper_position: np.ndarray) -> np.ndarray:
        """(T,) finger_joint angles (radians) for (T,) gripper_position; values outside [0, 1] are clipped."""
        width = self.pad_separation(gripper_position)
        return np.interp(width, self._separation_table[::-1], self._angle_table[::-1])

    def pad_separation(self, gripper_position: np.ndarray) -> np.ndarray:
        """(T,) distance between the two pad faces (metres): (1 - gripper_position) * max_width."""
        return (1.0 - _clipped_position(gripper_position)) * self.max_width

    def finger_poses(self, gripper_position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) inner finger link poses in the flange frame, each (T, 4, 4)."""
        left, right = self._finger_link_poses(self.finger_angle(gripper_position))
        return self._mount @ left, self._mount @ right

    def contact_points_local(self, num_points: int) -> np.ndarray:
        """(num_points, 3) pad points, left finger's half first, each in its own finger link frame.

        Points follow the unscrambled Halton sequence over the contact face (those falling on the
        face, in sequence order), so they are spread evenly and identical on every call; a
        finger's points for a smaller count are a prefix of those for a larger one. The right
        finger's points are the left's reflected across the gripper's mid-plane.
        """
        if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)):
            raise ValueError(f"num_points must be an integer, got {num_points!r}")
        if num_points < 2 or num_points % 2:
            raise ValueError(f"num_points must be even and >= 2 (half per finger), got {num_points}")
        left = _sample_face(self._face_triangles, self._face_normal, num_points // 2)
        return np.concatenate([left, left @ self._mirror.T])

    def contact_points(self, gripper_position: np.ndarray, num_points: int) -> np.ndarray:
        """(T, num_points, 3) pad points in the flange frame, left finger's half first."""
        local = self.contact_points_local(num_points)
        half = num_points // 2
        left, right = self.finger_poses(gripper_position)
        return np.concatenate([transform_points(left, local[:half]), transform_points(right, local[half:])], axis=-2)

    def contact_normals_local(self, num_points: int) -> np.ndarray:
        """(num_points, 3) outward unit normal of the pad face at each of :meth:`contact_points_local`'s
        points, in the same finger link frame (it points towards the other finger): the left
        face's normal for the left half, mirrored like the points for the right half."""
        half = len(self.contact_points_local(num_points)) // 2
        left = np.broadcast_to(self._face_normal, (half, 3))
        return np.concatenate([left, left @ self._mirror.T])

    def contact_normals(self, gripper_position: np.ndarray, num_points: int) -> np.ndarray:
        """(T, num_points, 3) the pad normals of :meth:`contact_normals_local` in the flange frame."""
        local = self.contact_normals_local(num_points)
        half = num_points // 2
        left, right = self.finger_poses(gripper_position)
        return np.concatenate([local[:half] @ np.swapaxes(left[..., :3, :3], -1, -2),
                               local[half:] @ np.swapaxes(right[..., :3, :3], -1, -2)], axis=-2)

    def pad_box_local(self) -> tuple[np.ndarray, np.ndarray]:
        """(center (3,), half_extents (3,)): a box in the finger link frame enclosing the pad."""
        center, half_extents = self._pad_box
        return center.copy(), half_extents.copy()

    def gripper_frame_in_flange(self) -> np.ndarray:
        """4x4 pose of the gripper frame (robotiq_85_base_link) in the flange frame."""
        return self._mount.copy()

    def _finger_link_poses(self, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) inner finger poses in the gripper frame through the mimic-joint linkage."""
        values = {FINGER_JOINT: angle}
        return (self._robot.forward_kinematics(GRIPPER_BASE_LINK, LEFT_FINGER_LINK, values),
                self._robot.forward_kinematics(GRIPPER_BASE_LINK, RIGHT_FINGER_LINK, values))

    def _separation(self, angle: np.ndarray) -> np.ndarray:
        """Pad-face separation (metres) along the left pad's normal at finger angles ``angle``."""
        left, right = self._finger_link_poses(np.asarray(angle, dtype=np.float64))
        left_face = left[..., :3, :3] @ self._face_point + left[..., :3, 3]
        right_face = right[..., :3, :3] @ (self._mirror @ self._face_point) + right[..., :3, 3]
        normal = left[..., :3, :3] @ self._face_normal
        return np.einsum("...i,...i->...", left_face - right_face, -normal)

    def _separation_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Angles from fully open to pads-meeting and the separation at each (strictly falling)."""
        lower, upper = self._finger_limit.lower, self._finger_limit.upper
        search = np.linspace(lower, lower + 2.0 * (upper - lower), SEPARATION_TABLE_SIZE)
        separation = self._separation(search)
        crossing = np.flatnonzero(separation <= 0.0)
        if separation[0] <= 0.0 or crossing.size == 0:
            raise ValueError(f"the URDF pads never meet for {FINGER_JOINT} in [{search[0]}, {search[-1]}]")
        if np.any(np.diff(separation[: crossing[0] + 1]) >= 0.0):
            raise ValueError("the URDF's pad separation does not fall monotonically as the fingers close")
        closed = brentq(lambda angle: float(self._separation(np.array(angle))), search[crossing[0] - 1],
                        search[crossing[0]], xtol=1e-14)
        angles = np.linspace(lower, closed, SEPARATION_TABLE_SIZE)
        separation = self._separation(angles)
        separation[-1] = 0.0
        return angles, separation


@functools.cache
def _packaged_model() -> GripperModel:
    return GripperModel(robot_model(), read_binary_stl(read_asset(FINGER_MESH)), gripper_mount_transform())


@functools.cache
def _mounted_model(mount: GripperMount) -> GripperModel:
    return _packaged_model().with_mount(mount.transform())


def read_binary_stl(data: bytes) -> np.ndarray:
    """(F, 3, 3) float64 triangle vertices of a binary STL file's bytes."""
    if len(data) < 84:
        raise ValueError(f"not a binary STL: {len(data)} bytes is shorter than its 84-byte header")
    count = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
    if len(data) != 84 + 50 * count:
        raise ValueError(f"not a binary STL: {len(data)} bytes where {count} triangles need {84 + 50 * count}")
    record = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    triangles = np.frombuffer(data, dtype=record, count=count, offset=84)["vertices"].astype(np.float64)
    if not np.isfinite(triangles).all():
        raise ValueError("STL has non-finite vertex coordinates")
    return triangles


def _clipped_position(gripper_position: np.ndarray) -> np.ndarray:
    gripper_position = np.asarray(gripper_position, dtype=np.float64)
    if np.isnan(gripper_position).any():
        raise ValueError("gripper_position contains NaN")
    return np.clip(gripper_position, 0.0, 1.0)


def _triangle_normals(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (right-hand rule) and areas of (F, 3, 3) triangles."""
    cross = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    safe = np.where(double_area > 0.0, double_area, 1.0)
    return cross / safe[:, None], 0.5 * double_area


def _contact_face(triangles: np.ndarray, toward_other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of the flat face nearest the other finger and facing it, and the face's unit normal."""
    direction = toward_other / np.linalg.norm(toward_other)
    normals, areas = _triangle_normals(triangles)
    facing = (normals @ direction > np.cos(np.radians(FACING_TOLERANCE_DEG))) & (areas > 0.0)
    if not facing.any():
        raise ValueError("the finger mesh has no face turned toward the other finger")
    centers = triangles.mean(axis=1)
    seed = np.flatnonzero(facing)[np.argmax(centers[facing] @ direction)]
    coplanar = (facing
                & (normals @ normals[seed] > np.cos(np.radians(COPLANAR_ANGLE_DEG)))
                & (np.abs((centers - centers[seed]) @ normals[seed]) < COPLANAR_DISTANCE_M))
    face_normal = (normals[coplanar] * areas[coplanar, None]).sum(axis=0)
    return triangles[coplanar], face_normal / np.linalg.norm(face_normal)


def _face_basis(normal: np.ndarray) -> np.ndarray:
    """(2, 3) orthonormal in-plane axes of a face: the link axis least along the normal, then normal x it."""
    axis = np.eye(3)[np.argmin(np.abs(normal))]
    first = axis - (axis @ normal) * normal
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(normal, first)])


def _sample_face(face: np.ndarray, normal: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` unscrambled-Halton points of the face's bounding rectangle lying on the face."""
    basis = _face_basis(normal)
    flat = face @ basis.T  # (F, 3, 2) in-plane coordinates
    low, high = flat.reshape(-1, 2).min(axis=0), flat.reshape(-1, 2).max(axis=0)
    _, areas = _triangle_normals(face)
    fill = areas.sum() / np.prod(high - low)
    candidates = int(np.ceil(count / fill)) + 16
    while True:
        uv = low + halton_2d(candidates) * (high - low)
        triangle, weights = _locate(flat, uv)
        inside = triangle >= 0
        if inside.sum() >= count:
            keep = np.flatnonzero(inside)[:count]
            return np.einsum("nk,nkj->nj", weights[keep], face[triangle[keep]])
        candidates *= 2


def halton_2d(count: int) -> np.ndarray:
    """(count, 2) points 1..count of the unscrambled Halton sequence in bases 2 and 3 (point 0, the
    corner (0, 0), is skipped): each coordinate the radical inverse of the index, its digits summed
    as digit / base**k from the most significant fraction digit down."""
    points = np.zeros((count, 2))
    for axis, base in enumerate((2, 3)):
        quotient = np.arange(1, count + 1, dtype=np.int64)
        weight = 1.0 / base
        while quotient.any():
            points[:, axis] += (quotient % base) * weight
            weight /= base
            quotient //= base
    return points


def _locate(flat: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (M, 2) points: index of the first (F, 3, 2) triangle containing each (-1 if none) and barycentrics."""
    a, b, c = flat[:, 0], flat[:, 1], flat[:, 2]
    v0, v1 = b - a, c - a
    v2 = uv[:, None, :] - a[None]
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    det = np.where(det == 0.0, np.inf, det)  # degenerate triangles contain nothing
    s = (v2[..., 0] * v1[:, 1] - v2[..., 1] * v1[:, 0]) / det
    t = (v0[:, 0] * v2[..., 1] - v0[:, 1] * v2[..., 0]) / det
    eps = 1e-12
    contains = (s >= -eps) & (t >= -eps) & (s + t <= 1.0 + eps) & np.isfinite(det)
    triangle = np.where(contains.any(axis=1), np.argmax(contains, axis=1), -1)
    rows = np.arange(len(uv))
    s_hit, t_hit = s[rows, triangle], t[rows, triangle]
    return triangle, np.stack([1.0 - s_hit - t_hit, s_hit, t_hit], axis=1)


def _pad_box(finger: np.ndarray, face: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link-frame box spanning the contact face and the pad's side walls (vertices on the face's edges' planes)."""
    basis = _face_basis(normal)
    face_vertices = face.reshape(-1, 3)
    vertices = finger.reshape(-1, 3)
    inplane = vertices @ basis.T
    face_inplane = face_vertices @ basis.T
    low, high = face_inplane.min(axis=0), face_inplane.max(axis=0)
    on_side = np.any((np.abs(inplane - low) < 1e-6) | (np.abs(inplane - high) < 1e-6), axis=1)
    within = np.all((inplane >= low - 1e-6) & (inplane <= high + 1e-6), axis=1)
    pad = np.concatenate([face_vertices, vertices[on_side & within]])
    lower, upper = pad.min(axis=0), pad.max(axis=0)
    return 0.5 * (lower + upper), 0.5 * (upper - lower)
