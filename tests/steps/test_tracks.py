"""The tracks step end to end on DROID-layout episodes built here with h5py and PyAV, checked
against independent references: cv2.projectPoints, SciPy Rotation/Slerp, yourdfpy on the
reference URDF."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest
import yourdfpy
from reference_data import REFERENCE_DATA
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation, Slerp

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import arm_joint_names, panda_flange_poses, robot_model
from droid_pipeline.steps.tracks import generate_tracks

REPO_ROOT = Path(__file__).resolve().parents[2]
LAB, DATE, FOLDER = "TESTLab", "2023-08-18", "Fri_Aug_18_12:01:10_2023"
EPISODE_ID = "TESTLab+84bd5053+2023-08-18-12h-01m-10s"
SERIALS = {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
ROLE_OF = {serial: role for role, serial in SERIALS.items()}
WIDTH, HEIGHT = 1280, 720
K = np.array([[522.0, 0.0, 639.2], [0.0, 522.0, 357.8], [0.0, 0.0, 1.0]])
# Wrist camera (left lens) on the flange: beside the gripper, looking along the fingers.
WRIST_OFFSET = np.array([0.0, -0.09, 0.02, -0.35, 0.0, 0.0])
STEP_MM = 1.0


def look_at_pose6(eye, target) -> list[float]:
    """DROID pose [x, y, z, rx, ry, rz] of an OpenCV camera at ``eye`` looking at ``target``."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    rotation = np.column_stack([right, np.cross(forward, right), forward])
    return [*eye, *Rotation.from_matrix(rotation).as_euler("xyz")]


EXT_POSES = {"ext1": look_at_pose6([0.05, -0.85, 0.65], [0.55, 0.0, 0.25]),
             "ext2": look_at_pose6([0.15, 0.8, 0.55], [0.55, 0.0, 0.25])}


def flange_pose6(t: np.ndarray) -> np.ndarray:
    """A ~0.3 m reach with the flange pointing down (roll near pi) and turning."""
    pose = np.zeros((t.size, 6))
    pose[:, 0] = 0.45 + 0.15 * t
    pose[:, 1] = 0.12 * np.sin(2.0 * np.pi * t)
    pose[:, 2] = 0.45 - 0.15 * t
    rotation = (Rotation.from_euler("xyz", [np.pi, 0.0, 0.0])
                * Rotation.from_euler("xyz", np.stack([0.1 * np.sin(3 * t), 0.2 * t, 0.8 * t], 1)))
    pose[:, 3:] = rotation.as_euler("xyz")
    return pose


