"""Camera poses (T_base_cam of the left lens, OpenCV optical frame) for one episode, with provenance.

Exterior cameras are static; each takes, in order:

1. the entry for this exact episode id in DROID's published cam2base file
   (``cam2base_extrinsics_path``), never a partial or fuzzy match of the id. An entry that names
   another episode, or lists cameras this episode does not have, is another episode's
   calibration and fails the episode;
2. else the metadata's ``<role>_cam_extrinsics``.

The wrist camera moves with the gripper: its per-step pose is the h5's
``observation/camera_extrinsics/<serial>_left``, cross-checked against flange pose composed with
the h5's ``<serial>_left_gripper_offset``; the largest deviation is reported.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.geometry.poses import pose6_to_matrix
from droid_pipeline.raw.trajectory import CAMERA_EXTRINSICS_GROUP, Trajectory

STEP = "tracks"   # camera poses are resolved within the tracks step
# Keys of a cam2base entry that, when present, must name the episode the entry is filed under.
ENTRY_ID_KEYS = ("uuid", "episode_id", "episode")


@dataclass(frozen=True)
class CameraPose:
    """One camera's pose in the robot base frame and where it came from."""

    serial: str
    role: str
    base_from_camera: np.ndarray   # (4, 4) for exterior cameras, (T, 4, 4) for the wrist camera
    source: str


@dataclass(frozen=True)
class EpisodeExtrinsics:
    """Every camera's pose, the calibration entry used, and the wrist consistency check."""

    cameras: dict[str, CameraPose]                 # by serial, in role order
    calibration_file: str | None                   # file name only: no local paths in outputs
    calibration_entry: dict[str, Any] | None
    wrist_check: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)

    @property
    def wrist_serial(self) -> str | None:
        return next((s for s, c in self.cameras.items() if c.role == "wrist"), None)

    def arrays(self) -> dict[str, np.ndarray]:
        """Contents of extrinsics.npz (strings as unicode arrays: loads with allow_pickle=False)."""
        out: dict[str, np.ndarray] = {
            "serials": np.array(list(self.cameras), dtype=str),
            "roles": np.array([c.role for c in self.cameras.values()], dtype=str),
            "sources": np.array([c.source for c in self.cameras.values()], dtype=str),
            "wrist_serial": np.array(self.wrist_serial or "", dtype=str),
        }
        for serial, camera in self.cameras.items():
            out[f"T_base_cam_{serial}"] = camera.base_from_camera.astype(np.float64)
        return out

    def quality(self) -> dict[str, Any]:
        """Provenance for quality.json: file, exact entry, and each camera's source."""
        return {
            "cam2base_file": self.calibration_file,
            "cam2base_entry": self.calibration_entry,
            "cameras": {s: {"role": c.role, "source": c.source} for s, c in self.cameras.items()},
        }


def camera_poses(episode_id: str, serials: dict[str, str], metadata: dict[str, Any],
                 trajectory: Trajectory, flange_poses: np.ndarray,
                 cam2base_path: os.PathLike | str | None, wrist_tolerance_mm: float) -> EpisodeExtrinsics:
    """Resolve every camera's T_base_cam (see module docstring); bad calibration raises EpisodeError."""
    entry = None
    cam2base_file = None if cam2base_path is None else Path(cam2base_path).name
    if cam2base_path is not None:
        entry = _episode_entry(episode_id, serials, Path(cam2base_path))
    cameras: dict[str, CameraPose] = {}
    warnings: list[str] = []
    wrist_check = None
    for role, serial in serials.items():
        if role == "wrist":
            if trajectory.wrist_extrinsics is None:
                raise EpisodeError(episode_id, STEP, f"the trajectory has no poses of wrist camera {serial}")
            cameras[serial] = CameraPose(serial, role, pose6_to_matrix(trajectory.wrist_extrinsics),
                                         f"h5:{CAMERA_EXTRINSICS_GROUP}/{serial}_left")
            wrist_check = _wrist_check(serial, cameras[serial].base_from_camera, trajectory,
                                       flange_poses, wrist_tolerance_mm, warnings)
            continue
        if entry is not None and serial in entry:
            pose = _pose6(episode_id, entry[serial], f"cam2base entry {serial}")
            source = f"cam2base:{cam2base_file}"
        else:
            key = f"{role}_cam_extrinsics"
            if key not in metadata:
                where = ("no cam2base file configured" if cam2base_file is None else
                         f"{cam2base_file} has no entry for this camera")
                raise EpisodeError(episode_id, STEP, f"no calibration for {role} camera {serial}: "
                                   f"{where} and the metadata has no {key}")
            pose = _pose6(episode_id, metadata[key], f"metadata {key}")
            source = f"metadata:{key}"
            if entry is not None:
                warnings.append(f"cam2base entry lacks {role} camera {serial}: used metadata {key}")
        cameras[serial] = CameraPose(serial, role, pose6_to_matrix(pose), source)
    return EpisodeExtrinsics(cameras, cam2base_file, entry, wrist_check, warnings)


