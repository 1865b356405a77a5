"""The tracks step: one episode's gripper contact tracks, their 2D projections, the 1 mm
normalized flow, camera extrinsics and quality report (contract: docs/outputs.md).

Pipeline, vectorized over steps T and points N: flange poses (DROID ``cartesian_position``) ->
gripper and finger poses (Robotiq 2F-85 model at each ``gripper_position``) -> pad contact points
in the base frame -> projection into every camera with intrinsics -> arc-length resampling of
the contact-centroid path. Computation is float64; storage uses float32 where its rounding
(below 0.25 micrometre for positions within 4 m, below 1e-4 px for pixels in a 1280x720 image)
is far below any physical accuracy of the data.

Normalized tracks are the rigid gripper re-posed at each sample: centroid by linear
interpolation along the path, orientation by Slerp of the contact frame, opening by linear
interpolation of gripper_position with the gripper model re-applied. So every normalized sample
is an exact pose of the real pad geometry, its points' mean is exactly the normalized centroid,
and a sample that falls on a frame reproduces that frame's tracks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core import schema
from droid_pipeline.core.atomic import savez_atomic, write_json_atomic
from droid_pipeline.core.config import Config, VideoFrameMismatchConfig
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import DEPTH_META, EXTRINSICS, INTRINSICS, QUALITY, SCHEMA_VERSION, TRACKS
from droid_pipeline.formats.depth_codec import DepthCodecError, DepthMeta
from droid_pipeline.formats.intrinsics import IntrinsicsError, IntrinsicsRecord
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
from droid_pipeline.raw.trajectory import Trajectory, read_trajectory
from droid_pipeline.raw.video import VideoError, frame_indices
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import GripperMount
from droid_pipeline.steps.extrinsics import CalibrationSources, EpisodeExtrinsics, camera_poses

STEP = "tracks"
OUTPUTS = (TRACKS, EXTRINSICS, QUALITY)

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
        """This camera's values of tracks.npz (stored as core.schema.TRACKS_NPZ says)."""
        serial = self.serial
        return {f"tracks_2d_{serial}": self.pixels, f"visibility_{serial}": self.visibility,
                f"intrinsics_{serial}": self.intrinsics.K, f"distortion_{serial}": self.intrinsics.distortion,
                f"image_size_{serial}": self.intrinsics.size}


