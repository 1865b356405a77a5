"""DROID's published calibration files ("Posed DROID", released with DROID 1.0.1): exact-id lookup
and validation of one episode's entry (docs/calibration.md).

Each file is one JSON object keyed by episode id:

- cam2base (``cam2base_extrinsics.json``, ``cam2base_extrinsic_superset.json``): an entry maps
  exterior camera serials to left-lens poses ``[x, y, z, rx, ry, rz]`` (camera to robot base,
  ``Rotation.from_euler("xyz")``); the superset adds ``<serial>_quality_metric`` (a number) and
  ``<serial>_metric_type`` (a name) beside each pose. Other keys are kept verbatim, unread;
- cam2cam (``cam2cam_extrinsics.json``): the two exterior cameras' poses in one common frame,
  as ``{"left_cam": {"pose": ...}, "right_cam": {"pose": ...}}`` (left_cam = ext1, as public
  users of the file read it) or keyed by the two serials; a pose is a 4x4 matrix or a 6-vector.

An episode is looked up by its exact id only. An entry that names another episode (a ``uuid``,
``episode_id`` or ``episode`` field) or holds a serial the episode does not have is another
episode's calibration, and any malformed value is an error: :class:`CalibrationFileError`, whose
message names the file, the camera and the cause (the caller adds the episode).

DROID's intrinsics file (``{episode_id: {serial: [fx, cx, fy, cy]}}``) is looked up the same way.

Parsing a whole file costs seconds and hundreds of megabytes (cam2cam_extrinsics.json is about
190 MB), far more than the one entry an episode needs, and every episode runs in a fresh
process. So each version of a file (path, size, mtime, inode) is indexed once into an SQLite
table of id -> entry text in ``index_dir``, built under a lock and renamed into place; a lookup
reads one row.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.files import MAX_TEXT_BYTES, read_bytes_capped
from droid_pipeline.geometry.poses import pose6_to_matrix

# Keys of an entry that, when present, must name the episode the entry is filed under.
ENTRY_ID_KEYS = ("uuid", "episode_id", "episode")
QUALITY_SUFFIX = "_quality_metric"
METRIC_TYPE_SUFFIX = "_metric_type"
# The metric type of a quality metric published without one.
UNSPECIFIED_METRIC_TYPE = "unspecified"
LEFT_CAM, RIGHT_CAM = "left_cam", "right_cam"
LAYOUT_LEFT_RIGHT, LAYOUT_SERIALS = "left_cam/right_cam", "serials"
# A 4x4 pose's rotation must be orthonormal and its last row [0, 0, 0, 1] to this tolerance.
RIGID_TOLERANCE = 1e-4
# The indexes of the published files live here, under output_root.
INDEX_DIR_NAME = ".calibration_index"


class CalibrationFileError(ValueError):
    """A published calibration file cannot be read, or this episode's entry is not valid."""


@dataclass(frozen=True)
class CameraEntry:
    """One camera's pose in a cam2base entry and the quality metric published beside it."""

    serial: str
    pose6: np.ndarray                 # (6,) [x, y, z, rx, ry, rz], camera to base
    quality_metric: float | None
    metric_type: str | None           # None without a metric; UNSPECIFIED_METRIC_TYPE without a type


@dataclass(frozen=True)
class Cam2BaseEntry:
    """This episode's entry of one cam2base file: verbatim, and its cameras validated."""

    file: str                         # file name only: no local paths in outputs
    entry: dict[str, Any]
    cameras: dict[str, CameraEntry]


@dataclass(frozen=True)
class Cam2CamEntry:
    """This episode's entry of cam2cam_extrinsics.json: the exterior cameras' (4, 4) poses in the
    entry's common frame, ext1's first."""

    file: str
    entry: dict[str, Any]
    layout: str
    poses: tuple[np.ndarray, np.ndarray]


