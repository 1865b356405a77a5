"""Camera poses (T_base_cam of the left lens, OpenCV optical frame) for one episode, with provenance
(docs/calibration.md).

Exterior cameras are static; each takes, in order:

1. the entry for this exact episode id in the first of DROID's published cam2base files
   (``cam2base_extrinsics_paths``) whose entry holds the camera's serial, never a partial or
   fuzzy match of the id. An entry that names another episode, or lists cameras this episode
   does not have, is another episode's calibration and fails the episode; a malformed value
   fails it too (:mod:`droid_pipeline.formats.calibration_files`);
2. else the metadata's ``<role>_cam_extrinsics``, flagged as a fallback (with a warning when
   cam2base files are configured).

A quality metric published beside a pose is recorded, and judged against
``min_calibration_quality`` where that names its metric type. Where ``cam2cam_extrinsics.json``
is configured, the relative pose of the two exterior cameras is compared with it, in both
directions (its convention is unconfirmed).

The wrist camera moves with the gripper: its per-step pose is the h5's
``observation/camera_extrinsics/<serial>_left``, cross-checked against flange pose composed with
the h5's ``<serial>_left_gripper_offset``; the largest deviation is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.config import CalibrationQualityConfig, Config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import CAMERA_ROLES
from droid_pipeline.formats.calibration_files import (
    INDEX_DIR_NAME,
    CalibrationFileError,
    Cam2BaseEntry,
    CameraEntry,
    pose6,
    read_cam2base_entry,
    read_cam2cam_entry,
)
from droid_pipeline.geometry.poses import invert, pose6_to_matrix
from droid_pipeline.geometry.rotations import rotation_angle
from droid_pipeline.raw.trajectory import CAMERA_EXTRINSICS_GROUP, Trajectory

STEP = "tracks"   # camera poses are resolved within the tracks step


@dataclass(frozen=True)
class CalibrationSources:
    """The published calibration an episode's exterior cameras are resolved from."""

    index_dir: Path
    cam2base_paths: tuple[Path, ...] = ()
    cam2cam_path: Path | None = None
    quality: CalibrationQualityConfig = field(default_factory=lambda: CalibrationQualityConfig({}, {}, "warn"))

    @classmethod
    def from_config(cls, config: Config) -> CalibrationSources:
        return cls(config.output_root / INDEX_DIR_NAME, tuple(config.cam2base_paths),
                   config.cam2cam_extrinsics_path, config.min_calibration_quality)


@dataclass(frozen=True)
class CameraPose:
    """One camera's pose in the robot base frame and where it came from."""

    serial: str
    role: str
    base_from_camera: np.ndarray   # (4, 4) for exterior cameras, (T, 4, 4) for the wrist camera
    source: str
    calibration: CameraEntry | None = None   # the published entry the pose came from
    file: str | None = None                   # that entry's file name
    fallback: bool = False                    # an exterior camera that kept the metadata's pose
    quality_check: dict[str, Any] | None = None

    def quality(self) -> dict[str, Any]:
        """This camera's record in quality.json ``calibration.cameras``."""
        entry = self.calibration
        return {"role": self.role, "source": self.source, "file": self.file, "fallback": self.fallback,
                "quality_metric": None if entry is None else entry.quality_metric,
                "metric_type": None if entry is None else entry.metric_type,
                "quality_check": self.quality_check}