def generate_tracks(config: Config, episode: Episode, output_dir: os.PathLike | str) -> dict[str, Any]:
    """Write tracks.npz, extrinsics.npz and quality.json for one episode; return a summary.

    Reads the raw episode under ``config.droid_root`` and the intrinsics step's
    ``output_dir/recordings/<serial>/intrinsics.json``. Bad input raises EpisodeError (step
    ``tracks``); nothing is written unless every output is complete and finite.
    """
    output_dir = Path(output_dir)
    episode_id = episode.episode_id
    raw = RawEpisode.load(episode, config.droid_root, STEP)
    with raw.trajectory() as h5:
        trajectory = read_trajectory(h5, episode.serials, raw.metadata, config.fps, config.plausibility)
    warnings = list(trajectory.warnings)
    videos = _check_video_frames(raw, trajectory.num_frames, config.video_frame_mismatch, warnings)

    gripper = GripperModel.load(configured_mount(config))
    num_points = config.num_track_points
    geometry = _contact_geometry(gripper, trajectory, num_points)
    extrinsics = camera_poses(episode_id, episode.serials, raw.metadata, trajectory, geometry["flange"],
                              CalibrationSources.from_config(config), config.wrist_pose_tolerance_mm)
    warnings.extend(extrinsics.warnings)
    depth = _depth_metas(raw, output_dir, trajectory.num_frames, warnings)
    cameras = _project_cameras(config, raw, output_dir, extrinsics, geometry["tracks_3d"], videos, warnings)
    sampling = arc_length_sampling(geometry["contact_centroids"], config.normalized_step_size_mm)
    normalized = _normalized_flow(gripper, geometry, trajectory.gripper_positions, sampling, num_points)

    sizes = {"T": trajectory.num_frames, "M": sampling.num_samples, "N": num_points}
    tracks = schema.TRACKS_NPZ.build(_tracks_values(trajectory, geometry, normalized, sampling, cameras,
                                                    num_points, config.normalized_step_size_mm), sizes)
    _require_finite(episode_id, tracks)
    extrinsics_arrays = schema.EXTRINSICS_NPZ.build({"schema_version": SCHEMA_VERSION, **extrinsics.arrays()},
                                                    sizes)
    quality = _quality(config, raw, trajectory, gripper, extrinsics, cameras, sampling, videos, depth, warnings)
    savez_atomic(output_dir / TRACKS.path, **tracks)
    savez_atomic(output_dir / EXTRINSICS.path, **extrinsics_arrays)
    write_json_atomic(output_dir / QUALITY.path, quality)
    for warning in warnings:
        log.warning("episode %s: %s", episode_id, warning)
    files = {f.path: (output_dir / f.path).stat().st_size for f in OUTPUTS}
    return {"episode_id": episode_id, "output_dir": str(output_dir),
            "num_frames": trajectory.num_frames, "num_points": num_points,
            "num_normalized_steps": sampling.num_samples, "path_length_mm": sampling.path_length_mm,
            "cameras_with_2d_tracks": list(cameras), "files": files, "warnings": warnings}


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
            video = raw.camera_video(serial)
        except VideoError as exc:
            raise raw.fail(str(exc)) from exc
        if video is None:
            videos[serial] = None
            warnings.append(f"{role} camera {serial}: no MP4, frame count not checked")
            continue
        try:
            indices = frame_indices(video.path)  # the frames whose data is in the file
        except VideoError as exc:
            raise raw.fail(str(exc)) from exc
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
    frame count is not T fails the episode; missing depth frames are a warning."""
    metas = {}
    for serial in raw.episode.serials.values():
        path = output_dir / DEPTH_META.for_camera(serial)
        if not path.exists():
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
        metas[serial] = meta
    return metas


def _contact_geometry(gripper: GripperModel, trajectory: Trajectory, num_points: int) -> dict[str, np.ndarray]:
    """Per-step gripper, finger and contact-point poses in the base frame (float64)."""
    half = num_points // 2
    flange = pose6_to_matrix(trajectory.cartesian_positions)
    mount = gripper.gripper_frame_in_flange()
    local = gripper.contact_points_local(num_points)
    left_finger, right_finger = gripper.finger_poses(trajectory.gripper_positions)
    left_base, right_base = flange @ left_finger, flange @ right_finger
    tracks = _pad_points(left_base, right_base, local)
    gripper_poses = flange @ mount
    centroids = tracks.mean(axis=1)
    return {
        "flange": flange,
        "mount": mount,
        "contact_points_local": local,
        "tracks_3d": tracks,
        "gripper_poses": gripper_poses,
        "contact_centroids": centroids,
        "contact_frames": _frames(gripper_poses[:, :3, :3], centroids),
        "left_contact_frames": _frames(left_base[:, :3, :3], tracks[:, :half].mean(axis=1)),
        "right_contact_frames": _frames(right_base[:, :3, :3], tracks[:, half:].mean(axis=1)),
    }


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


def _normalized_flow(gripper: GripperModel, geometry: dict[str, np.ndarray], gripper_positions: np.ndarray,
                     sampling: ArcLengthSampling, num_points: int) -> dict[str, np.ndarray]:
    """The rigid gripper re-posed at each arc-length sample (see module docstring)."""
    half = num_points // 2
    centroids = interpolate_linear(geometry["contact_centroids"], sampling)
    rotations = interpolate_rotations(geometry["contact_frames"][:, :3, :3], sampling)
    opening = interpolate_linear(gripper_positions, sampling)
    mount_rotation = geometry["mount"][:3, :3]
    local = geometry["contact_points_local"]
    left_finger, right_finger = gripper.finger_poses(opening)
    in_flange = _pad_points(left_finger, right_finger, local)
    # Points in the contact frame: gripper-frame axes, origin at the points' centroid.
    in_contact = (in_flange - in_flange.mean(axis=1, keepdims=True)) @ mount_rotation
    tracks = centroids[:, None, :] + in_contact @ np.swapaxes(rotations, -1, -2)
    to_finger = mount_rotation.T  # contact (gripper) axes -> flange axes, then the finger's own
    return {
        "normalized_centroids": centroids,
        "normalized_gripper_positions": opening,
        "normalized_tracks_3d": tracks,
        "normalized_frames": _frames(rotations, centroids),
        "normalized_left_frames": _frames(rotations @ to_finger @ left_finger[:, :3, :3],
                                          tracks[:, :half].mean(axis=1)),
        "normalized_right_frames": _frames(rotations @ to_finger @ right_finger[:, :3, :3],
                                           tracks[:, half:].mean(axis=1)),
    }


def _project_cameras(config: Config, raw: RawEpisode, output_dir: Path, extrinsics: EpisodeExtrinsics,
                     tracks_3d: np.ndarray, videos: dict[str, VideoFrames | None],
                     warnings: list[str]) -> dict[str, CameraProjection]:
    """2D tracks and visibility for every camera with intrinsics, in role order; a step the
    camera's MP4 has no frame for is invisible."""
    cameras: dict[str, CameraProjection] = {}
    for serial, pose in extrinsics.cameras.items():
        path = output_dir / INTRINSICS.for_camera(serial)
        if not path.is_file():
            if not config.allow_missing_intrinsics:
                raise raw.fail(f"{pose.role} camera {serial} has no intrinsics ({path} missing; run the "
                               "intrinsics step, or set allow_missing_intrinsics)")
            warnings.append(f"{pose.role} camera {serial}: no intrinsics, no 2D tracks")
            continue
        try:
            intrinsics = IntrinsicsRecord.load(path)
        except IntrinsicsError as exc:
            raise raw.fail(str(exc)) from exc
        if not intrinsics.rectified:
            warnings.append(f"{pose.role} camera {serial}: intrinsics are not rectified; projected "
                            "with their distortion")
        in_camera = points_in_camera(tracks_3d, pose.base_from_camera)
        pixels = project(in_camera, intrinsics.K, intrinsics.distortion)
        seen = visible(pixels, in_camera[..., 2], intrinsics.width, intrinsics.height,
                       config.min_depth.for_role(pose.role))
        video = videos.get(serial)
        if video is not None:
            seen[video.steps_without_frame] = False
        if not seen.any():
            warnings.append(f"{pose.role} camera {serial}: no contact point visible in any frame")
        cameras[serial] = CameraProjection(serial, pose.role, pixels, seen, intrinsics)
    return cameras


