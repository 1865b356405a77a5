"""Rectified left-camera intrinsics of each camera of an episode, on CPU, from the best source.

Sources, tried in the order of ``intrinsics_sources`` (or ``sources``); the first that yields a
sane result is written to ``recordings/<serial>/intrinsics.json`` with its name as ``source``:

- ``published``: DROID's intrinsics file (``intrinsics_path``), ``{episode_id: {serial: v}}``
  with ``v = [fx, cx, fy, cy]`` or ``{"cameraMatrix": [fx, cx, fy, cy], "width", "height"}``.
- ``h5``: ``observation/camera_intrinsics/<serial>_left`` (T, 3, 3) in trajectory.h5.
- ``zed_conf``: the factory calibration ``SN<serial>.conf`` in ``zed_calibration_dir``,
  rectified as the ZED SDK does (:mod:`droid_pipeline.raw.zed_conf`); also gives the baseline and
  the rectification (R1, R2, P1, P2) that the stereo depth step needs.
- ``zed_sdk``: the SVO's rectified ``left_cam`` read by the ZED SDK (GPU nodes only,
  :mod:`droid_pipeline.raw.zed_adapter`).

The image size is the camera's MP4 (``recordings/MP4/<serial>.mp4``), else half the width of its
side-by-side stereo MP4; only ``zed_sdk`` can do without a video (it reads the SVO's size). Every
result must have finite fx, fy > 0, its principal point inside the image and the video's size;
a source that fails, or gives values that fail these checks, is recorded with the reason and the
next one is tried.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.atomic import write_json_atomic
from droid_pipeline.core.config import Config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.raw import zed_adapter
from droid_pipeline.raw.discovery import Episode, select_cameras
from droid_pipeline.raw.video import VideoError, probe
from droid_pipeline.raw.zed_conf import (
    ZedConfError,
    match_resolution,
    parse_conf,
    rectify,
)

STEP = "intrinsics"
SOURCES = ("published", "h5", "zed_conf", "zed_sdk")
MATRIX_KEYS = ("K", "R1", "R2", "P1", "P2")
MATRIX_SHAPES = {"K": (3, 3), "R1": (3, 3), "R2": (3, 3), "P1": (3, 4), "P2": (3, 4)}
# Largest change (pixels) of the h5 camera matrix over an episode still taken as one calibration.
H5_CONSTANT_TOLERANCE_PX = 1e-3

log = logging.getLogger(__name__)


class IntrinsicsError(ValueError):
    """An intrinsics.json file or value is malformed or fails the sanity checks."""


class SourceFailed(Exception):
    """One source gave no usable intrinsics for a camera; the message says why."""


@dataclass(frozen=True)
class CameraVideo:
    """The image size a camera's intrinsics must match, and the file it was read from."""

    width: int
    height: int
    path: Path


@dataclass(frozen=True)
class CameraContext:
    """What a source reader needs to know about one camera of one episode."""

    config: Config
    episode: Episode
    episode_dir: Path
    serial: str
    video: CameraVideo | None