def joints_reaching(flange: np.ndarray) -> np.ndarray:
    """(T, 7) Panda joint angles within the URDF's limits whose forward kinematics is each of the
    (T, 4, 4) flange poses, as DROID's cartesian_position is the controller's forward kinematics of
    its joint_positions (least squares from DROID's home pose, each step from the last)."""
    robot = robot_model()
    limits = [robot.joint(name).limit for name in arm_joint_names()]
    bounds = (np.array([limit.lower for limit in limits]), np.array([limit.upper for limit in limits]))
    joints = np.array([0.0, -0.13, 0.0, -2.25, 0.0, 2.12, 0.785])
    solved = []
    for target in flange:
        def residual(q: np.ndarray, target: np.ndarray = target) -> np.ndarray:
            pose = panda_flange_poses(q[None])[0]
            return np.concatenate([pose[:3, 3] - target[:3, 3], 0.1 * (pose[:3, :3] - target[:3, :3]).ravel()])
        joints = least_squares(residual, joints, bounds=bounds, xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        solved.append(joints)
    solved = np.array(solved)
    assert np.abs(panda_flange_poses(solved) - flange).max() < 1e-9
    return solved


@dataclass
class EpisodeSpec:
    """What to write; tests change fields to build bad inputs."""

    num_frames: int = 45
    episode_id: str = EPISODE_ID
    still: bool = False
    gripper: np.ndarray | None = None
    video_frames: dict[str, int] = field(default_factory=dict)   # serial -> frames, default T
    drop_h5: tuple[str, ...] = ()
    nan_step: int | None = None
    cam2base: dict | None = None                                  # whole file contents
    metadata_extra: dict = field(default_factory=dict)
    intrinsics_for: tuple[str, ...] = tuple(SERIALS.values())
    control_period_ms: float = 1000.0 / 15.0


@dataclass
class Built:
    config_path: Path
    root: Path
    output_dir: Path
    spec: EpisodeSpec

    def config(self, *overrides: str):
        return load_config([self.config_path], list(overrides))

    def run(self, *overrides: str) -> dict:
        config = self.config(*overrides)
        episode = build_index(config.droid_root, config.index_path, rescan=True).get(self.spec.episode_id)
        return generate_tracks(config, episode, self.output_dir)

    def tracks(self) -> dict[str, np.ndarray]:
        with np.load(self.output_dir / "tracks.npz", allow_pickle=False) as data:
            return dict(data)

    def extrinsics(self) -> dict[str, np.ndarray]:
        with np.load(self.output_dir / "extrinsics.npz", allow_pickle=False) as data:
            return dict(data)

    def quality(self) -> dict:
        return json.loads((self.output_dir / "quality.json").read_text())

    @property
    def folder(self) -> Path:
        return self.root / "droid_raw" / LAB / "success" / DATE / FOLDER

    def h5(self, key: str) -> np.ndarray:
        with h5py.File(self.folder / "trajectory.h5", "r") as h5:
            return h5[key][()]

    def set_h5(self, key: str, value: np.ndarray) -> None:
        with h5py.File(self.folder / "trajectory.h5", "r+") as h5:
            del h5[key]
            h5.create_dataset(key, data=value)


def write_video(path: Path, frames: int, pts: list[int] | None = None) -> None:
    """``frames`` black frames at 15 Hz; ``pts`` numbers them (in 1/15 s) where given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=15)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], Fraction(1, 15)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def build_episode(tmp_path: Path, spec: EpisodeSpec | None = None) -> Built:
    """A DROID-layout episode, its cam2base file, intrinsics.json files and a config."""
    spec = spec or EpisodeSpec()
    T = spec.num_frames
    folder = tmp_path / "droid_raw" / LAB / "success" / DATE / FOLDER
    folder.mkdir(parents=True)
    t = np.zeros(T) if spec.still else np.linspace(0.0, 1.0, T)
    cartesian = flange_pose6(t)
    gripper = spec.gripper if spec.gripper is not None else 0.8 * np.clip(1.5 * t - 0.25, 0, 1)
    flange = np.array([np.eye(4)] * T)
    flange[:, :3, :3] = Rotation.from_euler("xyz", cartesian[:, 3:]).as_matrix()
    flange[:, :3, 3] = cartesian[:, :3]
    offset = np.eye(4)
    offset[:3, :3] = Rotation.from_euler("xyz", WRIST_OFFSET[3:]).as_matrix()
    offset[:3, 3] = WRIST_OFFSET[:3]
    wrist_world = flange @ offset
    wrist_pose6 = np.concatenate([wrist_world[:, :3, 3],
                                  Rotation.from_matrix(wrist_world[:, :3, :3]).as_euler("xyz")], 1)
    if spec.nan_step is not None:
        cartesian[spec.nan_step, 2] = np.nan
    rng = np.random.default_rng(0)
    stamps = 1.692e12 + np.cumsum(spec.control_period_ms + rng.normal(0, 2.0, T))
    datasets = {
        "observation/robot_state/cartesian_position": cartesian,
        "observation/robot_state/gripper_position": gripper,
        "observation/robot_state/joint_positions": joints_reaching(flange),
        f"observation/camera_extrinsics/{SERIALS['wrist']}_left": wrist_pose6,
        f"observation/camera_extrinsics/{SERIALS['wrist']}_left_gripper_offset": np.tile(WRIST_OFFSET, (T, 1)),
        f"observation/camera_extrinsics/{SERIALS['ext1']}_left": np.tile(EXT_POSES["ext1"], (T, 1)),
        f"observation/camera_extrinsics/{SERIALS['ext2']}_left": np.tile(EXT_POSES["ext2"], (T, 1)),
        f"observation/camera_type/{SERIALS['wrist']}": np.zeros(T, np.int64),
        f"observation/camera_type/{SERIALS['ext1']}": np.ones(T, np.int64),
        f"observation/camera_type/{SERIALS['ext2']}": np.ones(T, np.int64),
        "observation/timestamp/control/step_start": stamps,
        "observation/timestamp/control/step_end": stamps + 60.0,
    }
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        for key, value in datasets.items():
            if key not in spec.drop_h5:
                h5.create_dataset(key, data=value)
    metadata = {"uuid": spec.episode_id, "lab": LAB, "user_id": "84bd5053", "date": DATE,
                "success": True, "current_task": "put the cup in the sink", "trajectory_length": T,
                **{f"{role}_cam_serial": serial for role, serial in SERIALS.items()},
                "ext1_cam_extrinsics": [0.0, -0.8, 0.6, -2.0, 0.0, 0.0],
                "ext2_cam_extrinsics": EXT_POSES["ext2"],
                "wrist_cam_extrinsics": wrist_pose6[0].tolist(), **spec.metadata_extra}
    (folder / f"metadata_{spec.episode_id}.json").write_text(json.dumps(metadata))
    for serial in SERIALS.values():
        write_video(folder / "recordings" / "MP4" / f"{serial}.mp4", spec.video_frames.get(serial, T))
    cam2base = spec.cam2base if spec.cam2base is not None else {
        spec.episode_id: {SERIALS["ext1"]: EXT_POSES["ext1"], "quality": 0.93},
        "TESTLab+84bd5053+2023-08-18-12h-01m-11s": {SERIALS["ext1"]: [0, 0, 1, 0, 0, 0]}}
    (tmp_path / "cam2base.json").write_text(json.dumps(cam2base))
    output_dir = tmp_path / "out" / LAB / "success" / DATE / FOLDER
    for serial in spec.intrinsics_for:
        record = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "K": K.tolist(),
                  "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "k3": 0.0, "width": WIDTH,
                  "height": HEIGHT, "rectified": True, "source": "zed_conf"}
        path = output_dir / "recordings" / serial / "intrinsics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"droid_root: droid_raw\noutput_root: out\nrun_root: runs\n"
                           f"cam2base_extrinsics_path: cam2base.json\n"
                           f"normalized_step_size_mm: {STEP_MM}\n")
    return Built(config_path, tmp_path, output_dir, spec)


@pytest.fixture(scope="module")
def episode(tmp_path_factory) -> Built:
    built = build_episode(tmp_path_factory.mktemp("episode"))
    built.run()
    return built


@pytest.fixture(scope="module")
def urdf() -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(REFERENCE_DATA / "panda_robotiq.urdf"),
                              load_meshes=False, load_collision_meshes=False)


def pose6_reference(pose6: np.ndarray) -> np.ndarray:
    out = np.array([np.eye(4)] * len(pose6))
    out[:, :3, :3] = Rotation.from_euler("xyz", pose6[:, 3:]).as_matrix()
    out[:, :3, 3] = pose6[:, :3]
    return out


def urdf_link_in_flange(urdf: yourdfpy.URDF, link: str, finger_angle: float) -> np.ndarray:
    cfg = dict.fromkeys(urdf.actuated_joint_names, 0.0)
    cfg["finger_joint"] = finger_angle
    urdf.update_cfg(cfg)
    return urdf.get_transform(link, "panda_link8")


# ---------------------------------------------------------------- contents and geometry

def test_outputs_load_without_pickle_with_documented_shapes(episode: Built) -> None:
    tracks = episode.tracks()
    T, N, M = 45, 480, int(tracks["num_normalized_steps"])
    shapes = {"tracks_3d": (T, N, 3), "contact_points_local": (N, 3), "gripper_poses": (T, 4, 4),
              "gripper_positions": (T,), "cartesian_positions": (T, 6), "contact_centroids": (T, 3),
              "contact_frames": (T, 4, 4), "left_contact_frames": (T, 4, 4),
              "right_contact_frames": (T, 4, 4), "normalized_tracks_3d": (M, N, 3),
              "normalized_centroids": (M, 3), "normalized_frames": (M, 4, 4),
              "normalized_left_frames": (M, 4, 4), "normalized_right_frames": (M, 4, 4),
              "cumulative_distance_mm": (T,), "frame_to_normalized_idx": (T,),
              "camera_serials": (3,), "tracks_2d_status": (3,), "keep": (T,)}
    for serial in SERIALS.values():
        shapes.update({f"tracks_2d_{ROLE_OF[serial]}": (T, N, 2), f"visibility_{ROLE_OF[serial]}": (T, N),
                       f"intrinsics_{ROLE_OF[serial]}": (3, 3), f"image_size_{ROLE_OF[serial]}": (2,)})
    for key, shape in shapes.items():
        assert tracks[key].shape == shape, key
        if tracks[key].dtype.kind == "f":
            assert np.isfinite(tracks[key]).all(), key
    assert tracks["tracks_3d"].dtype == np.float32
    assert tracks["visibility_ext1"].dtype == bool
    assert tracks["camera_serials"].tolist() == list(SERIALS.values())
    assert tracks["tracks_2d_status"].tolist() == ["ok"] * 3
    assert int(tracks["num_frames"]) == T and int(tracks["num_points_per_finger"]) == N // 2
    assert int(tracks["schema_version"]) == SCHEMA_VERSION
    assert float(tracks["normalized_step_size_mm"]) == STEP_MM
    assert tracks["image_size_wrist"].tolist() == [WIDTH, HEIGHT]
    np.testing.assert_array_equal(tracks["intrinsics_ext2"], K)
    np.testing.assert_array_equal(tracks["cartesian_positions"],
                                  episode.h5("observation/robot_state/cartesian_position"))


def test_fps_is_measured_from_control_timestamps(episode: Built) -> None:
    # the fixture's steps are 66.67 ms with 2 ms jitter: 15 Hz
    assert float(episode.tracks()["fps"]) == pytest.approx(15.0, abs=0.1)
    assert episode.quality()["fps_source"] == "observation/timestamp/control/step_start"


def test_tracks_3d_follow_the_urdf_kinematics(episode: Built, urdf: yourdfpy.URDF) -> None:
    tracks = episode.tracks()
    flange = pose6_reference(tracks["cartesian_positions"])
    local = tracks["contact_points_local"]
    angles = GripperModel.load().finger_angle(tracks["gripper_positions"])
    mount = urdf.get_transform("robotiq_85_base_link", "panda_link8")
    np.testing.assert_allclose(tracks["gripper_poses"], flange @ mount, atol=1e-6)
    for t in (0, 17, 44):
        left = flange[t] @ urdf_link_in_flange(urdf, "left_inner_finger", angles[t])
        right = flange[t] @ urdf_link_in_flange(urdf, "right_inner_finger", angles[t])
        expected = np.concatenate([local[:240] @ left[:3, :3].T + left[:3, 3],
                                   local[240:] @ right[:3, :3].T + right[:3, 3]])
        np.testing.assert_allclose(tracks["tracks_3d"][t], expected, atol=1e-6)
        np.testing.assert_allclose(tracks["left_contact_frames"][t][:3, :3], left[:3, :3], atol=1e-6)
        np.testing.assert_allclose(tracks["right_contact_frames"][t][:3, :3], right[:3, :3], atol=1e-6)


def test_contact_frames_and_centroids(episode: Built) -> None:
    tracks = episode.tracks()
    points = tracks["tracks_3d"].astype(np.float64)
    np.testing.assert_allclose(tracks["contact_centroids"], points.mean(1), atol=1e-7)
    np.testing.assert_allclose(tracks["contact_frames"][:, :3, :3], tracks["gripper_poses"][:, :3, :3])
    np.testing.assert_allclose(tracks["contact_frames"][:, :3, 3], tracks["contact_centroids"], atol=1e-7)
    np.testing.assert_allclose(tracks["left_contact_frames"][:, :3, 3], points[:, :240].mean(1), atol=1e-7)
    np.testing.assert_allclose(tracks["right_contact_frames"][:, :3, 3], points[:, 240:].mean(1), atol=1e-7)
    np.testing.assert_array_equal(tracks["contact_frames"][:, 3], np.tile([0, 0, 0, 1], (45, 1)))


def in_gripper_frame(tracks: dict[str, np.ndarray]) -> np.ndarray:
    poses = tracks["gripper_poses"].astype(np.float64)
    points = tracks["tracks_3d"].astype(np.float64)
    return np.einsum("tji,tnj->tni", poses[:, :3, :3], points - poses[:, None, :3, 3])


def test_pads_are_mirror_images_about_the_mid_plane(episode: Built, urdf: yourdfpy.URDF) -> None:
    """Mirrored left pad == right pad, up to the URDF's own left/right asymmetry (~0.6 mm: its two
    inner-finger joint origins differ), which the reference computes from the URDF."""
    tracks = episode.tracks()
    local = in_gripper_frame(tracks)
    left, right = local[:, :240], local[:, 240:]
    across = np.abs(left.mean(1) - right.mean(1)).mean(0)
    axis = int(np.argmax(across))
    assert across[axis] > 100 * np.delete(across, axis).max()
    reflect = np.ones(3)
    reflect[axis] = -1.0
    angles = GripperModel.load().finger_angle(tracks["gripper_positions"])
    for t in (0, 20, 44):
        urdf_left = urdf_link_in_flange(urdf, "left_inner_finger", angles[t])
        urdf_right = urdf_link_in_flange(urdf, "right_inner_finger", angles[t])
        mount = urdf.get_transform("robotiq_85_base_link", "panda_link8")
        left_origin = (np.linalg.inv(mount) @ urdf_left)[:3, 3]
        right_origin = (np.linalg.inv(mount) @ urdf_right)[:3, 3]
        asymmetry = reflect * left_origin - right_origin
        assert np.linalg.norm(asymmetry) < 1e-3
        np.testing.assert_allclose(left[t] * reflect - right[t], np.broadcast_to(asymmetry, (240, 3)),
                                   atol=2e-6)


def test_pad_separation_falls_monotonically_with_gripper_position(tmp_path: Path) -> None:
    spec = EpisodeSpec(num_frames=30, gripper=np.linspace(0.0, 1.0, 30))
    built = build_episode(tmp_path, spec)
    built.run()
    tracks = built.tracks()
    points = tracks["tracks_3d"].astype(np.float64)
    separation = np.linalg.norm(points[:, :240].mean(1) - points[:, 240:].mean(1), axis=1)
    assert np.all(np.diff(separation) < 0)
    assert 0.070 < separation[0] < 0.090      # ~78 mm apart when open
    assert separation[-1] < 1e-3              # pads meet when closed
    quality = built.quality()
    assert quality["gripper_position_range"] == [0.0, 1.0]


def test_local_points_identical_across_episodes(episode: Built, tmp_path: Path) -> None:
    other = build_episode(tmp_path, EpisodeSpec(num_frames=20, gripper=np.full(20, 0.3)))
    other.run()
    np.testing.assert_array_equal(other.tracks()["contact_points_local"],
                                  episode.tracks()["contact_points_local"])


# ---------------------------------------------------------------- cameras

def test_2d_tracks_equal_cv2_project_points(episode: Built) -> None:
    tracks, extrinsics = episode.tracks(), episode.extrinsics()
    points = tracks["tracks_3d"].astype(np.float64)
    for serial in tracks["camera_serials"]:
        poses = extrinsics[f"T_base_cam_{ROLE_OF[serial]}"]
        poses = np.broadcast_to(poses, (45, 4, 4))
        K_saved = tracks[f"intrinsics_{ROLE_OF[serial]}"]
        for t in range(45):
            camera_from_base = np.linalg.inv(poses[t])
            rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
            expected, _ = cv2.projectPoints(points[t], rvec, camera_from_base[:3, 3], K_saved,
                                            tracks[f"distortion_{ROLE_OF[serial]}"])
            np.testing.assert_allclose(tracks[f"tracks_2d_{ROLE_OF[serial]}"][t], expected[:, 0], atol=1e-3)


def test_visibility_is_in_front_beyond_min_depth_and_inside_the_image(episode: Built) -> None:
    tracks, extrinsics = episode.tracks(), episode.extrinsics()
    points = tracks["tracks_3d"].astype(np.float64)
    min_depth = {"wrist": 0.01, "ext1": 0.10, "ext2": 0.10}
    for role, serial in SERIALS.items():
        poses = np.broadcast_to(extrinsics[f"T_base_cam_{ROLE_OF[serial]}"], (45, 4, 4))
        depth = np.einsum("tj,tnj->tn", np.linalg.inv(poses)[:, 2, :3], points) + np.linalg.inv(poses)[:, None, 2, 3]
        uv = tracks[f"tracks_2d_{ROLE_OF[serial]}"]
        expected = ((depth > min_depth[role]) & (uv[..., 0] >= -0.5) & (uv[..., 0] < WIDTH - 0.5)
                    & (uv[..., 1] >= -0.5) & (uv[..., 1] < HEIGHT - 0.5))
        np.testing.assert_array_equal(tracks[f"visibility_{ROLE_OF[serial]}"], expected)
        assert expected.mean() > 0.5, role       # the fixture's cameras all see the gripper
        assert episode.quality()["visible_fraction"][ROLE_OF[serial]] == pytest.approx(expected.mean())


def test_camera_behind_or_beside_the_gripper_sees_nothing(tmp_path: Path) -> None:
    spec = EpisodeSpec(num_frames=10, cam2base={EPISODE_ID: {
        SERIALS["ext1"]: look_at_pose6([0.5, 0.0, 1.2], [0.5, 0.1, 2.5]),         # above, facing up
        SERIALS["ext2"]: look_at_pose6([0.5, -1.0, 0.3], [1.5, -1.0, 0.3])}})     # beside, facing +x
    built = build_episode(tmp_path, spec)
    built.run()
    tracks = built.tracks()
    assert not tracks["visibility_ext1"].any()
    assert not tracks["visibility_ext2"].any()
    assert np.isfinite(tracks["tracks_2d_ext1"]).all()
    assert any("no contact point visible" in w for w in built.quality()["warnings"])


def test_wrist_pose_is_the_h5_extrinsics_and_exterior_poses_their_source(episode: Built) -> None:
    extrinsics, quality = episode.extrinsics(), episode.quality()
    wrist = SERIALS["wrist"]
    np.testing.assert_allclose(extrinsics[f"T_base_cam_{ROLE_OF[wrist]}"],
                               pose6_reference(episode.h5(f"observation/camera_extrinsics/{wrist}_left")),
                               atol=1e-12)
    assert str(extrinsics["wrist_serial"]) == wrist
    # ext1 from the cam2base entry of this exact id, ext2 (absent there) from the metadata
    np.testing.assert_allclose(extrinsics["T_base_cam_ext1"],
                               pose6_reference(np.array([EXT_POSES["ext1"]]))[0], atol=1e-12)
    np.testing.assert_allclose(extrinsics["T_base_cam_ext2"],
                               pose6_reference(np.array([EXT_POSES["ext2"]]))[0], atol=1e-12)
    sources = quality["calibration"]["cameras"]
    assert sources["ext1"]["source"] == "cam2base:cam2base.json"
    assert sources["ext2"]["source"] == "metadata:ext2_cam_extrinsics"
    assert sources["wrist"]["source"] == f"h5:observation/camera_extrinsics/{wrist}_left"
    # DROID's entry ({<serial>: pose, ...}) by role, its other keys kept as JSON text
    assert quality["calibration"]["cam2base_entry"] == {
        "wrist": None, "ext1": {"serial": SERIALS["ext1"], "pose": EXT_POSES["ext1"], "quality_metric": None,
                                "metric_type": None},
        "ext2": None, "other": json.dumps({"quality": 0.93})}
    assert dict(zip(extrinsics["roles"].tolist(), extrinsics["sources"].tolist())) == {
        s: v["source"] for s, v in sources.items()}
    check = quality["wrist_pose_deviation"]
    assert check["max_translation_mm"] < 1e-6 and check["within_tolerance"] is True


# ---------------------------------------------------------------- normalized flow

def test_normalized_samples_are_k_steps_along_the_centroid_path(episode: Built) -> None:
    tracks = episode.tracks()
    path = tracks["contact_centroids"]
    arc = 1000.0 * np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    np.testing.assert_allclose(tracks["cumulative_distance_mm"], arc, rtol=1e-12)
    samples = tracks["normalized_centroids"]
    M = samples.shape[0]
    assert int(np.floor(arc[-1] / STEP_MM)) + 1 + (arc[-1] % STEP_MM > 1e-9) == M
    for k, point in enumerate(samples):
        seg = np.searchsorted(arc, min(k * STEP_MM, arc[-1]), side="right") - 1
        seg = min(seg, len(arc) - 2)
        along = point - path[seg]
        chord = path[seg + 1] - path[seg]
        assert np.linalg.norm(np.cross(along, chord)) < 1e-12        # lies on that segment
        assert abs(arc[seg] + 1000.0 * np.linalg.norm(along) - min(k * STEP_MM, arc[-1])) < 1e-6
    chords = 1000.0 * np.linalg.norm(np.diff(samples, axis=0), axis=1)
    assert chords.max() <= STEP_MM + 1e-9
    np.testing.assert_allclose(samples[-1], path[-1], atol=1e-12)
    nearest = np.argmin(np.abs(arc[:, None] - np.minimum(np.arange(M) * STEP_MM, arc[-1])), axis=1)
    np.testing.assert_array_equal(tracks["frame_to_normalized_idx"], nearest)
    assert episode.quality()["path_length_mm"] == pytest.approx(arc[-1], rel=1e-12)


def test_normalized_rotations_equal_scipy_slerp(episode: Built) -> None:
    tracks = episode.tracks()
    arc = tracks["cumulative_distance_mm"]
    M = int(tracks["num_normalized_steps"])
    query = np.minimum(np.arange(M) * STEP_MM, arc[-1])
    for key, normalized in (("contact_frames", "normalized_frames"),
                            ("left_contact_frames", "normalized_left_frames"),
                            ("right_contact_frames", "normalized_right_frames")):
        rotations = Rotation.from_matrix(tracks[key][:, :3, :3].astype(np.float64))
        expected = Slerp(arc, rotations)(query).as_matrix()
        np.testing.assert_allclose(tracks[normalized][:, :3, :3], expected, atol=2e-6, err_msg=key)
    np.testing.assert_allclose(tracks["normalized_frames"][:, :3, 3], tracks["normalized_centroids"], atol=1e-7)


def test_normalized_tracks_are_the_urdf_gripper_reposed(episode: Built, urdf: yourdfpy.URDF) -> None:
    """Reference: SciPy Slerp orientation, np.interp centroid and opening, URDF finger poses."""
    tracks = episode.tracks()
    arc = tracks["cumulative_distance_mm"]
    M = int(tracks["num_normalized_steps"])
    query = np.minimum(np.arange(M) * STEP_MM, arc[-1])
    rotations = Slerp(arc, Rotation.from_matrix(tracks["gripper_poses"][:, :3, :3].astype(np.float64)))(query)
    centroids = np.stack([np.interp(query, arc, tracks["contact_centroids"][:, i]) for i in range(3)], 1)
    opening = np.interp(query, arc, tracks["gripper_positions"])
    angles = GripperModel.load().finger_angle(opening)
    mount = urdf.get_transform("robotiq_85_base_link", "panda_link8")
    local = tracks["contact_points_local"]
    for m in np.linspace(0, M - 1, 12).astype(int):
        left = urdf_link_in_flange(urdf, "left_inner_finger", angles[m])
        right = urdf_link_in_flange(urdf, "right_inner_finger", angles[m])
        in_flange = np.concatenate([local[:240] @ left[:3, :3].T + left[:3, 3],
                                    local[240:] @ right[:3, :3].T + right[:3, 3]])
        in_gripper = (in_flange - in_flange.mean(0)) @ mount[:3, :3]
        expected = centroids[m] + rotations[m].apply(in_gripper)
        np.testing.assert_allclose(tracks["normalized_tracks_3d"][m], expected, atol=2e-6)
    np.testing.assert_allclose(tracks["normalized_gripper_positions"], opening, atol=1e-12)


def test_still_episode_gives_one_normalized_sample(tmp_path: Path) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=12, still=True, gripper=np.full(12, 0.2)))
    summary = built.run()
    tracks = built.tracks()
    assert summary["num_normalized_steps"] == 1
    assert tracks["normalized_tracks_3d"].shape == (1, 480, 3)
    np.testing.assert_allclose(tracks["normalized_tracks_3d"][0], tracks["tracks_3d"][-1], atol=1e-6)
    np.testing.assert_array_equal(tracks["frame_to_normalized_idx"], np.zeros(12))
    assert built.quality()["path_length_mm"] == 0.0


# ---------------------------------------------------------------- bad input

def assert_fails(built: Built, *phrases: str) -> None:
    with pytest.raises(EpisodeError) as info:
        built.run()
    error = info.value
    assert error.episode_id == built.spec.episode_id and error.step == "tracks"
    for phrase in phrases:
        assert phrase in error.cause, (phrase, error.cause)
    assert str(error).startswith(f"episode {built.spec.episode_id}: step tracks: ")
    for name in ("tracks.npz", "extrinsics.npz", "quality.json"):
        assert not (built.output_dir / name).exists(), name


@pytest.mark.parametrize("spec, phrases", [
    (EpisodeSpec(num_frames=10, nan_step=4),
     ("NaN or inf", "observation/robot_state/cartesian_position", "1 of 10 steps: 4")),
    (EpisodeSpec(num_frames=10, drop_h5=("observation/robot_state/gripper_position",)),
     ("missing dataset observation/robot_state/gripper_position",)),
    (EpisodeSpec(num_frames=10, drop_h5=(f"observation/camera_extrinsics/{SERIALS['wrist']}_left",)),
     (f"missing dataset observation/camera_extrinsics/{SERIALS['wrist']}_left",)),
    (EpisodeSpec(num_frames=10, video_frames={SERIALS["ext2"]: 13}),
     (f"{SERIALS['ext2']}.mp4 has 13 frames", "10 steps")),
    (EpisodeSpec(num_frames=10, metadata_extra={"trajectory_length": 12}),
     ("trajectory_length 12", "10 steps")),
    (EpisodeSpec(num_frames=10, cam2base={EPISODE_ID: {"99999999": [0, 0, 1, 0, 0, 0]}}),
     ("99999999", "another episode's calibration")),
    (EpisodeSpec(num_frames=10, cam2base={EPISODE_ID: {
        "uuid": "TESTLab+84bd5053+2023-08-18-12h-01m-11s", SERIALS["ext1"]: EXT_POSES["ext1"]}}),
     ("uuid='TESTLab+84bd5053+2023-08-18-12h-01m-11s'", "another episode's calibration")),
    (EpisodeSpec(num_frames=10, cam2base={EPISODE_ID: {SERIALS["ext1"]: [0, 0, "x", 0, 0, 0]}}),
     (f"cam2base entry {SERIALS['ext1']} is not six finite numbers",)),
    (EpisodeSpec(num_frames=10, intrinsics_for=(SERIALS["wrist"], SERIALS["ext1"])),
     (f"ext2 camera {SERIALS['ext2']} has no intrinsics",)),
    (EpisodeSpec(num_frames=10, metadata_extra={"wrist_cam_serial": SERIALS["ext1"],
                                                "ext1_cam_serial": SERIALS["wrist"]}),
     ("metadata names camera",)),
], ids=["nan-pose", "missing-gripper", "missing-wrist-extrinsics", "video-frame-count",
        "metadata-length", "foreign-camera-entry", "entry-of-another-episode", "bad-entry-value",
        "missing-intrinsics", "camera-roles-swapped"])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path: Path, spec: EpisodeSpec, phrases) -> None:
    assert_fails(build_episode(tmp_path, spec), *phrases)


def test_empty_trajectory_is_never_written(tmp_path: Path) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10, metadata_extra={"trajectory_length": None}))
    with h5py.File(built.root / "droid_raw" / LAB / "success" / DATE / FOLDER / "trajectory.h5", "r+") as h5:
        for key in ("observation/robot_state/cartesian_position", "observation/robot_state/gripper_position"):
            shape = (0, *h5[key].shape[1:])
            del h5[key]
            h5.create_dataset(key, shape=shape, dtype=np.float64)
    assert_fails(built, "observation/robot_state/cartesian_position has no steps")


def test_fps_from_config_when_timestamps_are_missing(tmp_path: Path) -> None:
    spec = EpisodeSpec(num_frames=10, drop_h5=("observation/timestamp/control/step_start",
                                               "observation/timestamp/control/step_end"))
    built = build_episode(tmp_path, spec)
    assert_fails(built, "no control timestamps")
    built.run("fps=15")
    assert float(built.tracks()["fps"]) == 15.0 and built.quality()["fps_source"] == "config"


def test_partial_id_match_is_never_used(tmp_path: Path) -> None:
    spec = EpisodeSpec(num_frames=10, cam2base={
        EPISODE_ID[:-1]: {SERIALS["ext1"]: [0, 0, 1, 0, 0, 0]},
        EPISODE_ID + "0": {SERIALS["ext1"]: [0, 0, 1, 0, 0, 0]},
        EPISODE_ID.lower(): {SERIALS["ext1"]: [0, 0, 1, 0, 0, 0]}})
    built = build_episode(tmp_path, spec)
    built.run()
    quality = built.quality()
    assert quality["calibration"]["cam2base_entry"] is None
    assert quality["calibration"]["cameras"]["ext1"]["source"] == "metadata:ext1_cam_extrinsics"
    np.testing.assert_allclose(built.extrinsics()["T_base_cam_ext1"],
                               pose6_reference(np.array([[0.0, -0.8, 0.6, -2.0, 0.0, 0.0]]))[0], atol=1e-12)


def test_missing_intrinsics_allowed_is_listed_not_dropped(tmp_path: Path) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10, intrinsics_for=(SERIALS["ext1"],)))
    built.run("allow_missing_intrinsics=true")
    tracks, quality = built.tracks(), built.quality()
    assert tracks["tracks_2d_status"].tolist() == ["no_intrinsics", "ok", "no_intrinsics"]
    assert np.isnan(tracks["tracks_2d_ext2"]).all() and not tracks["visibility_ext2"].any()
    assert (tracks["occlusion_ext2"] == 3).all() and tracks["image_size_ext2"].tolist() == [0, 0]
    assert quality["cameras_without_intrinsics"] == ["wrist", "ext2"]
    assert sum("no intrinsics" in w for w in quality["warnings"]) == 2


def test_idle_mask_without_usable_joint_velocities_is_all_true_and_flagged(tmp_path: Path) -> None:
    """No action/joint_velocity (older recorders): keep all true, not computed, no warning. One that
    is not finite: the same with a warning naming it; the rest of the episode is unaffected."""
    built = build_episode(tmp_path, EpisodeSpec(num_frames=20))
    built.run()
    tracks, quality = built.tracks(), built.quality()
    assert tracks["keep"].all() and not tracks["keep_computed"]
    assert quality["kept_fraction"] == 1.0 and quality["keep_computed"] is False
    assert not any("joint_velocity" in w for w in quality["warnings"])
    velocity = np.zeros((20, 7))     # every step after the first idle: all dropped when computed
    velocity[4, 2] = np.nan
    with h5py.File(built.root / "droid_raw" / LAB / "success" / DATE / FOLDER / "trajectory.h5", "r+") as h5:
        h5["action/joint_velocity"] = velocity
    built.run()
    assert built.tracks()["keep"].all() and not built.tracks()["keep_computed"]
    assert any("action/joint_velocity" in w and "idle steps not computed" in w for w in built.quality()["warnings"])
    velocity[4, 2] = 0.0
    with h5py.File(built.root / "droid_raw" / LAB / "success" / DATE / FOLDER / "trajectory.h5", "r+") as h5:
        h5["action/joint_velocity"][...] = velocity
    built.run()
    assert not built.tracks()["keep"].any() and built.tracks()["keep_computed"]
    assert built.quality()["kept_fraction"] == 0.0


def test_episode_without_a_camera_keeps_that_role_s_keys_filled(tmp_path: Path) -> None:
    """An episode whose metadata names no ext2 camera and that has no recording of one (so none can
    be recovered from trajectory.h5): the ext2 keys are there, filled as the schema documents, its
    serial is "" and its pose NaN; the loader and the verifier accept it."""
    from droid_pipeline.outputs.loader import read_episode_dir
    from droid_pipeline.outputs.verify import verify_episode

    built = build_episode(tmp_path, EpisodeSpec(num_frames=10, metadata_extra={"ext2_cam_serial": None},
                                                intrinsics_for=(SERIALS["wrist"], SERIALS["ext1"])))
    for video in (built.folder / "recordings" / "MP4").glob(f"{SERIALS['ext2']}*.mp4"):
        video.unlink()
    built.run()
    tracks, extrinsics, quality = built.tracks(), built.extrinsics(), built.quality()
    assert tracks["camera_serials"].tolist() == [SERIALS["wrist"], SERIALS["ext1"], ""]
    assert tracks["tracks_2d_status"].tolist() == ["ok", "ok", "no_camera"]
    assert np.isnan(tracks["tracks_2d_ext2"]).all() and tracks["tracks_2d_ext2"].shape == (10, 480, 2)
    assert not tracks["visibility_ext2"].any() and (tracks["occlusion_ext2"] == 3).all()
    assert np.isnan(extrinsics["T_base_cam_ext2"]).all() and extrinsics["serials"].tolist()[2] == ""
    assert quality["episode"]["serials"] == {"wrist": SERIALS["wrist"], "ext1": SERIALS["ext1"], "ext2": None}
    assert quality["visible_fraction"]["ext2"] is None and quality["calibration"]["cameras"]["ext2"] is None
    data = read_episode_dir(built.output_dir)
    assert list(data.cameras) == [SERIALS["wrist"], SERIALS["ext1"]]
    report = verify_episode(built.output_dir)
    assert report.status["contract"] == report.status["values"] == report.status["2d"] == "ok", report.problems


# ---------------------------------------------------------------- quality and command line

def test_quality_json_reports_provenance_and_checks(episode: Built) -> None:
    quality = episode.quality()
    assert quality["schema_version"] == SCHEMA_VERSION
    assert quality["calibration"]["cam2base_file"] == "cam2base.json"
    assert quality["episode"]["episode_id"] == EPISODE_ID
    assert quality["episode"]["relative_path"] == f"{LAB}/success/{DATE}/{FOLDER}"
    assert quality["metadata"]["current_task"] == "put the cup in the sink"
    assert quality["cameras_with_2d_tracks"] == list(SERIALS)
    assert quality["cameras_without_intrinsics"] == []
    assert quality["video_frames"] == dict.fromkeys(SERIALS, 45)
    assert {s: v["source"] for s, v in quality["intrinsics"].items()} == dict.fromkeys(SERIALS, "zed_conf")
    assert quality["gripper_position_range"] == [0.0, 0.8]
    assert quality["num_normalized_steps"] == int(episode.tracks()["num_normalized_steps"])
    assert quality["warnings"] == [f"cam2base entry lacks ext2 camera {SERIALS['ext2']}: "
                                   "used metadata ext2_cam_extrinsics"]


def test_wrist_deviation_beyond_tolerance_is_a_warning(tmp_path: Path) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10))
    with h5py.File(built.root / "droid_raw" / LAB / "success" / DATE / FOLDER / "trajectory.h5", "r+") as h5:
        h5[f"observation/camera_extrinsics/{SERIALS['wrist']}_left"][6, 0] += 0.012
    built.run()
    check = built.quality()["wrist_pose_deviation"]
    assert check["max_translation_mm"] == pytest.approx(12.0, abs=1e-6)
    assert check["worst_step"] == 6 and check["within_tolerance"] is False
    assert any("12.00 mm at step 6" in w for w in built.quality()["warnings"])


def test_command_line_writes_outputs_and_help_names_every_key(episode: Built, tmp_path: Path) -> None:
    script = REPO_ROOT / "generate_tracks_and_metadata.py"
    out = tmp_path / "cli_out"
    for serial in SERIALS.values():
        (out / "recordings" / serial).mkdir(parents=True)
        (out / "recordings" / serial / "intrinsics.json").write_bytes(
            (episode.output_dir / "recordings" / serial / "intrinsics.json").read_bytes())
    done = subprocess.run([sys.executable, str(script), "--config", str(episode.config_path),
                           "--episode_id", EPISODE_ID, "--output-dir", str(out),
                           "--set", "num_track_points=64"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_points"] == 64
    with np.load(out / "tracks.npz", allow_pickle=False) as data:
        keys = set(data.files)
        assert data["tracks_3d"].shape == (45, 64, 3)
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    for key in keys:
        generic = key
        for role in SERIALS:
            generic = generic.replace(f"_{role}", "_<role>")
        assert generic in help_text, generic
    for name in ("extrinsics.npz", "quality.json", "T_base_cam_<role>", "allow_pickle=False"):
        assert name in help_text
    failed = subprocess.run([sys.executable, str(script), "--config", str(episode.config_path),
                             "--episode_id", EPISODE_ID + "x"], capture_output=True, text=True, check=False)
    assert failed.returncode == 1
    assert f"episode {EPISODE_ID}x: step tracks: unknown episode id" in failed.stderr


# ---------------------------------------------------------------- video frame counts

def expected_visibility(built: Built, serial: str, role: str) -> np.ndarray:
    """In front beyond min_depth and inside the image (the masks' geometry, computed here)."""
    tracks, extrinsics = built.tracks(), built.extrinsics()
    points = tracks["tracks_3d"].astype(np.float64)
    T = points.shape[0]
    inverse = np.linalg.inv(np.broadcast_to(extrinsics[f"T_base_cam_{ROLE_OF[serial]}"], (T, 4, 4)))
    depth = np.einsum("tj,tnj->tn", inverse[:, 2, :3], points) + inverse[:, None, 2, 3]
    uv = tracks[f"tracks_2d_{ROLE_OF[serial]}"]
    return ((depth > (0.01 if role == "wrist" else 0.10)) & (uv[..., 0] >= -0.5) & (uv[..., 0] < WIDTH - 0.5)
            & (uv[..., 1] >= -0.5) & (uv[..., 1] < HEIGHT - 0.5))


def alignment(file: str, count: int, missing: list[int], extra: int) -> dict:
    return {"file": file, "frame_count": count, "steps_without_frame": missing, "extra_frames": extra,
            "frames_aligned": not missing and not extra}


def test_mp4_one_frame_short_completes_with_the_missing_step_invisible(tmp_path: Path) -> None:
    ext1 = SERIALS["ext1"]
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10, video_frames={ext1: 9}))
    built.run()
    tracks, quality = built.tracks(), built.quality()
    seen = tracks[f"visibility_{ROLE_OF[ext1]}"]
    expected = expected_visibility(built, ext1, "ext1")
    assert expected[9].any() and not seen[9].any()
    np.testing.assert_array_equal(seen[:9], expected[:9])
    np.testing.assert_array_equal(tracks["visibility_ext2"],
                                  expected_visibility(built, SERIALS["ext2"], "ext2"))
    assert quality["video_frames"]["ext1"] == 9
    assert quality["video_alignment"]["ext1"] == alignment(f"{ext1}.mp4", 9, [9], 0)
    assert quality["video_alignment"]["wrist"] == alignment(f"{SERIALS['wrist']}.mp4", 10, [], 0)
    assert quality["visible_fraction"]["ext1"] == pytest.approx(seen.mean())
    assert f"ext1 camera {ext1}: {ext1}.mp4 has 9 frames but trajectory.h5 has 10 steps: no frame for step(s) 9, " \
           "invisible there" in quality["warnings"]


