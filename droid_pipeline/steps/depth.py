"""Per-episode depth extraction: one uint16 millimetre depth frame per control step and camera.

For each camera, frames come from a backend and stream straight into
``recordings/<serial>/depth.mkv`` (:class:`~droid_pipeline.formats.depth_codec.DepthWriter`, which also
writes ``depth_meta.json``); nothing of the episode is held in memory. A camera's finished file is
decoded and checked in a background thread while the next camera is read and encoded; the step
returns only when every file is verified and published, and a failed check fails the episode.

- ``stereo`` (CPU): the episode's side-by-side ``<serial>-stereo.mp4`` (rectified left|right),
  matched by :class:`~droid_pipeline.steps.stereo.StereoMatcher`; depth ``= fx * B / disparity`` with the
  rectified ``fx`` of ``recordings/<serial>/intrinsics.json`` (written by the intrinsics step,
  computed here when absent) and its ``baseline_m``, else the baseline of ``SN<serial>.conf``
  in ``zed_calibration_dir`` rectified to the video's size.
- ``zed`` (GPU node): the SVO through the ZED SDK in ``zed_depth_mode`` (NEURAL by default), via
  :mod:`droid_pipeline.raw.zed_adapter`, the only module that imports ``pyzed.sl``. The SDK uses the
  GPU that ``CUDA_VISIBLE_DEVICES`` exposes.

Frame i is control step i, with T steps = rows of ``observation/robot_state/cartesian_position``.
A frame the source cannot produce (a failed SDK grab, video that ends or breaks early) is
written all-invalid and its index recorded (``missing_frames`` in depth_meta.json); a source
longer than T is cut to T and the difference recorded. The counts follow the one frame-count
policy of every video, ``video_frame_mismatch``: the frames the source lists and the steps it
gives no frame for each within ``tolerance_frames`` (a warning), else the camera fails. Depth
valid over less than ``plausibility.min_depth_valid_fraction`` of the pixels is named (swapped
stereo halves show so), a warning or, with ``depth_check_action: fail``, a failure. Values are
rounded to whole millimetres; NaN, +-inf and values outside ``[depth_min_mm, depth_max_mm]`` of
the camera's role become 0.
With ``export_rgb`` the left images of the same frames go to ``recordings/<serial>/rgb.mp4``.

``depth_size`` stores the frames at an exact integer downscale of the camera's size (e.g.
``640x360`` from 1280x720, factor s = 2): each stored pixel is the lower median of the valid
(non-zero) pixels of its s x s block, and 0 when fewer than half of them are valid. A median
never averages across a depth edge or with invalid pixels: every stored value is one the camera
measured in that block (the lower of the two middle ones for an even count: the nearer
surface). depth_meta.json's ``source.depth_size`` records the native and stored sizes, the
factor, the method and the intrinsics of the stored frames: ``fx/s, fy/s, (cx + 0.5)/s - 0.5,
(cy + 0.5)/s - 0.5`` (pixel centres at integer coordinates, as OpenCV; stored pixel j covers
native pixels s*j .. s*j + s - 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.atomic import atomic_path
from droid_pipeline.core.config import Config, PlausibilityConfig, VideoFrameMismatchConfig
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import DEPTH, INTRINSICS, RGB
from droid_pipeline.formats.depth_codec import DepthCodecError, DepthMeta, DepthWriter
from droid_pipeline.formats.intrinsics import IntrinsicsError, IntrinsicsRecord
from droid_pipeline.raw import zed_adapter
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.episode import RawEpisode
from droid_pipeline.raw.trajectory import CONTROL_TIMESTAMP_GROUP
from droid_pipeline.raw.video import VideoError, iter_frames
from droid_pipeline.raw.zed_conf import RESOLUTIONS, ZedConf, ZedConfError, parse_conf, rectify
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.stereo import StereoMatcher, split_side_by_side, to_gray

STEP = "depth"
BACKENDS = ("zed", "stereo")
# The largest value a uint16 frame can hold; anything beyond cannot be stored and is invalid.
UINT16_MAX_MM = 65535
RGB_CRF = 18

log = logging.getLogger(__name__)


NATIVE = "native"
DOWNSCALE_METHOD = "lower median of the valid pixels of each block; 0 when fewer than half are valid"


def downscale_factor(depth_size: str, width: int, height: int) -> int:
    """The integer factor s of ``depth_size`` (``native`` or ``WxH``) for frames of ``width`` x ``height``;
    ValueError unless ``WxH`` is exactly (width / s) x (height / s)."""
    if depth_size == NATIVE:
        return 1
    try:
        stored_w, stored_h = (int(v) for v in depth_size.lower().split("x"))
    except ValueError:
        raise ValueError(f"depth_size {depth_size!r}: expected native or WxH, e.g. 640x360") from None
    if stored_w < 1 or width % stored_w or height % stored_h or width // stored_w != height // stored_h:
        raise ValueError(f"depth_size {depth_size}: not an exact integer downscale of the camera's "
                         f"{width}x{height} (e.g. {width // 2}x{height // 2})")
    return width // stored_w


def downscale_depth(frame: np.ndarray, factor: int) -> np.ndarray:
    """uint16 depth (mm, 0 = invalid) downscaled by ``factor``: the lower median of each block's
    valid pixels, 0 where fewer than half are valid (see the module docstring)."""
    if factor == 1:
        return frame
    height, width = frame.shape[0] // factor, frame.shape[1] // factor
    blocks = frame.reshape(height, factor, width, factor).transpose(0, 2, 1, 3).reshape(height, width, -1)
    valid = np.count_nonzero(blocks, axis=-1)
    ordered = np.sort(np.where(blocks > 0, blocks, np.uint16(UINT16_MAX_MM)), axis=-1)  # invalid last
    middle = np.maximum(valid - 1, 0) // 2
    out = np.take_along_axis(ordered, middle[..., None], axis=-1)[..., 0]
    out[2 * valid < factor * factor] = 0
    return out


def scaled_intrinsics(K: np.ndarray, size: tuple[int, int], factor: int) -> dict[str, Any]:
    """Intrinsics of frames of ``size`` (width, height) and camera matrix ``K`` downscaled by
    ``factor`` (pixel centres at integer coordinates)."""
    fx, fy = float(K[0][0]) / factor, float(K[1][1]) / factor
    cx, cy = (float(K[0][2]) + 0.5) / factor - 0.5, (float(K[1][2]) + 0.5) / factor - 0.5
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "K": [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]],
            "width": size[0] // factor, "height": size[1] // factor}


def depth_to_uint16_mm(depth_mm: np.ndarray, min_mm: float, max_mm: float) -> np.ndarray:
    """Round float depth (mm) to uint16; 0 where NaN, +-inf or outside ``[min_mm, max_mm]``."""
    depth = np.asarray(depth_mm, dtype=np.float32)
    upper = min(float(max_mm), UINT16_MAX_MM)
    with np.errstate(invalid="ignore"):
        valid = (depth >= min_mm) & (depth <= upper)  # False for NaN and outside; inf is outside
    out = np.rint(depth, where=valid, out=np.zeros(depth.shape, np.float32))
    return out.astype(np.uint16)


@dataclass
class FrameSource:
    """A camera's frames in recording order: ``(depth_mm float or None, left RGB or None)``.

    ``frames`` stops at the end of the source; ``details`` ends up in depth_meta.json's
    ``source`` (and may gain entries, such as a decode error, while ``frames`` runs).
    """

    width: int
    height: int
    num_frames: int
    fps: float
    frames: Iterator[tuple[np.ndarray | None, np.ndarray | None]]
    details: dict[str, Any] = field(default_factory=dict)
    # The valid fraction of the first frame matched with its views swapped (stereo only, None
    # before a frame was read): what names swapped halves when the depth is near-empty.
    swapped_valid_fraction: Callable[[], float | None] | None = None
    # Of the pixels matched so far, the fraction the left-right check kept (stereo with lr_check).
    lr_consistent_fraction: Callable[[], float | None] | None = None


@dataclass(frozen=True)
class DepthCamera:
    """One camera's depth as written: its files and the contents of its depth_meta.json (whose
    ``source`` holds the backend's details, frame counts and ``valid_fraction``)."""

    serial: str
    role: str
    depth_path: Path
    meta_path: Path
    meta: DepthMeta

    @property
    def num_missing(self) -> int:
        return len(self.meta.missing_frames)

    @property
    def valid_fraction(self) -> float:
        """Valid pixels over all pixels of all T frames."""
        return float(self.meta.source["valid_fraction"])

    def to_json(self) -> dict[str, Any]:
        return {"depth_path": str(self.depth_path), "meta_path": str(self.meta_path), "width": self.meta.width,
                "height": self.meta.height, "missing_frames": self.meta.missing_frames, **self.meta.source}