@functools.lru_cache(maxsize=4)
def _load_cam2base(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """The parsed cam2base file (cached per path and version: it holds tens of thousands of entries)."""
    with open(path, "rb") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError("top level is not a JSON object keyed by episode id")
    return data


def _episode_entry(episode_id: str, serials: dict[str, str], path: Path) -> dict[str, Any] | None:
    """This episode's cam2base entry by exact id (None if absent), checked to be this episode's."""
    try:
        stat = path.stat()
        data = _load_cam2base(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EpisodeError(episode_id, STEP, f"cannot read cam2base file {path}: {exc}") from exc
    entry = data.get(episode_id)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise EpisodeError(episode_id, STEP, f"{path.name}: entry for this episode is not an object")
    for key in ENTRY_ID_KEYS:
        named = entry.get(key)
        if isinstance(named, str) and named != episode_id:
            raise EpisodeError(episode_id, STEP, f"{path.name}: the entry filed under this episode "
                               f"has {key}={named!r}: it is another episode's calibration")
    foreign = sorted(k for k in entry if k.isdigit() and k not in serials.values())
    if foreign:
        known = ", ".join(f"{r}={s}" for r, s in serials.items())
        raise EpisodeError(episode_id, STEP, f"{path.name}: the entry for this episode lists "
                           f"camera(s) {', '.join(foreign)} that the episode does not have ({known}): "
                           "it is another episode's calibration")
    return entry


def _pose6(episode_id: str, value: Any, what: str) -> np.ndarray:
    """A DROID 6-vector pose, checked to be six finite numbers."""
    try:
        pose = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pose = np.empty(0)
    if pose.shape != (6,) or not np.isfinite(pose).all():
        raise EpisodeError(episode_id, STEP, f"{what} is not six finite numbers [x,y,z,rx,ry,rz]: {value!r}")
    return pose


def _wrist_check(serial: str, base_from_camera: np.ndarray, trajectory: Trajectory,
                 flange_poses: np.ndarray, tolerance_mm: float, warnings: list[str]) -> dict[str, Any] | None:
    """Largest deviation of the h5 wrist pose from flange pose composed with the gripper offset."""
    if trajectory.wrist_gripper_offset is None:
        return None
    expected = flange_poses @ pose6_to_matrix(trajectory.wrist_gripper_offset)
    translation_mm, rotation_deg = pose_deviation(base_from_camera, expected)
    worst = int(np.argmax(translation_mm))
    check = {"serial": serial,
             "max_translation_mm": float(translation_mm.max()),
             "max_rotation_deg": float(rotation_deg.max()),
             "worst_step": worst,
             "tolerance_mm": float(tolerance_mm),
             "within_tolerance": bool(translation_mm.max() <= tolerance_mm)}
    if not check["within_tolerance"]:
        warnings.append(f"wrist camera {serial}: h5 pose deviates from flange pose * gripper offset by "
                        f"{check['max_translation_mm']:.2f} mm at step {worst} "
                        f"(tolerance {tolerance_mm} mm)")
    return check


def pose_deviation(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pose translation distance (mm) and rotation angle (degrees) between (..., 4, 4) poses."""
    translation_mm = 1000.0 * np.linalg.norm(a[..., :3, 3] - b[..., :3, 3], axis=-1)
    relative = np.swapaxes(a[..., :3, :3], -1, -2) @ b[..., :3, :3]
    angle = Rotation.from_matrix(relative.reshape(-1, 3, 3)).magnitude().reshape(relative.shape[:-2])
    return translation_mm, np.degrees(angle)