def test_mp4_one_frame_long_completes_with_the_extra_frame_ignored(tmp_path: Path) -> None:
    ext2 = SERIALS["ext2"]
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10, video_frames={ext2: 11}))
    built.run()
    np.testing.assert_array_equal(built.tracks()["visibility_ext2"], expected_visibility(built, ext2, "ext2"))
    assert built.quality()["video_alignment"]["ext2"] == alignment(f"{ext2}.mp4", 11, [], 1)
    assert any("1 frame(s) beyond the last step ignored" in w for w in built.quality()["warnings"])


def test_frame_lost_mid_stream_is_that_step_by_the_timestamps(tmp_path: Path) -> None:
    wrist = SERIALS["wrist"]
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10))
    write_video(built.folder / "recordings" / "MP4" / f"{wrist}.mp4", 9, pts=[0, 1, 2, 3, 5, 6, 7, 8, 9])
    built.run()
    seen, expected = built.tracks()[f"visibility_{ROLE_OF[wrist]}"], expected_visibility(built, wrist, "wrist")
    assert expected[4].any() and not seen[4].any()
    np.testing.assert_array_equal(np.delete(seen, 4, axis=0), np.delete(expected, 4, axis=0))
    assert built.quality()["video_alignment"]["wrist"] == alignment(f"{wrist}.mp4", 9, [4], 0)