@dataclass(frozen=True)
class DepthResult:
    """What the depth step wrote for one episode: T steps per camera, by serial in role order."""

    episode_id: str
    backend: str
    num_steps: int
    cameras: dict[str, DepthCamera]

    def to_json(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "backend": self.backend, "num_steps": self.num_steps,
                "cameras": {serial: camera.to_json() for serial, camera in self.cameras.items()}}


def extract_depth(config: Config, episode: Episode, output_dir: os.PathLike | str,
                  backend: str | None = None, cameras: Sequence[str] | None = None) -> DepthResult:
    """Write depth.mkv and depth_meta.json for each camera; return what was written.

    ``backend`` overrides ``config.depth_backend``; ``cameras`` are roles (wrist, ext1, ext2) or
    serials, default every camera of the episode.
    """
    import av

    backend = backend or config.depth_backend
    if backend not in BACKENDS:
        raise EpisodeError(episode.episode_id, STEP,
                           f"unknown depth backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    output_dir = Path(output_dir)
    raw = RawEpisode.load(episode, config.droid_root, STEP)
    with raw.trajectory() as h5:
        num_steps = h5.num_steps(config.plausibility)
        try:
            control_rate: tuple[float, str] | None = h5.control_rate(num_steps, config.plausibility)
        except EpisodeError:
            control_rate = None  # no usable control timestamps: the rate comes from the config or the source
    # What fails one camera, and so the episode, with its cause.
    camera_errors = (DepthCodecError, ValueError, OSError, av.FFmpegError, zed_adapter.ZedSdkUnavailable,
                     zed_adapter.ZedSdkError)
    verifying: dict[str, tuple[str, DepthWriter, Future[DepthMeta]]] = {}

    def raise_failed(finished_only: bool) -> None:
        """Fail the episode with the first camera whose depth.mkv did not verify; with
        ``finished_only`` look only at the checks already over, else wait for each."""
        for serial, (role, _, verified) in verifying.items():
            if finished_only and not verified.done():
                continue
            exc = verified.exception()
            if isinstance(exc, camera_errors):
                raise raw.fail(f"camera {serial} ({role}): {exc}") from exc
            if exc is not None:
                raise exc

    # Camera k's file is decoded and checked here while camera k+1 is read and encoded.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth-verify") as verifier:
        for serial in raw.select_cameras(cameras):
            role = raw.role(serial)
            raise_failed(finished_only=True)
            try:
                with _open_source(config, raw, output_dir, backend, serial) as source:
                    fps, fps_source = _frame_rate(config, control_rate, source)
                    writer = _write_camera(config, output_dir / DEPTH.for_camera(serial), source, role,
                                           num_steps, fps, fps_source)
            except camera_errors as exc:
                raise_failed(finished_only=False)
                raise raw.fail(f"camera {serial} ({role}): {exc}") from exc
            verifying[serial] = role, writer, verifier.submit(writer.publish)
        raise_failed(finished_only=False)
    written: dict[str, DepthCamera] = {}
    for serial, (role, writer, verified) in verifying.items():
        camera = written[serial] = DepthCamera(serial, role, writer.path, writer.meta_path, verified.result())
        log.info("episode %s camera %s (%s): %d frames, %d missing, %.1f%% valid", episode.episode_id,
                 serial, role, num_steps, camera.num_missing, 100 * camera.valid_fraction)
    return DepthResult(episode.episode_id, backend, num_steps, written)


def _frame_rate(config: Config, control_rate: tuple[float, str] | None, source: FrameSource) -> tuple[float, str]:
    """Rate recorded in depth.mkv and where it came from: the config's fps, else the control
    timestamps' (as for tracks.npz), else the source's."""
    if config.fps is not None:
        return float(config.fps), "config"
    if control_rate is not None:
        return control_rate
    if np.isfinite(source.fps) and source.fps > 0:
        return source.fps, "source video"
    raise ValueError("no frame rate: fps is null in the config, trajectory.h5 has no usable control "
                     f"timestamps under {CONTROL_TIMESTAMP_GROUP} and the source reports none")


def _write_camera(config: Config, path: Path, source: FrameSource, role: str, num_steps: int,
                  fps: float, fps_source: str) -> DepthWriter:
    """Stream exactly ``num_steps`` frames of ``source`` into depth.mkv at ``path`` (and rgb.mp4);
    returns the finished writer, whose :meth:`~DepthWriter.publish` verifies and publishes depth.mkv."""
    min_mm, max_mm = config.depth_min_mm.for_role(role), config.depth_max_mm.for_role(role)
    factor = downscale_factor(config.depth_size, source.width, source.height)
    size_record = _size_record(path.with_name(INTRINSICS.name), source, factor)
    valid_pixels = produced = 0
    rgb_path = path.with_name(RGB.name) if config.export_rgb else None
    writer = DepthWriter(path, source.width // factor, source.height // factor, fps, config.ffv1)
    try:
        with _rgb_writer(rgb_path, source, fps) as rgb:
            for depth, image in source.frames:
                if depth is None:
                    writer.write_missing()
                else:
                    frame = downscale_depth(depth_to_uint16_mm(depth, min_mm, max_mm), factor)
                    writer.write(frame)
                    valid_pixels += int(np.count_nonzero(frame))
                    produced += 1
                rgb.write(image)
                if writer.num_frames == num_steps:
                    break
            while writer.num_frames < num_steps:
                writer.write_missing()
                rgb.write(None)
            if produced == 0:
                raise ValueError(f"the source produced no depth frame for any of the {num_steps} steps "
                                 f"({source.details})")
        valid_fraction = valid_pixels / (num_steps * writer.width * writer.height)
        warnings = _frame_count_check(config.video_frame_mismatch, source, num_steps, num_steps - produced)
        if source.lr_consistent_fraction is not None:
            source.details["lr_consistent_fraction"] = source.lr_consistent_fraction()
        warnings += _valid_fraction_check(config.plausibility, source, valid_fraction)
        writer.source.update(source.details)
        writer.source.update(
            role=role, num_steps=num_steps, source_frames=source.num_frames,
            frame_count_mismatch=source.num_frames - num_steps, num_missing=num_steps - produced,
            valid_fraction=valid_fraction, depth_range_mm=[min_mm, max_mm], fps=fps, fps_source=fps_source,
            rgb_export=RGB.name if config.export_rgb else None)
        if warnings:
            writer.source["warnings"] = warnings
        if size_record is not None:
            writer.source["depth_size"] = size_record
        writer.finish()
    except BaseException as exc:
        writer.abort(exc)
        raise
    return writer


def _frame_count_check(policy: VideoFrameMismatchConfig, source: FrameSource, num_steps: int,
                       num_missing: int) -> list[str]:
    """The source's frames against the T steps under ``video_frame_mismatch``, the one policy of
    the camera MP4s (tracks step), the stereo MP4s and the SVOs: the frames it lists and the steps
    it gave no frame for (not decodable, or beyond its end) each within ``tolerance_frames`` (and
    none with action fail), else ValueError; within, the warnings for depth_meta.json."""
    listed = source.num_frames
    what = source.details.get("video") or source.details.get("svo") or "the depth source"
    counts = (f"{what} lists {listed} frames and gives none for {num_missing} of the {num_steps} steps of "
              "trajectory.h5")
    if listed == num_steps and num_missing == 0:
        return []
    if policy.action == "fail":
        raise ValueError(f"{counts} (video_frame_mismatch.action is fail)")
    if max(abs(listed - num_steps), num_missing) > policy.tolerance_frames:
        raise ValueError(f"{counts}, more than video_frame_mismatch.tolerance_frames = {policy.tolerance_frames}")
    effects = ([f"{num_missing} step(s) all-invalid"] if num_missing else []) + \
        ([f"{listed - num_steps} frame(s) beyond the last step ignored"] if listed > num_steps else [])
    return [f"{counts}: {'; '.join(effects) or 'aligned'}"]


def _valid_fraction_check(limits: PlausibilityConfig, source: FrameSource, valid_fraction: float) -> list[str]:
    """Depth valid over less than ``plausibility.min_depth_valid_fraction`` of its pixels is named
    (with a hint when the stereo views matched the other way round give much more): a warning,
    or ValueError with ``depth_check_action: fail``."""
    if valid_fraction >= limits.min_depth_valid_fraction:
        return []
    swapped = source.swapped_valid_fraction() if source.swapped_valid_fraction is not None else None
    hint = ""
    if swapped is not None:
        source.details["swapped_valid_fraction"] = swapped
        if swapped >= limits.min_depth_valid_fraction and swapped > 2 * valid_fraction:
            hint = (f"; matched with its halves swapped, the first frame is {swapped:.0%} valid: the left and right "
                    "views look swapped (right|left)")
    consistency = source.details.get("lr_consistent_fraction")
    kept = f" (the left-right check kept {consistency:.0%} of the matches)" if consistency is not None else ""
    cause = (f"depth valid over {valid_fraction:.1%} of the pixels{kept}, below "
             f"plausibility.min_depth_valid_fraction = {limits.min_depth_valid_fraction:g}{hint}")
    if limits.depth_check_action == "fail":
        raise ValueError(cause)
    return [cause]


def _size_record(intrinsics_path: Path, source: FrameSource, factor: int) -> dict[str, Any] | None:
    """depth_meta.json's ``source.depth_size`` for downscaled frames (None at the native size); the
    camera's intrinsics.json (written by the intrinsics step) gives the native intrinsics."""
    if factor == 1:
        return None
    try:
        record = IntrinsicsRecord.load(intrinsics_path)
    except (IntrinsicsError, OSError) as exc:
        raise ValueError(f"depth_size needs the camera's intrinsics to record the stored frames' own: {exc}") \
            from exc
    if record.size != (source.width, source.height):
        raise ValueError(f"depth_size: {intrinsics_path.name} is for {record.width}x{record.height}, the depth "
                         f"source is {source.width}x{source.height}")
    return {"native": [source.width, source.height], "stored": [source.width // factor, source.height // factor],
            "factor": factor, "method": DOWNSCALE_METHOD,
            "intrinsics": scaled_intrinsics(record.K, record.size, factor),
            "intrinsics_convention": "pixel centres at integer coordinates: cx' = (cx + 0.5) / s - 0.5"}


@contextlib.contextmanager
def _open_source(config: Config, raw: RawEpisode, output_dir: Path, backend: str,
                 serial: str) -> Iterator[FrameSource]:
    """The camera's frame source for ``backend``, its files closed on exit."""
    if backend == "stereo":
        with _stereo_source(config, raw, output_dir, serial) as source:
            yield source
        return
    svo = raw.svo_path(serial)
    with zed_adapter.open_depth(svo, config.zed_depth_mode, left_image=config.export_rgb) as reader:
        details = {"backend": "zed", "svo": svo.relative_to(raw.folder).as_posix(),
                   "depth_mode": config.zed_depth_mode,
                   "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        yield FrameSource(reader.width, reader.height, reader.num_frames, reader.fps, reader.frames(),
                          details)


@contextlib.contextmanager
def _stereo_source(config: Config, raw: RawEpisode, output_dir: Path, serial: str) -> Iterator[FrameSource]:
    width, height, fx, baseline_m, provenance = _stereo_calibration(config, raw, output_dir, serial)
    video = raw.stereo_video(serial, width, height)
    matcher = StereoMatcher(config.stereo)
    details = {"backend": "stereo", "video": video.path.relative_to(raw.folder).as_posix(), "fx": fx,
               "baseline_m": baseline_m, **provenance,
               "stereo": {**vars(config.stereo), "num_disparities": matcher.num_disparities}}
    first: list[tuple[np.ndarray, np.ndarray]] = []
    frames = _stereo_frames(video.path, matcher, fx, baseline_m, config.export_rgb, details, first)

    def swapped_valid_fraction() -> float | None:
        """The first pair matched the other way round: its right half as the left view."""
        if not first:
            return None
        left, right = first[0]
        depth = matcher.depth_mm(right, left, fx, baseline_m)
        return float(np.count_nonzero(np.isfinite(depth))) / depth.size

    with contextlib.closing(frames):
        yield FrameSource(width, height, video.info.num_frames, video.info.fps, frames, details,
                          swapped_valid_fraction, lambda: matcher.lr_consistent_fraction)


def _stereo_frames(path: Path, matcher: StereoMatcher, fx: float, baseline_m: float, with_rgb: bool,
                   details: dict[str, Any], first: list[tuple[np.ndarray, np.ndarray]]
                   ) -> Generator[tuple[np.ndarray | None, np.ndarray | None], None, None]:
    """Depth (and left image) of each recorded frame, ``(None, None)`` for a frame the decoder
    could not give (so frame i stays step i); a decode error ends the stream, recorded. The first
    pair is kept in ``first`` (gray) for the swapped-views check."""
    frames = iter_frames(path, "rgb24" if with_rgb else "gray")
    expected = 0
    with contextlib.closing(frames):
        while True:
            try:
                item = next(frames, None)
            except VideoError as exc:
                details["decode_error"] = str(exc)
                log.warning("%s", exc)
                return
            if item is None:
                return
            index, frame = item
            for _ in range(expected, index):
                yield None, None
            expected = index + 1
            left, right = split_side_by_side(frame)
            if not first:
                first.append((to_gray(left), to_gray(right)))
            yield (matcher.depth_mm(left, right, fx, baseline_m),
                   np.ascontiguousarray(left) if with_rgb else None)


def _stereo_calibration(config: Config, raw: RawEpisode, output_dir: Path, serial: str
                        ) -> tuple[int, int, float, float, dict[str, str]]:
    """Left-image size, rectified fx and baseline (m) of a camera, and where they came from."""
    path = output_dir / INTRINSICS.for_camera(serial)
    record: IntrinsicsRecord | None
    if path.is_file():
        record = IntrinsicsRecord.load(path)
    else:
        record = extract_intrinsics(config, raw.episode, output_dir, cameras=[serial]).get(serial)
        if record is None:
            raise IntrinsicsError(f"no intrinsics for camera {serial}: the stereo backend needs fx")
    width, height = record.size
    provenance = {"intrinsics": f"{path.parent.name}/{path.name} (source {record.source})"}
    if record.baseline_m is not None:
        baseline_m = record.baseline_m
        provenance["baseline_source"] = f"{path.name} (source {record.source})"
    else:
        if config.zed_calibration_dir is None:
            raise IntrinsicsError(f"{path} has no baseline_m (source {record.source}) and "
                                  "zed_calibration_dir is not set: the stereo backend needs the baseline")
        conf = Path(config.zed_calibration_dir) / f"SN{serial}.conf"
        try:
            baseline_m, provenance["baseline_source"] = _conf_baseline(parse_conf(conf), width, height, conf.name)
        except ZedConfError as exc:
            raise IntrinsicsError(f"{path} has no baseline_m and {exc}") from exc
    return width, height, record.fx, baseline_m, provenance


def _conf_baseline(conf: ZedConf, width: int, height: int, name: str) -> tuple[float, str]:
    """The rectified baseline (m) of a ZED conf for a ``width x height`` image, and where it came
    from. A size that is no ZED mode nor an integer downscale of one (a video re-encoded to
    another size, its intrinsics rescaled) takes the first mode the conf calibrates: the baseline
    is a length, not a pixel measure."""
    try:
        return rectify(conf, width, height).baseline_m, name
    except ZedConfError as exc:
        for key, (native_w, native_h) in RESOLUTIONS.items():
            try:
                baseline_m = rectify(conf, native_w, native_h).baseline_m
            except ZedConfError:
                continue
            return baseline_m, f"{name} ({key} section: no section for {width}x{height}, the baseline does not " \
                               "depend on the image size)"
        raise exc


class _NoRgb:
    """Stand-in RGB writer when export_rgb is off."""

    def write(self, image: np.ndarray | None) -> None:
        pass


class _RgbStream:
    """H.264 encoder of left images; ``None`` writes a black frame so frame i stays step i."""

    def __init__(self, container: Any, stream: Any):
        self.container, self.stream = container, stream
        self.black = np.zeros((stream.height, stream.width, 3), np.uint8)
        self.count = 0

    def write(self, image: np.ndarray | None) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(self.black if image is None else image, format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def flush(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)


@contextlib.contextmanager
def _rgb_writer(path: Path | None, source: FrameSource, fps: float) -> Iterator[_NoRgb | _RgbStream]:
    """``rgb.mp4`` (H.264, CRF 18, yuv420p) written under a temporary name, renamed on success."""
    if path is None:
        yield _NoRgb()
        return
    import av

    with atomic_path(path) as tmp:
        container = av.open(str(tmp), "w", format="mp4")
        try:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100_000))
            stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
            stream.codec_context.options = {"crf": str(RGB_CRF)}
            writer = _RgbStream(container, stream)
            yield writer
            writer.flush()
        finally:
            container.close()
