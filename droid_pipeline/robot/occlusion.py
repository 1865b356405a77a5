"""Which contact points each camera really sees: self-occlusion by the robot's own geometry,
scene occlusion from depth, and the combined per-camera label (method and figures: docs/occlusion.md).

Labels, per step and point (uint8), for a point in view (in front of the camera, in the image):

- 0 VISIBLE: not hidden by the robot, and the depth at its pixel is valid and not nearer than
  the point by more than the tolerance;
- 1 HIDDEN_BY_ROBOT: its pad faces away from the camera, or the ray to it first hits the robot;
- 2 HIDDEN_BY_SCENE: free of the robot, but the depth at its pixel is nearer by more than the
  tolerance;
- 3 UNKNOWN: free of the robot, but no valid depth at its pixel or no depth for the camera.
  Every point out of view is UNKNOWN too.

The robot is the packaged URDF's collision meshes (coarse Franka links, coarse Robotiq links),
each paired with its link by the file name the URDF gives, except for the two inner fingers:
they carry the contact points, which are sampled on their fine (visual) mesh, so that mesh is
their occluder too (the coarse one is a hull up to 10 mm larger, with the pad face 0.05 mm in
front of the points, enough to hide them at grazing views). Arm links are posed by forward
kinematics of ``joint_positions``; the gripper links hang off the flange pose the tracks use
(``cartesian_position``) through the finger linkage at ``gripper_position``. A point's own
finger never hides it from a camera in front of its pad (the pad face is on the outside of the
finger), and hides it always from a camera behind it: the back-face rule covers that finger, and
the ray test skips it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from droid_pipeline.core.schema import HIDDEN_BY_ROBOT, HIDDEN_BY_SCENE, OCCLUSION_LABELS, UNKNOWN, VISIBLE
from droid_pipeline.geometry.poses import invert
from droid_pipeline.geometry.segments import MeshSet, blocked_segments
from droid_pipeline.robot.gripper import (
    FINGER_JOINT,
    LEFT_FINGER_LINK,
    RIGHT_FINGER_LINK,
    GripperModel,
    read_binary_stl,
)
from droid_pipeline.robot.kinematics import (
    GRIPPER_BASE_LINK,
    ROBOT_BASE_LINK,
    arm_joint_names,
    gripper_mount_transform,
    panda_flange_poses,
    read_asset,
    robot_model,
)
from droid_pipeline.robot.urdf import Robot

LABEL_NAMES = OCCLUSION_LABELS   # the label values are part of the output contract (core.schema)
MESH_FOLDER = "meshes"


@dataclass(frozen=True, eq=False)
class RobotPose:
    """Every occluder link's pose in the robot base frame per step, ``poses`` (T, L, 4, 4) in the
    order of ``links``, and how far the arm's forward kinematics puts the flange from the flange
    pose the gripper hangs off (largest over the steps)."""

    links: tuple[str, ...]
    poses: np.ndarray
    flange_mismatch_mm: float
    flange_mismatch_deg: float

    def link_poses(self, link: str) -> np.ndarray:
        """(T, 4, 4) poses of one link."""
        return self.poses[:, self.links.index(link)]


class RobotOcclusion:
    """The robot's occluder meshes and the self-occlusion test, vectorized over steps and points."""

    def __init__(self, robot: Robot, link_triangles: Mapping[str, np.ndarray]):
        """``link_triangles``: link name -> (F, 3, 3) triangles in that link's frame, metres."""
        self._robot = robot
        self.links = tuple(link_triangles)
        self.link_triangles = {link: np.asarray(triangles, dtype=np.float64)
                               for link, triangles in link_triangles.items()}
        self._meshes = MeshSet([self.link_triangles[link] for link in self.links])
        self.gripper_links = tuple(link for link in self.links
                                   if link == GRIPPER_BASE_LINK or _descends_from(robot, link, GRIPPER_BASE_LINK))
        self.arm_links = tuple(link for link in self.links if link not in self.gripper_links)
        missing = {LEFT_FINGER_LINK, RIGHT_FINGER_LINK} - set(self.gripper_links)
        if missing:
            raise ValueError(f"the robot model has no collision mesh for {', '.join(sorted(missing))}")
        self._gripper = GripperModel.load()

    @classmethod
    def load(cls) -> RobotOcclusion:
        """The packaged robot (URDF and meshes), built once per process."""
        return _packaged()

    def pose(self, joint_positions: np.ndarray, flange_poses: np.ndarray, gripper_positions: np.ndarray,
             mount: np.ndarray | None = None) -> RobotPose:
        """Pose every link per step: arm links by forward kinematics of ``joint_positions`` (T, 7),
        gripper links from ``flange_poses`` (T, 4, 4, the tracks' flange), the gripper ``mount``
        (4x4 gripper base in the flange frame; default the URDF's, as ``GripperModel`` gives it)
        and ``gripper_positions`` (T,)."""
        joint_positions = np.asarray(joint_positions, dtype=np.float64)
        flange_poses = np.asarray(flange_poses, dtype=np.float64)
        num_steps = len(flange_poses)
        if joint_positions.shape != (num_steps, len(arm_joint_names())):
            raise ValueError(f"joint positions have shape {joint_positions.shape}, expected "
                             f"({num_steps}, {len(arm_joint_names())}) for {num_steps} flange poses")
        arm = {name: joint_positions[:, i] for i, name in enumerate(arm_joint_names())}
        finger = {FINGER_JOINT: self._gripper.finger_angle(gripper_positions)}
        if finger[FINGER_JOINT].shape != (num_steps,):
            raise ValueError(f"gripper positions have shape {np.shape(gripper_positions)}, expected ({num_steps},)")
        on_flange = gripper_mount_transform() if mount is None else np.asarray(mount, dtype=np.float64)
        poses = np.empty((num_steps, len(self.links), 4, 4))
        for index, link in enumerate(self.links):
            if link in self.gripper_links:
                poses[:, index] = flange_poses @ on_flange @ self._robot.forward_kinematics(GRIPPER_BASE_LINK, link,
                                                                                            finger)
            else:
                poses[:, index] = np.broadcast_to(self._robot.forward_kinematics(ROBOT_BASE_LINK, link, arm),
                                                  (num_steps, 4, 4))
        mismatch = invert(flange_poses) @ panda_flange_poses(joint_positions)
        rotation = mismatch[:, :3, :3]
        skew = rotation - np.swapaxes(rotation, -1, -2)
        sine = 0.5 * np.linalg.norm(skew[:, [2, 0, 1], [1, 2, 0]], axis=1)
        cosine = 0.5 * (np.trace(rotation, axis1=1, axis2=2) - 1.0)
        return RobotPose(self.links, poses, float(1000.0 * np.linalg.norm(mismatch[:, :3, 3], axis=1).max()),
                         float(np.degrees(np.arctan2(sine, cosine)).max()))

    def blocked(self, pose: RobotPose, points: np.ndarray, camera_poses: np.ndarray, *, margin_m: float,
                occluders: Collection[str] | None = None, in_view: np.ndarray | None = None) -> np.ndarray:
        """(T, N) True where the ray from the camera to a contact point first hits a robot link.

        ``points`` (T, N, 3) base frame, left finger's half first (as GripperModel.contact_points);
        ``camera_poses`` (4, 4) or (T, 4, 4) T_base_cam. Each point's own inner finger is skipped,
        hits within ``margin_m`` of the point are ignored, and only ``occluders`` (link names;
        default all) are tested. Points outside ``in_view`` or behind the camera are False.
        """
        points = np.asarray(points, dtype=np.float64)
        if pose.links != self.links or pose.poses.shape[0] != points.shape[0]:
            raise ValueError(f"the robot pose has {pose.poses.shape[0]} steps of links {pose.links}, "
                             f"the points {points.shape[0]} steps")
        selected = set(self.links if occluders is None else occluders)
        unknown = selected - set(self.links)
        if unknown:
            raise ValueError(f"no occluder link {', '.join(sorted(unknown))}; links are {', '.join(self.links)}")
        half = points.shape[1] // 2
        fingers = np.repeat([0, 1], [half, points.shape[1] - half])  # target groups: left pad, right pad
        skipped = np.array([[link not in selected for link in self.links]] * 2)
        skipped[0, self.links.index(LEFT_FINGER_LINK)] = True
        skipped[1, self.links.index(RIGHT_FINGER_LINK)] = True
        return blocked_segments(self._meshes, pose.poses, camera_poses, points, margin_m=margin_m, tested=in_view,
                                groups=fingers, excluded=skipped)

    def robot_occlusion(self, pose: RobotPose, points: np.ndarray, normals: np.ndarray, camera_poses: np.ndarray,
                        *, margin_m: float, in_view: np.ndarray | None = None) -> np.ndarray:
        """(T, N) True where the robot hides a contact point: its pad faces away from the camera
        (:func:`back_facing`) or the ray to it first hits a link (:meth:`blocked`)."""
        facing_away = back_facing(points, normals, camera_poses)
        tested = ~facing_away if in_view is None else np.asarray(in_view, dtype=bool) & ~facing_away
        return facing_away | self.blocked(pose, points, camera_poses, margin_m=margin_m, in_view=tested)