def test_frame_count_beyond_tolerance_or_with_action_fail_fails(tmp_path: Path) -> None:
    ext1 = SERIALS["ext1"]
    assert_fails(build_episode(tmp_path / "a", EpisodeSpec(num_frames=10, video_frames={ext1: 7})),
                 f"{ext1}.mp4 has 7 frames but trajectory.h5 has 10 steps, more than "
                 "video_frame_mismatch.tolerance_frames = 2")
    short = build_episode(tmp_path / "b", EpisodeSpec(num_frames=10, video_frames={ext1: 9}))
    with pytest.raises(EpisodeError, match=r"has 9 frames but trajectory.h5 has 10 steps \(video_frame_mismatch."
                                           r"action is fail\)"):
        short.run("video_frame_mismatch.action=fail")
    with pytest.raises(EpisodeError, match="more than video_frame_mismatch.tolerance_frames = 0"):
        short.run("video_frame_mismatch.tolerance_frames=0")
    short.run("video_frame_mismatch.tolerance_frames=1")
    gapped = build_episode(tmp_path / "c", EpisodeSpec(num_frames=10))
    write_video(gapped.folder / "recordings" / "MP4" / f"{ext1}.mp4", 9, pts=[0, 1, 2, 6, 7, 8, 9, 10, 11])
    assert_fails(gapped, "by their timestamps 3 steps have no frame and 2 frames fall outside the steps")