def _tracks_values(trajectory: Trajectory, geometry: dict[str, np.ndarray], normalized: dict[str, np.ndarray],
                   sampling: ArcLengthSampling, cameras: dict[str, CameraProjection], num_points: int,
                   step_mm: float) -> dict[str, Any]:
    """The values of tracks.npz; core.schema.TRACKS_NPZ gives their storage dtypes (docs/outputs.md)."""
    values: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "num_frames": trajectory.num_frames,
        "num_points_per_finger": num_points // 2,
        "fps": trajectory.fps,
        "cartesian_positions": trajectory.cartesian_positions,
        "gripper_positions": trajectory.gripper_positions,
        "contact_points_local": geometry["contact_points_local"],
        "gripper_poses": geometry["gripper_poses"],
        "tracks_3d": geometry["tracks_3d"],
        "contact_centroids": geometry["contact_centroids"],
        "contact_frames": geometry["contact_frames"],
        "left_contact_frames": geometry["left_contact_frames"],
        "right_contact_frames": geometry["right_contact_frames"],
        "cameras_with_2d_tracks": list(cameras),
        "normalized_step_size_mm": step_mm,
        "num_normalized_steps": sampling.num_samples,
        "cumulative_distance_mm": sampling.cumulative_distance_mm,
        "frame_to_normalized_idx": sampling.frame_to_sample,
        **{key: normalized[key] for key in ("normalized_centroids", "normalized_gripper_positions",
                                            "normalized_tracks_3d", "normalized_frames",
                                            "normalized_left_frames", "normalized_right_frames")},
    }
    for camera in cameras.values():
        values.update(camera.arrays())
    return values


