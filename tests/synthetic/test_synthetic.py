"""Synthetic DROID episodes: format, kinematics, calibration and rendering, against independent
references (h5py, yourdfpy, SciPy rotations, OpenCV projection and feature matching, ffprobe)."""

from __future__ import annotations

import json
import re
import subprocess

import cv2
import h5py
import numpy as np
import pytest
import yourdfpy
from scipy.spatial.transform import Rotation
from synthetic_fixtures import SMALL_FRAMES, SMALL_SIZE, small_dataset

from droid_pipeline.core.config import load_config
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.raw.video import iter_frames
from droid_pipeline.raw.zed_conf import parse_conf, rectify
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import GripperMount
from droid_pipeline.synthetic.generator import (
    DatasetInfo,
    SyntheticError,
    generate_dataset,
    load_dataset_info,
)
from droid_pipeline.synthetic.raycast import Box, Material, PinholeCamera, render

METADATA_KEYS = {
    "uuid", "lab", "user", "user_id", "date", "timestamp", "hdf5_path", "building", "scene_id", "success",
    "robot_serial", "r2d2_version", "current_task", "trajectory_length", "wrist_cam_serial", "ext1_cam_serial",
    "ext2_cam_serial", "wrist_cam_extrinsics", "ext1_cam_extrinsics", "ext2_cam_extrinsics", "wrist_svo_path",
    "wrist_mp4_path", "ext1_svo_path", "ext1_mp4_path", "ext2_svo_path", "ext2_mp4_path", "left_mp4_path",
    "right_mp4_path"}
ROBOT_STATE_KEYS = {
    "cartesian_position": (6,), "gripper_position": (), "joint_positions": (7,), "joint_velocities": (7,),
    "joint_torques_computed": (7,), "prev_joint_torques_computed": (7,),
    "prev_joint_torques_computed_safened": (7,), "motor_torques_measured": (7,),
    "prev_controller_latency_ms": ()}
ACTION_KEYS = {
    "cartesian_position": (6,), "cartesian_velocity": (6,), "gripper_position": (), "gripper_velocity": (),
    "joint_position": (7,), "joint_velocity": (7,), "target_cartesian_position": (6,),
    "target_gripper_position": ()}
ID_PATTERN = re.compile(r"^[A-Za-z]+\+[0-9a-f]{8}\+\d{4}-\d{2}-\d{2}-\d{2}h-\d{2}m-\d{2}s$")
FOLDER_PATTERN = re.compile(r"^[A-Z][a-z]{2}_[A-Z][a-z]{2}_{1,2}\d{1,2}_\d{2}[:_]\d{2}[:_]\d{2}_\d{4}$")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> DatasetInfo:
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def panda_reference(reference_data) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(reference_data / "panda_robotiq.urdf"), build_scene_graph=True, load_meshes=False,
                              build_collision_scene_graph=False, load_collision_meshes=False)


def pose_matrix(pose6: np.ndarray) -> np.ndarray:
    """DROID pose(s) -> 4x4, built here with SciPy's extrinsic xyz Euler angles."""
    pose6 = np.atleast_2d(pose6)
    out = np.tile(np.eye(4), (len(pose6), 1, 1))
    out[:, :3, :3] = Rotation.from_euler("xyz", pose6[:, 3:]).as_matrix()
    out[:, :3, 3] = pose6[:, :3]
    return out


def read_metadata(dataset: DatasetInfo, episode) -> dict:
    return json.loads((dataset.episode_dir(episode) / f"metadata_{episode.episode_id}.json").read_text())


def ground_truth(dataset: DatasetInfo, episode) -> dict:
    return json.loads((dataset.ground_truth_path(episode) / "cameras.json").read_text())