# ---------------------------------------------------------------- camera types

def test_fixed_camera_type_2_is_an_exterior_camera_with_2d_tracks(tmp_path: Path) -> None:
    ext2 = SERIALS["ext2"]
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10))
    built.set_h5(f"observation/camera_type/{ext2}", np.full(10, 2, np.int64))
    built.run()
    tracks, quality = built.tracks(), built.quality()
    assert tracks["tracks_2d_status"].tolist()[2] == "ok" and tracks["camera_serials"][2] == ext2
    poses, points = built.extrinsics()[f"T_base_cam_{ROLE_OF[ext2]}"], tracks["tracks_3d"].astype(np.float64)
    camera_from_base = np.linalg.inv(poses)
    rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
    expected, _ = cv2.projectPoints(points[5], rvec, camera_from_base[:3, 3], K, np.zeros(5))
    np.testing.assert_allclose(tracks[f"tracks_2d_{ROLE_OF[ext2]}"][5], expected[:, 0], atol=1e-3)
    assert tracks[f"visibility_{ROLE_OF[ext2]}"].mean() > 0.5
    assert quality["camera_types"] == {"wrist": "wrist", "ext1": "exterior", "ext2": "fixed"}


@pytest.mark.parametrize("role, values, phrase", [
    ("ext2", [3] * 10, f"camera {SERIALS['ext2']} (ext2) has observation/camera_type/{SERIALS['ext2']} = [3], "
                       "not a DROID camera type"),
    ("wrist", [2] * 10, f"metadata names camera {SERIALS['wrist']} as wrist but "
                        f"observation/camera_type/{SERIALS['wrist']} says [2]"),
    ("ext1", [0] * 10, f"metadata names camera {SERIALS['ext1']} as ext1 but"),
    ("ext1", [1] * 5 + [2] * 5, f"camera {SERIALS['ext1']} (ext1) changes type within the episode"),
], ids=["unknown-value", "wrist-as-fixed", "exterior-as-wrist", "changing"])
def test_camera_types_that_do_not_fit_fail(tmp_path: Path, role: str, values: list[int], phrase: str) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=10))
    built.set_h5(f"observation/camera_type/{SERIALS[role]}", np.array(values, np.int64))
    assert_fails(built, phrase)