@dataclass(frozen=True)
class EpisodeExtrinsics:
    """Every camera's pose, the calibration entries consulted, and the consistency checks."""

    cameras: dict[str, CameraPose]                      # by serial, in role order
    cam2base_entries: list[tuple[str, dict[str, Any] | None]]  # (file name, entry) per file, in order
    wrist_check: dict[str, Any] | None
    cam2cam: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def wrist_serial(self) -> str | None:
        return next((s for s, c in self.cameras.items() if c.role == "wrist"), None)

    @property
    def calibration_file(self) -> str | None:
        """The first configured cam2base file (the only one in configs with a single file)."""
        return self.cam2base_entries[0][0] if self.cam2base_entries else None

    @property
    def calibration_entry(self) -> dict[str, Any] | None:
        """That file's entry for this episode."""
        return self.cam2base_entries[0][1] if self.cam2base_entries else None

    def arrays(self, num_frames: int) -> dict[str, np.ndarray]:
        """Contents of extrinsics.npz (strings as unicode arrays: loads with allow_pickle=False):
        every role of CAMERA_ROLES, keyed by role; a role the episode lacks has NaN poses and empty
        strings."""
        by_role = {c.role: c for c in self.cameras.values()}
        cameras = [by_role.get(role) for role in CAMERA_ROLES]
        out: dict[str, np.ndarray] = {
            "serials": np.array(["" if c is None else c.serial for c in cameras], dtype=str),
            "roles": np.array(CAMERA_ROLES, dtype=str),
            "sources": np.array(["" if c is None else c.source for c in cameras], dtype=str),
            "calibration_fallback": np.array([c is not None and c.fallback for c in cameras], dtype=bool),
            "calibration_quality": np.array([0.0 if c is None else _metric(c)[0] for c in cameras], dtype=np.float64),
            "calibration_metric_types": np.array(["" if c is None else _metric(c)[1] for c in cameras], dtype=str),
            "wrist_serial": np.array(self.wrist_serial or "", dtype=str),
        }
        for role, camera in zip(CAMERA_ROLES, cameras):
            shape = (num_frames, 4, 4) if role == "wrist" else (4, 4)
            out[f"T_base_cam_{role}"] = np.full(shape, np.nan) if camera is None \
                else camera.base_from_camera.astype(np.float64)
        return out

    def quality(self) -> dict[str, Any]:
        """Provenance for quality.json: the files, the exact entries, each camera's source, the cam2cam
        check. Keyed by role, never by serial: DROID's entries (keyed ``<serial>``,
        ``<serial>_quality_metric``, ...) are given as ``{role: {serial, pose, quality_metric,
        metric_type}}`` for every role (null where the entry lacks the camera)."""
        by_role = {c.role: c for c in self.cameras.values()}
        return {
            "cam2base_file": self.calibration_file,
            "cam2base_entry": self._entry_by_role(self.calibration_entry),
            "cam2base_files": [{"file": name, "entry": self._entry_by_role(entry)}
                               for name, entry in self.cam2base_entries],
            "cameras": {role: None if role not in by_role else by_role[role].quality() for role in CAMERA_ROLES},
            "cam2cam": None if self.cam2cam is None else _role_keyed(self.cam2cam, self._roles()),
        }

    def _roles(self) -> dict[str, str]:
        return {serial: camera.role for serial, camera in self.cameras.items()}

    def _entry_by_role(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """A cam2base entry ``{<serial>: pose, <serial>_quality_metric: x, <serial>_metric_type: t}``
        as ``{role: {"serial", "pose", "quality_metric", "metric_type"} | None}``; keys of the entry
        that name none of the episode's cameras are kept under ``other`` as a JSON string."""
        if entry is None:
            return None
        import json

        roles = self._roles()
        out: dict[str, Any] = {}
        used: set[str] = set()
        for role in CAMERA_ROLES:
            serial = next((s for s, r in roles.items() if r == role), None)
            if serial is None or serial not in entry:
                out[role] = None
                continue
            fields = {"pose": serial, "quality_metric": f"{serial}_quality_metric",
                      "metric_type": f"{serial}_metric_type"}
            used.update(fields.values())
            out[role] = {"serial": serial, **{name: entry.get(key) for name, key in fields.items()}}
        other = {key: value for key, value in entry.items() if key not in used}
        out["other"] = json.dumps(other, sort_keys=True) if other else None
        return out


def _role_keyed(value: Any, roles: dict[str, str]) -> Any:
    """``value`` with every dict key that names a camera serial renamed with the camera's role."""
    if isinstance(value, dict):
        renamed = {}
        for key, item in value.items():
            for serial, role in roles.items():
                key = key.replace(serial, role)
            renamed[key] = _role_keyed(item, roles)
        return renamed
    if isinstance(value, list):
        return [_role_keyed(item, roles) for item in value]
    return value


def _metric(camera: CameraPose) -> tuple[float, str]:
    """(quality metric, metric type) for extrinsics.npz: (0.0, "") where the entry has none."""
    entry = camera.calibration
    if entry is None or entry.quality_metric is None or entry.metric_type is None:
        return 0.0, ""
    return entry.quality_metric, entry.metric_type


def camera_poses(episode_id: str, serials: dict[str, str], metadata: dict[str, Any],
                 trajectory: Trajectory, flange_poses: np.ndarray, sources: CalibrationSources,
                 wrist_tolerance_mm: float) -> EpisodeExtrinsics:
    """Resolve every camera's T_base_cam (see module docstring); bad calibration raises EpisodeError."""
    entries = _cam2base_entries(episode_id, serials, sources)
    names = [path.name for path in sources.cam2base_paths]
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
        found = next((entry for entry in entries if entry is not None and serial in entry.cameras), None)
        if found is not None:
            calibration = found.cameras[serial]
            check = _quality_check(episode_id, role, found.file, calibration, sources.quality, warnings)
            cameras[serial] = CameraPose(serial, role, pose6_to_matrix(calibration.pose6), f"cam2base:{found.file}",
                                         calibration, found.file, quality_check=check)
            continue
        key = f"{role}_cam_extrinsics"
        with_entry = [entry.file for entry in entries if entry is not None]
        if key not in metadata:
            where = "no cam2base file configured" if not names else f"no entry for it in {', '.join(names)}"
            raise EpisodeError(episode_id, STEP, f"no calibration for {role} camera {serial}: {where} "
                               f"and the metadata has no {key}")
        try:
            pose = pose6(metadata[key], f"metadata {key}")
        except CalibrationFileError as exc:
            raise EpisodeError(episode_id, STEP, str(exc)) from exc
        if with_entry:
            tried = f" (tried {', '.join(names)})" if len(names) > 1 else ""
            warnings.append(f"cam2base entry lacks {role} camera {serial}: used metadata {key}{tried}")
        elif names:
            warnings.append(f"no cam2base entry for this episode in {', '.join(names)}: {role} camera {serial} "
                            f"used metadata {key}")
        cameras[serial] = CameraPose(serial, role, pose6_to_matrix(pose), f"metadata:{key}", fallback=True)
    cam2cam = _cam2cam_check(episode_id, serials, cameras, sources)
    return EpisodeExtrinsics(cameras, [(name, None if entry is None else entry.entry)
                                       for name, entry in zip(names, entries)], wrist_check, cam2cam, warnings)


def _cam2base_entries(episode_id: str, serials: dict[str, str], sources: CalibrationSources
                      ) -> list[Cam2BaseEntry | None]:
    """This episode's entry in each cam2base file, in order (None where a file has none)."""
    try:
        return [read_cam2base_entry(path, episode_id, list(serials.values()), sources.index_dir)
                for path in sources.cam2base_paths]
    except CalibrationFileError as exc:
        raise EpisodeError(episode_id, STEP, str(exc)) from exc


def _quality_check(episode_id: str, role: str, file: str, entry: CameraEntry, quality: CalibrationQualityConfig,
                   warnings: list[str]) -> dict[str, Any] | None:
    """The camera's metric against ``min_calibration_quality`` for its type; None when not judged."""
    if entry.quality_metric is None or entry.metric_type is None:
        return None
    value, kind = entry.quality_metric, entry.metric_type
    bounds = [("at_least", quality.at_least.get(kind)), ("at_most", quality.at_most.get(kind))]
    judged = [(name, bound) for name, bound in bounds if bound is not None]
    if not judged:
        return None
    failed = [(name, bound) for name, bound in judged
              if (value < bound if name == "at_least" else value > bound)]
    check = {"bounds": dict(judged), "passed": not failed, "action": quality.action}
    if failed:
        name, bound = failed[0]
        cause = (f"{role} camera {entry.serial}: {file} quality metric {kind} = {value:g} is "
                 f"{'below' if name == 'at_least' else 'above'} min_calibration_quality.{name}.{kind} = {bound:g}")
        if quality.action == "fail":
            raise EpisodeError(episode_id, STEP, cause)
        warnings.append(cause)
    return check


def _cam2cam_check(episode_id: str, serials: dict[str, str], cameras: dict[str, CameraPose],
                   sources: CalibrationSources) -> dict[str, Any] | None:
    """How far the exterior cameras' relative pose from their cam2base (or metadata) poses is
    from cam2cam_extrinsics.json's, read as assumed (camera-to-frame poses, left_cam = ext1) and
    inverted; None when no cam2cam file is configured."""
    path = sources.cam2cam_path
    if path is None:
        return None
    report: dict[str, Any] = {"file": path.name, "layout": None, "entry": None, "pairs": []}
    if "ext1" not in serials or "ext2" not in serials:
        report["note"] = "the episode does not have two exterior cameras"
        return report
    exterior = (serials["ext1"], serials["ext2"])
    try:
        entry = read_cam2cam_entry(path, episode_id, exterior, list(serials.values()), sources.index_dir)
    except CalibrationFileError as exc:
        raise EpisodeError(episode_id, STEP, str(exc)) from exc
    if entry is None:
        return report
    first, second = (cameras[serial] for serial in exterior)
    from_base = invert(first.base_from_camera) @ second.base_from_camera   # ext2 in ext1's frame
    from_file = invert(entry.poses[0]) @ entry.poses[1]
    directions = {}
    for name, candidate in (("assumed", from_file), ("inverse", invert(from_file))):
        translation_mm, rotation_deg = pose_deviation(candidate, from_base)
        directions[name] = {"translation_mm": float(translation_mm), "rotation_deg": float(rotation_deg)}
    report.update(layout=entry.layout, entry=entry.entry)
    report["pairs"].append({
        "cameras": list(exterior), "pose_sources": [first.source, second.source], **directions,
        "closer": ("assumed" if directions["assumed"]["translation_mm"] <= directions["inverse"]["translation_mm"]
                   else "inverse"),
        "baseline_mm": {"cam2base": 1000.0 * float(np.linalg.norm(from_base[:3, 3])),
                        "cam2cam": 1000.0 * float(np.linalg.norm(from_file[:3, 3]))}})
    return report


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
    angle = rotation_angle(relative)
    return translation_mm, np.degrees(angle)