def extract_intrinsics(config: Config, episode: Episode, output_dir: os.PathLike | str,
                       cameras: Sequence[str] | None = None,
                       sources: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Write ``output_dir/recordings/<serial>/intrinsics.json`` for each camera; return the records.

    ``cameras`` are serials or roles (wrist, ext1, ext2), default all of the episode's cameras;
    ``sources`` overrides ``config.intrinsics_sources``. Nothing is written unless every camera
    succeeds, except that with ``allow_missing_intrinsics`` a camera no source covers is left out.
    """
    order = list(sources if sources is not None else config.intrinsics_sources)
    unknown = [s for s in order if s not in SOURCES]
    if unknown or not order:
        raise EpisodeError(episode.episode_id, STEP, f"unknown or no intrinsics sources {unknown or order}; "
                                                     f"known: {', '.join(SOURCES)}")
    episode_dir = episode.path(config.droid_root)
    records = {}
    for serial in select_cameras(episode, cameras, STEP):
        context = CameraContext(config, episode, episode_dir, serial, _camera_video(episode, episode_dir, serial))
        try:
            records[serial] = _first_working_source(context, order)
        except EpisodeError as exc:
            if not config.allow_missing_intrinsics:
                raise
            log.warning("%s (left out: allow_missing_intrinsics is true)", exc)
    for serial, record in records.items():
        write_json_atomic(Path(output_dir) / "recordings" / serial / "intrinsics.json", record)
    return records


def load_intrinsics(path: os.PathLike | str) -> dict[str, Any]:
    """Read one intrinsics.json back, validated; matrices (K, R1, R2, P1, P2) as float64 arrays."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntrinsicsError(f"{path}: cannot read intrinsics file: {exc}") from exc
    if not isinstance(record, dict):
        raise IntrinsicsError(f"{path}: intrinsics file is not a JSON object")
    try:
        return _validated(record)
    except IntrinsicsError as exc:
        raise IntrinsicsError(f"{path}: {exc}") from exc


def _camera_video(episode: Episode, episode_dir: Path, serial: str) -> CameraVideo | None:
    """Size of the camera's left image from its MP4, else from its side-by-side stereo MP4."""
    mp4_dir = episode_dir / "recordings" / "MP4"
    for path, side_by_side in ((mp4_dir / f"{serial}.mp4", False), (mp4_dir / f"{serial}-stereo.mp4", True)):
        if not path.is_file():
            continue
        try:
            info = probe(path)
        except VideoError as exc:
            raise EpisodeError(episode.episode_id, STEP, f"camera {serial}: {exc}") from exc
        # The stereo file's "-stereo" suffix is sometimes missing: a left|right frame is twice as
        # wide as a ZED mode (or an exact downscale of one) while not being one itself.
        if not side_by_side and match_resolution(info.width, info.height) is None \
                and info.width % 2 == 0 and match_resolution(info.width // 2, info.height) is not None:
            side_by_side = True
        if side_by_side:
            if info.width % 2:
                raise EpisodeError(episode.episode_id, STEP,
                                   f"camera {serial}: stereo video {path} has odd width {info.width}")
            return CameraVideo(info.width // 2, info.height, path)
        return CameraVideo(info.width, info.height, path)
    return None


def _first_working_source(context: CameraContext, order: Sequence[str]) -> dict[str, Any]:
    attempts = []
    for source in order:
        try:
            record = _READERS[source](context)
            record = _validated(record, context.video)
        except (SourceFailed, IntrinsicsError) as exc:
            attempts.append({"source": source, "error": str(exc)})
            continue
        for attempt in attempts:
            log.warning("episode %s camera %s: source %s skipped: %s", context.episode.episode_id,
                        context.serial, attempt["source"], attempt["error"])
        record["attempts"] = attempts
        return record
    role = _role(context)
    tried = "; ".join(f"{a['source']}: {a['error']}" for a in attempts)
    raise EpisodeError(context.episode.episode_id, STEP,
                       f"camera {context.serial} ({role}): no intrinsics source worked ({tried})")


def _role(context: CameraContext) -> str:
    return next((r for r, s in context.episode.serials.items() if s == context.serial), "unknown role")


def _record(context: CameraContext, source: str, detail: str, fx: float, fy: float, cx: float, cy: float,
            width: int, height: int, distortion: Sequence[float] = (0.0,) * 5) -> dict[str, Any]:
    k1, k2, p1, p2, k3 = (float(v) for v in distortion)
    return {
        "episode_id": context.episode.episode_id, "serial": context.serial, "camera": _role(context),
        "source": source, "source_detail": detail, "rectified": True,
        "width": int(width), "height": int(height),
        "fx": float(fx), "fy": float(fy), "cx": float(cx), "cy": float(cy),
        "K": np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64),
        "k1": k1, "k2": k2, "p1": p1, "p2": p2, "k3": k3,
    }


def _require_video(context: CameraContext) -> CameraVideo:
    if context.video is None:
        raise SourceFailed(f"no recordings/MP4/{context.serial}.mp4 or {context.serial}-stereo.mp4 "
                           "to read the image size from")
    return context.video


def _from_published(context: CameraContext) -> dict[str, Any]:
    path = context.config.intrinsics_path
    if path is None:
        raise SourceFailed("intrinsics_path is not set")
    video = _require_video(context)
    entry = _published_entry(Path(path), context.episode.episode_id)
    if entry is None:
        raise SourceFailed(f"episode not in {path}")
    if not isinstance(entry, dict):
        raise SourceFailed(f"{path}: entry of the episode is not an object")
    value = entry.get(context.serial)
    if value is None:
        raise SourceFailed(f"{path}: no entry for serial {context.serial} "
                           f"(entries: {', '.join(map(str, entry)) or 'none'})")
    size = (video.width, video.height)
    if isinstance(value, dict):
        if "cameraMatrix" not in value:
            raise SourceFailed(f"{path}: entry of serial {context.serial} has no cameraMatrix")
        if ("width" in value) != ("height" in value):
            raise SourceFailed(f"{path}: entry of serial {context.serial} gives only one of width, height")
        if "width" in value:
            size = (_positive_int(value["width"], "width", path), _positive_int(value["height"], "height", path))
        value = value["cameraMatrix"]
    if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise SourceFailed(f"{path}: serial {context.serial}: expected [fx, cx, fy, cy], got {value!r}")
    fx, cx, fy, cy = (float(v) for v in value)
    return _record(context, "published", str(path), fx, fy, cx, cy, *size)


def _published_entry(path: Path, episode_id: str) -> Any:
    """The published file's value for one episode id, ``None`` if the id is not a key.

    DROID's file holds ~92k episodes (about 15 MB, ~0.3 s to parse whole). When the quoted id
    occurs exactly once followed by ``:``, only the value after it is decoded (~5 ms); in any
    other case the whole file is parsed and looked up exactly. The last few answers are kept
    while the file is unchanged, so an episode's cameras read it once.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise SourceFailed(f"cannot read {path}: {exc.strerror}") from exc
    return _read_published_entry(path, episode_id, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_published_entry(path: Path, episode_id: str, mtime_ns: int, size: int) -> Any:
    """:func:`_published_entry` for one version (mtime, size) of the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceFailed(f"cannot read {path}: {exc.strerror}") from exc
    if not data.lstrip().startswith(b"{"):
        raise SourceFailed(f"{path}: expected a JSON object keyed by episode id")
    keys = list(re.finditer(re.escape(json.dumps(episode_id).encode()) + rb"\s*:", data))
    if not keys:
        return None
    if len(keys) == 1:
        try:
            text = data[keys[0].end():].decode("utf-8")
            return json.JSONDecoder().raw_decode(text, len(text) - len(text.lstrip()))[0]
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass  # reported with its position by the full parse below
    try:
        table = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceFailed(f"cannot read {path}: {exc}") from exc
    if not isinstance(table, dict):
        raise SourceFailed(f"{path}: expected a JSON object keyed by episode id")
    return table.get(episode_id)


def _from_h5(context: CameraContext) -> dict[str, Any]:
    import h5py  # only this source reads the h5; the tracks step imports this module for load_intrinsics

    path = context.episode_dir / "trajectory.h5"
    name = f"observation/camera_intrinsics/{context.serial}_left"
    if not path.is_file():
        raise SourceFailed("no trajectory.h5")
    try:
        with h5py.File(path, "r") as h5:
            if name not in h5:
                raise SourceFailed(f"trajectory.h5 has no {name}")
            dataset = h5[name]
            if not isinstance(dataset, h5py.Dataset):
                raise SourceFailed(f"trajectory.h5: {name} is not a dataset")
            matrices = np.asarray(dataset[()], dtype=np.float64)
    except OSError as exc:
        raise SourceFailed(f"cannot read trajectory.h5: {exc}") from exc
    if matrices.ndim != 3 or matrices.shape[1:] != (3, 3) or matrices.shape[0] == 0:
        raise SourceFailed(f"trajectory.h5: {name} has shape {matrices.shape}, expected (T, 3, 3)")
    if not np.isfinite(matrices).all():
        raise SourceFailed(f"trajectory.h5: {name} holds non-finite values")
    spread = float(np.ptp(matrices, axis=0).max())
    if spread > H5_CONSTANT_TOLERANCE_PX:
        raise SourceFailed(f"trajectory.h5: {name} changes during the episode (by up to {spread:.4g})")
    K = matrices[0]
    if abs(K[0, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9 or not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise SourceFailed(f"trajectory.h5: {name} is not a zero-skew pinhole matrix: {K.tolist()}")
    video = _require_video(context)
    return _record(context, "h5", f"trajectory.h5:{name}", K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                   video.width, video.height)


def _from_zed_conf(context: CameraContext) -> dict[str, Any]:
    folder = context.config.zed_calibration_dir
    if folder is None:
        raise SourceFailed("zed_calibration_dir is not set")
    path = Path(folder) / f"SN{context.serial}.conf"
    if not path.is_file():
        raise SourceFailed(f"no {path}")
    video = _require_video(context)
    try:
        rectified = rectify(parse_conf(path), video.width, video.height)
    except ZedConfError as exc:
        raise SourceFailed(str(exc)) from exc
    K = rectified.K
    record = _record(context, "zed_conf", str(path), K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                     video.width, video.height)
    record.update(baseline_m=rectified.baseline_m, R1=rectified.R1, R2=rectified.R2, P1=rectified.P1,
                  P2=rectified.P2, zed_resolution=rectified.resolution_key, zed_scale=rectified.scale)
    return record


def _from_zed_sdk(context: CameraContext) -> dict[str, Any]:
    path = context.episode_dir / "recordings" / "SVO" / f"{context.serial}.svo"
    try:
        sdk = zed_adapter.read_calibration(path)
    except (zed_adapter.ZedSdkUnavailable, zed_adapter.ZedSdkError) as exc:
        raise SourceFailed(str(exc)) from exc
    record = _record(context, "zed_sdk", str(path), sdk.fx, sdk.fy, sdk.cx, sdk.cy, sdk.width, sdk.height,
                     sdk.distortion)
    record["baseline_m"] = sdk.baseline_m
    return record


_READERS: dict[str, Callable[[CameraContext], dict[str, Any]]] = {
    "published": _from_published, "h5": _from_h5, "zed_conf": _from_zed_conf, "zed_sdk": _from_zed_sdk}


def _validated(record: dict[str, Any], video: CameraVideo | None = None) -> dict[str, Any]:
    """Check types and sanity; return a copy with matrices as arrays. Raises IntrinsicsError."""
    out = dict(record)
    for key in ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3"):
        if not _is_number(out.get(key)) or not math.isfinite(out[key]):
            raise IntrinsicsError(f"{key} must be a finite number, got {out.get(key)!r}")
        out[key] = float(out[key])
    for key in ("width", "height"):
        if not isinstance(out.get(key), int) or isinstance(out[key], bool) or out[key] <= 0:
            raise IntrinsicsError(f"{key} must be a positive integer, got {out.get(key)!r}")
    if out.get("source") not in SOURCES:
        raise IntrinsicsError(f"source must be one of {', '.join(SOURCES)}, got {out.get('source')!r}")
    if not isinstance(out.get("rectified"), bool):
        raise IntrinsicsError(f"rectified must be true or false, got {out.get('rectified')!r}")
    for key in MATRIX_KEYS:
        if key in out or key == "K":
            try:
                matrix = np.asarray(out.get(key), dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise IntrinsicsError(f"{key} is not a numeric matrix") from exc
            if matrix.shape != MATRIX_SHAPES[key] or not np.isfinite(matrix).all():
                raise IntrinsicsError(f"{key} must be a finite {MATRIX_SHAPES[key]} matrix, got {out.get(key)!r}")
            out[key] = matrix
    if "baseline_m" in out and not (_is_number(out["baseline_m"]) and out["baseline_m"] > 0):
        raise IntrinsicsError(f"baseline_m must be a positive number, got {out['baseline_m']!r}")
    fx, fy, cx, cy, width, height = (out[k] for k in ("fx", "fy", "cx", "cy", "width", "height"))
    if fx <= 0 or fy <= 0:
        raise IntrinsicsError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
    if not (0 <= cx < width and 0 <= cy < height):
        raise IntrinsicsError(f"principal point ({cx}, {cy}) lies outside the {width}x{height} image")
    expected_K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if not np.allclose(out["K"], expected_K, rtol=0, atol=1e-9):
        raise IntrinsicsError(f"K {out['K'].tolist()} disagrees with fx, fy, cx, cy")
    if video is not None and (width, height) != (video.width, video.height):
        raise IntrinsicsError(f"image size {width}x{height} differs from the video's "
                              f"{video.width}x{video.height} ({video.path.name})")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, name: str, path: os.PathLike | str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SourceFailed(f"{path}: {name} must be a positive integer, got {value!r}")
    return value