# ---------------------------------------------------------------- gripper mount

def urdf_with_mount(tmp_path: Path, xyz: list[float], rpy: list[float]) -> yourdfpy.URDF:
    """The reference URDF with the flange-to-gripper joint's origin set to ``xyz`` / ``rpy``."""
    tree = ET.parse(REFERENCE_DATA / "panda_robotiq.urdf")
    (joint,) = [j for j in tree.getroot().iter("joint") if j.find("child").get("link") == "robotiq_85_base_link"]
    joint.find("origin").set("xyz", " ".join(map(repr, xyz)))
    joint.find("origin").set("rpy", " ".join(map(repr, rpy)))
    path = tmp_path / "mounted.urdf"
    tree.write(path)
    return yourdfpy.URDF.load(str(path), load_meshes=False, load_collision_meshes=False)


def test_changed_mount_offset_moves_tracks_3d_by_exactly_that_offset(tmp_path: Path, urdf: yourdfpy.URDF) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=12))
    built.run()
    before = built.tracks()
    offset = [0.012, -0.004, 0.031]
    built.run(f"gripper.mount_xyz_m={offset}")
    after = built.tracks()
    flange = pose6_reference(after["cartesian_positions"])
    shift = flange[:, :3, :3] @ np.array(offset)            # the offset, in flange axes, at every step
    np.testing.assert_allclose(after["tracks_3d"].astype(np.float64) - before["tracks_3d"],
                               np.broadcast_to(shift[:, None], before["tracks_3d"].shape), atol=2e-7)
    np.testing.assert_allclose(after["contact_centroids"] - before["contact_centroids"], shift, atol=1e-12)
    reference = urdf_with_mount(tmp_path, offset, [0.0, 0.0, 1.57])
    check_against_urdf(after, reference)
    assert built.quality()["gripper_mount"] == {"xyz_m": offset, "rpy": [0.0, 0.0, 1.57]}


