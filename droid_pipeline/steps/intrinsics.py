"""Rectified left-camera intrinsics of each camera of an episode, on CPU, from the best source.

Sources, tried in the order of ``intrinsics_sources`` (or ``sources``); the first that yields a
sane result is written to ``recordings/<serial>/intrinsics.json`` with its name as ``source``:

- ``published``: DROID's intrinsics file (``intrinsics_path``), ``{episode_id: {serial: v}}``
  with ``v = [fx, cx, fy, cy]`` or ``{"cameraMatrix": [fx, cx, fy, cy], "width", "height"}``,
  looked up by exact id through the index :mod:`droid_pipeline.formats.calibration_files` keeps of
  each version of the file. A file that cannot be read or parsed is an error naming the file and
  the parse error, never a reason to try the next source (a run checks it once, before any
  episode).
- ``h5``: ``observation/camera_intrinsics/<serial>_left`` (T, 3, 3) in trajectory.h5.
- ``zed_conf``: the factory calibration ``SN<serial>.conf`` in ``zed_calibration_dir``,
  rectified as the ZED SDK does (:mod:`droid_pipeline.raw.zed_conf`); also gives the baseline and
  the rectification (R1, R2, P1, P2) that the stereo depth step needs.
- ``zed_sdk``: the SVO's rectified ``left_cam`` read by the ZED SDK (GPU nodes only,
  :mod:`droid_pipeline.raw.zed_adapter`).

The image size is the camera's MP4 (``recordings/MP4/<serial>.mp4``), else half the width of its
side-by-side stereo MP4; only ``zed_sdk`` can do without a video (it reads the SVO's size). Every
result must have finite fx, fy > 0 and its principal point near the centre of the image
(``plausibility.max_principal_point_offset``); a source that fails, or gives values that fail
these checks, is recorded with the reason and the next one is tried. Values that say something
else than they are (docs/reliability.md, "Inputs checked against their data"):

- a published entry whose numbers fit another order ([fx, fy, cx, cy]) is named as such and
  skipped, with a warning;
- intrinsics for another image size than the video's (a source that gives its size, or a
  principal point at the centre of another ZED image size) are set aside: a later source with the
  video's own size is used (the ZED factory file has a section per resolution), else, with
  ``plausibility.rescale_intrinsics``, the first set aside is scaled per axis to the video's size
  (pixel-centre convention); either way with a warning, else the camera fails naming both sizes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.config import Config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import INTRINSICS
from droid_pipeline.formats.calibration_files import INDEX_DIR_NAME, CalibrationFileError, lookup
from droid_pipeline.formats.intrinsics import SOURCES, IntrinsicsError, IntrinsicsRecord, SourceAttempt
from droid_pipeline.raw import zed_adapter
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.episode import CameraVideo, RawEpisode
from droid_pipeline.raw.video import VideoError
from droid_pipeline.raw.zed_conf import RESOLUTIONS, ZedConfError, parse_conf, rectify

STEP = "intrinsics"
# Largest change (pixels) of the h5 camera matrix over an episode still taken as one calibration.
H5_CONSTANT_TOLERANCE_PX = 1e-3
# Image sizes intrinsics may be for: the ZED modes and their integer downscales up to this factor.
MAX_DOWNSCALE = 16

log = logging.getLogger(__name__)


class SourceFailed(Exception):
    """One source gave no usable intrinsics for a camera; the message says why."""


class WrongAboutItself(SourceFailed):
    """A source's values say something else than they are (another order, off-centre); a warning."""


class OtherSize(SourceFailed):
    """A source's intrinsics are for another image size than the video's; ``record`` holds them."""

    def __init__(self, message: str, record: IntrinsicsRecord):
        super().__init__(message)
        self.record = record


class NoIntrinsics(EpisodeError):
    """No source gave a camera's intrinsics (``allow_missing_intrinsics`` may leave it out)."""


@dataclass(frozen=True)
class CameraContext:
    """What a source reader needs to know about one camera of one episode."""

    config: Config
    raw: RawEpisode
    serial: str
    video: CameraVideo | None

    @property
    def role(self) -> str:
        return self.raw.role(self.serial)