def test_h5_has_droid_keys_shapes_and_dtypes(dataset):
    for episode in dataset.episodes:
        meta = read_metadata(dataset, episode)
        frames = episode.num_frames
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            for group, keys in (("observation/robot_state", ROBOT_STATE_KEYS), ("action", ACTION_KEYS)):
                for key, tail in keys.items():
                    data = h5[f"{group}/{key}"]
                    assert data.shape == (frames, *tail), f"{group}/{key}"
                    assert data.dtype == np.float64, f"{group}/{key}"
            assert h5["observation/robot_state/prev_command_successful"].dtype == bool
            for key in ("controller_on", "failure", "movement_enabled", "success"):
                assert h5[f"observation/controller_info/{key}"].dtype == bool
                assert h5[f"observation/controller_info/{key}"].shape == (frames,)
            for role in ("wrist", "ext1", "ext2"):
                serial = meta[f"{role}_cam_serial"]
                assert serial.isdigit()
                for lens in ("left", "right"):
                    data = h5[f"observation/camera_extrinsics/{serial}_{lens}"]
                    assert data.shape == (frames, 6) and data.dtype == np.float64
                camera_type = h5[f"observation/camera_type/{serial}"][()]
                assert camera_type.shape == (frames,)
                assert np.all(camera_type == (0 if role == "wrist" else 1))
                for name in ("estimated_capture", "frame_received", "read_start", "read_end"):
                    stamps = h5[f"observation/timestamp/cameras/{serial}_{name}"][()]
                    assert stamps.shape == (frames,) and np.issubdtype(stamps.dtype, np.integer)
            offset = h5[f"observation/camera_extrinsics/{meta['wrist_cam_serial']}_left_gripper_offset"]
            assert offset.shape == (frames, 6)
            step_start = h5["observation/timestamp/control/step_start"][()]
            assert np.all(np.diff(step_start) > 0)
            assert len(h5["observation/timestamp/robot_state"]) > 0
            assert bool(h5.attrs["success"]) == (episode.outcome == "success")
            assert bool(h5.attrs["failure"]) == (episode.outcome == "failure")
            assert h5.attrs["current_task"] == meta["current_task"]
            assert h5.attrs["robot_serial_number"] == meta["robot_serial"]


def test_cartesian_position_is_forward_kinematics_of_joint_positions(dataset, panda_reference):
    names = [f"panda_joint{i}" for i in range(1, 8)]
    for episode in dataset.episodes:
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            joints = h5["observation/robot_state/joint_positions"][()]
            cartesian = h5["observation/robot_state/cartesian_position"][()]
        expected = []
        for q in joints:
            panda_reference.update_cfg({**dict(zip(names, q)), "finger_joint": 0.0})
            expected.append(panda_reference.get_transform("panda_link8", "panda_link0"))
        np.testing.assert_allclose(pose_matrix(cartesian), np.stack(expected), rtol=0, atol=1e-6)


def test_wrist_extrinsics_are_flange_pose_times_gripper_offset(dataset):
    for episode in dataset.episodes:
        wrist = episode.serials["wrist"]
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            flange = pose_matrix(h5["observation/robot_state/cartesian_position"][()])
            offset = pose_matrix(h5[f"observation/camera_extrinsics/{wrist}_left_gripper_offset"][()])
            wrist_left = pose_matrix(h5[f"observation/camera_extrinsics/{wrist}_left"][()])
        np.testing.assert_allclose(wrist_left, flange @ offset, rtol=0, atol=1e-9)
        np.testing.assert_allclose(offset, offset[:1].repeat(len(offset), axis=0), atol=1e-12)
        truth = ground_truth(dataset, episode)[wrist]
        np.testing.assert_allclose(offset[0], truth["T_flange_cam"], atol=1e-9)
        assert np.ptp(wrist_left[:, :3, 3], axis=0).max() > 0.05  # it moves with the gripper