def read_cam2base_entry(path: os.PathLike | str, episode_id: str, serials: Collection[str],
                        index_dir: os.PathLike | str) -> Cam2BaseEntry | None:
    """The cam2base entry of ``episode_id`` (None if the file has none), validated against the
    episode's camera ``serials`` (every role)."""
    path = Path(path)
    entry = _episode_object(path, episode_id, index_dir, "cam2base")
    if entry is None:
        return None
    _check_serials(path.name, entry, serials)
    cameras = {}
    for key, value in entry.items():
        if not key.isdigit():
            continue
        metric = entry.get(key + QUALITY_SUFFIX)
        metric_type = entry.get(key + METRIC_TYPE_SUFFIX)
        if metric is not None and (isinstance(metric, bool) or not isinstance(metric, (int, float))
                                   or not np.isfinite(metric)):
            raise CalibrationFileError(f"{path.name}: {key}{QUALITY_SUFFIX} is not a finite number: {metric!r}")
        if metric_type is not None and (not isinstance(metric_type, str) or not metric_type):
            raise CalibrationFileError(f"{path.name}: {key}{METRIC_TYPE_SUFFIX} is not a name: {metric_type!r}")
        if metric is None:
            metric_type = None
        elif metric_type is None:
            metric_type = UNSPECIFIED_METRIC_TYPE
        cameras[key] = CameraEntry(key, pose6(value, f"{path.name}: cam2base entry {key}"),
                                   None if metric is None else float(metric), metric_type)
    return Cam2BaseEntry(path.name, entry, cameras)


def read_cam2cam_entry(path: os.PathLike | str, episode_id: str, exterior: tuple[str, str],
                       serials: Collection[str], index_dir: os.PathLike | str) -> Cam2CamEntry | None:
    """The cam2cam entry of ``episode_id`` (None if the file has none) as the poses of the
    ``exterior`` cameras (ext1, ext2 serials) in one frame; ``serials`` are every camera's."""
    path = Path(path)
    entry = _episode_object(path, episode_id, index_dir, "cam2cam")
    if entry is None:
        return None
    if LEFT_CAM in entry or RIGHT_CAM in entry:
        poses = []
        for name, serial in zip((LEFT_CAM, RIGHT_CAM), exterior):
            item = entry.get(name)
            if not isinstance(item, dict) or "pose" not in item:
                raise CalibrationFileError(f"{path.name}: {name} (camera {serial}) is not an object with a pose: "
                                           f"{_short(item)}")
            poses.append(pose_matrix(item["pose"], f"{path.name}: {name} pose (camera {serial})"))
        return Cam2CamEntry(path.name, entry, LAYOUT_LEFT_RIGHT, (poses[0], poses[1]))
    _check_serials(path.name, entry, serials)
    missing = [serial for serial in exterior if serial not in entry]
    if missing:
        raise CalibrationFileError(f"{path.name}: the entry has neither {LEFT_CAM}/{RIGHT_CAM} nor poses of both "
                                   f"exterior cameras (no {', '.join(missing)}; keys: {', '.join(sorted(entry))})")
    first, second = (pose_matrix(entry[serial], f"{path.name}: camera {serial}") for serial in exterior)
    return Cam2CamEntry(path.name, entry, LAYOUT_SERIALS, (first, second))


def pose6(value: Any, what: str) -> np.ndarray:
    """A DROID 6-vector pose, checked to be six finite numbers."""
    try:
        pose = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pose = np.empty(0)
    if pose.shape != (6,) or not np.isfinite(pose).all():
        raise CalibrationFileError(f"{what} is not six finite numbers [x,y,z,rx,ry,rz]: {_short(value)}")
    return pose