def extract_intrinsics(config: Config, episode: Episode, output_dir: os.PathLike | str,
                       cameras: Sequence[str] | None = None,
                       sources: Sequence[str] | None = None) -> dict[str, IntrinsicsRecord]:
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
    raw = RawEpisode.load(episode, config.droid_root, STEP)
    records = {}
    for serial in raw.select_cameras(cameras):
        context = CameraContext(config, raw, serial, _camera_video(raw, serial))
        try:
            records[serial] = _first_working_source(context, order)
        except NoIntrinsics as exc:
            if not config.allow_missing_intrinsics:
                raise
            log.warning("%s (left out: allow_missing_intrinsics is true)", exc)
    for serial, record in records.items():
        record.write(Path(output_dir) / INTRINSICS.for_camera(serial))
    return records


def _camera_video(raw: RawEpisode, serial: str) -> CameraVideo | None:
    """The camera's left-image MP4, whose size the intrinsics must have."""
    try:
        return raw.camera_video(serial)
    except VideoError as exc:
        raise raw.fail(f"camera {serial}: {exc}") from exc


def _first_working_source(context: CameraContext, order: Sequence[str]) -> IntrinsicsRecord:
    attempts: list[SourceAttempt] = []
    warnings: list[str] = []
    other_size: list[tuple[str, IntrinsicsRecord, str]] = []  # source, its record, why set aside
    for source in order:
        try:
            record = _READERS[source](context)
            _check_size(record, context.video)
        except OtherSize as exc:
            other_size.append((source, exc.record, str(exc)))
            attempts.append(SourceAttempt(source, str(exc)))
            continue
        except WrongAboutItself as exc:
            warnings.append(f"intrinsics source {source} not used: {exc}")
            attempts.append(SourceAttempt(source, str(exc)))
            continue
        except (SourceFailed, IntrinsicsError) as exc:
            attempts.append(SourceAttempt(source, str(exc)))
            continue
        for attempt in attempts:
            log.warning("episode %s camera %s: source %s skipped: %s", context.raw.episode_id,
                        context.serial, attempt.source, attempt.error)
        warnings += [f"intrinsics source {name} not used: {why}; {source} gives them for the video's own size "
                     f"{record.width}x{record.height}" for name, _, why in other_size]
        return dataclasses.replace(record.with_attempts(attempts), warnings=tuple(warnings) or None)
    if other_size and context.video is not None and context.config.plausibility.rescale_intrinsics:
        source, record, _ = other_size[0]
        rescaled = _rescaled(record, context.video.left_size)
        warnings.append(f"no intrinsics source gives the video's size {rescaled.width}x{rescaled.height} "
                        f"({context.video.path.name}): {source}'s for {record.width}x{record.height} scaled per "
                        f"axis by ({rescaled.width / record.width:.4g}, {rescaled.height / record.height:.4g}) "
                        "(plausibility.rescale_intrinsics)")
        return dataclasses.replace(rescaled.with_attempts(attempts), warnings=tuple(warnings))
    tried = "; ".join(f"{a.source}: {a.error}" for a in attempts)
    rescale = " (plausibility.rescale_intrinsics is false)" if other_size else ""
    raise NoIntrinsics(context.raw.episode_id, context.raw.step,
                       f"camera {context.serial} ({context.role}): no intrinsics source worked ({tried}){rescale}")


def _check_size(record: IntrinsicsRecord, video: CameraVideo | None) -> None:
    if video is not None and record.size != video.left_size:
        width, height = video.left_size
        raise OtherSize(f"its intrinsics are for {record.width}x{record.height}, the video {video.path.name} is "
                        f"{width}x{height}", record)


def _rescaled(record: IntrinsicsRecord, size: tuple[int, int]) -> IntrinsicsRecord:
    """``record`` for an image of ``size``, scaled per axis with the pixel-centre convention
    (f * s, (c + 0.5) * s - 0.5); distortion, given in normalized coordinates, is unchanged. A
    rectification (R1, P1, ...) is for the other size and is left out."""
    sx, sy = size[0] / record.width, size[1] / record.height
    detail = (f"{record.source_detail}; rescaled from {record.width}x{record.height} to {size[0]}x{size[1]} "
              "per axis (pixel-centre convention)")
    return IntrinsicsRecord.pinhole(
        record.fx * sx, record.fy * sy, (record.cx + 0.5) * sx - 0.5, (record.cy + 0.5) * sy - 0.5,
        episode_id=record.episode_id, serial=record.serial, camera=record.camera, source=record.source,
        source_detail=detail, rectified=record.rectified, width=size[0], height=size[1], k1=record.k1,
        k2=record.k2, p1=record.p1, p2=record.p2, k3=record.k3, baseline_m=record.baseline_m)


