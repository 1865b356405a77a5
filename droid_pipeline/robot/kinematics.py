"""Franka Panda forward kinematics and the gripper mount, from the packaged panda_robotiq.urdf.

DROID's ``cartesian_position`` is the pose of the flange ``panda_link8`` in the robot base
``panda_link0``; the Robotiq 2F-85 base is bolted to the flange by a fixed joint, whose origin
a :class:`GripperMount` can replace (config ``gripper.mount_xyz_m`` / ``gripper.mount_rpy``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from droid_pipeline.robot.urdf import Robot, parse_urdf, rpy_matrix

ROBOT_URDF = "panda_robotiq.urdf"
ROBOT_BASE_LINK = "panda_link0"
FLANGE_LINK = "panda_link8"
GRIPPER_BASE_LINK = "robotiq_85_base_link"
NUM_ARM_JOINTS = 7


def read_asset(name: str) -> bytes:
    """Bytes of a file packaged under ``droid_pipeline/robot/assets``."""
    return (Path(__file__).with_name("assets") / name).read_bytes()


@functools.cache
def robot_model() -> Robot:
    """The packaged Panda + Robotiq 2F-85 kinematic tree (parsed once)."""
    return parse_urdf(read_asset(ROBOT_URDF))


@functools.cache
def arm_joint_names() -> tuple[str, ...]:
    """Names of the movable joints from base to flange, in chain order (DROID's joint order)."""
    names = tuple(joint.name for joint in robot_model().chain(ROBOT_BASE_LINK, FLANGE_LINK) if joint.movable)
    if len(names) != NUM_ARM_JOINTS:
        raise ValueError(f"{ROBOT_URDF}: expected {NUM_ARM_JOINTS} arm joints, found {names}")
    return names


def panda_flange_poses(joint_positions: np.ndarray) -> np.ndarray:
    """(..., 7) Panda joint angles (radians) -> (..., 4, 4) poses of panda_link8 in panda_link0."""
    joint_positions = np.asarray(joint_positions, dtype=np.float64)
    if joint_positions.ndim == 0 or joint_positions.shape[-1] != NUM_ARM_JOINTS:
        raise ValueError(f"Panda joint positions need a last axis of {NUM_ARM_JOINTS}, "
                         f"got shape {joint_positions.shape}")
    if not np.isfinite(joint_positions).all():
        raise ValueError("Panda joint positions contain NaN or infinite values")
    values = {name: joint_positions[..., i] for i, name in enumerate(arm_joint_names())}
    return robot_model().forward_kinematics(ROBOT_BASE_LINK, FLANGE_LINK, values)


def gripper_mount_transform() -> np.ndarray:
    """4x4 pose of the gripper base (robotiq_85_base_link) in the flange frame (panda_link8), as
    the packaged URDF's fixed joint gives it."""
    return robot_model().forward_kinematics(FLANGE_LINK, GRIPPER_BASE_LINK)


@dataclass(frozen=True)
class GripperMount:
    """A flange-to-gripper mount written as a URDF joint origin: translation (m) and fixed-axis
    roll-pitch-yaw (rad) of robotiq_85_base_link in panda_link8."""

    xyz_m: tuple[float, float, float]
    rpy: tuple[float, float, float]

    @classmethod
    def of(cls, xyz_m: Sequence[float], rpy: Sequence[float]) -> GripperMount:
        """A mount from any three-number sequences (e.g. config lists); ValueError otherwise."""
        xyz, angles = (tuple(float(v) for v in values) for values in (xyz_m, rpy))
        if len(xyz) != 3 or len(angles) != 3 or not np.isfinite([*xyz, *angles]).all():
            raise ValueError(f"a gripper mount needs three finite numbers each for xyz and rpy, "
                             f"got {list(xyz_m)} and {list(rpy)}")
        return cls((xyz[0], xyz[1], xyz[2]), (angles[0], angles[1], angles[2]))

    def transform(self) -> np.ndarray:
        """4x4 pose of the gripper base in the flange frame, composed as the URDF composes a joint origin."""
        pose = np.eye(4)
        pose[:3, :3] = rpy_matrix(np.array(self.rpy))
        pose[:3, 3] = self.xyz_m
        return pose
