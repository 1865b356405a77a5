"""The tracks step: one episode's gripper contact tracks, their 2D projections and occlusion
labels, the 1 mm normalized flow, camera extrinsics and quality report (contract: docs/outputs.md).

Pipeline, vectorized over steps T and points N: flange poses (DROID ``cartesian_position``) ->
gripper and finger poses (Robotiq 2F-85 model at each ``gripper_position``) -> pad contact points
in the base frame -> projection into every camera with intrinsics -> occlusion labels per camera
from the robot's meshes and the depth (:mod:`droid_pipeline.steps.occlusion_labels`) ->
arc-length resampling of the contact-centroid path. Computation is float64; storage uses float32
where its rounding (below 0.25 micrometre for positions within 4 m, below 1e-4 px for pixels in a
1280x720 image) is far below any physical accuracy of the data.

Normalized tracks are the rigid gripper re-posed at each sample: centroid by linear
interpolation along the path, orientation by Slerp of the contact frame, opening by linear
interpolation of gripper_position with the gripper model re-applied. So every normalized sample
is an exact pose of the real pad geometry, its points' mean is exactly the normalized centroid,
and a sample that falls on a frame reproduces that frame's tracks.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core import schema
from droid_pipeline.core.atomic import write_json_atomic
from droid_pipeline.core.config import Config, IdleFilterConfig, VideoFrameMismatchConfig
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import (
    CAMERA_ROLES,
    DEPTH,
    DEPTH_META,
    EXTRINSICS,
    INTRINSICS,
    NO_CAMERA,
    NO_INTRINSICS,
    QUALITY,
    SCHEMA_VERSION,
    TRACKS,
    TRACKS_OK,
    UNKNOWN,
)
from droid_pipeline.formats.depth_codec import DepthCodecError, DepthMeta
from droid_pipeline.formats.intrinsics import IntrinsicsError, IntrinsicsRecord
from droid_pipeline.formats.npz import StreamedArray, deflate_by_member, save_npz_atomic
from droid_pipeline.geometry.normalize import (
    ArcLengthSampling,
    arc_length_sampling,
    interpolate_linear,
    interpolate_rotations,
)
from droid_pipeline.geometry.poses import pose6_to_matrix
from droid_pipeline.geometry.projection import points_in_camera, project, visible
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.episode import RawEpisode
from droid_pipeline.raw.trajectory import Trajectory, TrajectoryFile, read_joint_positions, read_trajectory
from droid_pipeline.raw.video import VideoError
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import GripperMount
from droid_pipeline.robot.occlusion import RobotOcclusion
from droid_pipeline.steps.extrinsics import CalibrationSources, EpisodeExtrinsics, camera_poses
from droid_pipeline.steps.occlusion_labels import CameraSetup, CameraView, EpisodeOcclusion, OcclusionLabeller

STEP = "tracks"
OUTPUTS = (TRACKS, EXTRINSICS, QUALITY)
# Points computed at once (steps or normalized samples times N): bounds the float64 temporaries
# (a few tens of MB) whatever the episode's length; T=300 episodes are one block.
BLOCK_POINTS = 1 << 18
JOINT_VELOCITY_KEY = "action/joint_velocity"
# A step is idle when no joint's commanded velocity changed by this much since the previous step.
IDLE_VELOCITY_CHANGE = 1e-3
# DROID's RLDS release names an episode by these strings (episode_metadata.file_path and
# recording_folderpath): the raw episode under the bucket it was converted from.
RLDS_ROOT = "gs://xembodiment_data/r2d2/r2d2-data-full"
# DROID's metadata file, published in quality.json with this fixed key set (null where absent).
METADATA_KEYS = ("uuid", "lab", "user", "user_id", "date", "timestamp", "hdf5_path", "building", "scene_id",
                 "success", "robot_serial", "droid_version", "current_task", "trajectory_length",
                 *(f"{role}_cam_{what}" for role in CAMERA_ROLES for what in ("serial", "extrinsics")),
                 *(f"{role}_{kind}_path" for role in CAMERA_ROLES for kind in ("svo", "mp4")),
                 "left_mp4_path", "right_mp4_path")
LANGUAGE_KEYS = ("language_instruction1", "language_instruction2", "language_instruction3")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoFrames:
    """A camera's MP4 against the T control steps: frame i is step i (see ``video_frame_mismatch``)."""

    file: str
    frame_count: int
    steps_without_frame: list[int]
    extra_frames: int                 # frames beyond the last step, ignored

    @property
    def aligned(self) -> bool:
        return not self.steps_without_frame and not self.extra_frames

    def quality(self) -> dict[str, Any]:
        return {"file": self.file, "frame_count": self.frame_count, "steps_without_frame": self.steps_without_frame,
                "extra_frames": self.extra_frames, "frames_aligned": self.aligned}


