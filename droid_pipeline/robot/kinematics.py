"""Franka Panda forward kinematics and the gripper mount, from the packaged panda_robotiq.urdf.

DROID's ``cartesian_position`` is the pose of the flange ``panda_link8`` in the robot base
``panda_link0``; the Robotiq 2F-85 base is bolted to the flange by a fixed joint.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from droid_pipeline.robot.urdf import Robot, parse_urdf

ROBOT_URDF = "panda_robotiq.urdf"
ROBOT_BASE_LINK = "panda_link0"
FLANGE_LINK = "panda_link8"
GRIPPER_BASE_LINK = "robotiq_85_base_link"
NUM_ARM_JOINTS = 7


def read_asset(name: str) -> bytes:
    """Bytes of a file packaged under ``droid_pipeline/robot/assets``."""
    return resources.files("droid_pipeline.robot").joinpath("assets").joinpath(name).read_bytes()


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
    """4x4 pose of the gripper base (robotiq_85_base_link) in the flange frame (panda_link8)."""
    return robot_model().forward_kinematics(FLANGE_LINK, GRIPPER_BASE_LINK)