@functools.cache
def _packaged() -> RobotOcclusion:
    robot = robot_model()
    link_triangles = {}
    for link, collision in robot.collision_meshes.items():
        parts = []
        for mesh in robot.visual_meshes[link] if link in (LEFT_FINGER_LINK, RIGHT_FINGER_LINK) else collision:
            triangles = read_binary_stl(read_asset(f"{MESH_FOLDER}/{PurePosixPath(mesh.filename).name}"))
            parts.append((triangles * mesh.scale) @ mesh.origin[:3, :3].T + mesh.origin[:3, 3])
        link_triangles[link] = np.concatenate(parts)
    return RobotOcclusion(robot, link_triangles)


def _descends_from(robot: Robot, link: str, ancestor: str) -> bool:
    parent_of = {joint.child: joint.parent for joint in robot.joints.values()}
    while link in parent_of:
        link = parent_of[link]
        if link == ancestor:
            return True
    return False


def back_facing(points: np.ndarray, normals: np.ndarray, camera_poses: np.ndarray) -> np.ndarray:
    """(T, N) True where a point's surface normal turns away from the camera (or lies edge-on):
    (camera centre - point) . normal <= 0. ``camera_poses`` (4, 4) or (T, 4, 4) T_base_cam."""
    centres = np.broadcast_to(np.asarray(camera_poses, dtype=np.float64)[..., :3, 3], (len(points), 3))
    return np.einsum("tni,tni->tn", centres[:, None, :] - points, normals) <= 0.0


