"""A small dependency-free URDF reader and vectorized forward kinematics along a joint chain.

The kinematic tree is read (links, joints with origin, axis, limits and mimic), and of the
geometry only the meshes each link's ``<collision>`` and ``<visual>`` elements name: file name,
origin and scale (primitives such as cylinders and spheres, materials and inertia are ignored).
Mesh files are never opened here, so they need not exist. URDF ``rpy`` is fixed-axis roll-pitch-yaw:
R = Rz(yaw) @ Ry(pitch) @ Rx(roll).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MOVABLE_TYPES = ("revolute", "continuous", "prismatic")
SUPPORTED_TYPES = ("fixed", *MOVABLE_TYPES)


@dataclass(frozen=True)
class JointLimit:
    """Position limits of a joint (radians or metres)."""

    lower: float
    upper: float


@dataclass(frozen=True)
class Mimic:
    """The joint follows ``multiplier * value(joint) + offset``."""

    joint: str
    multiplier: float
    offset: float


@dataclass(frozen=True, eq=False)
class Joint:
    """One URDF joint: ``origin`` is the 4x4 parent-to-joint transform at zero joint value."""

    name: str
    type: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray
    limit: JointLimit | None
    mimic: Mimic | None

    @property
    def movable(self) -> bool:
        return self.type in MOVABLE_TYPES


@dataclass(frozen=True, eq=False)
class MeshReference:
    """A mesh a link's ``<collision>`` or ``<visual>`` names: ``filename`` as written in the URDF,
    ``origin`` the 4x4 pose of the mesh in the link frame, ``scale`` per mesh axis."""

    filename: str
    origin: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True, eq=False)
class Robot:
    """The kinematic tree of a URDF: link names, joints keyed by name, and the collision and visual
    meshes of the links that have any (link name -> meshes in document order)."""

    name: str
    links: tuple[str, ...]
    joints: Mapping[str, Joint]
    collision_meshes: Mapping[str, tuple[MeshReference, ...]]
    visual_meshes: Mapping[str, tuple[MeshReference, ...]]

    def joint(self, name: str) -> Joint:
        try:
            return self.joints[name]
        except KeyError as exc:
            raise ValueError(f"URDF {self.name!r} has no joint {name!r}") from exc

    def chain(self, base_link: str, tip_link: str) -> tuple[Joint, ...]:
        """Joints from ``base_link`` down to ``tip_link`` (base must be an ancestor of tip)."""
        for link in (base_link, tip_link):
            if link not in self.links:
                raise ValueError(f"URDF {self.name!r} has no link {link!r}")
        parent_joint = {joint.child: joint for joint in self.joints.values()}
        joints = []
        link = tip_link
        while link != base_link:
            if link not in parent_joint:
                raise ValueError(f"link {base_link!r} is not an ancestor of {tip_link!r} in URDF {self.name!r}")
            joints.append(parent_joint[link])
            link = parent_joint[link].parent
        return tuple(reversed(joints))

    def joint_value(self, name: str, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """Value of a joint: given directly, or derived through its mimic relation."""
        if name in values:
            return np.asarray(values[name], dtype=np.float64)
        joint = self.joint(name)
        if joint.mimic is None:
            raise ValueError(f"no value given for joint {name!r}")
        source = self.joint_value(joint.mimic.joint, values)
        return joint.mimic.multiplier * source + joint.mimic.offset

    def forward_kinematics(self, base_link: str, tip_link: str,
                           joint_values: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Pose of ``tip_link`` in ``base_link`` for arrays of joint values.

        ``joint_values`` maps joint names to arrays that broadcast together (leading shape S);
        mimic joints need only their source joint. Returns (*S, 4, 4).
        """
        joint_values = {} if joint_values is None else joint_values
        chain = self.chain(base_link, tip_link)
        values = {joint.name: self.joint_value(joint.name, joint_values) for joint in chain if joint.movable}
        for name, value in values.items():
            if not np.isfinite(value).all():
                raise ValueError(f"joint {name!r} has NaN or infinite values")
        lead = np.broadcast_shapes(*(value.shape for value in values.values()))
        pose = np.broadcast_to(np.eye(4), (*lead, 4, 4))
        for joint in chain:
            pose = pose @ joint.origin
            if joint.movable:
                pose = pose @ joint_motion(joint, values[joint.name])
        return np.array(pose)


