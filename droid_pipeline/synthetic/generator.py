"""Synthetic DROID episodes with known ground truth, in DROID's exact raw layout.

Real episodes cannot be had where the pipeline is developed and tested, so this module writes
its own, faithful to the release down to key names, dtypes and conventions (see
DROID_FORMAT.md):

- ``droid_raw/<LAB>/<success|failure>/<YYYY-MM-DD>/<asctime folder>/``: ``trajectory.h5``,
  ``metadata_<uuid>.json``, ``recordings/MP4/<serial>.mp4`` (rectified left) and
  ``<serial>-stereo.mp4`` (left|right). SVO files are not written: they cannot be faked honestly.
- ``calibration/``: ``cam2base_extrinsic_superset.json``, ``cam2cam_extrinsics.json`` (the two
  exterior cameras in ext1's frame, as ``left_cam`` / ``right_cam``) and ``intrinsics.json`` keyed
  by episode id, and ``zed/SN<serial>.conf`` factory files whose ZED-style rectification
  (:func:`droid_pipeline.raw.zed_conf.rectify`) gives exactly the intrinsics the videos are rendered
  with.
- ``ground_truth/``: per episode the true rectified intrinsics, baselines and poses of every
  camera (``cameras.json``) and its true depth, ``<serial>_depth_mm.npy`` (T, H, W) uint16 in
  millimetres, 0 where no surface; ``dataset.json`` lists the episodes.
- ``config.yaml``: a pipeline configuration pointing at all of it.

The robot follows a smooth joint-space loop near the Panda home pose; ``cartesian_position`` is
the flange pose from :func:`droid_pipeline.robot.kinematics.panda_flange_poses`, the gripper closes and
opens once, and the videos are rendered (:mod:`droid_pipeline.synthetic.raycast`) from a textured room,
table and objects with the robot's arm and gripper meshes at their true poses, on the gripper
mount the dataset is generated with (the URDF's unless given; config.yaml names it). Everything is
deterministic per seed; each episode draws from its own stream, so episode i is the same
whatever the number of episodes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import h5py
import numpy as np
from scipy.interpolate import CubicSpline
from scipy.spatial.transform import Rotation

from droid_pipeline.core.atomic import write_json_atomic, write_text_atomic
from droid_pipeline.core.config import load_config
from droid_pipeline.geometry.poses import matrix_to_pose6, pose6_to_matrix, transform_points
from droid_pipeline.raw.zed_conf import (
    RESOLUTIONS,
    CameraCalibration,
    RectifiedStereo,
    StereoExtras,
    ZedConf,
    format_conf,
    match_resolution,
    rectify,
)
from droid_pipeline.robot.gripper import LEFT_FINGER_LINK, RIGHT_FINGER_LINK, GripperModel
from droid_pipeline.robot.kinematics import GripperMount, panda_flange_poses
from droid_pipeline.robot.occlusion import RobotOcclusion
from droid_pipeline.synthetic.raycast import Box, Material, PinholeCamera, TriangleMesh, render

CONTROL_HZ = 15
# Panda home is [0, -0.785, 0, -2.356, 0, 1.571, 0.785]; the motion is centred on this nearby pose
# (shoulder, elbow and wrist lowered) that holds the pads 28 cm above the table, pointing down.
WORK_JOINTS = np.array([0.0, -0.13, 0.0, -2.25, 0.0, 2.12, 0.785])
# Half-range of the joint-space waypoints around the work pose (radians).
WAYPOINT_SPREAD = np.array([0.45, 0.3, 0.3, 0.35, 0.35, 0.3, 0.8])
NUM_WAYPOINTS = 5
# The pad centre point must stay in this base-frame box (in view, above the objects).
WORKSPACE_LOW = np.array([0.3, -0.3, 0.17])
WORKSPACE_HIGH = np.array([0.7, 0.3, 0.45])
# The fingers point at most this far from straight down, so the wrist camera sees the table.
MAX_TILT_FROM_DOWN_DEG = 35.0
# Mean speed of the pad centre: 300 steps (20 s) travel about 2 m.
PATH_SPEED_M_S = 0.1
SPEED_RAMP_S = 1.0
# DROID's per-step limits that normalise cartesian/joint/gripper velocities to [-1, 1].
MAX_LIN_DELTA_M = 0.075
MAX_ROT_DELTA_RAD = 0.15
MAX_JOINT_DELTA_RAD = 0.2
MAX_GRIPPER_DELTA = 0.25

ROLES = ("wrist", "ext1", "ext2")
CAMERA_TYPE = {"wrist": 0, "ext1": 1, "ext2": 1}
CAMERA_MODELS = {
    # Raw HD focal length (px) and factory baseline (mm) of each ZED model.
    "ZED 2": {"fx": 528.0, "baseline_mm": 120.0},
    "ZED Mini": {"fx": 700.0, "baseline_mm": 63.0},
}
ROLE_MODEL = {"wrist": "ZED Mini", "ext1": "ZED 2", "ext2": "ZED 2"}
# Pixel scale of each sensor mode relative to HD: 2K and FHD are centred crops of the 2x grid,
# VGA a binned 0.5x grid; all share one optical centre.
MODE_SCALE = {"2K": 2.0, "FHD": 2.0, "HD": 1.0, "VGA": 0.5}

LABS = ("AUTOLab", "CLVR", "GuptaLab", "ILIAD", "IPRL", "IRIS", "PennPAL", "RAD", "RAIL", "REAL", "RPL",
        "TRI", "WEIRD")
BUILDINGS = ("North Hall", "Engineering Center", "Robotics Building", "Science Hall")
USERS = ("Alex Kim", "Sam Rivera", "Jordan Lee", "Taylor Chen", "Morgan Patel", "Casey Novak")
TASKS = ("Put the marker in the cup", "Move the red block to the left of the box",
         "Pick up the sponge and place it on the plate", "Stack the small box on the large box",
         "Push the block towards the back of the table", "Take the lid off the container")
R2D2_VERSION = "1.3"

ROOM = Box(pose=np.array([[1, 0, 0, 0.4], [0, 1, 0, 0], [0, 0, 1, 1.0], [0, 0, 0, 1.0]]),
           half_extents=np.array([3.0, 3.0, 1.76]),
           material=Material((0.55, 0.56, 0.52), (0.30, 0.31, 0.36), 0.2, 11), interior=True)
TABLE = Box(pose=np.array([[1, 0, 0, 0.45], [0, 1, 0, 0], [0, 0, 1, -0.02], [0, 0, 0, 1.0]]),
            half_extents=np.array([0.65, 0.75, 0.02]),
            material=Material((0.52, 0.36, 0.22), (0.82, 0.66, 0.46), 0.03, 12))
OBJECT_COLORS = (((0.80, 0.12, 0.10), (0.98, 0.80, 0.25)), ((0.10, 0.35, 0.80), (0.70, 0.90, 1.00)),
                 ((0.15, 0.60, 0.20), (0.90, 0.95, 0.40)), ((0.55, 0.20, 0.60), (0.95, 0.70, 0.90)))
PAD_MATERIAL = Material((0.08, 0.08, 0.09), (0.55, 0.55, 0.58), 0.006, 21)
BODY_MATERIAL = Material((0.15, 0.15, 0.17), (0.45, 0.45, 0.50), 0.012, 22)
ARM_MATERIAL = Material((0.62, 0.63, 0.66), (0.93, 0.93, 0.92), 0.03, 23)
# Texture seed of the first robot link; link k has LINK_SEED + k.
LINK_SEED = 40
# Exterior cameras: azimuth from the robot's forward axis, to its left (ext1) or right (ext2),
# and elevation above the mean pad position (degrees); ext2 of every third episode
# (index % 3 == 0) is mounted high, so that the arm comes between it and the pads.
AZIMUTH_DEG = (80.0, 120.0)
ELEVATION_DEG = (25.0, 40.0)
HIGH_ELEVATION_DEG = (40.0, 50.0)
# Wrist camera on the gripper: this far beside the flange axis (m, along flange -x), this far
# out along it, tilted this much towards the fingers.
WRIST_SIDE_M = 0.08
WRIST_OUT_M = 0.04
WRIST_TILT_DEG = 15.0
VIDEO_CRF = 10


class SyntheticError(ValueError):
    """The requested synthetic dataset cannot be generated (bad size, counts or output folder)."""


@dataclass(frozen=True)
class SyntheticEpisode:
    """One generated episode: its id, where it sits under droid_root, and its cameras by role."""

    episode_id: str
    relative_path: str
    outcome: str
    serials: dict[str, str]
    num_frames: int
    width: int
    height: int


@dataclass(frozen=True)
class DatasetInfo:
    """Where a generated dataset went; paths are absolute."""

    root: Path
    droid_root: Path
    config_path: Path
    cam2base_path: Path
    cam2cam_path: Path
    intrinsics_path: Path
    zed_calibration_dir: Path
    ground_truth_dir: Path
    episodes: tuple[SyntheticEpisode, ...] = field(default_factory=tuple)

    def episode_dir(self, episode: SyntheticEpisode) -> Path:
        return self.droid_root / episode.relative_path

    def ground_truth_path(self, episode: SyntheticEpisode) -> Path:
        """Folder holding the episode's ``cameras.json`` and ``<serial>_depth_mm.npy``."""
        return self.ground_truth_dir / episode.relative_path

    def to_json(self) -> dict[str, Any]:
        paths = {k: os.path.relpath(getattr(self, k), self.root)
                 for k in ("droid_root", "config_path", "cam2base_path", "cam2cam_path", "intrinsics_path",
                           "zed_calibration_dir", "ground_truth_dir")}
        return {**paths, "episodes": [vars(e) for e in self.episodes]}