@dataclass(frozen=True, eq=False)
class CameraProjection:
    """One camera's 2D tracks, visibility, and the intrinsics they were projected with."""

    serial: str
    role: str
    pixels: np.ndarray              # (T, N, 2) float64
    visibility: np.ndarray          # (T, N) bool
    intrinsics: IntrinsicsRecord

    def arrays(self) -> dict[str, Any]:
        """This camera's values of tracks.npz (stored as core.schema.TRACKS_NPZ says), keyed by role."""
        role = self.role
        return {f"tracks_2d_{role}": self.pixels, f"visibility_{role}": self.visibility,
                f"intrinsics_{role}": self.intrinsics.K, f"distortion_{role}": self.intrinsics.distortion,
                f"image_size_{role}": self.intrinsics.size}


def filled_camera_arrays(role: str, num_steps: int, num_points: int) -> dict[str, np.ndarray]:
    """The tracks.npz values of a role without 2D tracks (no such camera, or no intrinsics), filled
    as core.schema documents: NaN pixels and matrices, size (0, 0), nothing visible, all unknown."""
    return {f"tracks_2d_{role}": np.full((num_steps, num_points, 2), np.nan, np.float32),
            f"visibility_{role}": np.zeros((num_steps, num_points), bool),
            f"occlusion_{role}": np.full((num_steps, num_points), UNKNOWN, np.uint8),
            f"intrinsics_{role}": np.full((3, 3), np.nan), f"distortion_{role}": np.full(5, np.nan),
            f"image_size_{role}": np.zeros(2, np.int32)}


