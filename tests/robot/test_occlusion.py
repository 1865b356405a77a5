"""Occlusion labels against independent references: the synthetic renderer's z-buffer (the demo
episodes re-rendered finely around the pads), yourdfpy's kinematics, trimesh's meshes and ray
tests, and hand-built cameras and depth maps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yourdfpy
from occlusion_truth import MARGIN_M, NUM_POINTS, in_view, rendered_views, robot_triangles
from synthetic_fixtures import small_dataset
from trimesh.ray.ray_triangle import ray_triangle_id

from droid_pipeline.core.config import load_config
from droid_pipeline.formats.depth_codec import DepthReader
from droid_pipeline.geometry.poses import invert, transform_points
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.robot.gripper import LEFT_FINGER_LINK, RIGHT_FINGER_LINK, GripperModel, read_binary_stl
from droid_pipeline.robot.kinematics import FLANGE_LINK, panda_flange_poses, read_asset, robot_model
from droid_pipeline.robot.occlusion import (
    HIDDEN_BY_ROBOT,
    HIDDEN_BY_SCENE,
    UNKNOWN,
    VISIBLE,
    RobotOcclusion,
    back_facing,
    combine_labels,
    scene_occlusion,
    scene_tolerance_mm,
)
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.synthetic.generator import ROOM, TABLE, depth_to_mm
from droid_pipeline.synthetic.raster import rasterize
from droid_pipeline.synthetic.raycast import Box, Material, PinholeCamera, TriangleMesh, render

# The stereo backend's depth at 320x180 is four times coarser than at DROID's 1280x720, and so
# is the depth-squared part of the scene tolerance (docs/occlusion.md).
SMALL_IMAGE_TOLERANCE_PER_M2 = 4 * 20.0


@pytest.fixture(scope="module")
def occlusion() -> RobotOcclusion:
    return RobotOcclusion.load()


@pytest.fixture(scope="module")
def gripper() -> GripperModel:
    return GripperModel.load()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    return small_dataset(tmp_path_factory)


def mesh(triangles: np.ndarray) -> trimesh.Trimesh:
    return trimesh.Trimesh(triangles.reshape(-1, 3), np.arange(3 * len(triangles)).reshape(-1, 3))


@pytest.fixture(scope="module")
def demo(dataset, occlusion, gripper) -> list[dict]:
    """Per demo camera: labels, the rendered truth of every in-view point, and what hid it."""
    found = []
    for view in rendered_views(dataset):
        camera, geometry, seen = view.camera, view.geometry, view.seen
        hidden = occlusion.robot_occlusion(geometry.pose, geometry.points, geometry.normals, camera.poses,
                                           margin_m=MARGIN_M, in_view=seen)
        facing_away = back_facing(geometry.points, geometry.normals, camera.poses) & seen
        by = {name: occlusion.blocked(geometry.pose, geometry.points, camera.poses, margin_m=MARGIN_M,
                                      occluders=links, in_view=seen & ~facing_away)
              for name, links in (("fingers", (LEFT_FINGER_LINK, RIGHT_FINGER_LINK)),
                                  ("arm", occlusion.arm_links))}
        found.append({"episode": view.episode, "camera": camera, "geometry": geometry, "seen": seen, "hidden": hidden,
                      "steps": view.steps, "columns": view.columns, "truth": view.truth, "facing_away": facing_away,
                      **by, "local": view.local, "pixels": view.pixels, "view": view})
    return found


def truly_visible(entry: dict) -> np.ndarray:
    return entry["view"].truly_visible


# ---------------------------------------------------------------- against the rendered truth

def test_labels_agree_with_the_rendered_truth(demo):
    agree = total = 0
    for entry in demo:
        labelled_visible = ~entry["hidden"][entry["steps"], entry["columns"]]
        matches = labelled_visible == truly_visible(entry)
        agree, total = agree + int(matches.sum()), total + len(matches)
        assert matches.mean() > 0.95, (entry["episode"].episode_id, entry["camera"].role, matches.mean())
        # No point labelled visible lies behind the rendered surface by more than the tolerance.
        assert not (labelled_visible & entry["truth"].behind).any(), (entry["episode"].episode_id,
                                                                     entry["camera"].role)
    assert total > 0.5 * len(demo) * 40 * NUM_POINTS
    assert agree / total >= 0.98, agree / total


def exact_hidden(occlusion: RobotOcclusion, pose, points: np.ndarray, normals: np.ndarray, camera_poses: np.ndarray,
                 seen: np.ndarray) -> np.ndarray:
    """The labels' rule with no culling: a point in view is hidden when its pad faces away, or when
    the segment from the camera to it crosses a front face (the camera on its outer side) of a
    link other than its own finger more than the margin before it; per step, every link whose
    bounding sphere comes near the segment, every front face of it, every point."""
    links = occlusion.links
    num_steps, num_points = seen.shape
    own = np.where(np.arange(num_points) < num_points // 2, links.index(LEFT_FINGER_LINK),
                   links.index(RIGHT_FINGER_LINK))
    hidden = back_facing(points, normals, camera_poses) & seen
    for step in np.flatnonzero(seen.any(axis=1)):
        triangles, owner = robot_triangles(occlusion, pose, step, camera_poses[step])   # camera at the origin
        a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
        front = np.einsum("fi,fi->f", np.cross(b - a, c - a), a) < 0.0
        local = transform_points(invert(camera_poses[step]), points[step])
        for index in range(len(links)):
            faces = front & (owner == index)
            targets = np.flatnonzero(seen[step] & ~hidden[step] & (own != index))
            corners = triangles[faces].reshape(-1, 3)
            if not faces.any() or not targets.size:
                continue
            centre = 0.5 * (corners.min(axis=0) + corners.max(axis=0))
            radius = np.linalg.norm(corners - centre, axis=1).max()
            ray = local[targets]
            along = np.clip(ray @ centre / np.einsum("ni,ni->n", ray, ray), 0.0, 1.0)
            targets = targets[np.linalg.norm(centre - along[:, None] * ray, axis=1) <= radius + 1e-6]
            ray = local[targets]
            sides = [ray @ np.cross(p, q).T for p, q in ((a[faces], b[faces]), (b[faces], c[faces]),
                                                         (c[faces], a[faces]))]
            toward = sides[0] + sides[1] + sides[2]
            volume = np.einsum("fi,fi->f", a[faces], np.cross(b[faces], c[faces]))
            crossing = ((sides[0] <= 0.0) & (sides[1] <= 0.0) & (sides[2] <= 0.0) & (toward < 0.0)
                        & (volume > (1.0 - MARGIN_M / np.linalg.norm(ray, axis=1))[:, None] * toward))
            hidden[step, targets] |= crossing.any(axis=1)
    return hidden


def test_the_culled_query_labels_exactly_as_the_rule_without_culling(demo, occlusion):
    """Every culling level (meshes, clusters and leaves against each pad's pyramid, faces against
    its box and the grid) only drops what cannot hide a point: on every demo camera the labels are
    the rule's, applied to every front face of every link near each point's ray."""
    crossed = 0
    for entry in demo:
        geometry = entry["geometry"]
        expected = exact_hidden(occlusion, geometry.pose, geometry.points, geometry.normals, entry["camera"].poses,
                                entry["seen"])
        np.testing.assert_array_equal(entry["hidden"] & entry["seen"], expected,
                                      err_msg=f"{entry['episode'].episode_id} {entry['camera'].role}")
        crossed += int((expected & ~entry["facing_away"]).sum())
    assert crossed > 5000   # points hidden by the rays' test, not only by facing away


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_culled_query_labels_exactly_as_the_rule_without_culling_at_random_poses(occlusion, gripper, seed):
    """The same at random arm and gripper configurations, seen from cameras all around the pads,
    near (10 cm) and far (1.5 m), fixed or moving with the pads."""
    rng = np.random.default_rng(seed)
    steps = 12
    joints = rng.uniform([-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8], [2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8], (steps, 7))
    flange = panda_flange_poses(joints)
    opening = rng.uniform(0.0, 1.0, steps)
    points = transform_points(flange, gripper.contact_points(opening, NUM_POINTS))
    normals = gripper.contact_normals(opening, NUM_POINTS) @ np.swapaxes(flange[:, :3, :3], -1, -2)
    pose = occlusion.pose(joints, flange, opening)
    centre = points.mean(axis=1)
    for distance_m in (0.1, 0.4, 1.5):
        direction = rng.normal(size=(steps, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        cameras = np.tile(np.eye(4), (steps, 1, 1))
        for step in range(steps):
            eye = centre[step] + distance_m * direction[step]
            forward = (centre[step] - eye) / distance_m
            side = np.cross(forward, rng.normal(size=3))
            side /= np.linalg.norm(side)
            cameras[step, :3, :3] = np.column_stack([side, np.cross(forward, side), forward])
            cameras[step, :3, 3] = eye
        local = transform_points(invert(cameras), points)
        seen = local[..., 2] > 0.01
        hidden = occlusion.robot_occlusion(pose, points, normals, cameras, margin_m=MARGIN_M, in_view=seen)
        expected = exact_hidden(occlusion, pose, points, normals, cameras, seen)
        assert (expected & ~back_facing(points, normals, cameras)).sum() > 100   # rays do cross links
        np.testing.assert_array_equal(hidden & seen, expected, err_msg=f"seed {seed}, camera at {distance_m} m")


def test_demo_episodes_show_the_far_finger_the_back_of_a_pad_and_the_arm_hiding_points(demo, occlusion):
    """Each case happens, and where it does the renderer agrees that the point is hidden, behind
    what the labels say: the gripper (for the far finger, not the point's own finger) or an arm link."""
    links = occlusion.links
    arm = [links.index(link) for link in occlusion.arm_links]
    gripper = [links.index(link) for link in occlusion.gripper_links]
    cases = {"far finger": 0, "back of a pad": 0, "arm link": 0}
    for entry in demo:
        steps, columns, truth = entry["steps"], entry["columns"], entry["truth"]
        own = np.where(columns < NUM_POINTS // 2, links.index(LEFT_FINGER_LINK), links.index(RIGHT_FINGER_LINK))
        hidden = ~truly_visible(entry)
        for case, mask, shown in (("far finger", entry["fingers"], np.isin(truth.link, gripper) & (truth.link != own)),
                                  ("back of a pad", entry["facing_away"], np.isin(truth.link, gripper)),
                                  ("arm link", entry["arm"], np.isin(truth.link, arm))):
            selected = mask[steps, columns]
            if selected.sum() > 100:
                where = (case, entry["episode"].episode_id, entry["camera"].role)
                assert hidden[selected].mean() > 0.9, where
                assert shown[selected].mean() > 0.9, where
            cases[case] += int(selected.sum())
    assert all(count > 1000 for count in cases.values()), cases


def test_the_truth_is_the_episode_as_rendered(dataset, demo, occlusion):
    """The robot re-rendered at the video's own pixels gives the episode's ground-truth depth
    wherever the robot is the nearest surface, and is never nearer than it."""
    for entry in demo[:3]:
        camera, geometry = entry["camera"], entry["geometry"]
        depth_mm = np.load(camera.depth_path, mmap_mode="r")
        for step in (0, 20, 39):
            triangles, _ = robot_triangles(occlusion, geometry.pose, step, camera.poses[step])
            robot = rasterize(triangles, camera.K, camera.width, camera.height, 1e-3).depth * 1000.0
            truth = depth_mm[step].astype(float)
            drawn = np.isfinite(robot)
            assert drawn.sum() > 200
            assert not (robot[drawn] < truth[drawn] - 0.5).any()
            front = drawn & (robot <= truth + 0.5)
            assert front.mean() > 0.01
            np.testing.assert_allclose(robot[front], truth[front], atol=0.5)


def test_the_back_face_rule_alone_with_a_camera_behind_the_finger(gripper, reference_data):
    """A camera on the far side of the left finger, looking at its pad through it: every left
    point faces away (and trimesh confirms the finger lies on each ray); every right point
    faces the camera. From between the fingers the left pad faces the camera."""
    opening = np.array([0.3])
    left, right = gripper.finger_poses(opening)
    points = gripper.contact_points(opening, NUM_POINTS)[0]
    normals = gripper.contact_normals(opening, NUM_POINTS)[0]
    half = NUM_POINTS // 2
    centre = points[:half].mean(axis=0)
    outward = -normals[0]  # from the left pad through its finger, away from the right finger
    behind = np.eye(4)
    behind[:3, 3] = centre + 0.25 * outward + np.array([0.0, 0.03, 0.02])
    between = np.eye(4)
    between[:3, 3] = centre - 0.02 * outward + np.array([0.0, 0.0, 0.01])
    facing_away = back_facing(points[None], normals[None], behind)[0]
    assert facing_away[:half].all() and not facing_away[half:].any()
    assert not back_facing(points[None], normals[None], between)[0][:half].any()
    finger = read_binary_stl((reference_data / "robotiq_2f85" / "inner_finger_fine.STL").read_bytes())
    posed = transform_points(left[0], finger.reshape(-1, 3)).reshape(-1, 3, 3)
    origin = np.broadcast_to(behind[:3, 3], (half, 3))
    direction = points[:half] - origin
    length = np.linalg.norm(direction, axis=1)
    _, ray, location = ray_triangle_id(posed, origin, direction / length[:, None], multiple_hits=True)
    before = np.linalg.norm(location - origin[ray], axis=1) < length[ray] - MARGIN_M
    assert set(ray[before]) == set(range(half))


# ---------------------------------------------------------------- meshes and their poses

def reference_robot(reference_data) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(reference_data / "panda_robotiq.urdf"), build_scene_graph=True, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)


def test_every_link_is_posed_as_yourdfpy_poses_it(occlusion, reference_data):
    rng = np.random.default_rng(4)
    reference = reference_robot(reference_data)
    joints = np.array([0.0, -0.13, 0.0, -2.25, 0.0, 2.12, 0.785]) + rng.uniform(-0.5, 0.5, (6, 7))
    opening = rng.uniform(0.0, 1.0, 6)
    angle = GripperModel.load().finger_angle(opening)
    flange = []
    for q, a in zip(joints, angle):
        reference.update_cfg({**{f"panda_joint{i + 1}": v for i, v in enumerate(q)}, "finger_joint": a})
        flange.append(reference.get_transform(FLANGE_LINK, "panda_link0"))
    pose = occlusion.pose(joints, np.stack(flange), opening)
    assert pose.flange_mismatch_mm < 1e-6 and pose.flange_mismatch_deg < 1e-6
    for step, (q, a) in enumerate(zip(joints, angle)):
        reference.update_cfg({**{f"panda_joint{i + 1}": v for i, v in enumerate(q)}, "finger_joint": a})
        for link in occlusion.links:
            np.testing.assert_allclose(pose.link_poses(link)[step], reference.get_transform(link, "panda_link0"),
                                       atol=1e-9, err_msg=link)
    # The gripper hangs off the flange pose given, the arm off the joints: a flange 5 mm off moves
    # only the gripper, and the mismatch is reported.
    shifted = np.stack(flange)
    shifted[:, :3, 3] += [0.005, 0.0, 0.0]
    moved = occlusion.pose(joints, shifted, opening)
    assert moved.flange_mismatch_mm == pytest.approx(5.0)
    for link in occlusion.links:
        offset = moved.link_poses(link)[:, :3, 3] - pose.link_poses(link)[:, :3, 3]
        np.testing.assert_allclose(offset, [[0.005, 0, 0] if link in occlusion.gripper_links else [0, 0, 0]] * 6,
                                   atol=1e-12, err_msg=link)
    assert set(occlusion.arm_links) == {f"panda_link{i}" for i in range(8)}


def test_packaged_meshes_are_the_reference_files_closed_and_outward(occlusion, reference_data):
    robot = robot_model()
    references = {"robotiq_arg85_description": reference_data / "robotiq_2f85" / "meshes",
                  "franka_description": reference_data / "franka_collision"}
    for link in occlusion.links:
        meshes = robot.visual_meshes[link] if link in (LEFT_FINGER_LINK, RIGHT_FINGER_LINK) else \
            robot.collision_meshes[link]
        name = Path(meshes[0].filename).name
        reference = references[meshes[0].filename.split("/")[0]] / name
        if not reference.exists():
            reference = reference_data / "robotiq_2f85" / name
        assert read_asset(f"meshes/{name}") == reference.read_bytes(), link
        np.testing.assert_array_equal(occlusion.link_triangles[link], read_binary_stl(reference.read_bytes()))
        solid = mesh(occlusion.link_triangles[link])
        assert solid.is_watertight and solid.is_winding_consistent and solid.volume > 0, link


def test_coarse_links_agree_with_their_fine_meshes(reference_data):
    """Each coarse Robotiq mesh is in its link's frame: it encloses the fine mesh of the same link
    (the coarse ones are hulls) and stays within a centimetre of it."""
    folder = reference_data / "robotiq_2f85"
    for coarse_path, fine_path in ((folder / "inner_finger_coarse.STL", folder / "inner_finger_fine.STL"),
                                   *((folder / "meshes" / f"{part}_coarse.STL", folder / "meshes" / f"{part}_fine.STL")
                                     for part in ("inner_knuckle", "outer_finger", "outer_knuckle"))):
        coarse, fine = (mesh(read_binary_stl(p.read_bytes())) for p in (coarse_path, fine_path))
        inside = trimesh.proximity.signed_distance(coarse, fine.sample(3000, seed=1))
        assert inside.min() > -2e-4, coarse_path.name
        outside = trimesh.proximity.signed_distance(fine, coarse.sample(3000, seed=2))
        assert -outside.min() < 0.013, coarse_path.name
        np.testing.assert_allclose(coarse.bounds, fine.bounds, atol=2e-4)


def test_consecutive_arm_links_meet_at_their_joints_and_the_gripper_sits_on_the_flange(occlusion):
    rng = np.random.default_rng(8)
    joints = np.array([0.0, -0.13, 0.0, -2.25, 0.0, 2.12, 0.785]) + rng.uniform(-0.8, 0.8, (4, 7))
    flange = panda_flange_poses(joints)
    pose = occlusion.pose(joints, flange, np.full(4, 0.5))
    for step in range(4):
        for parent, child in zip(occlusion.arm_links, occlusion.arm_links[1:]):
            meshes = [mesh(transform_points(pose.link_poses(link)[step], occlusion.link_triangles[link].reshape(-1, 3))
                           .reshape(-1, 3, 3)) for link in (parent, child)]
            reach = trimesh.proximity.signed_distance(meshes[0], meshes[1].sample(4000, seed=step)).max()
            assert reach > -0.002, (parent, child, step)  # they touch or overlap
    base = transform_points(invert(flange[0]) @ pose.link_poses("robotiq_85_base_link")[0],
                            occlusion.link_triangles["robotiq_85_base_link"].reshape(-1, 3))
    link7 = occlusion.link_triangles["panda_link7"].reshape(-1, 3) - [0.0, 0.0, 0.107]  # in the flange frame
    assert abs(base[:, 2].min()) < 0.005 and abs(link7[:, 2].max()) < 0.001
    np.testing.assert_allclose(0.5 * (base[:, :2].min(axis=0) + base[:, :2].max(axis=0)), 0.0, atol=1e-3)


def test_contact_normals_are_the_pad_face_normals(gripper, reference_data):
    finger = mesh(read_binary_stl((reference_data / "robotiq_2f85" / "inner_finger_fine.STL").read_bytes()))
    opening = np.array([0.0, 0.6])
    local = gripper.contact_normals_local(NUM_POINTS)
    points = gripper.contact_points_local(NUM_POINTS)
    half = NUM_POINTS // 2
    np.testing.assert_allclose(np.linalg.norm(local, axis=1), 1.0, atol=1e-12)
    for chosen in (slice(0, half), slice(half, None)):  # both fingers are the same mesh in their frames
        scaled = finger.copy()
        scaled.apply_scale(1000.0)
        _, _, face = trimesh.proximity.closest_point(scaled, points[chosen] * 1000.0)
        np.testing.assert_allclose(local[chosen], finger.face_normals[face], atol=0.02)
    left, right = gripper.finger_poses(opening)
    flange = gripper.contact_normals(opening, NUM_POINTS)
    np.testing.assert_allclose(flange[:, :half], np.einsum("tij,nj->tni", left[:, :3, :3], local[:half]), atol=1e-12)
    np.testing.assert_allclose(flange[:, half:], np.einsum("tij,nj->tni", right[:, :3, :3], local[half:]), atol=1e-12)
    centres = gripper.contact_points(opening, NUM_POINTS)
    towards = centres[:, half:].mean(axis=1) - centres[:, :half].mean(axis=1)
    assert (np.einsum("ti,tni->tn", towards, flange[:, :half]) > 0).all()  # the pads face each other
    assert (np.einsum("ti,tni->tn", towards, flange[:, half:]) < 0).all()


# ---------------------------------------------------------------- scene occlusion and labels

def test_scene_occlusion_compares_the_depth_at_each_pixel_with_a_tolerance_growing_with_depth():
    frames = [np.full((4, 6), 1000, np.uint16), np.full((4, 6), 2000, np.uint16)]
    frames[0][1, 2] = 0
    pixels = np.array([[[3.2, 0.6], [1.9, 1.4], [4.0, 3.0], [0.0, 0.0]],
                       [[5.4, 2.6], [3.0, 1.0], [1.0, 1.0], [2.0, 2.0]]])
    depth_m = np.array([[1.2, 1.2, 1.0, 0.5], [2.1, 2.09, 2.0, 1.5]])
    seen = np.array([[True, True, True, False], [True, True, True, True]])
    labels = scene_occlusion(iter(frames), pixels, depth_m, seen, tolerance_mm=10.0, tolerance_per_m2=20.0)
    # Step 0: 1000 mm is nearer than 1200 mm by more than 10 + 20 * 1.2^2 = 38.8 mm: hidden; the
    # pixel (2, 1) is invalid; 1000 mm matches 1000 mm; out of view. Step 1: 2000 mm is nearer
    # than 2100 mm by more than 98.2 mm (hidden) but than 2090 mm by less than 97.4 mm (visible);
    # equal; the point is nearer than the surface.
    assert labels.tolist() == [[HIDDEN_BY_SCENE, UNKNOWN, VISIBLE, UNKNOWN],
                               [HIDDEN_BY_SCENE, VISIBLE, VISIBLE, VISIBLE]]
    assert scene_tolerance_mm(np.array([0.0, 1.0, 2.0]), 10.0, 20.0).tolist() == [10.0, 30.0, 90.0]
    with pytest.raises(ValueError, match="1 frames, expected one per step"):
        scene_occlusion(iter(frames[:1]), pixels, depth_m, seen, tolerance_mm=10.0, tolerance_per_m2=20.0)
    with pytest.raises(ValueError, match="more frames than the 2 steps"):
        scene_occlusion(iter(frames * 2), pixels, depth_m, seen, tolerance_mm=10.0, tolerance_per_m2=20.0)
    with pytest.raises(ValueError, match="depth frame 0 is 4x3, smaller than the image"):
        scene_occlusion(iter([f[:3, :4] for f in frames]), pixels, depth_m, seen, tolerance_mm=10.0,
                        tolerance_per_m2=20.0)


def test_labels_combine_view_robot_and_scene():
    seen = np.array([[True, True, True, True, False]])
    robot = np.array([[True, False, False, False, True]])
    scene = np.array([[VISIBLE, VISIBLE, HIDDEN_BY_SCENE, UNKNOWN, VISIBLE]], np.uint8)
    labels = combine_labels(seen, robot, scene)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[HIDDEN_BY_ROBOT, VISIBLE, HIDDEN_BY_SCENE, UNKNOWN, UNKNOWN]]
    assert combine_labels(seen, robot, None).tolist() == [[HIDDEN_BY_ROBOT, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN]]


