"""URDF reader and Panda forward kinematics, checked against yourdfpy and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import yourdfpy
from scipy.spatial.transform import Rotation

from droid_pipeline.robot.kinematics import (
    arm_joint_names,
    gripper_mount_transform,
    panda_flange_poses,
)
from droid_pipeline.robot.urdf import load_urdf, parse_urdf


def reference_urdf(path) -> yourdfpy.URDF:
    """yourdfpy's model of a URDF without its (missing) meshes."""
    return yourdfpy.URDF.load(str(path), build_scene_graph=True, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)


@pytest.fixture(scope="module")
def panda_reference(reference_data) -> yourdfpy.URDF:
    return reference_urdf(reference_data / "panda_robotiq.urdf")


def random_arm_configurations(reference: yourdfpy.URDF, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    names = arm_joint_names()
    lower = np.array([reference.joint_map[name].limit.lower for name in names])
    upper = np.array([reference.joint_map[name].limit.upper for name in names])
    return rng.uniform(lower, upper, size=(count, len(names)))


def reference_flange_pose(reference: yourdfpy.URDF, arm: np.ndarray) -> np.ndarray:
    cfg = dict(zip(arm_joint_names(), arm))
    cfg["finger_joint"] = 0.0
    reference.update_cfg(cfg)
    return reference.get_transform("panda_link8", "panda_link0")


def test_arm_joints_are_the_seven_panda_joints_in_order(panda_reference):
    assert arm_joint_names() == tuple(f"panda_joint{i}" for i in range(1, 8))
    assert set(arm_joint_names()) <= set(panda_reference.actuated_joint_names)


def test_panda_flange_poses_match_yourdfpy(panda_reference):
    arms = random_arm_configurations(panda_reference, 25, seed=7)
    expected = np.stack([reference_flange_pose(panda_reference, arm) for arm in arms])
    np.testing.assert_allclose(panda_flange_poses(arms), expected, rtol=0, atol=1e-9)


def test_panda_flange_poses_keep_leading_axes(panda_reference):
    arms = random_arm_configurations(panda_reference, 6, seed=11).reshape(2, 3, 7)
    poses = panda_flange_poses(arms)
    assert poses.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(poses[1, 2], reference_flange_pose(panda_reference, arms[1, 2]), atol=1e-9)
    np.testing.assert_allclose(panda_flange_poses(arms[0, 0]), reference_flange_pose(panda_reference, arms[0, 0]),
                               atol=1e-9)


@pytest.mark.parametrize("bad, message", [(np.zeros((4, 6)), "last axis of 7"),
                                          (np.full((2, 7), np.nan), "NaN")])
def test_panda_flange_poses_reject_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        panda_flange_poses(bad)


def test_gripper_mount_matches_yourdfpy(panda_reference):
    expected = panda_reference.get_transform("robotiq_85_base_link", "panda_link8")
    np.testing.assert_allclose(gripper_mount_transform(), expected, atol=1e-12)


SMALL_URDF = """<robot name="small">
  <link name="base"/><link name="a"/><link name="b"/><link name="c"/><link name="d"/>
  <joint name="spin" type="continuous">
    <origin xyz="0.1 -0.2 0.3" rpy="0.3 -1.1 2.5"/>
    <parent link="base"/><child link="a"/><axis xyz="0.3 0.4 -0.5"/>
  </joint>
  <joint name="slide" type="prismatic">
    <origin xyz="0 0.05 0" rpy="-0.4 0.2 0.9"/>
    <parent link="a"/><child link="b"/><axis xyz="0.6 0.8 0"/>
    <limit lower="-0.1" upper="0.2" effort="1" velocity="1"/>
  </joint>
  <joint name="follow" type="revolute">
    <origin xyz="0.02 0 0.07" rpy="1.2 0 -0.3"/>
    <parent link="b"/><child link="c"/><axis xyz="0 -1 0"/>
    <limit lower="-2" upper="2" effort="1" velocity="1"/>
    <mimic joint="spin" multiplier="-0.7" offset="0.25"/>
  </joint>
  <joint name="tool" type="fixed">
    <origin xyz="0 0 0.1" rpy="0 0 1.57"/>
    <parent link="c"/><child link="d"/>
  </joint>
</robot>
"""


def test_chain_with_mimic_prismatic_and_continuous_joints_matches_yourdfpy(tmp_path):
    path = tmp_path / "small.urdf"
    path.write_text(SMALL_URDF)
    reference = reference_urdf(path)
    rng = np.random.default_rng(3)
    spin = rng.uniform(-3, 3, size=8)
    slide = rng.uniform(-0.1, 0.2, size=8)
    expected = []
    for s, p in zip(spin, slide):
        reference.update_cfg({"spin": s, "slide": p})
        expected.append(reference.get_transform("d", "base"))
    poses = load_urdf(path).forward_kinematics("base", "d", {"spin": spin, "slide": slide})
    np.testing.assert_allclose(poses, np.stack(expected), atol=1e-12)


def test_origin_rpy_is_fixed_axis_roll_pitch_yaw():
    rpy = np.array([0.3, -1.1, 2.5])
    robot = parse_urdf(f"""<robot name="r"><link name="p"/><link name="q"/>
        <joint name="j" type="fixed"><origin xyz="1 2 3" rpy="{rpy[0]} {rpy[1]} {rpy[2]}"/>
        <parent link="p"/><child link="q"/></joint></robot>""")
    pose = robot.forward_kinematics("p", "q")
    np.testing.assert_allclose(pose[:3, :3], Rotation.from_euler("xyz", rpy).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], [1, 2, 3])