def test_extrinsics_agree_across_h5_metadata_and_cam2base(dataset):
    cam2base = json.loads(dataset.cam2base_path.read_text())
    assert set(cam2base) == {e.episode_id for e in dataset.episodes}
    for episode in dataset.episodes:
        meta = read_metadata(dataset, episode)
        truth = ground_truth(dataset, episode)
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            for role, serial in episode.serials.items():
                left = pose_matrix(h5[f"observation/camera_extrinsics/{serial}_left"][()])
                right = pose_matrix(h5[f"observation/camera_extrinsics/{serial}_right"][()])
                np.testing.assert_allclose(pose_matrix(meta[f"{role}_cam_extrinsics"])[0], left[0], atol=1e-9)
                baseline = truth[serial]["baseline_m"]
                np.testing.assert_allclose(right[:, :3, :3], left[:, :3, :3], atol=1e-9)
                np.testing.assert_allclose(right[:, :3, 3], left[:, :3, 3] + baseline * left[:, :3, 0], atol=1e-9)
                if role != "wrist":
                    np.testing.assert_allclose(left, left[:1].repeat(len(left), axis=0), atol=1e-12)
                    np.testing.assert_allclose(pose_matrix(cam2base[episode.episode_id][serial])[0], left[0],
                                               atol=1e-9)
                    np.testing.assert_allclose(truth[serial]["T_base_cam"], left[0], atol=1e-9)
            assert episode.serials["wrist"] not in cam2base[episode.episode_id]


def test_cam2cam_file_holds_the_exterior_pair_in_ext1s_frame(dataset):
    cam2cam = json.loads(dataset.cam2cam_path.read_text())
    assert set(cam2cam) == {e.episode_id for e in dataset.episodes}
    for episode in dataset.episodes:
        truth = ground_truth(dataset, episode)
        ext1, ext2 = (np.array(truth[episode.serials[role]]["T_base_cam"]) for role in ("ext1", "ext2"))
        entry = cam2cam[episode.episode_id]
        np.testing.assert_allclose(entry["left_cam"]["pose"], np.eye(4), atol=1e-12)
        np.testing.assert_allclose(entry["right_cam"]["pose"], np.linalg.inv(ext1) @ ext2, atol=1e-9)
        K = np.array(truth[episode.serials["ext2"]]["K"])
        assert entry["right_cam"]["focal"] == K[0, 0] and entry["right_cam"]["principal_point"] == [K[0, 2], K[1, 2]]
    assert load_config([dataset.config_path]).cam2cam_extrinsics_path == dataset.cam2cam_path


def test_pads_are_rendered_on_the_given_mount(tmp_path):
    """The true depth under each pad box's projected centre is that box's near face (within its
    half diagonal) on the mount the set was generated with, and no pad on the URDF's (another part
    of the gripper, or the background, well beyond the box)."""
    mount = GripperMount((0.02, 0.015, 0.01), (0.0, 0.0, 1.57))
    info = generate_dataset(tmp_path / "mounted", episodes=1, frames=5, seed=3, mount=mount)
    gripper = load_config([info.config_path]).gripper
    assert (gripper.mount_xyz_m, gripper.mount_rpy) == ([0.02, 0.015, 0.01], [0.0, 0.0, 1.57])
    episode = info.episodes[0]
    wrist = episode.serials["wrist"]
    truth = ground_truth(info, episode)[wrist]
    depth_mm = np.load(info.ground_truth_path(episode) / truth["depth_file"])
    with h5py.File(info.episode_dir(episode) / "trajectory.h5", "r") as h5:
        flange = pose_matrix(h5["observation/robot_state/cartesian_position"][()])
        opening = h5["observation/robot_state/gripper_position"][()]
    camera_from_base = np.linalg.inv(flange @ np.array(truth["T_flange_cam"]))
    K = np.array(truth["K"])

    def surface_minus_centre_mm(model: GripperModel) -> np.ndarray:
        centre, half = model.pad_box_local()
        out = []
        for finger in model.finger_poses(opening):
            in_camera = (camera_from_base @ flange @ finger @ np.r_[centre, 1.0])[:, :3]
            u, v = (np.einsum("ij,tj->ti", K, in_camera)[:, :2] / in_camera[:, 2:]).round().astype(int).T
            out.append(depth_mm[np.arange(len(u)), v, u] - 1000.0 * in_camera[:, 2])
        return np.concatenate(out)

    on_mount = surface_minus_centre_mm(GripperModel.load(mount))
    half_diagonal_mm = 1000.0 * np.linalg.norm(GripperModel.load().pad_box_local()[1])
    assert np.all((on_mount <= 1.0) & (on_mount > -half_diagonal_mm)), on_mount
    assert np.all(surface_minus_centre_mm(GripperModel.load()) > half_diagonal_mm)