def joint_motion(joint: Joint, value: np.ndarray) -> np.ndarray:
    """(..., 4, 4) motion of a movable joint at ``value`` (rotation about / shift along its axis)."""
    value = np.asarray(value, dtype=np.float64)
    motion = np.zeros((*value.shape, 4, 4))
    motion[..., 3, 3] = 1.0
    if joint.type == "prismatic":
        motion[..., :3, :3] = np.eye(3)
        motion[..., :3, 3] = value[..., None] * joint.axis
    else:
        motion[..., :3, :3] = axis_angle_matrices(joint.axis, value)
    return motion


def axis_angle_matrices(axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations by ``angles`` about the unit ``axis`` (Rodrigues' formula)."""
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    angles = np.asarray(angles, dtype=np.float64)[..., None, None]
    return np.eye(3) + np.sin(angles) * cross + (1.0 - np.cos(angles)) * (cross @ cross)


def rpy_matrix(rpy: np.ndarray) -> np.ndarray:
    """3x3 rotation of URDF fixed-axis roll-pitch-yaw: Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    roll, pitch, yaw = rpy
    return (axis_angle_matrices(np.array([0.0, 0.0, 1.0]), yaw)
            @ axis_angle_matrices(np.array([0.0, 1.0, 0.0]), pitch)
            @ axis_angle_matrices(np.array([1.0, 0.0, 0.0]), roll))


def parse_urdf(text: str | bytes) -> Robot:
    """Read the kinematic tree of URDF text; malformed input raises ValueError naming the cause."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not a valid URDF (XML error: {exc})") from exc
    if root.tag != "robot":
        raise ValueError(f"not a URDF: root element is <{root.tag}>, expected <robot>")
    name = root.get("name", "")
    links = []
    meshes: dict[str, dict[str, tuple[MeshReference, ...]]] = {"collision": {}, "visual": {}}
    for element in root.findall("link"):
        link = element.get("name")
        if not link:
            raise ValueError(f"URDF {name!r}: a <link> has no name")
        if link in links:
            raise ValueError(f"URDF {name!r}: link {link!r} is defined twice")
        links.append(link)
        for kind, found in meshes.items():
            references = [_parse_mesh(geometry, mesh, f"URDF {name!r}, link {link!r}, {kind}")
                          for geometry in element.findall(kind)
                          if (mesh := geometry.find("geometry/mesh")) is not None]
            if references:
                found[link] = tuple(references)
    joints: dict[str, Joint] = {}
    for element in root.findall("joint"):
        joint = _parse_joint(element, name)
        if joint.name in joints:
            raise ValueError(f"URDF {name!r}: joint {joint.name!r} is defined twice")
        joints[joint.name] = joint
    _check_tree(name, links, joints)
    return Robot(name=name, links=tuple(links), joints=joints, collision_meshes=meshes["collision"],
                 visual_meshes=meshes["visual"])


def load_urdf(path: os.PathLike | str) -> Robot:
    """Read a URDF file's kinematic tree."""
    with open(path, "rb") as fh:
        text = fh.read()
    try:
        return parse_urdf(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _parse_mesh(geometry: ET.Element, mesh: ET.Element, where: str) -> MeshReference:
    """The ``<mesh>`` of a ``<collision>`` or ``<visual>`` element, placed by that element's origin."""
    filename = mesh.get("filename")
    if not filename:
        raise ValueError(f"{where}: a <mesh> has no filename")
    scale = _floats(mesh.get("scale", "1 1 1"), 3, f"{where}: mesh scale")
    return MeshReference(filename=filename, origin=_origin(geometry.find("origin"), where), scale=scale)


def _origin(element: ET.Element | None, where: str) -> np.ndarray:
    """4x4 transform of an ``<origin xyz rpy>`` element (identity when absent)."""
    origin = np.eye(4)
    if element is not None:
        origin[:3, 3] = _floats(element.get("xyz", "0 0 0"), 3, f"{where}: origin xyz")
        origin[:3, :3] = rpy_matrix(_floats(element.get("rpy", "0 0 0"), 3, f"{where}: origin rpy"))
    return origin


def _parse_joint(element: ET.Element, robot: str) -> Joint:
    name = element.get("name")
    if not name:
        raise ValueError(f"URDF {robot!r}: a <joint> has no name")
    where = f"URDF {robot!r}, joint {name!r}"
    joint_type = element.get("type")
    if joint_type not in SUPPORTED_TYPES:
        raise ValueError(f"{where}: type {joint_type!r} is not one of {', '.join(SUPPORTED_TYPES)}")
    parent = _required_attribute(element, "parent", "link", where)
    child = _required_attribute(element, "child", "link", where)
    origin = _origin(element.find("origin"), where)
    axis_element = element.find("axis")
    axis = _floats(axis_element.get("xyz", "1 0 0") if axis_element is not None else "1 0 0", 3, f"{where}: axis")
    norm = np.linalg.norm(axis)
    if norm == 0.0:
        raise ValueError(f"{where}: axis is zero")
    limit = None
    limit_element = element.find("limit")
    if limit_element is not None and joint_type != "continuous":
        limit = JointLimit(lower=_float(limit_element.get("lower", "0"), f"{where}: limit lower"),
                           upper=_float(limit_element.get("upper", "0"), f"{where}: limit upper"))
    mimic = None
    mimic_element = element.find("mimic")
    if mimic_element is not None:
        source = mimic_element.get("joint")
        if not source:
            raise ValueError(f"{where}: <mimic> names no joint")
        mimic = Mimic(joint=source,
                      multiplier=_float(mimic_element.get("multiplier", "1"), f"{where}: mimic multiplier"),
                      offset=_float(mimic_element.get("offset", "0"), f"{where}: mimic offset"))
    return Joint(name=name, type=joint_type, parent=parent, child=child, origin=origin,
                 axis=axis / norm, limit=limit, mimic=mimic)


def _check_tree(robot: str, links: list[str], joints: dict[str, Joint]) -> None:
    children = set()
    for joint in joints.values():
        for link in (joint.parent, joint.child):
            if link not in links:
                raise ValueError(f"URDF {robot!r}, joint {joint.name!r}: unknown link {link!r}")
        if joint.child in children:
            raise ValueError(f"URDF {robot!r}: link {joint.child!r} has more than one parent joint")
        children.add(joint.child)
        if joint.mimic is not None and joint.mimic.joint not in joints:
            raise ValueError(f"URDF {robot!r}, joint {joint.name!r}: mimics unknown joint {joint.mimic.joint!r}")
    for joint in joints.values():
        followed = joint
        for _ in range(len(joints) + 1):
            if followed.mimic is None:
                break
            followed = joints[followed.mimic.joint]
        else:
            raise ValueError(f"URDF {robot!r}, joint {joint.name!r}: its mimic relations form a loop")
    parent_of = {joint.child: joint.parent for joint in joints.values()}
    for link in links:
        steps = 0
        while link in parent_of:
            link = parent_of[link]
            steps += 1
            if steps > len(links):
                raise ValueError(f"URDF {robot!r}: the joints form a loop through link {link!r}")
    if links and len(children) != len(links) - 1:
        raise ValueError(f"URDF {robot!r}: links do not form a single tree")


def _required_attribute(element: ET.Element, tag: str, attribute: str, where: str) -> str:
    child = element.find(tag)
    value = child.get(attribute) if child is not None else None
    if not value:
        raise ValueError(f"{where}: missing <{tag} {attribute}=...>")
    return value


def _floats(text: str, count: int, what: str) -> np.ndarray:
    try:
        values = np.array([float(token) for token in text.split()])
    except ValueError as exc:
        raise ValueError(f"{what}: {text!r} is not a list of numbers") from exc
    if values.shape != (count,) or not np.isfinite(values).all():
        raise ValueError(f"{what}: expected {count} finite numbers, got {text!r}")
    return values


def _float(text: str, what: str) -> float:
    return float(_floats(text, 1, what)[0])