def check_against_urdf(tracks: dict[str, np.ndarray], reference: yourdfpy.URDF) -> None:
    flange = pose6_reference(tracks["cartesian_positions"])
    local = tracks["contact_points_local"]
    angles = GripperModel.load().finger_angle(tracks["gripper_positions"])   # the linkage does not depend on it
    np.testing.assert_allclose(tracks["gripper_poses"],
                               flange @ reference.get_transform("robotiq_85_base_link", "panda_link8"), atol=1e-6)
    for t in (0, 5, 11):
        left = flange[t] @ urdf_link_in_flange(reference, "left_inner_finger", angles[t])
        right = flange[t] @ urdf_link_in_flange(reference, "right_inner_finger", angles[t])
        expected = np.concatenate([local[:240] @ left[:3, :3].T + left[:3, 3],
                                   local[240:] @ right[:3, :3].T + right[:3, 3]])
        np.testing.assert_allclose(tracks["tracks_3d"][t], expected, atol=1e-6)


def test_changed_mount_rotation_follows_the_urdf_joint(tmp_path: Path) -> None:
    built = build_episode(tmp_path, EpisodeSpec(num_frames=12))
    xyz, rpy = [0.0, 0.002, 0.0102], [0.03, -0.02, 1.5]
    built.run(f"gripper.mount_xyz_m={xyz}", f"gripper.mount_rpy={rpy}")
    check_against_urdf(built.tracks(), urdf_with_mount(tmp_path, xyz, rpy))