def test_zed_conf_rectification_reproduces_rendered_intrinsics(dataset):
    published = json.loads(dataset.intrinsics_path.read_text())
    for episode in dataset.episodes:
        truth = ground_truth(dataset, episode)
        for role, serial in episode.serials.items():
            conf = parse_conf(dataset.zed_calibration_dir / f"SN{serial}.conf")
            rectified = rectify(conf, episode.width, episode.height)
            K = np.array(truth[serial]["K"])
            np.testing.assert_allclose(rectified.K, K, rtol=0, atol=1e-9)
            assert rectified.baseline_m == pytest.approx(truth[serial]["baseline_m"], abs=1e-12)
            fx, cx, fy, cy = published[episode.episode_id][serial]
            np.testing.assert_allclose([fx, cx, fy, cy], [K[0, 0], K[0, 2], K[1, 1], K[1, 2]], atol=1e-9)
            expected_baseline = 0.063 if role == "wrist" else 0.120
            assert truth[serial]["baseline_m"] == pytest.approx(expected_baseline, rel=0.03)
            hd = conf.left["HD"]
            assert 0 < abs(hd.k1) < 0.1 and abs(hd.p1) < 1e-3  # raw values really are distorted
            assert abs(K[0, 2] - (hd.cx + 0.5) / 4 + 0.5) > 1e-3  # and rectification moved them
            raw_rotation = np.linalg.norm([conf.stereo["HD"].rx_rad, conf.stereo["HD"].cv_rad,
                                           conf.stereo["HD"].rz_rad])
            assert 0 < raw_rotation < 0.01


def test_h5_camera_intrinsics_where_present_match_the_rendering(dataset):
    carrying = 0
    for episode in dataset.episodes:
        truth = ground_truth(dataset, episode)
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            if "observation/camera_intrinsics" not in h5:
                continue
            carrying += 1
            for serial in episode.serials.values():
                K = h5[f"observation/camera_intrinsics/{serial}_left"][()]
                assert K.shape == (episode.num_frames, 3, 3)
                np.testing.assert_allclose(K, np.broadcast_to(truth[serial]["K"], K.shape), atol=1e-12)
    assert carrying == 1


def test_metadata_has_every_key_and_droid_ids(dataset):
    for episode in dataset.episodes:
        meta = read_metadata(dataset, episode)
        assert set(meta) == METADATA_KEYS
        assert meta["uuid"] == episode.episode_id and ID_PATTERN.match(episode.episode_id)
        lab, user_id, stamp = episode.episode_id.split("+")
        assert (meta["lab"], meta["user_id"], meta["timestamp"]) == (lab, user_id, stamp)
        assert stamp.startswith(meta["date"])
        assert meta["success"] is (episode.outcome == "success")
        assert meta["trajectory_length"] == episode.num_frames
        lab_dir, outcome, date_dir, folder = episode.relative_path.split("/")
        assert FOLDER_PATTERN.match(folder)
        assert meta["hdf5_path"] == f"{outcome}/{date_dir}/{folder}/trajectory.h5"
        for role in ("wrist", "ext1", "ext2"):
            assert meta[f"{role}_mp4_path"].endswith(f"recordings/MP4/{meta[f'{role}_cam_serial']}.mp4")
            assert (dataset.droid_root / lab_dir / meta[f"{role}_mp4_path"]).is_file()
        assert not (dataset.episode_dir(episode) / "recordings" / "SVO").exists()
    folders = [e.relative_path.rsplit("/", 1)[1] for e in dataset.episodes]
    assert "__" in folders[0]  # a one-digit day
    assert any(":" in f for f in folders) and any(":" not in f for f in folders)
    dates = [read_metadata(dataset, e)["date"] for e in dataset.episodes]
    assert len(set(dates)) == len(dates)
    folder_dates = [e.relative_path.split("/")[2] for e in dataset.episodes]
    assert folder_dates[:2] == dates[:2] and folder_dates[2] != dates[2]  # a folder date that disagrees


