"""Robotiq 2F-85 model, checked against yourdfpy (linkage with mimic joints) and trimesh (pad mesh)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yourdfpy
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from droid_pipeline.core.config import load_config
from droid_pipeline.robot.gripper import GripperModel, read_binary_stl
from droid_pipeline.robot.kinematics import GripperMount, read_asset

REPO_ROOT = Path(__file__).resolve().parents[2]

NUM_POINTS = 480
GRIPPER_POSITIONS = np.array([0.0, 0.1, 0.33, 0.5, 0.8, 0.97, 1.0])


def reference_urdf(path) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(path), build_scene_graph=True, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)


@pytest.fixture(scope="module")
def model() -> GripperModel:
    return GripperModel.load()


@pytest.fixture(scope="module")
def linkage(reference_data) -> yourdfpy.URDF:
    return reference_urdf(reference_data / "robotiq_2f85" / "robotiq_arg85_description.urdf")


@pytest.fixture(scope="module")
def mount(reference_data) -> np.ndarray:
    """Flange -> gripper base, from yourdfpy on the combined Panda + gripper URDF."""
    return reference_urdf(reference_data / "panda_robotiq.urdf").get_transform("robotiq_85_base_link", "panda_link8")


@pytest.fixture(scope="module")
def finger_mesh(reference_data) -> trimesh.Trimesh:
    return trimesh.load(reference_data / "robotiq_2f85" / "inner_finger_fine.STL")


def distance_to_mesh(mesh: trimesh.Trimesh, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's closest-point distance (metres) and triangle, computed in millimetres.

    trimesh's point-triangle test uses absolute tolerances that misclassify sub-millimetre
    triangles in metre units; scaling both sides to millimetres avoids that.
    """
    scaled = mesh.copy()
    scaled.apply_scale(1000.0)
    _, distance, triangle = trimesh.proximity.closest_point(scaled, points * 1000.0)
    return distance / 1000.0, triangle


def reference_finger_poses(linkage: yourdfpy.URDF, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) inner finger poses in the gripper base frame at finger_joint = angle."""
    linkage.update_cfg(np.array([angle]))
    return (linkage.get_transform("left_inner_finger", "robotiq_85_base_link"),
            linkage.get_transform("right_inner_finger", "robotiq_85_base_link"))


def pad_face(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's view of the contact face: the flat -x facing triangles nearest the other finger."""
    normals = mesh.face_normals
    centers = mesh.triangles_center
    face = (normals[:, 0] < -0.999) & (centers[:, 0] < mesh.bounds[0, 0] + 1e-5)
    center = (mesh.area_faces[face, None] * centers[face]).sum(axis=0) / mesh.area_faces[face].sum()
    return face, center


def test_finger_poses_match_yourdfpy_linkage(model, linkage, mount):
    left, right = model.finger_poses(GRIPPER_POSITIONS)
    assert left.shape == right.shape == (len(GRIPPER_POSITIONS), 4, 4)
    for i, angle in enumerate(model.finger_angle(GRIPPER_POSITIONS)):
        expected_left, expected_right = reference_finger_poses(linkage, float(angle))
        np.testing.assert_allclose(left[i], mount @ expected_left, atol=1e-9)
        np.testing.assert_allclose(right[i], mount @ expected_right, atol=1e-9)


def test_gripper_frame_is_the_mounted_base(model, mount):
    np.testing.assert_allclose(model.gripper_frame_in_flange(), mount, atol=1e-12)


def test_pad_separation_falls_from_open_width_to_zero(model):
    positions = np.linspace(0.0, 1.0, 201)
    separation = model.pad_separation(positions)
    assert np.all(np.diff(separation) < 0)
    assert 0.077 < separation[0] < 0.080
    assert separation[-1] == 0.0
    angles = model.finger_angle(positions)
    assert np.all(np.diff(angles) > 0)
    assert angles[0] == 0.0
    assert 0.72 < angles[-1] < 0.735
    # The linkage is not linear: the angle at half width is not half the closed angle.
    assert abs(angles[100] - angles[-1] / 2) > 0.01


def test_pad_separation_agrees_with_yourdfpy_geometry(model, linkage, finger_mesh):
    _, center = pad_face(finger_mesh)
    separation = model.pad_separation(GRIPPER_POSITIONS)
    for i, angle in enumerate(model.finger_angle(GRIPPER_POSITIONS)):
        left, right = reference_finger_poses(linkage, float(angle))
        left_face = left[:3, :3] @ center + left[:3, 3]
        right_face = right[:3, :3] @ center + right[:3, 3]
        assert abs((left_face[0] - right_face[0]) - separation[i]) < 5e-6
    # Open: the pads are max_width apart, which is what gripper_position 0 means.
    left, right = reference_finger_poses(linkage, 0.0)
    open_width = (left[:3, :3] @ center + left[:3, 3])[0] - (right[:3, :3] @ center + right[:3, 3])[0]
    assert abs(model.max_width - open_width) < 5e-6