def test_blocks_and_deflate_engines_change_no_array(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block-wise computation (blocks of 7 steps or samples here) and either deflate engine write
    exactly the arrays of one whole-episode block through the default deflate."""
    from droid_pipeline.steps import tracks as tracks_step

    built = build_episode(tmp_path)
    monkeypatch.setattr(tracks_step, "BLOCK_POINTS", 1 << 30)
    built.run()
    whole = {"tracks": built.tracks(), "extrinsics": built.extrinsics()}
    assert len(whole["tracks"]["normalized_tracks_3d"]) > 7
    for blocks, overrides in [(7 * 480, ()), (1 << 30, ("npz.engine=isal", "npz.level=3")),
                              (5 * 480, ("npz.engine=isal", "npz.level=1")),
                              (1 << 30, ("npz.level=0", "npz.level_by_member.normalized_tracks_3d=0"))]:
        monkeypatch.setattr(tracks_step, "BLOCK_POINTS", blocks)
        built.run(*overrides)
        for name, arrays in {"tracks": built.tracks(), "extrinsics": built.extrinsics()}.items():
            assert arrays.keys() == whole[name].keys()
            for key, array in arrays.items():
                assert array.dtype == whole[name][key].dtype, (blocks, overrides, key)
                np.testing.assert_array_equal(array, whole[name][key], err_msg=f"{blocks} {overrides} {key}")


def test_members_are_deflated_at_their_own_level(tmp_path: Path) -> None:
    """``npz.level_by_member`` reaches the files: a member at level 0 is stored, the others deflated
    (as Python's zipfile reads the archives)."""
    import zipfile

    built = build_episode(tmp_path)
    built.run("npz.level_by_member.tracks_3d=0", "npz.level_by_member.T_base_cam_ext1=0")
    for name, stored in (("tracks.npz", "tracks_3d.npy"), ("extrinsics.npz", "T_base_cam_ext1.npy")):
        with zipfile.ZipFile(built.output_dir / name) as archive:
            methods = {info.filename: info.compress_type for info in archive.infolist()}
        assert methods.pop(stored) == zipfile.ZIP_STORED
        assert set(methods.values()) == {zipfile.ZIP_DEFLATED}, name