def pose_matrix(value: Any, what: str) -> np.ndarray:
    """A (4, 4) rigid pose from a 4x4 matrix or a DROID 6-vector."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape == (6,):
        return pose6_to_matrix(pose6(array, what))
    if array.shape != (4, 4) or not np.isfinite(array).all():
        raise CalibrationFileError(f"{what} is neither a 4x4 matrix nor six numbers: {_short(value)}")
    rotation = array[:3, :3]
    error = max(np.abs(rotation.T @ rotation - np.eye(3)).max(), abs(np.linalg.det(rotation) - 1.0),
                np.abs(array[3] - [0.0, 0.0, 0.0, 1.0]).max())
    if error > RIGID_TOLERANCE:
        raise CalibrationFileError(f"{what} is not a rigid transform (error {error:.2e})")
    return array


def _check_serials(file: str, entry: dict[str, Any], serials: Collection[str]) -> None:
    """Fail on an entry holding (values for) a serial the episode does not have."""
    named = {key.split("_", 1)[0] for key in entry if key.split("_", 1)[0].isdigit()}
    foreign = sorted(named - set(serials))
    if foreign:
        raise CalibrationFileError(f"{file}: the entry for this episode lists camera(s) {', '.join(foreign)} that "
                                   f"the episode's metadata does not name (it names {', '.join(serials)}): the "
                                   "entry is another episode's calibration, or the metadata's *_cam_serial fields "
                                   "miss a camera")


def _episode_object(path: Path, episode_id: str, index_dir: os.PathLike | str, kind: str) -> dict[str, Any] | None:
    """The entry filed under exactly ``episode_id``, checked to be an object of this episode."""
    entry = lookup(path, episode_id, index_dir, kind)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise CalibrationFileError(f"{path.name}: entry for this episode is not an object: {_short(entry)}")
    for key in ENTRY_ID_KEYS:
        named = entry.get(key)
        if isinstance(named, str) and named != episode_id:
            raise CalibrationFileError(f"{path.name}: the entry filed under this episode has {key}={named!r}: "
                                       "it is another episode's calibration")
    return entry


def lookup(path: os.PathLike | str, episode_id: str, index_dir: os.PathLike | str, kind: str) -> Any:
    """The JSON value filed under exactly ``episode_id`` in the file at ``path`` (None if absent),
    through the file's index (see module docstring). An unreadable file raises
    CalibrationFileError naming the file and the cause."""
    index = _ensure_index(Path(path), Path(index_dir), kind)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT entry FROM entries WHERE id = ?", (episode_id,)).fetchone()
    except sqlite3.Error as exc:
        raise CalibrationFileError(f"cannot read the index {index} of {kind} file {path}: {exc}") from exc
    return None if row is None else json.loads(row[0])


def check_file(path: os.PathLike | str, index_dir: os.PathLike | str, kind: str) -> None:
    """Parse and index ``path`` now (once per version of the file, as :func:`lookup` would), so a
    corrupt or unreadable file is reported once, naming the file and the parse error
    (CalibrationFileError), before any episode reads it."""
    _ensure_index(Path(path), Path(index_dir), kind)


def _ensure_index(path: Path, index_dir: Path, kind: str) -> Path:
    """The index of the current version of ``path``, built if missing (one builder at a time)."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise CalibrationFileError(f"cannot read {kind} file {path}: {exc.strerror or exc}") from exc
    source = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    version = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}".encode())
    index = index_dir / f"{path.name}.{source}.{version.hexdigest()[:16]}.sqlite"
    if index.is_file():
        return index
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        with _locked(index_dir / f".{path.name}.{source}.lock"):
            if not index.is_file():
                _build_index(path, index, kind)
                for stale in index_dir.glob(f"{path.name}.{source}.*.sqlite"):
                    if stale != index:
                        stale.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as exc:
        raise CalibrationFileError(f"cannot index {kind} file {path} in {index_dir}: {exc}") from exc
    return index


def _build_index(path: Path, index: Path, kind: str) -> None:
    """Parse the whole file once and write id -> entry rows under a temporary name, then rename."""
    try:
        data = json.loads(read_bytes_capped(path, MAX_TEXT_BYTES))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CalibrationFileError(f"cannot read {kind} file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CalibrationFileError(f"cannot read {kind} file {path}: the top level is {type(data).__name__}, "
                                   "not a JSON object keyed by episode id")
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("CREATE TABLE entries (id TEXT PRIMARY KEY, entry TEXT NOT NULL)")
            db.executemany("INSERT INTO entries VALUES (?, ?)",
                           ((key, json.dumps(value, separators=(",", ":"))) for key, value in data.items()))
            db.commit()
        os.replace(tmp, index)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