def test_discovery_indexes_every_generated_episode(dataset, tmp_path):
    index = build_index(dataset.droid_root, tmp_path / "index.json")
    assert index.problems == []
    found = {e.episode_id: e for e in index.episodes}
    assert set(found) == {e.episode_id for e in dataset.episodes}
    for episode in dataset.episodes:
        seen = found[episode.episode_id]
        assert seen.relative_path == episode.relative_path and seen.outcome == episode.outcome
        assert seen.serials == episode.serials and seen.has_h5 and seen.folder_spelling_ok
        assert set(seen.mp4) == set(seen.stereo_mp4) == set(episode.serials.values())
    assert {e.outcome for e in index.episodes} == {"success", "failure"}
    assert len(index.select(outcomes=("failure",))) == 1


def test_config_points_the_pipeline_at_the_dataset(dataset):
    config = load_config([dataset.config_path])
    assert config.droid_root == dataset.droid_root
    assert config.cam2base_extrinsics_path == dataset.cam2base_path
    assert config.intrinsics_path == dataset.intrinsics_path
    assert config.zed_calibration_dir == dataset.zed_calibration_dir
    assert set(config.outcomes) == {"success", "failure"}
    assert load_dataset_info(dataset.root) == dataset


def test_videos_have_one_frame_per_step_at_the_requested_size(dataset):
    width, height = SMALL_SIZE
    episode = dataset.episodes[0]
    for serial in episode.serials.values():
        for name, expected_width in ((f"{serial}.mp4", width), (f"{serial}-stereo.mp4", 2 * width)):
            path = dataset.episode_dir(episode) / "recordings" / "MP4" / name
            probe = json.loads(subprocess.run(
                ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                 "stream=codec_name,pix_fmt,width,height,nb_read_frames", "-of", "json", str(path)],
                check=True, capture_output=True, text=True).stdout)["streams"][0]
            assert (probe["codec_name"], probe["pix_fmt"]) == ("h264", "yuv420p")
            assert (probe["width"], probe["height"]) == (expected_width, height)
            assert int(probe["nb_read_frames"]) == SMALL_FRAMES
        depth = np.load(dataset.ground_truth_path(episode) / f"{serial}_depth_mm.npy", mmap_mode="r")
        assert depth.shape == (SMALL_FRAMES, height, width) and depth.dtype == np.uint16