def _centre_offset(cx: float, cy: float, width: int, height: int) -> float:
    """How far (cx, cy) lies from the centre of a width x height image, as the larger fraction of
    the width or height (pixel centres at integers: the centre is ((w - 1) / 2, (h - 1) / 2))."""
    return max(abs(cx - (width - 1) / 2) / width, abs(cy - (height - 1) / 2) / height)


def _size_centred_on(cx: float, cy: float, limit: float) -> tuple[int, int] | None:
    """The ZED image size (a mode or an integer downscale of one) whose centre (cx, cy) is nearest,
    when within ``limit``; None otherwise."""
    sizes = {(w // s, h // s) for w, h in RESOLUTIONS.values() for s in range(1, MAX_DOWNSCALE + 1)
             if w % s == 0 and h % s == 0}
    best = min(sizes, key=lambda size: _centre_offset(cx, cy, *size))
    return best if _centre_offset(cx, cy, *best) <= limit else None


def _record(context: CameraContext, source: str, detail: str, fx: float, fy: float, cx: float, cy: float,
            width: int, height: int, distortion: Sequence[float] = (0.0,) * 5, *, sized: bool = True,
            published_order: bool = False, **extra: Any) -> IntrinsicsRecord:
    """A rectified pinhole record of this camera (IntrinsicsError when its values are not sane).

    Its principal point must lie near the image's centre (``plausibility.max_principal_point_offset``)
    and fx and fy be alike (``max_focal_spread``).
    For values whose size was only assumed (``sized`` false: a bare published list, the h5 matrix)
    an off-centre point at the centre of another ZED image size is intrinsics for that size
    (OtherSize), and a published list (``published_order``) whose numbers fit [fx, fy, cx, cy] is
    named as such (WrongAboutItself)."""
    limits = context.config.plausibility
    limit, spread = limits.max_principal_point_offset, limits.max_focal_spread
    finite = math.isfinite(fx + fy + cx + cy) and fx > 0 and width > 0 < height
    offset = _centre_offset(cx, cy, width, height) if finite else 0.0  # (else the record names the values)
    if finite and (offset > limit or abs(fy - fx) > spread * fx):
        outside = "outside the" if not (0 <= cx < width and 0 <= cy < height) else "in the"
        where = (f"principal point ({cx:.6g}, {cy:.6g}) lies {outside} {width}x{height} image, {offset:.1%} of it "
                 f"from its centre (plausibility.max_principal_point_offset = {limit:g})" if offset > limit else
                 f"fx {fx:.6g} and fy {fy:.6g} differ by {abs(fy - fx) / fx:.1%} (plausibility.max_focal_spread = "
                 f"{spread:g})")
        # Written [fx, fy, cx, cy], read [fx, cx, fy, cy]: the read cx is fy (close to fx) and the read fy is cx.
        if published_order and _centre_offset(fy, cy, width, height) <= limit and abs(cx - fx) <= spread * fx:
            raise WrongAboutItself(f"{detail}: {where}; the entry looks like [fx, fy, cx, cy], not DROID's "
                                   f"[fx, cx, fy, cy] (read so, the principal point is ({fy:.6g}, {cy:.6g}))")
        other = None if sized or offset <= limit else _size_centred_on(cx, cy, limit)
        if other is not None and other != (width, height):
            record = _record(context, source, detail, fx, fy, cx, cy, *other, distortion, **extra)
            raise OtherSize(f"its principal point ({cx:.6g}, {cy:.6g}) is the centre of a {other[0]}x{other[1]} "
                            f"image: intrinsics for {other[0]}x{other[1]}, the video is {width}x{height}", record)
        raise WrongAboutItself(f"{detail}: {where}")
    k1, k2, p1, p2, k3 = distortion
    return IntrinsicsRecord.pinhole(
        fx, fy, cx, cy, episode_id=context.raw.episode_id, serial=context.serial, camera=context.role,
        source=source, source_detail=detail, rectified=True, width=int(width), height=int(height),
        k1=k1, k2=k2, p1=p1, p2=p2, k3=k3, **extra)


def _require_video(context: CameraContext) -> tuple[int, int]:
    """The left image's (width, height) from the camera's video."""
    if context.video is None:
        raise SourceFailed(f"no recordings/MP4/{context.serial}.mp4 or {context.serial}-stereo.mp4 "
                           "to read the image size from")
    return context.video.left_size


def _from_published(context: CameraContext) -> IntrinsicsRecord:
    path = context.config.intrinsics_path
    if path is None:
        raise SourceFailed("intrinsics_path is not set")
    size, sized = _require_video(context), False
    try:
        entry = lookup(path, context.raw.episode_id, context.config.output_root / INDEX_DIR_NAME, "intrinsics")
    except CalibrationFileError as exc:
        raise context.raw.fail(f"camera {context.serial} ({context.role}): published: {exc}") from exc
    if entry is None:
        raise SourceFailed(f"episode not in {path}")
    if not isinstance(entry, dict):
        raise SourceFailed(f"{path}: entry of the episode is not an object")
    value = entry.get(context.serial)
    if value is None:
        raise SourceFailed(f"{path}: no entry for serial {context.serial} "
                           f"(entries: {', '.join(map(str, entry)) or 'none'})")
    if isinstance(value, dict):
        if "cameraMatrix" not in value:
            raise SourceFailed(f"{path}: entry of serial {context.serial} has no cameraMatrix")
        if ("width" in value) != ("height" in value):
            raise SourceFailed(f"{path}: entry of serial {context.serial} gives only one of width, height")
        if "width" in value:
            size = (_positive_int(value["width"], "width", path), _positive_int(value["height"], "height", path))
            sized = True
        value = value["cameraMatrix"]
    if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise SourceFailed(f"{path}: serial {context.serial}: expected [fx, cx, fy, cy], got {value!r}")
    fx, cx, fy, cy = (float(v) for v in value)
    return _record(context, "published", str(path), fx, fy, cx, cy, *size, sized=sized,
                   published_order=True)


def _from_h5(context: CameraContext) -> IntrinsicsRecord:
    name = f"observation/camera_intrinsics/{context.serial}_left"
    if not context.raw.trajectory_path.is_file():
        raise SourceFailed("no trajectory.h5")
    try:
        with context.raw.trajectory() as h5:
            if not h5.has(name):
                raise SourceFailed(f"trajectory.h5 has no {name}")
            matrices = h5.numbers(name)
    except EpisodeError as exc:
        raise SourceFailed(exc.cause) from exc
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
    return _record(context, "h5", f"trajectory.h5:{name}", K[0, 0], K[1, 1], K[0, 2], K[1, 2],
                   *_require_video(context), sized=False)


def _from_zed_conf(context: CameraContext) -> IntrinsicsRecord:
    folder = context.config.zed_calibration_dir
    if folder is None:
        raise SourceFailed("zed_calibration_dir is not set")
    path = Path(folder) / f"SN{context.serial}.conf"
    if not path.is_file():
        raise SourceFailed(f"no {path}")
    width, height = _require_video(context)
    try:
        rectified = rectify(parse_conf(path), width, height)
    except ZedConfError as exc:
        raise SourceFailed(str(exc)) from exc
    K = rectified.K
    return _record(context, "zed_conf", str(path), K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height,
                   baseline_m=rectified.baseline_m, R1=rectified.R1, R2=rectified.R2, P1=rectified.P1,
                   P2=rectified.P2, zed_resolution=rectified.resolution_key, zed_scale=rectified.scale)


def _from_zed_sdk(context: CameraContext) -> IntrinsicsRecord:
    path = context.raw.svo_path(context.serial)
    try:
        sdk = zed_adapter.read_calibration(path)
    except (zed_adapter.ZedSdkUnavailable, zed_adapter.ZedSdkError) as exc:
        raise SourceFailed(str(exc)) from exc
    return _record(context, "zed_sdk", str(path), sdk.fx, sdk.fy, sdk.cx, sdk.cy, sdk.width, sdk.height,
                   sdk.distortion, baseline_m=sdk.baseline_m)


_READERS: dict[str, Callable[[CameraContext], IntrinsicsRecord]] = {
    "published": _from_published, "h5": _from_h5, "zed_conf": _from_zed_conf, "zed_sdk": _from_zed_sdk}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, name: str, path: os.PathLike | str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SourceFailed(f"{path}: {name} must be a positive integer, got {value!r}")
    return value