def test_out_of_range_positions_are_clipped_and_nan_is_refused(model):
    np.testing.assert_array_equal(model.finger_angle(np.array([-0.3, 1.4])), model.finger_angle(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="NaN"):
        model.finger_angle(np.array([0.2, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        model.contact_points(np.array([np.nan]), NUM_POINTS)


@pytest.mark.parametrize("side, link", [(0, "left_inner_finger"), (1, "right_inner_finger")])
def test_contact_points_lie_on_the_pad_face_facing_the_other_finger(model, linkage, finger_mesh, side, link):
    points = model.contact_points_local(NUM_POINTS)[side * NUM_POINTS // 2:(side + 1) * NUM_POINTS // 2]
    distance, triangle = distance_to_mesh(finger_mesh, points)
    assert distance.max() < 1e-6
    # Direction from this finger towards the other, in this finger's link frame (yourdfpy, open).
    left, right = reference_finger_poses(linkage, 0.0)
    this, other = (left, right) if side == 0 else (right, left)
    toward = this[:3, :3].T @ (other[:3, 3] - this[:3, 3])
    toward /= np.linalg.norm(toward)
    assert np.all(finger_mesh.face_normals[triangle] @ toward > 0.99)
    face, _ = pad_face(finger_mesh)
    assert np.all(face[triangle])


def test_contact_points_cover_the_face_evenly(model, finger_mesh):
    points = model.contact_points_local(NUM_POINTS)[:NUM_POINTS // 2]
    face, _ = pad_face(finger_mesh)
    face_vertices = finger_mesh.triangles[face].reshape(-1, 3)
    extent = face_vertices.max(axis=0) - face_vertices.min(axis=0)
    covered = points.max(axis=0) - points.min(axis=0)
    assert np.all(covered[1:] > 0.9 * extent[1:])
    spacing = np.sqrt(finger_mesh.area_faces[face].sum() / len(points))
    nearest, _ = cKDTree(points).query(points, k=2)
    assert nearest[:, 1].min() > 0.3 * spacing
    assert nearest[:, 1].max() < 2.0 * spacing


def test_left_and_right_pads_mirror_across_the_mid_plane(model, mount):
    points = model.contact_points(GRIPPER_POSITIONS, NUM_POINTS)
    assert points.shape == (len(GRIPPER_POSITIONS), NUM_POINTS, 3)
    in_gripper = trimesh.transform_points(points.reshape(-1, 3), np.linalg.inv(mount)).reshape(points.shape)
    left, right = in_gripper[:, :NUM_POINTS // 2], in_gripper[:, NUM_POINTS // 2:]
    mirrored = right * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored[..., 1], left[..., 1], atol=1e-9)
    # The URDF's right-hand linkage differs from the left by about 0.6 mm (CAD asymmetry).
    assert np.abs(mirrored - left).max() < 1e-3
    # Each pad stays on its own side of the mid-plane until the pads meet.
    still_open = GRIPPER_POSITIONS < 1.0
    assert np.all(left[still_open, :, 0] > 0) and np.all(right[still_open, :, 0] < 0)


def test_contact_points_follow_the_finger_poses(model, finger_mesh):
    local = model.contact_points_local(NUM_POINTS)
    points = model.contact_points(GRIPPER_POSITIONS, NUM_POINTS)
    left, right = model.finger_poses(GRIPPER_POSITIONS)
    for i in range(len(GRIPPER_POSITIONS)):
        np.testing.assert_allclose(points[i, :NUM_POINTS // 2],
                                   trimesh.transform_points(local[:NUM_POINTS // 2], left[i]), atol=1e-12)
        np.testing.assert_allclose(points[i, NUM_POINTS // 2:],
                                   trimesh.transform_points(local[NUM_POINTS // 2:], right[i]), atol=1e-12)


def test_contact_points_are_deterministic(model):
    first = model.contact_points_local(NUM_POINTS).tobytes()
    assert model.contact_points_local(NUM_POINTS).tobytes() == first
    code = ("import hashlib; from droid_pipeline.robot.gripper import GripperModel; "
            f"print(hashlib.sha256(GripperModel.load().contact_points_local({NUM_POINTS}).tobytes()).hexdigest())")
    fresh = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert fresh == hashlib.sha256(first).hexdigest()


@pytest.mark.parametrize("num_points", [0, 1, 7, -2, 2.0, True, "4"])
def test_bad_num_points_is_refused(model, num_points):
    with pytest.raises(ValueError, match="num_points"):
        model.contact_points_local(num_points)


def test_two_points_is_one_per_finger(model, finger_mesh):
    points = model.contact_points_local(2)
    assert points.shape == (2, 3)
    assert distance_to_mesh(finger_mesh, points)[0].max() < 1e-6


def test_pad_box_encloses_the_pad(model, finger_mesh):
    center, half = model.pad_box_local()
    lower, upper = center - half, center + half
    face, _ = pad_face(finger_mesh)
    face_vertices = finger_mesh.triangles[face].reshape(-1, 3)
    points = model.contact_points_local(NUM_POINTS)
    for inside in (face_vertices, points):
        assert np.all((inside >= lower - 1e-9) & (inside <= upper + 1e-9))
    # The box's front is the contact face, and it reaches back into the finger, not beyond the mesh.
    assert abs(lower[0] - finger_mesh.bounds[0, 0]) < 1e-6
    assert upper[0] - lower[0] > 1e-3
    assert np.all(lower >= finger_mesh.bounds[0] - 1e-9) and np.all(upper <= finger_mesh.bounds[1] + 1e-9)


@pytest.mark.parametrize("name, reference", [("panda_robotiq.urdf", "panda_robotiq.urdf"),
                                             ("meshes/inner_finger_fine.STL", "robotiq_2f85/inner_finger_fine.STL")])
def test_packaged_assets_are_the_reference_files(reference_data, name, reference):
    assert read_asset(name) == (reference_data / reference).read_bytes()


def test_stl_reader_matches_trimesh_and_refuses_truncated_files(reference_data):
    data = read_asset("meshes/inner_finger_fine.STL")
    unprocessed = trimesh.load(reference_data / "robotiq_2f85" / "inner_finger_fine.STL", process=False)
    np.testing.assert_array_equal(read_binary_stl(data), unprocessed.triangles)
    with pytest.raises(ValueError, match="not a binary STL"):
        read_binary_stl(data[:-10])
    with pytest.raises(ValueError, match="not a binary STL"):
        read_binary_stl(b"solid")


# ---------------------------------------------------------------- the mount


def test_default_config_mount_is_the_urdf_joint(model, mount):
    gripper = load_config().gripper
    configured = GripperMount.of(gripper.mount_xyz_m, gripper.mount_rpy)
    np.testing.assert_allclose(configured.transform(), mount, rtol=0, atol=1e-15)
    mounted = GripperModel.load(configured)
    for got, want in zip(mounted.finger_poses(GRIPPER_POSITIONS), model.finger_poses(GRIPPER_POSITIONS)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_another_mount_carries_every_flange_frame_pose(model, linkage):
    """Reference: SciPy's extrinsic xyz Euler angles (the URDF's fixed-axis rpy) and yourdfpy's linkage."""
    xyz, rpy = (0.004, -0.002, 0.0102), (0.02, -0.03, 1.5)
    expected_mount = np.eye(4)
    expected_mount[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
    expected_mount[:3, 3] = xyz
    mounted = GripperModel.load(GripperMount(xyz, rpy))
    assert GripperModel.load(GripperMount(xyz, rpy)) is mounted        # one shared model per mount
    np.testing.assert_allclose(mounted.gripper_frame_in_flange(), expected_mount, atol=1e-15)
    left, right = mounted.finger_poses(GRIPPER_POSITIONS)
    for i, angle in enumerate(mounted.finger_angle(GRIPPER_POSITIONS)):
        expected_left, expected_right = reference_finger_poses(linkage, float(angle))
        np.testing.assert_allclose(left[i], expected_mount @ expected_left, atol=1e-9)
        np.testing.assert_allclose(right[i], expected_mount @ expected_right, atol=1e-9)
    np.testing.assert_array_equal(mounted.contact_points_local(NUM_POINTS), model.contact_points_local(NUM_POINTS))
    assert mounted.max_width == model.max_width
    np.testing.assert_allclose(model.gripper_frame_in_flange(), GripperMount.of([0, 0, 0], [0, 0, 1.57]).transform(),
                               atol=1e-15)  # the shared default model is untouched


@pytest.mark.parametrize("xyz, rpy", [([0, 0], [0, 0, 0]), ([0, 0, np.nan], [0, 0, 0]), ([0, 0, 0], [0, 0, 0, 0])])
def test_mount_needs_three_finite_numbers_each(xyz, rpy):
    with pytest.raises(ValueError, match="three finite numbers each"):
        GripperMount.of(xyz, rpy)


def test_documented_pad_distances_from_the_flange_are_the_models(model, linkage, mount):
    """The pads' contact centroid along the flange z axis, open and closed, as the docs quote it
    (reference: yourdfpy's finger poses on the URDF mount)."""
    local = model.contact_points_local(NUM_POINTS)
    quoted = []
    for position in (0.0, 1.0):
        angle = float(model.finger_angle(np.array([position]))[0])
        left, right = (mount @ pose for pose in reference_finger_poses(linkage, angle))
        points = np.concatenate([local[:240] @ left[:3, :3].T + left[:3, 3],
                                 local[240:] @ right[:3, :3].T + right[:3, 3]])
        quoted.append(f"{1000 * points.mean(axis=0)[2]:.1f} mm")
    assert quoted == ["140.5 mm", "151.8 mm"]
    for doc in (REPO_ROOT / "docs" / "gripper_model.md", REPO_ROOT / "droid_pipeline" / "core" / "default.yaml"):
        text = doc.read_text()
        assert all(value.replace(" mm", "") in text for value in quoted), doc


def test_the_halton_points_are_scipys_unscrambled_halton_sequence():
    from scipy.stats import qmc

    from droid_pipeline.robot.gripper import halton_2d

    for count in (1, 2, 7, 1000, 4097):
        sampler = qmc.Halton(d=2, scramble=False)
        sampler.fast_forward(1)
        np.testing.assert_array_equal(halton_2d(count), sampler.random(count))