def _require_finite(episode_id: str, arrays: dict[str, np.ndarray]) -> None:
    """Never write an empty or non-finite track."""
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise EpisodeError(episode_id, STEP, f"computed {name} contains NaN or inf")
        if value.ndim and value.size == 0:
            raise EpisodeError(episode_id, STEP, f"computed {name} is empty")


def _quality(config: Config, raw: RawEpisode, trajectory: Trajectory, gripper: GripperModel,
             extrinsics: EpisodeExtrinsics, cameras: dict[str, CameraProjection], sampling: ArcLengthSampling,
             videos: dict[str, VideoFrames | None], depth: dict[str, DepthMeta], warnings: list[str]) -> dict[str, Any]:
    """quality.json: provenance of every input and the measured checks."""
    episode = raw.episode
    gripper_positions = trajectory.gripper_positions
    separation_mm = 1000.0 * gripper.pad_separation(gripper_positions)
    mount = configured_mount(config)
    return {
        "schema_version": SCHEMA_VERSION,
        "step": STEP,
        "episode": {"episode_id": episode.episode_id, "relative_path": episode.relative_path,
                    "lab": episode.lab, "outcome": episode.outcome, "date": episode.date,
                    "folder": episode.folder, "serials": dict(episode.serials)},
        "metadata": raw.metadata,
        "num_frames": trajectory.num_frames,
        "fps": trajectory.fps,
        "fps_source": trajectory.fps_source,
        "plausibility": trajectory.plausibility,
        "control_timestamps": trajectory.control_timestamps,
        "video_frames": {s: None if v is None else v.frame_count for s, v in videos.items()},
        "video_alignment": {s: None if v is None else v.quality() for s, v in videos.items()},
        "camera_types": dict(trajectory.camera_types),
        "num_track_points": config.num_track_points,
        "num_points_per_finger": config.num_track_points // 2,
        "normalized_step_size_mm": config.normalized_step_size_mm,
        "num_normalized_steps": sampling.num_samples,
        "path_length_mm": sampling.path_length_mm,
        "gripper_position_range": [float(gripper_positions.min()), float(gripper_positions.max())],
        "pad_separation_range_mm": [float(separation_mm.min()), float(separation_mm.max())],
        "gripper_mount": {"xyz_m": list(mount.xyz_m), "rpy": list(mount.rpy)},
        "calibration": extrinsics.quality(),
        "intrinsics": {s: {"role": c.role, "source": c.intrinsics.source, "rectified": c.intrinsics.rectified,
                           "width": c.intrinsics.width, "height": c.intrinsics.height} for s, c in cameras.items()},
        "cameras_with_2d_tracks": list(cameras),
        "cameras_without_intrinsics": [s for s in extrinsics.cameras if s not in cameras],
        "visible_fraction": {s: float(c.visibility.mean()) for s, c in cameras.items()},
        "wrist_pose_deviation": extrinsics.wrist_check,
        "depth": {s: _depth_quality(meta) for s, meta in depth.items()},
        "warnings": warnings,
    }


def _depth_quality(meta: DepthMeta) -> dict[str, Any]:
    """One camera's entry of quality.json ``depth``, from its depth_meta.json."""
    source = meta.source
    return {"backend": source.get("backend"), "num_frames": meta.num_frames,
            "missing_frames": list(meta.missing_frames), "valid_fraction": source.get("valid_fraction"),
            "source_frames": source.get("source_frames"),
            "frame_count_mismatch": source.get("frame_count_mismatch")}