def scene_tolerance_mm(depth_m: np.ndarray, tolerance_mm: float, tolerance_per_m2: float) -> np.ndarray:
    """How much nearer (mm) the depth map must be than a point at ``depth_m`` to hide it:
    ``tolerance_mm + tolerance_per_m2 * depth_m ** 2``, as stereo error grows with depth squared."""
    return tolerance_mm + tolerance_per_m2 * np.square(depth_m)


def scene_occlusion(depth_frames: Iterable[np.ndarray], pixels: np.ndarray, depth_m: np.ndarray,
                    in_view: np.ndarray, *, tolerance_mm: float, tolerance_per_m2: float) -> np.ndarray:
    """(T, N) uint8 VISIBLE, HIDDEN_BY_SCENE or UNKNOWN from one camera's depth, frame by frame.

    ``depth_frames`` yields T (H, W) uint16 depth maps in millimetres, 0 invalid (e.g. a
    ``DepthReader``; one frame is held at a time); ``pixels`` (T, N, 2) and ``depth_m`` (T, N)
    are the points' projections and z-depths in that camera, ``in_view`` (T, N) where they are
    in front and in the image. The depth is read at the pixel nearest the projection. Out of
    view or invalid depth: UNKNOWN; depth nearer than the point by more than
    :func:`scene_tolerance_mm`: HIDDEN_BY_SCENE. Depth with another number of frames than steps,
    or frames smaller than the image, raise ValueError.
    """
    num_steps = len(depth_m)
    labels = np.full(np.shape(depth_m), UNKNOWN, dtype=np.uint8)
    limit_mm = 1000.0 * np.asarray(depth_m) - scene_tolerance_mm(np.asarray(depth_m), tolerance_mm, tolerance_per_m2)
    step = -1
    for step, frame in enumerate(depth_frames):
        if step >= num_steps:
            raise ValueError(f"the depth has more frames than the {num_steps} steps")
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"depth frame {step} has shape {frame.shape}, expected (H, W)")
        seen = np.flatnonzero(in_view[step])
        height, width = frame.shape
        column = np.rint(pixels[step, seen, 0]).astype(np.intp)
        row = np.rint(pixels[step, seen, 1]).astype(np.intp)
        if seen.size and (column.min() < 0 or row.min() < 0 or column.max() >= width or row.max() >= height):
            raise ValueError(f"depth frame {step} is {width}x{height}, smaller than the image its points "
                             f"are in view of (pixel up to {column.max()}, {row.max()})")
        sampled = frame[row, column]
        valid = sampled > 0
        labels[step, seen[valid]] = np.where(sampled[valid] < limit_mm[step, seen[valid]], HIDDEN_BY_SCENE, VISIBLE)
    if step + 1 != num_steps:
        raise ValueError(f"the depth has {step + 1} frames, expected one per step ({num_steps})")
    return labels


def combine_labels(visibility: np.ndarray, robot_hidden: np.ndarray, scene: np.ndarray | None) -> np.ndarray:
    """(T, N) uint8 labels (see the module docstring) from a camera's ``visibility`` (in view),
    :meth:`RobotOcclusion.robot_occlusion` and :func:`scene_occlusion` (None: no depth)."""
    visibility = np.asarray(visibility, dtype=bool)
    labels = np.full(visibility.shape, UNKNOWN, dtype=np.uint8)
    if scene is not None:
        labels[visibility] = np.asarray(scene)[visibility]
    labels[visibility & np.asarray(robot_hidden, dtype=bool)] = HIDDEN_BY_ROBOT
    return labels