@pytest.mark.parametrize("name", ["panda_robotiq.urdf", "robotiq_2f85/robotiq_arg85_description.urdf"])
def test_parsed_tree_matches_yourdfpy(reference_data, name):
    # The URDFs name mesh files that are not shipped; only the kinematic tree is read.
    robot = load_urdf(reference_data / name)
    reference = reference_urdf(reference_data / name)
    assert set(robot.links) == set(reference.link_map)
    assert set(robot.joints) == set(reference.joint_map)
    for joint_name, expected in reference.joint_map.items():
        joint = robot.joint(joint_name)
        assert (joint.type, joint.parent, joint.child) == (expected.type, expected.parent, expected.child)
        np.testing.assert_allclose(joint.origin, expected.origin, atol=1e-12)
        if joint.movable:
            np.testing.assert_allclose(joint.axis, expected.axis, atol=1e-12)
            assert (joint.limit.lower, joint.limit.upper) == (expected.limit.lower, expected.limit.upper)
        if expected.mimic is None:
            assert joint.mimic is None
        else:
            assert (joint.mimic.joint, joint.mimic.multiplier, joint.mimic.offset) == (
                expected.mimic.joint, expected.mimic.multiplier, expected.mimic.offset)


@pytest.mark.parametrize("text, message", [
    ("<robot name='x'><link name='a'/>", "XML error"),
    ("<model/>", "expected <robot>"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='fixed'>"
     "<parent link='a'/><child link='zz'/></joint></robot>", "unknown link 'zz'"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='ball'>"
     "<parent link='a'/><child link='b'/></joint></robot>", "type 'ball'"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'>"
     "<parent link='a'/><child link='b'/><axis xyz='0 0 0'/></joint></robot>", "axis is zero"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='fixed'>"
     "<origin xyz='0 nan 0'/><parent link='a'/><child link='b'/></joint></robot>", "origin xyz"),
    ("<robot name='x'><link name='a'/><link name='b'/><link name='c'/>"
     "<joint name='j' type='fixed'><parent link='b'/><child link='c'/></joint>"
     "<joint name='k' type='fixed'><parent link='c'/><child link='b'/></joint></robot>", "loop"),
    ("<robot name='x'><link name='a'/><link name='b'/><joint name='j' type='revolute'>"
     "<parent link='a'/><child link='b'/><mimic joint='nope'/></joint></robot>", "mimics unknown joint"),
    ("<robot name='x'><link name='a'/><link name='b'/><link name='c'/>"
     "<joint name='j' type='revolute'><parent link='a'/><child link='b'/><mimic joint='k'/></joint>"
     "<joint name='k' type='revolute'><parent link='b'/><child link='c'/><mimic joint='j'/></joint></robot>",
     "mimic relations form a loop"),
])
def test_malformed_urdf_names_the_cause(text, message):
    with pytest.raises(ValueError, match=message):
        parse_urdf(text)


def test_forward_kinematics_errors_name_the_cause(tmp_path):
    robot = parse_urdf(SMALL_URDF)
    with pytest.raises(ValueError, match="no value given for joint 'slide'"):
        robot.forward_kinematics("base", "d", {"spin": np.zeros(3)})
    with pytest.raises(ValueError, match="not an ancestor"):
        robot.forward_kinematics("d", "base", {})
    with pytest.raises(ValueError, match="no link 'hand'"):
        robot.forward_kinematics("base", "hand", {})
    with pytest.raises(ValueError, match="NaN"):
        robot.forward_kinematics("base", "d", {"spin": np.array([np.nan]), "slide": np.zeros(1)})