def droid_keep_mask(joint_velocity: np.ndarray | None, rule: IdleFilterConfig) -> np.ndarray | None:
    """DROID's idle-step filter over T steps (openpi's compute_droid_nonidle_ranges.py): a step is
    idle when every joint's commanded velocity changed by less than 1e-3 since the previous step
    (step 0 never is); idle runs of at least ``rule.min_idle_steps`` are dropped, then kept runs
    shorter than ``rule.min_kept_steps``, then the last ``rule.cut_last_steps`` of each kept run.
    None without ``joint_velocity`` (T, J)."""
    if joint_velocity is None:
        return None
    idle = np.zeros(len(joint_velocity), bool)
    idle[1:] = np.all(np.abs(np.diff(joint_velocity, axis=0)) < IDLE_VELOCITY_CHANGE, axis=1)
    starts, ends = _runs(idle)
    long_idle = (ends - starts) >= rule.min_idle_steps
    kept = ~_fill(len(idle), starts[long_idle], ends[long_idle])
    starts, ends = _runs(kept)
    long_kept = (ends - starts) >= rule.min_kept_steps
    starts, ends = starts[long_kept], ends[long_kept]
    return _fill(len(idle), starts, np.maximum(starts, ends - rule.cut_last_steps))


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` of every run of True in ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _fill(length: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A (length,) mask true exactly in the ``[start, end)`` ranges (disjoint, sorted)."""
    marks = np.zeros(length + 1, np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    return np.cumsum(marks[:-1]) > 0


def _read_joint_velocity(h5: TrajectoryFile, num_frames: int, warnings: list[str]) -> np.ndarray | None:
    """(T, J) commanded joint velocities ``action/joint_velocity``; None when the h5 lacks them, or
    (with a warning: only the idle-step mask needs them) when they are not T rows of finite numbers."""
    if not h5.has(JOINT_VELOCITY_KEY):
        return None
    try:
        return h5.array(JOINT_VELOCITY_KEY, (num_frames, None))
    except EpisodeError as exc:
        warnings.append(f"{exc.cause}: idle steps not computed, keep is all true")
        return None


def rlds_keys(relative_path: str) -> dict[str, str]:
    """DROID RLDS's ``episode_metadata`` strings for a raw episode (how keep_ranges_1_0_1.json and the
    RLDS-based ports name it): ``file_path`` (its trajectory.h5) and ``recording_folderpath``."""
    base = f"{RLDS_ROOT}/{relative_path}"
    return {"file_path": f"{base}/trajectory.h5", "recording_folderpath": f"{base}/recordings/MP4"}


def published_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """DROID's metadata file with the fixed key set :data:`METADATA_KEYS` (null where absent). The
    recorder's version is ``droid_version`` whichever key the file used (older recorders wrote
    ``r2d2_version``; ``version_key`` says which), so that the same key holds it in every episode;
    any other keys, which vary between recorder versions, are one JSON string under ``other``."""
    import json

    version_key = next((key for key in ("droid_version", "r2d2_version") if key in metadata), None)
    other = {key: value for key, value in metadata.items() if key not in (*METADATA_KEYS, "r2d2_version")}
    return {**{key: metadata.get(key) for key in METADATA_KEYS},
            "droid_version": None if version_key is None else metadata[version_key], "version_key": version_key,
            "other": json.dumps(other, sort_keys=True) if other else None}


def language_annotations(path: Path | None, episode_id: str) -> dict[str, str | None] | None:
    """``language_instruction_1..3`` of ``episode_id`` in DROID's droid_language_annotations.json
    (None when no file is configured). An instruction the file lacks is ``""``, not null: with a file
    configured every episode has strings there, so readers that take value types from the first
    episodes (``datasets``) never meet a string after nulls. The file is read once per process."""
    if path is None:
        return None
    entry = _annotations(str(path)).get(episode_id)
    entry = entry if isinstance(entry, dict) else {}
    return {f"language_instruction_{i}": (str(entry[key]) if isinstance(entry.get(key), str) else "")
            for i, key in enumerate(LANGUAGE_KEYS, start=1)}


@functools.lru_cache(maxsize=2)
def _annotations(path: str) -> dict[str, Any]:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"language_annotations_file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"language_annotations_file {path}: expected a JSON object keyed by episode id")
    return data


def generate_tracks(config: Config, episode: Episode, output_dir: os.PathLike | str) -> dict[str, Any]:
    """Write tracks.npz, extrinsics.npz and quality.json for one episode; return a summary.

    Reads the raw episode under ``config.droid_root``, the intrinsics step's
    ``output_dir/recordings/<serial>/intrinsics.json`` and, where there, the depth step's
    ``output_dir/recordings/<serial>/depth.mkv``. Bad input raises EpisodeError (step
    ``tracks``); nothing is written unless every output is complete and finite.
    """
    output_dir = Path(output_dir)
    episode_id = episode.episode_id
    raw = RawEpisode.load(episode, config.droid_root, STEP)
    with raw.trajectory() as h5:
        trajectory = read_trajectory(h5, episode.serials, raw.metadata, config.fps, config.plausibility,
                                     raw.mp4_names())
        joint_positions = read_joint_positions(h5, trajectory.num_frames, config.plausibility, trajectory) \
            if config.occlusion.enabled else None
        warnings = [*episode.warnings, *trajectory.warnings]
        keep = droid_keep_mask(_read_joint_velocity(h5, trajectory.num_frames, warnings), config.idle_filter)
    try:
        language = language_annotations(config.language_annotations_file, episode_id)
    except ValueError as exc:
        raise raw.fail(str(exc)) from exc
    videos = _check_video_frames(raw, trajectory.num_frames, config.video_frame_mismatch, warnings)

    gripper = GripperModel.load(configured_mount(config))
    num_points = config.num_track_points
    flange = pose6_to_matrix(trajectory.cartesian_positions)
    extrinsics = camera_poses(episode_id, episode.serials, raw.metadata, trajectory, flange,
                              CalibrationSources.from_config(config), config.wrist_pose_tolerance_mm)
    warnings.extend(extrinsics.warnings)
    depth = _depth_metas(raw, output_dir, trajectory.num_frames, warnings)
    intrinsics = _camera_intrinsics(config, raw, output_dir, extrinsics, warnings)
    steps = _per_step(config, raw, output_dir, gripper, trajectory, flange, joint_positions, extrinsics, intrinsics,
                      videos, depth, warnings)
    sampling = arc_length_sampling(steps.contact_centroids, config.normalized_step_size_mm)
    normalized = _normalized_flow(gripper, steps, trajectory.gripper_positions, sampling, num_points, episode_id)

    sizes = {"T": trajectory.num_frames, "M": sampling.num_samples, "N": num_points}
    keep_mask = np.ones(trajectory.num_frames, bool) if keep is None else keep
    tracks = schema.TRACKS_NPZ.build(_tracks_values(trajectory, gripper, steps, normalized, sampling, num_points,
                                                    config.normalized_step_size_mm, raw.episode.serials,
                                                    keep_mask, keep is not None), sizes)
    filled = tuple(key for role in CAMERA_ROLES if _tracks_status(role, raw.episode.serials, steps) != TRACKS_OK
                   for key in filled_camera_arrays(role, 0, 0))
    _require_finite(episode_id, tracks, streamed=NormalizedFlow.STREAMED + filled)
    extrinsics_arrays = schema.EXTRINSICS_NPZ.build({"schema_version": SCHEMA_VERSION,
                                                     **extrinsics.arrays(trajectory.num_frames)}, sizes)
    quality = _quality(config, raw, trajectory, gripper, extrinsics, steps, sampling, videos, depth, warnings,
                       keep_mask, keep is not None, language)
    deflate = deflate_by_member(config.npz)
    save_npz_atomic(output_dir / TRACKS.path, tracks, deflate=deflate)
    save_npz_atomic(output_dir / EXTRINSICS.path, extrinsics_arrays, deflate=deflate)
    write_json_atomic(output_dir / QUALITY.path, quality)
    for warning in warnings:
        log.warning("episode %s: %s", episode_id, warning)
    files = {f.path: (output_dir / f.path).stat().st_size for f in OUTPUTS}
    return {"episode_id": episode_id, "output_dir": str(output_dir),
            "num_frames": trajectory.num_frames, "num_points": num_points,
            "num_normalized_steps": sampling.num_samples, "path_length_mm": sampling.path_length_mm,
            "cameras_with_2d_tracks": [c.role for c in steps.cameras.values()], "files": files,
            "warnings": warnings}


def warm_up(config: Config) -> None:
    """Build the models every episode shares (the gripper on its mount; the robot's meshes when
    occlusion is labelled), so episode processes forked afterwards find them built."""
    GripperModel.load(configured_mount(config))
    if config.occlusion.enabled:
        RobotOcclusion.load()


def configured_mount(config: Config) -> GripperMount:
    """The flange-to-gripper mount of config ``gripper``."""
    return GripperMount.of(config.gripper.mount_xyz_m, config.gripper.mount_rpy)


def _check_video_frames(raw: RawEpisode, num_frames: int, policy: VideoFrameMismatchConfig,
                        warnings: list[str]) -> dict[str, VideoFrames | None]:
    """Each camera's MP4 against the T steps under ``policy`` (None where the camera has no MP4,
    a warning). Frames are counted from the packets whose data is in the file, not from the
    MP4's index, so a file cut short is a frame mismatch. Within the tolerance, the steps without
    a frame come from the frames' timestamps (as the depth step and the renderer number them);
    beyond it, or with action fail, the episode fails. An MP4 of exactly T frames is aligned."""
    videos: dict[str, VideoFrames | None] = {}
    for role, serial in raw.episode.serials.items():
        try:
            video = raw.camera_video(serial, frames=True)  # with the frames whose data is in the file
        except VideoError as exc:
            raise raw.fail(str(exc)) from exc
        if video is None:
            videos[serial] = None
            warnings.append(f"{role} camera {serial}: no MP4, frame count not checked")
            continue
        indices = video.info.frame_indices
        assert indices is not None
        listed, count, name = video.info.num_frames, int(indices.size), video.path.name
        if count == num_frames and (count == listed or np.array_equal(indices, np.arange(num_frames))):
            videos[serial] = VideoFrames(name, count, [], 0)
            if count != listed:
                warnings.append(f"{role} camera {serial}: {name} holds {count} frames, one per step, though its "
                                f"index lists {listed} (cut short after the last step)")
            continue
        cut = f" (its index lists {listed}: truncated or damaged)" if count < listed else ""
        mismatch = f"{role} camera {serial}: {name} has {count} frames{cut} but trajectory.h5 has {num_frames} steps"
        if policy.action == "fail":
            raise raw.fail(f"{mismatch} (video_frame_mismatch.action is fail)")
        if abs(count - num_frames) > policy.tolerance_frames:
            raise raw.fail(f"{mismatch}, more than video_frame_mismatch.tolerance_frames = {policy.tolerance_frames}")
        missing = np.setdiff1d(np.arange(num_frames), indices).tolist()
        extra = int(np.count_nonzero((indices < 0) | (indices >= num_frames)))
        if max(len(missing), extra) > policy.tolerance_frames:
            raise raw.fail(f"{mismatch}; by their timestamps {len(missing)} steps have no frame and {extra} "
                           f"frames fall outside the steps, more than video_frame_mismatch.tolerance_frames = "
                           f"{policy.tolerance_frames}")
        videos[serial] = VideoFrames(name, count, missing, extra)
        effects = ([f"no frame for step(s) {', '.join(map(str, missing))}, invisible there"] if missing else []) \
            + ([f"{extra} frame(s) beyond the last step ignored"] if extra else [])
        warnings.append(f"{mismatch}: {'; '.join(effects)}")
    return videos


def _depth_metas(raw: RawEpisode, output_dir: Path, num_frames: int, warnings: list[str]) -> dict[str, DepthMeta]:
    """depth_meta.json of each camera with depth (written earlier by the depth step). Depth whose
    frame count is not T fails the episode; missing depth frames, and a depth.mkv without its
    depth_meta.json (not used), are warnings."""
    metas = {}
    for serial in raw.episode.serials.values():
        path = output_dir / DEPTH_META.for_camera(serial)
        if not path.exists():
            if (output_dir / DEPTH.for_camera(serial)).exists():
                warnings.append(f"camera {serial}: {DEPTH.for_camera(serial)} without {DEPTH_META.name}: not used "
                                "for the occlusion labels")
            continue
        try:
            meta = DepthMeta.load(path)
        except DepthCodecError as exc:
            raise raw.fail(f"camera {serial}: {exc}") from exc
        if meta.num_frames != num_frames:
            raise raw.fail(f"camera {serial}: depth.mkv has {meta.num_frames} frames, trajectory has {num_frames}")
        if meta.missing_frames:
            warnings.append(f"camera {serial}: {len(meta.missing_frames)} depth frame(s) could not be "
                            "produced and are all-invalid (0)")
        noted = meta.source.get("warnings") if isinstance(meta.source, dict) else None
        warnings.extend(f"camera {serial}: depth: {note}" for note in noted or () if isinstance(note, str))
        metas[serial] = meta
    return metas


@dataclass(frozen=True, eq=False)
class StepArrays:
    """The per-step results of the whole episode (T steps, N points): poses in float64, the large
    per-point arrays already in their storage dtypes (float32 points and pixels)."""

    contact_points_local: np.ndarray      # (N, 3)
    contact_normals_local: np.ndarray     # (N, 3)
    tracks_3d: np.ndarray                 # (T, N, 3) float32
    gripper_poses: np.ndarray             # (T, 4, 4)
    contact_centroids: np.ndarray         # (T, 3)
    contact_frames: np.ndarray            # (T, 4, 4)
    left_contact_frames: np.ndarray       # (T, 4, 4)
    right_contact_frames: np.ndarray      # (T, 4, 4)
    cameras: dict[str, CameraProjection]
    occlusion: EpisodeOcclusion


def step_blocks(num_items: int, num_points: int) -> list[slice]:
    """Consecutive slices of ``num_items`` steps (or samples) holding about :data:`BLOCK_POINTS`
    points each: the unit of work whose float64 temporaries are held at once."""
    size = max(1, BLOCK_POINTS // max(num_points, 1))
    return [slice(start, min(start + size, num_items)) for start in range(0, num_items, size)]


def _camera_intrinsics(config: Config, raw: RawEpisode, output_dir: Path, extrinsics: EpisodeExtrinsics,
                       warnings: list[str]) -> dict[str, IntrinsicsRecord]:
    """The intrinsics of every camera that gets 2D tracks, in role order."""
    records: dict[str, IntrinsicsRecord] = {}
    for serial, pose in extrinsics.cameras.items():
        path = output_dir / INTRINSICS.for_camera(serial)
        if not path.is_file():
            if not config.allow_missing_intrinsics:
                raise raw.fail(f"{pose.role} camera {serial} has no intrinsics ({path} missing; run the "
                               "intrinsics step, or set allow_missing_intrinsics)")
            warnings.append(f"{pose.role} camera {serial}: no intrinsics, no 2D tracks")
            continue
        try:
            records[serial] = IntrinsicsRecord.load(path)
        except IntrinsicsError as exc:
            raise raw.fail(str(exc)) from exc
        warnings.extend(f"{pose.role} camera {serial}: {note}" for note in records[serial].warnings or ())
        if not records[serial].rectified:
            warnings.append(f"{pose.role} camera {serial}: intrinsics are not rectified; projected "
                            "with their distortion")
    return records


def _per_step(config: Config, raw: RawEpisode, output_dir: Path, gripper: GripperModel, trajectory: Trajectory,
              flange: np.ndarray, joint_positions: np.ndarray | None, extrinsics: EpisodeExtrinsics,
              intrinsics: dict[str, IntrinsicsRecord], videos: dict[str, VideoFrames | None],
              depth: dict[str, DepthMeta], warnings: list[str]) -> StepArrays:
    """Contact points, their projection into every camera with intrinsics and their occlusion
    labels, block of steps by block of steps (:func:`step_blocks`): vectorized within a block,
    memory bounded by the block whatever T is. A step the camera's MP4 has no frame for is
    invisible."""
    num_steps, num_points = trajectory.num_frames, config.num_track_points
    half = num_points // 2
    mount = gripper.gripper_frame_in_flange()
    local = gripper.contact_points_local(num_points)
    tracks = np.empty((num_steps, num_points, 3), np.float32)
    centroids = np.empty((num_steps, 3))
    left_frames, right_frames = np.empty((num_steps, 4, 4)), np.empty((num_steps, 4, 4))
    poses = {serial: extrinsics.cameras[serial] for serial in intrinsics}
    pixels = {serial: np.empty((num_steps, num_points, 2), np.float32) for serial in poses}
    seen = {serial: np.empty((num_steps, num_points), bool) for serial in poses}
    setups = {serial: CameraSetup(serial, poses[serial].role, record.size) for serial, record in intrinsics.items()}
    has_frame = {serial: np.ones(num_steps, bool) for serial in poses}
    for serial in poses:
        video = videos.get(serial)
        if video is not None:
            has_frame[serial][video.steps_without_frame] = False
    gripper_positions = trajectory.gripper_positions
    with OcclusionLabeller(config.occlusion, raw, output_dir, joint_positions, gripper, setups, depth, num_steps,
                           num_points) as labeller:
        for block in step_blocks(num_steps, num_points):
            left_finger, right_finger = gripper.finger_poses(gripper_positions[block])
            left_base, right_base = flange[block] @ left_finger, flange[block] @ right_finger
            points = _pad_points(left_base, right_base, local)
            tracks[block] = points
            centroids[block] = points.mean(axis=1)
            left_frames[block] = _frames(left_base[:, :3, :3], points[:, :half].mean(axis=1))
            right_frames[block] = _frames(right_base[:, :3, :3], points[:, half:].mean(axis=1))
            views = {}
            for serial, pose in poses.items():
                record = intrinsics[serial]
                base_from_camera = pose.base_from_camera if pose.base_from_camera.ndim == 2 \
                    else pose.base_from_camera[block]
                in_camera = points_in_camera(points, base_from_camera)
                projected = project(in_camera, record.K, record.distortion)
                visibility = visible(projected, in_camera[..., 2], record.width, record.height,
                                     config.min_depth.for_role(pose.role)) & has_frame[serial][block, None]
                pixels[serial][block] = projected
                seen[serial][block] = visibility
                views[serial] = CameraView(base_from_camera, projected, visibility)
            labeller.label(block, flange[block], gripper_positions[block], points, views)
        occlusion = labeller.result(warnings)
    cameras: dict[str, CameraProjection] = {}
    for serial, pose in poses.items():
        if not seen[serial].any():
            warnings.append(f"{pose.role} camera {serial}: no contact point visible in any frame")
        cameras[serial] = CameraProjection(serial, pose.role, pixels[serial], seen[serial], intrinsics[serial])
    gripper_poses = flange @ mount
    return StepArrays(local, gripper.contact_normals_local(num_points), tracks, gripper_poses, centroids,
                      _frames(gripper_poses[:, :3, :3], centroids), left_frames, right_frames, cameras, occlusion)


def _pad_points(left: np.ndarray, right: np.ndarray, local: np.ndarray) -> np.ndarray:
    """(K, N, 3) contact points from (K, 4, 4) finger poses and the (N, 3) finger-frame points."""
    half = local.shape[0] // 2
    return np.concatenate([_apply(left, local[:half]), _apply(right, local[half:])], axis=1)


def _apply(poses: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(K, 4, 4) poses applied to (P, 3) points -> (K, P, 3); one batched matmul (BLAS), which is
    several times faster than the equivalent einsum at these sizes."""
    return points @ np.swapaxes(poses[:, :3, :3], -1, -2) + poses[:, None, :3, 3]


def _frames(rotations: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """(K, 4, 4) homogeneous frames from (K, 3, 3) rotations and (K, 3) origins."""
    frames = np.zeros((rotations.shape[0], 4, 4))
    frames[:, :3, :3] = rotations
    frames[:, :3, 3] = origins
    frames[:, 3, 3] = 1.0
    return frames


@dataclass(frozen=True, eq=False)
class NormalizedFlow:
    """The normalized flow of tracks.npz: per-sample arrays, and the (M, N, 3) points streamed
    sample block by sample block while tracks.npz is written. The left and right finger frames,
    whose origins are means of those points, are filled in as the points are produced: they are
    written after the points (float32 storage arrays, passed to the writer as they are)."""

    centroids: np.ndarray             # (M, 3)
    gripper_positions: np.ndarray     # (M,)
    frames: np.ndarray                # (M, 4, 4)
    tracks_3d: StreamedArray          # (M, N, 3) float32
    left_frames: np.ndarray           # (M, 4, 4) float32, filled while tracks_3d streams
    right_frames: np.ndarray          # (M, 4, 4) float32, filled while tracks_3d streams

    # Keys produced while tracks.npz is written, and checked finite then.
    STREAMED = ("normalized_tracks_3d", "normalized_left_frames", "normalized_right_frames")


def _normalized_flow(gripper: GripperModel, steps: StepArrays, gripper_positions: np.ndarray,
                     sampling: ArcLengthSampling, num_points: int, episode_id: str) -> NormalizedFlow:
    """The rigid gripper re-posed at each arc-length sample (see module docstring)."""
    centroids = interpolate_linear(steps.contact_centroids, sampling)
    rotations = interpolate_rotations(steps.contact_frames[:, :3, :3], sampling)
    opening = interpolate_linear(gripper_positions, sampling)
    left_frames = np.empty((sampling.num_samples, 4, 4), np.float32)
    right_frames = np.empty((sampling.num_samples, 4, 4), np.float32)

    def points() -> Iterator[np.ndarray]:
        half = num_points // 2
        mount_rotation = gripper.gripper_frame_in_flange()[:3, :3]
        to_finger = mount_rotation.T  # contact (gripper) axes -> flange axes, then the finger's own
        local = steps.contact_points_local
        parts = (local[:half], local[half:])
        for block in step_blocks(sampling.num_samples, num_points):
            left_finger, right_finger = gripper.finger_poses(opening[block])
            # A point p (finger frame) lies at q = p R_f^T + t_f in the flange; in the contact frame
            # (gripper-frame axes, origin at the points' centroid c) at (q - c) M, posed at the
            # sample by R: centroid + (q - c) M R^T. Fused per finger into one product of the
            # finger's points, p (R_f^T M R^T) + (t_f - c) M R^T + centroid, with c from the
            # points' sums: one pass over the block's points instead of five. Each pad's centre is
            # its points' mean put through the same map.
            turn = mount_rotation @ np.swapaxes(rotations[block], -1, -2)
            fingers = [(part, np.swapaxes(pose[:, :3, :3], -1, -2), pose[:, :3, 3])   # p, R_f^T, t_f
                       for part, pose in zip(parts, (left_finger, right_finger))]
            centre = sum(part.sum(axis=0) @ finger_turn + len(part) * shift
                         for part, finger_turn, shift in fingers) / num_points
            tracks = np.empty((len(opening[block]), num_points, 3), np.float32)
            pad_centres = []
            for (part, finger_turn, shift), where in zip(fingers, (slice(0, half), slice(half, num_points))):
                offset = centroids[block] + ((shift - centre)[:, None, :] @ turn)[:, 0]
                posed = finger_turn @ turn
                tracks[:, where] = part @ posed + offset[:, None, :]
                pad_centres.append(part.mean(axis=0) @ posed + offset)
            left_frames[block] = _frames(rotations[block] @ to_finger @ left_finger[:, :3, :3], pad_centres[0])
            right_frames[block] = _frames(rotations[block] @ to_finger @ right_finger[:, :3, :3], pad_centres[1])
            if not (np.isfinite(tracks).all() and np.isfinite(left_frames[block]).all()
                    and np.isfinite(right_frames[block]).all()):
                raise EpisodeError(episode_id, STEP, "computed normalized tracks or finger frames contain NaN or inf")
            yield tracks

    streamed = StreamedArray(np.dtype(np.float32), (sampling.num_samples, num_points, 3), points())
    return NormalizedFlow(centroids, opening, _frames(rotations, centroids), streamed, left_frames, right_frames)


def _tracks_status(role: str, serials: dict[str, str], steps: StepArrays) -> str:
    """tracks.npz ``tracks_2d_status`` of ``role``."""
    if role not in serials:
        return NO_CAMERA
    return TRACKS_OK if serials[role] in steps.cameras else NO_INTRINSICS


def _tracks_values(trajectory: Trajectory, gripper: GripperModel, steps: StepArrays, normalized: NormalizedFlow,
                   sampling: ArcLengthSampling, num_points: int, step_mm: float, serials: dict[str, str],
                   keep: np.ndarray, keep_computed: bool) -> dict[str, Any]:
    """The values of tracks.npz, in the order written; core.schema.TRACKS_NPZ gives their storage
    dtypes (docs/outputs.md). Every role has its camera keys (filled where it has no 2D tracks). The
    streamed normalized points come last but for the finger frames filled while they stream."""
    occlusion = steps.occlusion.arrays()
    by_serial = {c.serial: c for c in steps.cameras.values()}
    values: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "num_frames": trajectory.num_frames,
        "num_points_per_finger": num_points // 2,
        "fps": trajectory.fps,
        "cartesian_positions": trajectory.cartesian_positions,
        "gripper_positions": trajectory.gripper_positions,
        "contact_points_local": steps.contact_points_local,
        "contact_normals_local": steps.contact_normals_local,
        "gripper_poses": steps.gripper_poses,
        "tracks_3d": steps.tracks_3d,
        "contact_centroids": steps.contact_centroids,
        "contact_frames": steps.contact_frames,
        "left_contact_frames": steps.left_contact_frames,
        "right_contact_frames": steps.right_contact_frames,
        "keep": keep,
        "keep_computed": keep_computed,
        "camera_serials": [serials.get(role, "") for role in CAMERA_ROLES],
        "tracks_2d_status": [_tracks_status(role, serials, steps) for role in CAMERA_ROLES],
        "normalized_step_size_mm": step_mm,
        "num_normalized_steps": sampling.num_samples,
        "cumulative_distance_mm": sampling.cumulative_distance_mm,
        "frame_to_normalized_idx": sampling.frame_to_sample,
    }
    for role in CAMERA_ROLES:
        camera = by_serial.get(serials.get(role, ""))
        if camera is None:
            values.update(filled_camera_arrays(role, trajectory.num_frames, num_points))
        else:
            values.update(camera.arrays())
            values[f"occlusion_{role}"] = occlusion[f"occlusion_{camera.serial}"]
    values.update({"normalized_centroids": normalized.centroids,
                   "normalized_gripper_positions": normalized.gripper_positions,
                   "normalized_frames": normalized.frames,
                   "normalized_tracks_3d": normalized.tracks_3d,
                   "normalized_left_frames": normalized.left_frames,
                   "normalized_right_frames": normalized.right_frames})
    return values


def _require_finite(episode_id: str, arrays: dict[str, Any], streamed: tuple[str, ...]) -> None:
    """Never write an empty or non-finite track (the ``streamed`` keys are checked as they are produced)."""
    for name, value in arrays.items():
        if name in streamed:
            continue
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise EpisodeError(episode_id, STEP, f"computed {name} contains NaN or inf")
        if value.ndim and value.size == 0:
            raise EpisodeError(episode_id, STEP, f"computed {name} is empty")


def _quality(config: Config, raw: RawEpisode, trajectory: Trajectory, gripper: GripperModel,
             extrinsics: EpisodeExtrinsics, steps: StepArrays, sampling: ArcLengthSampling,
             videos: dict[str, VideoFrames | None], depth: dict[str, DepthMeta], warnings: list[str],
             keep: np.ndarray, keep_computed: bool, language: dict[str, str | None] | None) -> dict[str, Any]:
    """quality.json: provenance of every input and the measured checks. Every per-camera dict is
    keyed by role (wrist, ext1, ext2: all three, null where there is nothing), so that no key
    varies between episodes; serials are values (``camera_serials``, ``episode.serials``)."""
    cameras, occlusion = steps.cameras, steps.occlusion
    episode = raw.episode
    serials = episode.serials
    by_role = {role: serials.get(role) for role in CAMERA_ROLES}

    def per_role(values: dict[str, Any]) -> dict[str, Any]:
        """A dict keyed by serial, keyed by role (null for a role without a value)."""
        return {role: None if serial is None else values.get(serial) for role, serial in by_role.items()}

    gripper_positions = trajectory.gripper_positions
    separation_mm = 1000.0 * gripper.pad_separation(gripper_positions)
    mount = configured_mount(config)
    metadata = published_metadata(raw.metadata)
    occlusion_quality = occlusion.quality({s: c.visibility for s, c in cameras.items()})
    occlusion_quality["cameras"] = per_role(occlusion_quality["cameras"])
    return {
        "schema_version": SCHEMA_VERSION,
        "step": STEP,
        "episode": {"episode_id": episode.episode_id, "relative_path": episode.relative_path,
                    "lab": episode.lab, "outcome": episode.outcome, "date": episode.date,
                    "folder": episode.folder, "serials": by_role},
        "camera_serials": [serials.get(role, "") for role in CAMERA_ROLES],
        "current_task": metadata["current_task"],
        **(language or {f"language_instruction_{i}": None for i in range(1, len(LANGUAGE_KEYS) + 1)}),
        "rlds": rlds_keys(episode.relative_path),
        "kept_fraction": float(keep.mean()),
        "keep_computed": keep_computed,
        "idle_filter": {"min_idle_steps": config.idle_filter.min_idle_steps,
                        "min_kept_steps": config.idle_filter.min_kept_steps,
                        "cut_last_steps": config.idle_filter.cut_last_steps},
        "metadata": metadata,
        "num_frames": trajectory.num_frames,
        "fps": trajectory.fps,
        "fps_source": trajectory.fps_source,
        "plausibility": trajectory.plausibility,
        "control_timestamps": trajectory.control_timestamps,
        "video_frames": per_role({s: None if v is None else v.frame_count for s, v in videos.items()}),
        "video_alignment": per_role({s: None if v is None else v.quality() for s, v in videos.items()}),
        "camera_types": per_role(dict(trajectory.camera_types)),
        "num_track_points": config.num_track_points,
        "num_points_per_finger": config.num_track_points // 2,
        "normalized_step_size_mm": config.normalized_step_size_mm,
        "num_normalized_steps": sampling.num_samples,
        "path_length_mm": sampling.path_length_mm,
        "gripper_position_range": [float(gripper_positions.min()), float(gripper_positions.max())],
        "pad_separation_range_mm": [float(separation_mm.min()), float(separation_mm.max())],
        "gripper_mount": {"xyz_m": list(mount.xyz_m), "rpy": list(mount.rpy)},
        "calibration": extrinsics.quality(),
        "intrinsics": per_role({s: {"source": c.intrinsics.source, "rectified": c.intrinsics.rectified,
                                    "width": c.intrinsics.width, "height": c.intrinsics.height}
                                for s, c in cameras.items()}),
        "cameras_with_2d_tracks": [c.role for c in cameras.values()],
        "tracks_2d_status": {role: _tracks_status(role, serials, steps) for role in CAMERA_ROLES},
        "cameras_without_intrinsics": [c.role for s, c in extrinsics.cameras.items() if s not in cameras],
        "visible_fraction": per_role({s: float(c.visibility.mean()) for s, c in cameras.items()}),
        "occlusion": occlusion_quality,
        "wrist_pose_deviation": extrinsics.wrist_check,
        "depth": per_role({s: _depth_quality(meta) for s, meta in depth.items()}),
        "warnings": warnings,
    }


def _depth_quality(meta: DepthMeta) -> dict[str, Any]:
    """One camera's entry of quality.json ``depth``, from its depth_meta.json."""
    source = meta.source
    return {"backend": source.get("backend"), "num_frames": meta.num_frames,
            "missing_frames": list(meta.missing_frames), "valid_fraction": source.get("valid_fraction"),
            "source_frames": source.get("source_frames"),
            "frame_count_mismatch": source.get("frame_count_mismatch")}