def matched_features(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints matched left->right (ratio test), as (N, 2) pixel arrays."""
    sift = cv2.SIFT_create()
    gray = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in (left, right)]
    (kp_l, des_l), (kp_r, des_r) = (sift.detectAndCompute(g, None) for g in gray)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des_l, des_r, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.7 * n.distance]
    return (np.array([kp_l[m.queryIdx].pt for m in good]), np.array([kp_r[m.trainIdx].pt for m in good]))


@pytest.mark.parametrize("role", ["wrist", "ext1", "ext2"])
def test_stereo_pairs_are_row_aligned_with_the_true_disparity(dataset, role):
    episode = dataset.episodes[0]
    serial = episode.serials[role]
    truth = ground_truth(dataset, episode)[serial]
    depth_mm = np.load(dataset.ground_truth_path(episode) / f"{serial}_depth_mm.npy", mmap_mode="r")
    path = dataset.episode_dir(episode) / "recordings" / "MP4" / f"{serial}-stereo.mp4"
    width = episode.width
    checked = 0
    for step, frame in iter_frames(path):
        if step not in (0, 25):
            continue
        left_pts, right_pts = matched_features(frame[:, :width], frame[:, width:])
        assert len(left_pts) >= 20
        rows_apart = np.abs(left_pts[:, 1] - right_pts[:, 1])
        assert np.median(rows_apart) < 0.5 and np.mean(rows_apart < 1.0) > 0.9
        disparity = left_pts[:, 0] - right_pts[:, 0]
        col, row = np.rint(left_pts).astype(int).T
        true_depth = depth_mm[step][row, col] / 1000.0
        usable = (disparity > 0.5) & (true_depth > 0) & (rows_apart < 1.0)
        from_disparity = truth["K"][0][0] * truth["baseline_m"] / disparity[usable]
        relative_error = np.abs(from_disparity - true_depth[usable]) / true_depth[usable]
        assert usable.sum() >= 10 and np.median(relative_error) < 0.05
        checked += 1
    assert checked == 2


def test_gripper_pads_are_rendered_where_opencv_projects_them(dataset):
    model = GripperModel.load()
    for episode in dataset.episodes:
        truth = ground_truth(dataset, episode)
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            gripper = h5["observation/robot_state/gripper_position"][()]
            extrinsics = {s: pose_matrix(h5[f"observation/camera_extrinsics/{s}_left"][()])
                          for s in episode.serials.values()}
            flange = pose_matrix(h5["observation/robot_state/cartesian_position"][()])
        centre, half = model.pad_box_local()
        left, _ = model.finger_poses(gripper)
        points = (flange @ left)[:, :3, :3] @ centre + (flange @ left)[:, :3, 3]
        # The pixel of the pad's centre shows the pad itself: a surface within the pad's extent.
        tolerance = np.linalg.norm(half)
        for role, serial in episode.serials.items():
            depth = np.load(dataset.ground_truth_path(episode) / f"{serial}_depth_mm.npy", mmap_mode="r")
            K = np.array(truth[serial]["K"])
            in_view = agree = 0
            for step, (point, pose) in enumerate(zip(points, extrinsics[serial])):
                world_to_cam = np.linalg.inv(pose)
                rvec = cv2.Rodrigues(world_to_cam[:3, :3])[0]
                pixel = cv2.projectPoints(point[None], rvec, world_to_cam[:3, 3], K, None)[0][0, 0]
                z = (world_to_cam[:3, :3] @ point + world_to_cam[:3, 3])[2]
                col, row = np.rint(pixel).astype(int)
                if z > 0 and 0 <= col < episode.width and 0 <= row < episode.height:
                    in_view += 1
                    agree += abs(depth[step, row, col] / 1000.0 - z) < tolerance
            minimum = 1.0 if role == "wrist" else 0.8
            assert in_view >= minimum * episode.num_frames, (episode.episode_id, role, in_view)
            assert agree >= 0.9 * in_view, (episode.episode_id, role, agree, in_view)


def test_gripper_closes_and_opens_and_path_speed(dataset):
    model = GripperModel.load()
    for episode in dataset.episodes:
        with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
            gripper = h5["observation/robot_state/gripper_position"][()]
            command = h5["action/gripper_position"][()]
            flange = pose_matrix(h5["observation/robot_state/cartesian_position"][()])
        closed = gripper > 0.5
        assert not closed[0] and not closed[-1] and closed.any()
        assert np.count_nonzero(np.diff(closed.astype(int))) == 2  # one close, one open
        assert np.argmax(command > 0.5) < np.argmax(closed)  # the command leads the fingers
        if episode.outcome == "failure":
            assert gripper.max() == pytest.approx(1.0)
        else:
            assert 0.7 < gripper.max() < 0.95  # stopped short by the grasped object
        points = model.contact_points(gripper, 2)
        centroid = np.einsum("tij,tj->ti", flange[:, :3, :3], points.mean(axis=1)) + flange[:, :3, 3]
        path = np.linalg.norm(np.diff(centroid, axis=0), axis=1).sum()
        assert path == pytest.approx(2.0 * (episode.num_frames - 1) / 299, rel=0.2)


def test_generation_is_deterministic_per_seed(tmp_path):
    """Same seed: byte-identical files (videos included); another seed: another episode."""
    runs = [generate_dataset(tmp_path / name, episodes=1, frames=4, seed=seed)
            for name, seed in (("a", 5), ("b", 5), ("c", 6))]

    def files(info: DatasetInfo) -> dict[str, bytes]:
        return {str(p.relative_to(info.root)): p.read_bytes()
                for p in sorted(info.root.rglob("*")) if p.is_file() and p.suffix != ".h5"}

    def h5_arrays(info: DatasetInfo) -> dict[str, np.ndarray]:
        arrays = {}
        with h5py.File(info.episode_dir(info.episodes[0]) / "trajectory.h5", "r") as h5:
            h5.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                          if isinstance(item, h5py.Dataset) else None)
        return arrays

    first, second, other = runs
    assert files(first).keys() == files(second).keys()
    assert any(name.endswith("-stereo.mp4") for name in files(first))
    for name, content in files(first).items():
        assert content == files(second)[name], name
    arrays_a, arrays_b = h5_arrays(first), h5_arrays(second)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    assert other.episodes[0].episode_id != first.episodes[0].episode_id
    assert not np.array_equal(h5_arrays(other)["observation/robot_state/joint_positions"],
                              arrays_a["observation/robot_state/joint_positions"])


def test_full_hd720_size_is_supported(tmp_path):
    info = generate_dataset(tmp_path / "hd", episodes=1, frames=2, size=(1280, 720), seed=1)
    episode = info.episodes[0]
    for serial in episode.serials.values():
        frames = [f for _, f in iter_frames(info.episode_dir(episode) / "recordings/MP4" / f"{serial}-stereo.mp4")]
        assert [f.shape for f in frames] == [(720, 2560, 3)] * 2
        K = np.array(ground_truth(info, episode)[serial]["K"])
        assert 500 < K[0, 0] < 800 and abs(K[0, 2] - 640) < 40


@pytest.mark.parametrize("size", [(300, 200), (321, 180), (1280, 721)])
def test_sizes_that_are_no_zed_mode_are_refused(tmp_path, size):
    with pytest.raises(SyntheticError, match="not an even ZED resolution"):
        generate_dataset(tmp_path / "bad", episodes=1, frames=2, size=size)


def test_render_matches_opencv_projection_of_a_box():
    """A box seen by a tilted camera: its silhouette is OpenCV's projected hull of its corners and
    the depth of its top face is the z of the ray's hit on that plane."""
    K = np.array([[200.0, 0.0, 159.5], [0.0, 200.0, 119.5], [0.0, 0.0, 1.0]])
    cam_pose = np.eye(4)
    cam_pose[:3, :3] = Rotation.from_euler("xyz", [np.pi + 0.4, 0.1, 0.2]).as_matrix()
    cam_pose[:3, 3] = [0.05, -0.35, 0.9]
    box_pose = np.eye(4)
    box_pose[:3, :3] = Rotation.from_euler("z", 0.5).as_matrix()
    half = np.array([0.12, 0.08, 0.05])
    box = Box(box_pose, half, Material((0.2, 0.3, 0.4), (0.9, 0.8, 0.7), 0.02, 3))
    rendering = render([box], PinholeCamera(K, cam_pose, 320, 240))

    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * half
    corners = corners @ box_pose[:3, :3].T + box_pose[:3, 3]
    world_to_cam = np.linalg.inv(cam_pose)
    pixels = cv2.projectPoints(corners, cv2.Rodrigues(world_to_cam[:3, :3])[0], world_to_cam[:3, 3], K, None)[0]
    expected = np.zeros((240, 320), np.uint8)
    cv2.fillConvexPoly(expected, cv2.convexHull(np.rint(pixels * 16).astype(np.int32)), 1, shift=4)
    seen = rendering.depth > 0
    boundary = cv2.dilate(expected, np.ones((3, 3))) != cv2.erode(expected, np.ones((3, 3)))
    assert seen.sum() > 2000
    assert np.array_equal(seen[~boundary], expected.astype(bool)[~boundary])
    assert (rendering.rgb[~seen] == rendering.rgb[0, 0]).all()

    # Top face (z = +half_z) depth: intersect each pixel's ray with that plane independently.
    rows, cols = np.nonzero(seen)
    rays_cam = np.linalg.inv(K) @ np.stack([cols, rows, np.ones_like(cols)]).astype(float)
    rays = cam_pose[:3, :3] @ rays_cam
    t = (half[2] - cam_pose[2, 3]) / rays[2]
    hit = cam_pose[:3, 3, None] + t * rays
    local = box_pose[:3, :3].T @ (hit - box_pose[:3, 3, None])
    on_top = np.all(np.abs(local[:2]) < half[:2, None] - 1e-3, axis=0)
    assert on_top.sum() > 500
    np.testing.assert_allclose(rendering.depth[rows[on_top], cols[on_top]], t[on_top], rtol=1e-5)
    textured = rendering.rgb[rows[on_top], cols[on_top]].astype(float)
    assert textured.std(axis=0).min() > 5  # procedural texture, not a flat colour