def test_a_box_in_front_of_the_pads_hides_them_in_the_rendered_depth(demo, occlusion):
    """The wrist camera of a demo step with a box between it and part of the pads, rendered: the
    points behind the box are hidden by the scene, the others visible, unknown where the depth
    is blanked out; a box-only rendering says which are behind it."""
    entry = next(e for e in demo if e["camera"].role == "wrist")
    camera, geometry, step = entry["camera"], entry["geometry"], 10
    view = PinholeCamera(camera.K, camera.poses[step], camera.width, camera.height)
    points = geometry.points[step]
    left = points[: NUM_POINTS // 2].mean(axis=0)
    box_pose = np.eye(4)
    box_pose[:3, :3] = camera.poses[step, :3, :3]
    box_pose[:3, 3] = 0.5 * (camera.poses[step, :3, 3] + left)
    blocker = Box(box_pose, np.array([0.01, 0.01, 0.003]), Material((0.5, 0.2, 0.2), (0.9, 0.6, 0.6), 0.01, 5))
    links = [TriangleMesh(occlusion.link_triangles[link], geometry.pose.poses[step, index], Material(
        (0.2, 0.2, 0.2), (0.6, 0.6, 0.6), 0.01, 6)) for index, link in enumerate(geometry.pose.links)]
    depth = depth_to_mm(render([ROOM, TABLE, blocker], view, meshes=links).depth)
    local, pixels, seen = (a[step:step + 1] for a in in_view(geometry, camera))
    column = np.clip(np.rint(pixels[0, :, 0]).astype(int), 0, camera.width - 1)
    row = np.clip(np.rint(pixels[0, :, 1]).astype(int), 0, camera.height - 1)
    blanked = np.zeros(NUM_POINTS, bool)
    blanked[np.flatnonzero(seen[0])[::7]] = True
    depth[row[blanked], column[blanked]] = 0
    blank = depth[row, column] == 0
    visible_to_robot = ~occlusion.robot_occlusion(replace(geometry.pose, poses=geometry.pose.poses[step:step + 1]),
                                                  geometry.points[step:step + 1],
                                                  geometry.normals[step:step + 1], camera.poses[step],
                                                  margin_m=MARGIN_M, in_view=seen) & seen
    labels = scene_occlusion(iter([depth]), pixels, local[..., 2], seen, tolerance_mm=10.0, tolerance_per_m2=20.0)[0]
    box_only = render([blocker], view).depth
    behind_box = (box_only[row, column] > 0) & (box_only[row, column] < local[0, :, 2] - 0.01)
    considered = visible_to_robot[0] & ~blank
    assert behind_box[considered].sum() > 20 and (~behind_box[considered]).sum() > 20
    assert (labels[considered & behind_box] == HIDDEN_BY_SCENE).mean() > 0.95
    assert (labels[considered & ~behind_box] == VISIBLE).mean() > 0.95
    assert (labels[seen[0] & blank] == UNKNOWN).all() and (seen[0] & blank).any()


def scene_labels(entry: dict, frames, tolerance_per_m2: float) -> np.ndarray:
    return scene_occlusion(frames, entry["pixels"], entry["local"][..., 2], entry["seen"], tolerance_mm=10.0,
                           tolerance_per_m2=tolerance_per_m2)


def test_scene_occlusion_with_ground_truth_depth_matches_the_rendered_truth(demo):
    """With the episodes' true depth, points truly visible (the fine truth) are visible in the
    depth, and points the other finger hides well in front of them (beyond twice the tolerance)
    are hidden in it: the depth shows that finger."""
    for entry in demo:
        steps, columns = entry["steps"], entry["columns"]
        labels = scene_labels(entry, np.load(entry["camera"].depth_path, mmap_mode="r"),
                              SMALL_IMAGE_TOLERANCE_PER_M2)[steps, columns]
        assert not (labels == UNKNOWN).any()  # the room surrounds everything: depth is valid everywhere
        truly = truly_visible(entry)
        local = entry["local"][steps, columns]
        tolerance_m = 1e-3 * scene_tolerance_mm(local[:, 2], 10.0, SMALL_IMAGE_TOLERANCE_PER_M2)
        in_front = entry["fingers"][steps, columns] & (entry["truth"].distance < np.linalg.norm(local, axis=1)
                                                          - 2 * tolerance_m)
        if entry["camera"].role == "wrist":  # big pads: the pixel nearest a point sees its surface
            assert (labels[truly] == VISIBLE).mean() > 0.97
            if in_front.sum() > 100:
                assert (labels[in_front] == HIDDEN_BY_SCENE).mean() > 0.9
        else:  # pads a few pixels wide: the nearest pixel often sees a neighbouring surface
            assert (labels[truly] == VISIBLE).mean() > 0.6


@pytest.fixture(scope="module")
def stereo_depth(dataset, tmp_path_factory) -> dict[str, Path]:
    """The stereo backend's depth of demo episode 0's cameras, by serial."""
    tmp = tmp_path_factory.mktemp("occlusion_stereo")
    config = load_config([dataset.config_path], [f"output_root={tmp / 'output'}",
                                                 f"episode_index_path={tmp / 'index.json'}"])
    episode = build_index(config.droid_root, config.index_path).get(dataset.episodes[0].episode_id)
    summary = extract_depth(config, episode, tmp / "episode", backend="stereo")
    return {serial: camera.depth_path for serial, camera in summary.cameras.items()}


@pytest.mark.parametrize("role", ["wrist", "ext1", "ext2"])
def test_scene_occlusion_with_stereo_depth_agrees_with_ground_truth_depth(demo, dataset, stereo_depth, role):
    """Where the stereo depth at a point's pixel is valid, it gives the label the true depth gives
    (with the depth-squared tolerance scaled to the 320x180 images); where it is not, unknown."""
    entry = next(e for e in demo if e["episode"] == dataset.episodes[0] and e["camera"].role == role)
    with DepthReader(stereo_depth[entry["camera"].serial]) as reader:
        stereo = scene_labels(entry, iter(reader), SMALL_IMAGE_TOLERANCE_PER_M2)
        invalid = np.stack([frame == 0 for frame in reader])
    truth = scene_labels(entry, np.load(entry["camera"].depth_path, mmap_mode="r"), SMALL_IMAGE_TOLERANCE_PER_M2)
    seen = entry["seen"]
    column = np.clip(np.rint(entry["pixels"][..., 0]).astype(int), 0, invalid.shape[2] - 1)
    row = np.clip(np.rint(entry["pixels"][..., 1]).astype(int), 0, invalid.shape[1] - 1)
    blank = invalid[np.arange(len(seen))[:, None], row, column] & seen
    assert ((stereo == UNKNOWN) == (blank | ~seen)).all()
    valid = seen & ~blank
    assert valid.sum() > 1000
    assert (stereo[valid] == truth[valid]).mean() > 0.95
    truly = np.zeros_like(seen)
    truly[entry["steps"], entry["columns"]] = truly_visible(entry)
    assert (stereo[valid & truly] == VISIBLE).mean() > 0.95