def load_dataset_info(root: os.PathLike | str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset generated into ``root`` (from its dataset.json)."""
    root = Path(root).resolve()
    data = json.loads((root / "ground_truth" / "dataset.json").read_text())
    episodes = tuple(SyntheticEpisode(**e) for e in data.pop("episodes"))
    return DatasetInfo(root=root, episodes=episodes, **{k: root / v for k, v in data.items()})


def generate_dataset(out_dir: os.PathLike | str, episodes: int = 3, frames: int = 40,
                     size: tuple[int, int] = (320, 180), seed: int = 0,
                     mount: GripperMount | None = None) -> DatasetInfo:
    """Write ``episodes`` synthetic episodes of ``frames`` steps at ``size`` (W, H) into ``out_dir``,
    the gripper on ``mount`` (None: the URDF's).

    Episode i is a failure when i % 3 == 1, uses ``_`` instead of ``:`` in its folder name when
    i is odd, sits in a date folder one day before its own timestamp when i % 3 == 2 (recorded
    just after midnight) and then also carries ``observation/camera_intrinsics``, and lists a
    stale camera in ``observation/camera_extrinsics`` when i % 3 == 1. Episode 0 is recorded on
    a one-digit day (double ``_`` in its folder name).
    """
    width, height = size
    if episodes < 1 or frames < 2:
        raise SyntheticError(f"need at least 1 episode of 2 frames, got {episodes} of {frames}")
    if width % 2 or height % 2 or match_resolution(width, height) is None:
        raise SyntheticError(f"size {width}x{height} is not an even ZED resolution or an exact integer "
                             f"downscale of one ({', '.join(f'{w}x{h}' for w, h in RESOLUTIONS.values())})")
    root = Path(out_dir).resolve()
    _prepare_output(root)
    info = DatasetInfo(root=root, droid_root=root / "droid_raw", config_path=root / "config.yaml",
                       cam2base_path=root / "calibration" / "cam2base_extrinsic_superset.json",
                       cam2cam_path=root / "calibration" / "cam2cam_extrinsics.json",
                       intrinsics_path=root / "calibration" / "intrinsics.json",
                       zed_calibration_dir=root / "calibration" / "zed",
                       ground_truth_dir=root / "ground_truth")
    gripper = GripperModel.load(mount)
    cam2base: dict[str, Any] = {}
    cam2cam: dict[str, Any] = {}
    intrinsics: dict[str, Any] = {}
    written = []
    for index in range(episodes):
        episode = _plan_episode(seed, index, frames, width, height, gripper)
        _write_episode(info, episode)
        cam2base[episode.episode_id] = _cam2base_entry(episode)
        cam2cam[episode.episode_id] = _cam2cam_entry(episode)
        intrinsics[episode.episode_id] = {
            rig.serial: [rig.rectified.K[0, 0], rig.rectified.K[0, 2], rig.rectified.K[1, 1], rig.rectified.K[1, 2]]
            for rig in episode.cameras.values()}
        for rig in episode.cameras.values():
            write_text_atomic(info.zed_calibration_dir / f"SN{rig.serial}.conf", format_conf(rig.conf))
        written.append(SyntheticEpisode(episode.episode_id, episode.relative_path, episode.outcome,
                                        {role: rig.serial for role, rig in episode.cameras.items()},
                                        frames, width, height))
    info = DatasetInfo(**{**vars(info), "episodes": tuple(written)})
    write_json_atomic(info.cam2base_path, cam2base)
    write_json_atomic(info.cam2cam_path, cam2cam)
    write_json_atomic(info.intrinsics_path, intrinsics)
    write_text_atomic(info.config_path, _config_text(mount, width))
    write_json_atomic(info.ground_truth_dir / "dataset.json", info.to_json())
    return info


# ---------------------------------------------------------------- planning


@dataclass(frozen=True, eq=False)
class CameraRig:
    """One ZED camera of an episode: factory calibration, its rectification at the video size,
    and the rectified left lens pose per step (T, 4, 4) in the robot base frame."""

    role: str
    serial: str
    conf: ZedConf
    rectified: RectifiedStereo
    poses: np.ndarray

    def camera(self, step: int, right: bool = False) -> PinholeCamera:
        left = PinholeCamera(self.rectified.K, self.poses[step], self.rectified.width, self.rectified.height)
        return left.shifted(self.rectified.baseline_m) if right else left


@dataclass(frozen=True, eq=False)
class EpisodePlan:
    """Everything an episode's files are made from."""

    index: int
    lab: str
    building: str
    user: str
    user_id: str
    recorded: dt.datetime
    date_folder: str
    folder: str
    outcome: str
    task: str
    robot_serial: str
    scene_id: int
    joint_positions: np.ndarray
    gripper_position: np.ndarray
    gripper_command: np.ndarray
    flange_poses: np.ndarray
    wrist_offset: np.ndarray
    cameras: dict[str, CameraRig]
    objects: tuple[Box, ...]
    stale_serial: str | None
    with_h5_intrinsics: bool
    gripper: GripperModel

    @property
    def episode_id(self) -> str:
        return f"{self.lab}+{self.user_id}+{self.recorded:%Y-%m-%d-%Hh-%Mm-%Ss}"

    @property
    def relative_path(self) -> str:
        return f"{self.lab}/{self.outcome}/{self.date_folder}/{self.folder}"

    @property
    def num_frames(self) -> int:
        return len(self.joint_positions)


def _plan_episode(seed: int, index: int, frames: int, width: int, height: int,
                  gripper_model: GripperModel) -> EpisodePlan:
    rng = np.random.default_rng([seed, index])
    lab_index = int(rng.integers(len(LABS)))
    lab, building = LABS[lab_index], BUILDINGS[lab_index % len(BUILDINGS)]
    lab_rng = np.random.default_rng([seed, 1_000_000 + lab_index])
    serials = {"wrist": str(lab_rng.integers(10_000_000, 20_000_000)),
               "ext1": str(lab_rng.integers(20_000_000, 30_000_000)),
               "ext2": str(lab_rng.integers(30_000_000, 40_000_000))}
    robot_serial = f"panda-{lab_rng.integers(100_000, 1_000_000)}-{lab_rng.integers(1_000_000, 10_000_000)}"
    wrist_offset = _wrist_offset(lab_rng)

    after_midnight = index % 3 == 2
    day = dt.date(2023, 4, 1) + dt.timedelta(days=int(9 * index + rng.integers(0, 9)))
    clock = dt.time(0 if after_midnight else int(rng.integers(9, 19)), int(rng.integers(60)), int(rng.integers(60)))
    recorded = dt.datetime.combine(day, clock)
    folder = time.asctime(recorded.timetuple()).replace(" ", "_")
    if index % 2 == 1:
        folder = folder.replace(":", "_")
    date_folder = (day - dt.timedelta(days=1) if after_midnight else day).isoformat()

    outcome = "failure" if index % 3 == 1 else "success"
    joints, gripper, command = _plan_motion(rng, frames, 1.0 if outcome == "failure"
                                            else float(rng.uniform(0.75, 0.92)), gripper_model)
    flange = panda_flange_poses(joints)
    pad_centre = _pad_centre_path(flange, gripper, gripper_model)
    target = pad_centre.mean(axis=0)
    cameras = {}
    for role in ROLES:
        conf = _factory_calibration(serials[role], ROLE_MODEL[role])
        rectified = rectify(conf, width, height)
        if role == "wrist":
            poses = flange @ wrist_offset
        else:
            side = -1.0 if role == "ext1" else 1.0
            eye = _orbit_point(target, rng, side, high=role == "ext2" and index % 3 == 0)
            poses = np.broadcast_to(_look_at(eye, target), (frames, 4, 4)).copy()
        cameras[role] = CameraRig(role, serials[role], conf, rectified, poses)
    return EpisodePlan(
        index=index, lab=lab, building=building, user=USERS[int(rng.integers(len(USERS)))],
        user_id=f"{int(rng.integers(2 ** 32)):08x}", recorded=recorded, date_folder=date_folder,
        folder=folder, outcome=outcome, task=TASKS[int(rng.integers(len(TASKS)))],
        robot_serial=robot_serial, scene_id=int(rng.integers(1_000_000_000, 10_000_000_000)),
        joint_positions=joints, gripper_position=gripper, gripper_command=command,
        flange_poses=flange, wrist_offset=wrist_offset, cameras=cameras, objects=_scene_objects(rng),
        stale_serial=str(rng.integers(20_000_000, 40_000_000)) if index % 3 == 1 else None,
        with_h5_intrinsics=after_midnight, gripper=gripper_model)


def _plan_motion(rng: np.random.Generator, frames: int, closed_value: float, gripper_model: GripperModel
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint positions (T, 7), observed gripper_position (T,) and commanded gripper target (T,).

    The arm follows a periodic cubic spline through random joint-space waypoints near the work pose
    (checked densely to keep the pads in the workspace and pointing down), at a trapezoidal
    speed profile whose mean moves the pad centre at :data:`PATH_SPEED_M_S`. The gripper is
    commanded closed from 30% to 65% of the episode and follows within a few steps, stopping at
    ``closed_value`` (short of 1 when it holds an object).
    """
    for _ in range(200):
        waypoints = WORK_JOINTS + rng.uniform(-1.0, 1.0, (NUM_WAYPOINTS, 7)) * WAYPOINT_SPREAD
        spline = CubicSpline(np.arange(NUM_WAYPOINTS + 1), np.vstack([waypoints, waypoints[:1]]),
                             bc_type="periodic")
        phase = np.linspace(0.0, NUM_WAYPOINTS, 100 * NUM_WAYPOINTS + 1)
        flange = panda_flange_poses(spline(phase))
        centre = _pad_centre_path(flange, np.zeros(len(phase)), gripper_model)
        down = -flange[:, 2, 2]  # cosine between the flange z axis and straight down
        if (np.all(centre >= WORKSPACE_LOW) and np.all(centre <= WORKSPACE_HIGH)
                and np.all(down >= np.cos(np.radians(MAX_TILT_FROM_DOWN_DEG)))):
            break
    else:
        raise SyntheticError("no joint-space loop keeping the gripper in the workspace was found")
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(centre, axis=0), axis=1))])

    steps = np.arange(frames)
    ramp = max(1.0, min(SPEED_RAMP_S * CONTROL_HZ, (frames - 1) / 4))
    midpoints = steps[:-1] + 0.5  # speed of each step-to-step interval
    speed = np.minimum(1.0, np.minimum(midpoints / ramp, (frames - 1 - midpoints) / ramp))
    distance = np.concatenate([[0.0], np.cumsum(speed)])
    distance *= PATH_SPEED_M_S * (frames - 1) / CONTROL_HZ / distance[-1]
    # The spline is periodic, so distance along the loop wraps around it.
    joints = spline(np.interp(np.mod(distance, arc[-1]), arc, phase))

    close, release = int(round(0.30 * frames)), int(round(0.65 * frames))
    command = np.zeros(frames)
    command[close:release] = 1.0
    lag = max(2, min(9, frames // 8))
    closing = 0.5 - 0.5 * np.cos(np.pi * np.clip((steps - close) / lag, 0.0, 1.0))
    opening = 0.5 - 0.5 * np.cos(np.pi * np.clip((steps - release) / lag, 0.0, 1.0))
    return joints, closed_value * (closing - opening), command


def _pad_centre_path(flange: np.ndarray, gripper_position: np.ndarray, model: GripperModel) -> np.ndarray:
    """(T, 3) base-frame midpoint of the two pad boxes' centres."""
    centre, _ = model.pad_box_local()
    left, right = model.finger_poses(gripper_position)
    mid = 0.5 * (left[:, :3, :3] @ centre + left[:, :3, 3] + right[:, :3, :3] @ centre + right[:, :3, 3])
    return transform_points(flange, mid[:, None, :])[:, 0]


def _wrist_offset(rng: np.random.Generator) -> np.ndarray:
    """T_flange_cam of the wrist camera: beside the gripper body, looking along the fingers,
    tilted towards them so both fingers sit at the bottom of the image."""
    tilt = np.radians(WRIST_TILT_DEG + rng.uniform(-2.0, 2.0))
    forward = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
    down = np.array([np.cos(tilt), 0.0, -np.sin(tilt)])
    offset = np.eye(4)
    offset[:3, :3] = np.column_stack([np.cross(down, forward), down, forward])
    offset[:3, 3] = [-WRIST_SIDE_M + rng.uniform(-0.005, 0.005), rng.uniform(-0.005, 0.005), WRIST_OUT_M]
    return offset


def _orbit_point(target: np.ndarray, rng: np.random.Generator, side: float, high: bool) -> np.ndarray:
    """An exterior camera position about 1 m from ``target``, on the robot's left (side -1) or
    right (side +1), 25-40 degrees above the table, or 40-50 degrees when ``high`` (looking down
    past the arm, which then hides the pads at times)."""
    azimuth = side * np.radians(rng.uniform(*AZIMUTH_DEG))
    elevation = np.radians(rng.uniform(*HIGH_ELEVATION_DEG if high else ELEVATION_DEG))
    distance = rng.uniform(0.95, 1.15)
    return target + distance * np.array([np.cos(elevation) * np.cos(azimuth),
                                         np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """T_base_cam (OpenCV optical frame) of a camera at ``eye`` looking at ``target``, upright."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([right, np.cross(forward, right), forward])
    pose[:3, 3] = eye
    return pose


def _factory_calibration(serial: str, model: str) -> ZedConf:
    """Raw factory values of one camera, drawn from its serial: an HD section per lens with small
    distortion, the other sensor modes scaled from it about one optical centre, and a stereo
    section with the model's baseline and a small rotation and offset of the right lens."""
    rng = np.random.default_rng(int(serial))
    spec = CAMERA_MODELS[model]

    def lens() -> dict[str, CameraCalibration]:
        fx = spec["fx"] * rng.uniform(0.98, 1.02)
        fy = fx * rng.uniform(0.998, 1.002)
        cx, cy = 639.5 + rng.uniform(-12.0, 12.0), 359.5 + rng.uniform(-8.0, 8.0)
        k1, k2 = rng.uniform(-0.05, -0.02), rng.uniform(0.005, 0.02)
        p1, p2 = rng.uniform(-3e-4, 3e-4, 2)
        modes = {}
        for key, (width, height) in RESOLUTIONS.items():
            scale = MODE_SCALE[key]
            crop_x, crop_y = (1280 * scale - width) / 2, (720 * scale - height) / 2
            modes[key] = CameraCalibration(fx * scale, fy * scale, (cx + 0.5) * scale - 0.5 - crop_x,
                                           (cy + 0.5) * scale - 0.5 - crop_y, k1, k2, p1, p2, 0.0)
        return modes

    left, right = lens(), lens()
    extras = StereoExtras(ty_mm=rng.uniform(-0.3, 0.3), tz_mm=rng.uniform(-0.5, 0.5),
                          cv_rad=rng.uniform(-2e-3, 2e-3), rx_rad=rng.uniform(-2e-3, 2e-3),
                          rz_rad=rng.uniform(-2e-3, 2e-3))
    return ZedConf(serial=serial, left=left, right=right,
                   baseline_mm=spec["baseline_mm"] * rng.uniform(0.99, 1.01),
                   stereo=dict.fromkeys(RESOLUTIONS, extras))


def _scene_objects(rng: np.random.Generator) -> tuple[Box, ...]:
    """Three or four textured boxes standing on the table in front of the robot."""
    objects = []
    for k in range(int(rng.integers(3, 5))):
        half = np.array([rng.uniform(0.02, 0.06), rng.uniform(0.02, 0.06), rng.uniform(0.02, 0.05)])
        pose = np.eye(4)
        pose[:3, :3] = Rotation.from_euler("z", rng.uniform(0.0, np.pi)).as_matrix()
        pose[:3, 3] = [rng.uniform(0.3, 0.75), rng.uniform(-0.4, 0.4), half[2]]
        colors = OBJECT_COLORS[k % len(OBJECT_COLORS)]
        objects.append(Box(pose, half, Material(*colors, rng.uniform(0.008, 0.015), 30 + k)))
    return tuple(objects)


def _robot_meshes(episode: EpisodePlan) -> list[list[TriangleMesh]]:
    """Per step: every link of the arm and gripper, posed by RobotOcclusion.pose from the values
    written to trajectory.h5 (joint_positions, cartesian_position, gripper_position) and the
    episode's gripper mount, exactly as the occlusion labels pose them; the inner fingers (with
    the pads) in the pad material. Each link's texture has its own seed: the left and right links
    are the same mesh, and with one texture stereo matching would pair the left link in one view
    with the right in the other."""
    occlusion = RobotOcclusion.load()
    flange = pose6_to_matrix(matrix_to_pose6(episode.flange_poses))
    pose = occlusion.pose(episode.joint_positions, flange, episode.gripper_position,
                          mount=episode.gripper.gripper_frame_in_flange())
    materials = [replace(PAD_MATERIAL if link in (LEFT_FINGER_LINK, RIGHT_FINGER_LINK)
                         else BODY_MATERIAL if link in occlusion.gripper_links else ARM_MATERIAL,
                         seed=LINK_SEED + index) for index, link in enumerate(pose.links)]
    return [[TriangleMesh(occlusion.link_triangles[link], pose.poses[step, index], material)
             for index, (link, material) in enumerate(zip(pose.links, materials))]
            for step in range(episode.num_frames)]


# ---------------------------------------------------------------- writing


def _prepare_output(root: Path) -> None:
    """Clear what an earlier generation left in ``root``; refuse folders holding other raw data."""
    marker = root / "ground_truth" / "dataset.json"
    if marker.is_file():
        for name in ("droid_raw", "calibration", "ground_truth"):
            shutil.rmtree(root / name, ignore_errors=True)
        (root / "config.yaml").unlink(missing_ok=True)
    elif (root / "droid_raw").exists():
        raise SyntheticError(f"{root / 'droid_raw'} exists and was not written by this generator; "
                             f"choose another output folder")
    root.mkdir(parents=True, exist_ok=True)


def _write_episode(info: DatasetInfo, episode: EpisodePlan) -> None:
    """Write one episode into a hidden folder beside its final place, then rename it there, so
    discovery never sees a half-written episode."""
    final = info.droid_root / episode.relative_path
    building = final.parent / f".{final.name}.tmp"
    shutil.rmtree(building, ignore_errors=True)
    mp4_dir = building / "recordings" / "MP4"
    mp4_dir.mkdir(parents=True)
    _write_trajectory(building / "trajectory.h5", episode)
    write_json_atomic(building / f"metadata_{episode.episode_id}.json", _metadata(episode))
    truth_dir = info.ground_truth_dir / episode.relative_path
    robot = _robot_meshes(episode)
    for rig in episode.cameras.values():
        _render_camera(episode, rig, robot, mp4_dir, truth_dir / f"{rig.serial}_depth_mm.npy")
    write_json_atomic(truth_dir / "cameras.json", _ground_truth_cameras(episode))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(building, final)


def _render_camera(episode: EpisodePlan, rig: CameraRig, robot: list[list[TriangleMesh]],
                   mp4_dir: Path, depth_path: Path) -> None:
    """Render and stream one camera's left MP4, left|right stereo MP4 and true depth, frame by
    frame; the two lenses render in parallel threads (NumPy releases the GIL). A fixed camera's
    static scene is rendered once per lens and reused as the background of every frame, under
    the robot drawn per frame."""
    scene = [ROOM, TABLE, *episode.objects]
    static = rig.role != "wrist"
    lenses = (False, True)
    width, height = rig.rectified.width, rig.rectified.height
    depth_path.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=len(lenses)) as pool, \
            _Mp4Writer(mp4_dir / f"{rig.serial}.mp4", width, height) as mono, \
            _Mp4Writer(mp4_dir / f"{rig.serial}-stereo.mp4", 2 * width, height) as stereo, \
            _DepthWriter(depth_path, (episode.num_frames, height, width)) as depth:
        backgrounds = (list(pool.map(lambda right: render(scene, rig.camera(0, right=right)), lenses))
                       if static else [None, None])
        for step, links in enumerate(robot):
            boxes = [] if static else scene
            left, right = pool.map(lambda lens, boxes=boxes, step=step, links=links: render(
                boxes, rig.camera(step, right=lens), backgrounds[lens], links), lenses)
            mono.write(left.rgb)
            stereo.write(np.concatenate([left.rgb, right.rgb], axis=1))
            depth.write(left.depth)


class _Mp4Writer:
    """H.264 MP4 (libx264, yuv420p, near-lossless CRF) at the control rate, one RGB frame at a
    time, byte-identical for identical frames."""

    def __init__(self, path: Path, width: int, height: int):
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=CONTROL_HZ)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, CONTROL_HZ)
        # x264's output varied from run to run on a loaded machine with frame threads, and with one
        # thread still about one run in ten through its lookahead (rate-control lookahead and
        # macroblock tree): one thread and neither keeps the videos byte-identical per seed.
        self._stream.options = {"crf": str(VIDEO_CRF), "preset": "veryfast",
                                "x264-params": "threads=1:rc-lookahead=0:mbtree=0"}
        self._stream.thread_count = 1
        self._frames = 0

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
        frame.pts = self._frames
        frame.time_base = Fraction(1, CONTROL_HZ)
        self._frames += 1
        self._container.mux(self._stream.encode(frame))

    def __enter__(self) -> _Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> planar YUV 4:2:0 as one (3H/2, W) uint8 array (Y, then U, then V),
    BT.601 limited range (what decoders assume for untagged H.264), chroma averaged over 2x2.

    Element-wise arithmetic only (no BLAS, no SIMD colour converter), so the bytes depend on
    the pixels alone and the videos are reproducible per seed.
    """
    height, width, _ = rgb.shape
    red, green, blue = (rgb[..., k].astype(np.float32) for k in range(3))
    luma = 16.0 + 0.256788 * red + 0.504129 * green + 0.097906 * blue

    def pooled(channel: np.ndarray) -> np.ndarray:
        return 0.25 * (channel[0::2, 0::2] + channel[1::2, 0::2] + channel[0::2, 1::2] + channel[1::2, 1::2])

    red, green, blue = pooled(red), pooled(green), pooled(blue)
    chroma_blue = 128.0 - 0.148223 * red - 0.290993 * green + 0.439216 * blue
    chroma_red = 128.0 + 0.439216 * red - 0.367788 * green - 0.071427 * blue
    planes = np.concatenate([luma.ravel(), chroma_blue.ravel(), chroma_red.ravel()])
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


class _DepthWriter:
    """True depth as a (T, H, W) little-endian uint16 .npy of millimetres, appended frame by
    frame under a temporary name (nothing of the episode is held in memory) and renamed once
    the episode is complete."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self._path = path
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._file = open(self._tmp, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<u2")), "fortran_order": False,
                  "shape": shape}
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, depth_m: np.ndarray) -> None:
        self._file.write(depth_to_mm(depth_m).astype("<u2").tobytes())

    def __enter__(self) -> _DepthWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        if exc[0] is None:
            os.replace(self._tmp, self._path)
        else:
            self._tmp.unlink(missing_ok=True)


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres to uint16 millimetres, rounded; 0 (no surface) stays 0, beyond 65.535 m saturates."""
    return np.clip(np.rint(np.asarray(depth_m) * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _write_trajectory(path: Path, episode: EpisodePlan) -> None:
    """trajectory.h5 with DROID's key tree, dtypes and shapes (one row per control step)."""
    frames = episode.num_frames
    joints = episode.joint_positions
    flange = episode.flange_poses
    cartesian = matrix_to_pose6(flange)
    following = np.minimum(np.arange(frames) + 1, frames - 1)
    joint_velocities = np.gradient(joints, axis=0) * CONTROL_HZ
    torques = 40.0 * (joints[following] - joints) - 4.0 * joint_velocities
    load = np.array([0.0, -18.0, 0.5, 14.0, 0.8, 2.2, 0.1])
    previous = np.maximum(np.arange(frames) - 1, 0)
    rng = np.random.default_rng([episode.index, 7])
    robot_state = {
        "cartesian_position": cartesian,
        "gripper_position": episode.gripper_position,
        "joint_positions": joints,
        "joint_velocities": joint_velocities,
        "joint_torques_computed": torques,
        "prev_joint_torques_computed": torques[previous],
        "prev_joint_torques_computed_safened": torques[previous],
        "motor_torques_measured": torques + load,
        "prev_controller_latency_ms": rng.uniform(0.5, 2.5, frames),
        "prev_command_successful": np.ones(frames, dtype=bool),
    }
    rotation_step = Rotation.from_matrix(flange[following, :3, :3] @ np.swapaxes(flange[:, :3, :3], 1, 2))
    cartesian_velocity = np.concatenate(
        [(flange[following, :3, 3] - flange[:, :3, 3]) / MAX_LIN_DELTA_M,
         rotation_step.as_rotvec() / MAX_ROT_DELTA_RAD], axis=1)
    action = {
        "cartesian_position": cartesian[following],
        "cartesian_velocity": np.clip(cartesian_velocity, -1.0, 1.0),
        "gripper_position": episode.gripper_command,
        "gripper_velocity": np.clip((episode.gripper_command - episode.gripper_position) / MAX_GRIPPER_DELTA,
                                    -1.0, 1.0),
        "joint_position": joints[following],
        "joint_velocity": np.clip((joints[following] - joints) / MAX_JOINT_DELTA_RAD, -1.0, 1.0),
        "target_cartesian_position": cartesian[following],
        "target_gripper_position": episode.gripper_command,
    }
    last = np.arange(frames) == frames - 1
    controller_info = {"controller_on": np.ones(frames, dtype=bool),
                       "failure": last & (episode.outcome == "failure"),
                       "movement_enabled": np.ones(frames, dtype=bool),
                       "success": last & (episode.outcome == "success")}
    with h5py.File(path, "w") as h5:
        h5.attrs["success"] = episode.outcome == "success"
        h5.attrs["failure"] = episode.outcome == "failure"
        h5.attrs["current_task"] = episode.task
        h5.attrs["robot_serial_number"] = episode.robot_serial
        _write_group(h5, "observation/robot_state", robot_state)
        _write_group(h5, "action", action)
        _write_group(h5, "action/robot_state", robot_state)
        _write_group(h5, "observation/controller_info", controller_info)
        _write_group(h5, "observation/camera_extrinsics", _camera_extrinsics(episode))
        _write_group(h5, "observation/camera_type", {
            rig.serial: np.full(frames, CAMERA_TYPE[rig.role], dtype=np.int64)
            for rig in episode.cameras.values()})
        if episode.with_h5_intrinsics:
            _write_group(h5, "observation/camera_intrinsics", {
                f"{rig.serial}_{lens}": np.broadcast_to(rig.rectified.K, (frames, 3, 3))
                for rig in episode.cameras.values() for lens in ("left", "right")})
        for name, values in _timestamps(episode).items():
            _write_group(h5, f"observation/timestamp/{name}", values)
        h5["observation/timestamp/skip_action"] = np.zeros(frames, dtype=bool)


def _write_group(h5: h5py.File, group: str, datasets: dict[str, np.ndarray]) -> None:
    for name, values in datasets.items():
        h5[f"{group}/{name}"] = np.asarray(values)


def _camera_extrinsics(episode: EpisodePlan) -> dict[str, np.ndarray]:
    """``<serial>_left`` / ``_right`` poses per step for every camera, the wrist camera's
    ``_left_gripper_offset``, and a stale camera's constant pair where the plan has one."""
    frames = episode.num_frames
    out = {}
    for rig in episode.cameras.values():
        right = rig.poses.copy()
        right[:, :3, 3] += rig.rectified.baseline_m * rig.poses[:, :3, 0]
        out[f"{rig.serial}_left"] = matrix_to_pose6(rig.poses)
        out[f"{rig.serial}_right"] = matrix_to_pose6(right)
    wrist = episode.cameras["wrist"].serial
    out[f"{wrist}_left_gripper_offset"] = np.tile(matrix_to_pose6(episode.wrist_offset), (frames, 1))
    if episode.stale_serial is not None:
        stale = np.tile([0.1, 0.9, 0.5, -2.2, 0.0, -2.8], (frames, 1))
        out[f"{episode.stale_serial}_left"] = stale
        out[f"{episode.stale_serial}_right"] = stale + [0.12, 0.0, 0.0, 0.0, 0.0, 0.0]
    return out


def _timestamps(episode: EpisodePlan) -> dict[str, dict[str, np.ndarray]]:
    """Integer epoch milliseconds of every step's control phases, robot read and camera reads."""
    frames = episode.num_frames
    rng = np.random.default_rng([episode.index, 11])
    start_ms = int(episode.recorded.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    step_start = start_ms + np.rint(np.arange(frames) * 1000.0 / CONTROL_HZ).astype(np.int64) \
        + rng.integers(0, 3, frames)
    policy_start = step_start + rng.integers(20, 30, frames)
    sleep_start = policy_start + rng.integers(2, 5, frames)
    control_start = step_start + 64 + rng.integers(0, 2, frames)
    control = {"step_start": step_start, "policy_start": policy_start, "sleep_start": sleep_start,
               "control_start": control_start, "step_end": control_start + 1}
    robot_read = step_start + rng.integers(10, 14, frames)
    robot_clock_ms = robot_read - rng.integers(1, 3, frames)
    robot = {"read_start": robot_read, "read_end": robot_read + 1,
             "robot_timestamp_seconds": robot_clock_ms // 1000,
             "robot_timestamp_nanos": (robot_clock_ms % 1000) * 1_000_000}
    cameras = {}
    for offset, rig in enumerate(episode.cameras.values()):
        read_start = step_start + 1 + 3 * offset
        received = read_start - rng.integers(2, 6, frames)
        cameras[f"{rig.serial}_estimated_capture"] = received - rng.integers(18, 24, frames)
        cameras[f"{rig.serial}_frame_received"] = received
        cameras[f"{rig.serial}_read_start"] = read_start
        cameras[f"{rig.serial}_read_end"] = read_start + rng.integers(5, 9, frames)
    return {"control": control, "robot_state": robot, "cameras": cameras}


def _metadata(episode: EpisodePlan) -> dict[str, Any]:
    """metadata_<uuid>.json with every key a real file has; paths relative to the lab folder."""
    inside_lab = f"{episode.outcome}/{episode.date_folder}/{episode.folder}"
    serials = {role: rig.serial for role, rig in episode.cameras.items()}
    data: dict[str, Any] = {
        "uuid": episode.episode_id, "lab": episode.lab, "user": episode.user, "user_id": episode.user_id,
        "date": f"{episode.recorded:%Y-%m-%d}", "timestamp": f"{episode.recorded:%Y-%m-%d-%Hh-%Mm-%Ss}",
        "hdf5_path": f"{inside_lab}/trajectory.h5", "building": episode.building,
        "scene_id": episode.scene_id, "success": episode.outcome == "success",
        "robot_serial": episode.robot_serial, "r2d2_version": R2D2_VERSION,
        "current_task": episode.task, "trajectory_length": episode.num_frames,
    }
    for role in ROLES:
        data[f"{role}_cam_serial"] = serials[role]
    for role in ROLES:
        data[f"{role}_cam_extrinsics"] = matrix_to_pose6(episode.cameras[role].poses[0]).tolist()
    for role in ROLES:
        data[f"{role}_svo_path"] = f"{inside_lab}/recordings/SVO/{serials[role]}.svo"
        data[f"{role}_mp4_path"] = f"{inside_lab}/recordings/MP4/{serials[role]}.mp4"
    data["left_mp4_path"] = data["ext1_mp4_path"]
    data["right_mp4_path"] = data["ext2_mp4_path"]
    return data


def _cam2base_entry(episode: EpisodePlan) -> dict[str, Any]:
    """The exterior cameras' true poses, plus per-camera calibration quality keys."""
    entry: dict[str, Any] = {}
    for role in ("ext1", "ext2"):
        rig = episode.cameras[role]
        entry[rig.serial] = matrix_to_pose6(rig.poses[0]).tolist()
        entry[f"{rig.serial}_metric_type"] = "reprojection_error_px"
        entry[f"{rig.serial}_quality_metric"] = 0.25 + 0.01 * (int(rig.serial) % 20)
    return entry


def _cam2cam_entry(episode: EpisodePlan) -> dict[str, Any]:
    """The exterior cameras' true poses in ext1's frame (4x4, camera to that frame), left_cam =
    ext1, with each one's rectified focal length and principal point (unread by the pipeline)."""
    reference = np.linalg.inv(episode.cameras["ext1"].poses[0])
    entry: dict[str, Any] = {}
    for name, role in (("left_cam", "ext1"), ("right_cam", "ext2")):
        rig = episode.cameras[role]
        entry[name] = {"pose": (reference @ rig.poses[0]).tolist(), "focal": float(rig.rectified.K[0, 0]),
                       "principal_point": [float(rig.rectified.K[0, 2]), float(rig.rectified.K[1, 2])]}
    return entry


def _ground_truth_cameras(episode: EpisodePlan) -> dict[str, Any]:
    """cameras.json: per serial its role, video size, rectified K, baseline and left-lens pose
    (exterior: one 4x4; wrist: the 4x4 offset on panda_link8, its per-step pose being flange x
    offset), and the name of its depth file."""
    out = {}
    for role, rig in episode.cameras.items():
        record = {"role": role, "model": ROLE_MODEL[role], "width": rig.rectified.width,
                  "height": rig.rectified.height, "K": rig.rectified.K,
                  "baseline_m": rig.rectified.baseline_m, "depth_file": f"{rig.serial}_depth_mm.npy",
                  "depth_units": "mm, uint16, 0 = no surface"}
        if role == "wrist":
            record["T_flange_cam"] = episode.wrist_offset
        else:
            record["T_base_cam"] = rig.poses[0]
        out[rig.serial] = record
    return out


def _config_text(mount: GripperMount | None, width: int) -> str:
    def numbers(values: tuple[float, ...]) -> str:  # exact, and floats to YAML (which reads 1e-05 as text)
        return "[" + ", ".join(np.format_float_positional(v, trim="0") for v in values) + "]"

    gripper = "" if mount is None else ("# The gripper mount the episodes were rendered with.\ngripper:\n"
                                        f"  mount_xyz_m: {numbers(mount.xyz_m)}\n  mount_rpy: {numbers(mount.rpy)}\n")
    return """\
# Pipeline configuration for this synthetic dataset (written by droid_pipeline.synthetic.generator).
# Relative paths resolve against this file's folder.
droid_root: droid_raw
output_root: output
run_root: runs
cam2base_extrinsics_path: calibration/cam2base_extrinsic_superset.json
cam2cam_extrinsics_path: calibration/cam2cam_extrinsics.json
intrinsics_path: calibration/intrinsics.json
zed_calibration_dir: calibration/zed
# The synthetic set has failure episodes on purpose.
outcomes: [success, failure]
# There are no SVO files, so no ZED SDK source and the CPU stereo depth backend.
intrinsics_sources: [published, h5, zed_conf]
depth_backend: stereo
# Stereo depth error grows with 1 / image width: the scene occlusion tolerance's depth-squared part
# is the default's, for DROID's 1280-pixel-wide images, scaled to these (docs/occlusion.md).
occlusion:
  scene_tolerance_per_m2: """ + np.format_float_positional(
        load_config().occlusion.scene_tolerance_per_m2 * RESOLUTIONS["HD"][0] / width, trim="0") + "\n" + gripper
