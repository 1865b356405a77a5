"""Lossless depth codec: 16-bit millimetre depth frames <-> FFV1 in Matroska, verified.

``depth.mkv`` holds one gray16le FFV1 frame per control step (depth in mm, 0 = invalid); beside it
``depth_meta.json`` records the layout, the encoder settings, a SHA-256 of the raw frames and how
to decode the file without this package. :class:`DepthWriter` encodes frames as they arrive, then
decodes the finished file and compares it with the running checksum before the file is renamed
into place, so a ``depth.mkv`` that exists is known to decode to exactly the frames written.
:class:`DepthReader` streams, seeks and verifies. FFmpeg only logs damaged slices and truncated
containers, so every decode step here collects FFmpeg's error messages and raises on them.
The format is described in docs/depth_format.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import av
import av.logging
import cv2
import numpy as np

from droid_pipeline.core.atomic import atomic_path, write_json_atomic
from droid_pipeline.core.config import ConfigError, FFV1Config

FORMAT = "mkv"
CODEC = "ffv1"
PIX_FMT = "gray16le"
UNIT = "mm"
SCALE_MM_PER_UNIT = 1.0
INVALID_VALUE = 0
CHECKSUM_ALGORITHM = "sha256"

# FFV1Config.coder names -> the ffv1 encoder's "coder" option values.
_CODER_OPTION = {"range_def": "range_def", "range_tab": "range_tab"}
_T = TypeVar("_T")


class DepthCodecError(RuntimeError):
    """A depth file or depth input is unreadable, corrupt, or does not match what was written."""


def meta_path_for(path: os.PathLike | str) -> Path:
    """Default metadata path beside a depth file: ``depth.mkv`` -> ``depth_meta.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}_meta.json")


def encoder_options(settings: FFV1Config) -> dict[str, str]:
    """FFmpeg ffv1 encoder options for ``settings`` (slice CRCs always on).

    Settings FFmpeg would silently override for 16-bit frames are refused, so that the encoder
    settings recorded in depth_meta.json are the ones in the file: level 1 has no slice CRCs
    (FFmpeg turns it into version 3 when they are asked for), and Golomb-Rice cannot code more
    than 8 bits (FFmpeg switches to the range coder).
    """
    if settings.level != 3:
        raise ConfigError(f"ffv1.level must be 3 for depth (slices with CRCs need FFV1 "
                          f"version 3), got {settings.level}")
    if settings.coder == "golomb_rice":
        raise ConfigError("ffv1.coder golomb_rice cannot code 16-bit depth (FFmpeg replaces it "
                          "with range_tab); use range_tab or range_def")
    return {"level": str(settings.level), "g": str(settings.gop), "slices": str(settings.slices),
            "slicecrc": "1", "context": str(settings.context),
            "coder": _CODER_OPTION[settings.coder]}


@dataclass
class DepthMeta:
    """Contents of ``depth_meta.json``: what the frames are and how to check and decode them."""

    width: int
    height: int
    fps: float
    num_frames: int
    missing_frames: list[int]
    checksum: dict[str, str]
    encoder: dict[str, Any]
    decode: dict[str, str]
    source: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    codec: str = CODEC
    pix_fmt: str = PIX_FMT
    unit: str = UNIT
    scale: float = SCALE_MM_PER_UNIT
    invalid_value: int = INVALID_VALUE

    _JSON_ORDER = ("format", "codec", "pix_fmt", "unit", "scale", "invalid_value", "width",
                   "height", "fps", "num_frames", "missing_frames", "checksum", "encoder",
                   "decode", "source")
    _FIXED = {"format": FORMAT, "codec": CODEC, "pix_fmt": PIX_FMT, "unit": UNIT,
              "invalid_value": INVALID_VALUE}

    def to_dict(self) -> dict[str, Any]:
        """JSON form, keys in reading order."""
        data = asdict(self)
        return {key: data[key] for key in self._JSON_ORDER}

    @classmethod
    def from_dict(cls, data: Any, where: str = "depth metadata") -> DepthMeta:
        """Parse and validate the JSON form; ``where`` names the file in errors."""
        if not isinstance(data, dict):
            raise DepthCodecError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in cls._JSON_ORDER if key not in data]
        unknown = [key for key in data if key not in cls._JSON_ORDER]
        if missing or unknown:
            raise DepthCodecError(f"{where}: missing keys {missing}, unknown keys {unknown}")
        for key, expected in cls._FIXED.items():
            if data[key] != expected:
                raise DepthCodecError(f"{where}: {key} is {data[key]!r}, this reader handles "
                                      f"{expected!r}")
        checksum = data["checksum"]
        if (not isinstance(checksum, dict) or checksum.get("algorithm") != CHECKSUM_ALGORITHM
                or not isinstance(checksum.get("value"), str)):
            raise DepthCodecError(f"{where}: checksum must be {{'algorithm': "
                                  f"'{CHECKSUM_ALGORITHM}', 'value': hex}}, got {checksum!r}")
        try:
            return cls(**{key: data[key] for key in cls._JSON_ORDER})
        except TypeError as exc:
            raise DepthCodecError(f"{where}: {exc}") from exc

    @classmethod
    def load(cls, path: os.PathLike | str) -> DepthMeta:
        """Read ``depth_meta.json``; a missing or malformed file raises DepthCodecError."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise DepthCodecError(f"{path}: cannot read depth metadata: {exc.strerror}") from exc
        except ValueError as exc:
            raise DepthCodecError(f"{path}: depth metadata is not valid JSON: {exc}") from exc
        return cls.from_dict(data, str(path))

    def write(self, path: os.PathLike | str) -> None:
        """Write atomically as JSON."""
        write_json_atomic(path, self.to_dict())


class _FrameDigest:
    """Running SHA-256 over little-endian uint16 frames, with the frame count."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.count = 0

    def update(self, frame: np.ndarray) -> None:
        self._sha.update(np.ascontiguousarray(frame, dtype="<u2").data)
        self.count += 1

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _LibavErrors:
    """Collect FFmpeg's error-level log lines during a block (PyAV discards them by default).

    FFV1 slice-CRC mismatches and truncated Matroska files are only logged by FFmpeg, never
    returned as errors; this is how they become exceptions. PyAV's suppression of a message that
    repeats the previous one is turned off meanwhile, or a second damaged file would go unseen.
    The previous log settings are restored.
    """

    def __enter__(self) -> _LibavErrors:
        self._previous = av.logging.get_level(), av.logging.get_skip_repeated()
        if self._previous[0] is None or self._previous[0] < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)
        self._capture = av.logging.Capture(local=False)
        self._records = self._capture.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._capture.__exit__(*exc_info)
        av.logging.set_level(self._previous[0])
        av.logging.set_skip_repeated(self._previous[1])

    def text(self) -> str:
        lines = [message.strip() for level, _, message in self._records
                 if level <= av.logging.ERROR and message.strip()]
        return "; ".join(lines)


def _libav(path: Path, what: str, call: Callable[[], _T]) -> _T:
    """Run one PyAV call; its exceptions and FFmpeg's logged errors become DepthCodecError."""
    with _LibavErrors() as log:
        try:
            result = call()
        except (av.FFmpegError, OSError) as exc:
            logged = log.text()
            detail = f" ({logged})" if logged and logged not in str(exc) else ""
            raise DepthCodecError(f"{path}: {what}: {exc}{detail}") from exc
        logged = log.text()
    if logged:
        raise DepthCodecError(f"{path}: {what}: damaged or truncated file (FFmpeg: {logged})")
    return result


def _library_version() -> str:
    major, minor, micro = av.library_versions["libavcodec"]
    return f"libavcodec {major}.{minor}.{micro} (PyAV {av.__version__})"


def _decode_instructions(path: Path, num_frames: int, height: int, width: int) -> dict[str, str]:
    raw = path.with_suffix(".raw").name
    return {
        "python": (f"import av, numpy as np; depth = np.stack([f.to_ndarray() for f in "
                   f"av.open({path.name!r}).decode(video=0)])  # ({num_frames}, {height}, "
                   f"{width}) uint16, mm, 0 = invalid"),
        "ffmpeg": f"ffmpeg -i {shlex.quote(path.name)} -f rawvideo -pix_fmt {PIX_FMT} "
                  f"{shlex.quote(raw)}",
        "raw_layout": f"{raw}: {num_frames} x {height} x {width} little-endian uint16, "
                      "frames in order, rows top to bottom",
    }


class DepthWriter:
    """Encode depth frames one at a time into a verified ``depth.mkv`` plus ``depth_meta.json``.

    Frames go to a temporary file beside ``path`` as they arrive; nothing of the episode is held
    in memory. :meth:`close` (a clean ``with`` exit) decodes the file, checks it against the
    checksum and count of the frames written, renames it to ``path`` and writes the metadata.
    :meth:`abort` (an exception in the ``with`` block) deletes it. Any previous file at ``path``
    and its metadata are removed when the writer opens, so a failed rewrite leaves nothing.
    """

    def __init__(self, path: os.PathLike | str, width: int, height: int, fps: float,
                 settings: FFV1Config, *, meta_path: os.PathLike | str | None = None,
                 source: dict[str, Any] | None = None):
        self.path = Path(path)
        self.meta_path = Path(meta_path) if meta_path is not None else meta_path_for(self.path)
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise DepthCodecError(f"{self.path}: {name} must be a positive integer, "
                                      f"got {value!r}")
        if not np.isfinite(fps) or fps <= 0:
            raise DepthCodecError(f"{self.path}: fps must be positive, got {fps!r}")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.settings = settings
        self._options = encoder_options(settings)
        self.source = dict(source or {})
        self._digest = _FrameDigest()
        self._missing: list[int] = []
        self._meta: DepthMeta | None = None
        self._done = False
        self.meta_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            self._container, self._stream = self._open_encoder()
        except BaseException as exc:
            self._discard(exc)
            raise

    def _open_encoder(self) -> tuple[Any, Any]:
        container = _libav(self.path, "cannot create Matroska file",
                           lambda: av.open(str(self._tmp), "w", format="matroska"))
        stream = container.add_stream(CODEC, rate=Fraction(self.fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, PIX_FMT
        stream.codec_context.options = self._options
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = self.settings.threads
        try:
            _libav(self.path, f"ffv1 encoder rejected settings {self._options} "
                   f"at {self.width}x{self.height}", container.start_encoding)
        except DepthCodecError:
            container.close()
            raise
        return container, stream

    def __enter__(self) -> DepthWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)

    @property
    def num_frames(self) -> int:
        """Frames written so far."""
        return self._digest.count

    @property
    def meta(self) -> DepthMeta:
        """The metadata written by :meth:`close`."""
        if self._meta is None:
            raise DepthCodecError(f"{self.path}: metadata exists only after a successful close")
        return self._meta

    def write(self, frame: np.ndarray) -> None:
        """Encode one (height, width) uint16 depth frame in millimetres (0 = invalid)."""
        self._check_open()
        if (not isinstance(frame, np.ndarray) or frame.dtype.kind != "u"
                or frame.dtype.itemsize != 2 or frame.shape != (self.height, self.width)):
            got = (f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray)
                   else type(frame).__name__)
            raise DepthCodecError(f"{self.path}: frame {self.num_frames}: expected a uint16 array "
                                  f"of shape ({self.height}, {self.width}), got {got}")
        data = np.ascontiguousarray(frame, dtype="<u2")
        video_frame = av.VideoFrame.from_ndarray(data, format=PIX_FMT)
        video_frame.pts = self.num_frames
        self._mux(_libav(self.path, f"encoding frame {self.num_frames}",
                         lambda: self._stream.encode(video_frame)))
        self._digest.update(data)

    def write_missing(self) -> None:
        """Write an all-invalid frame for a step whose depth is missing, and record its index."""
        self._check_open()
        self._missing.append(self.num_frames)
        self.write(np.zeros((self.height, self.width), np.uint16))

    def close(self) -> DepthMeta:
        """Finish, verify by decoding, publish ``path`` and the metadata; returns the metadata."""
        self._check_open()
        try:
            if self.num_frames == 0:
                raise DepthCodecError(f"{self.path}: no frames were written")
            self._mux(_libav(self.path, "flushing the encoder", lambda: self._stream.encode(None)))
            _libav(self.path, "finishing the Matroska file", self._container.close)
            meta = DepthMeta(
                width=self.width, height=self.height, fps=self.fps, num_frames=self.num_frames,
                missing_frames=list(self._missing),
                checksum={"algorithm": CHECKSUM_ALGORITHM, "value": self._digest.hexdigest()},
                encoder={"library": _library_version(), **asdict(self.settings), "slicecrc": 1},
                decode=_decode_instructions(self.path, self.num_frames, self.height, self.width),
                source=self.source)
            with DepthReader(self._tmp) as reader:
                reader.verify(meta, name=str(self.path))
        except BaseException as exc:
            self._discard(exc)
            raise
        self._done = True
        self._atomic.__exit__(None, None, None)
        try:
            meta.write(self.meta_path)
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        self._meta = meta
        return meta

    def abort(self, reason: BaseException | None = None) -> None:
        """Stop and delete the partial file; ``path`` is left empty."""
        if not self._done:
            self._discard(reason or DepthCodecError(f"{self.path}: aborted"))

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            _libav(self.path, "writing a packet", functools.partial(self._container.mux, packet))

    def _check_open(self) -> None:
        if self._done:
            raise DepthCodecError(f"{self.path}: writer is already closed")

    def _discard(self, reason: BaseException) -> None:
        self._done = True
        container = getattr(self, "_container", None)
        if container is not None:
            try:
                container.close()
            except (av.FFmpegError, OSError):
                pass  # the file is deleted next; the original error is what matters
        self._atomic.__exit__(type(reason), reason, reason.__traceback__)


class DepthReader:
    """Read a depth.mkv: ``len()``, streaming iteration, ``reader[i]``, :meth:`read_all`,
    :meth:`verify`. Unreadable, truncated or corrupt files raise DepthCodecError."""

    def __init__(self, path: os.PathLike | str, *, threads: int = 0):
        self.path = Path(path)
        self.threads = threads
        if not self.path.is_file():
            raise DepthCodecError(f"{self.path}: no such depth file")
        container = self._open()
        codec_context = container.streams.video[0].codec_context
        self.width, self.height = codec_context.width, codec_context.height
        rate = container.streams.video[0].average_rate
        self.fps = float(rate) if rate else None
        container.close()
        self._pts: list[int] | None = None
        self._seek_container: Any = None

    def _open(self) -> Any:
        container = _libav(self.path, "not a readable video file",
                           lambda: av.open(str(self.path), "r"))
        problem = None
        if "matroska" not in container.format.name:
            problem = f"container is {container.format.name}, expected Matroska"
        elif len(container.streams) != 1 or len(container.streams.video) != 1:
            problem = f"expected exactly one video stream, found {len(container.streams)} streams"
        else:
            stream = container.streams.video[0]
            pix_fmt = stream.codec_context.format.name if stream.codec_context.format else None
            if stream.codec_context.name != CODEC or pix_fmt != PIX_FMT:
                problem = (f"stream is {stream.codec_context.name}/{pix_fmt}, expected "
                           f"{CODEC}/{PIX_FMT}")
        if problem:
            container.close()
            raise DepthCodecError(f"{self.path}: not a depth file: {problem}")
        stream.thread_type = "SLICE"
        stream.thread_count = self.threads
        return container

    def __enter__(self) -> DepthReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the container kept open for random access."""
        if self._seek_container is not None:
            self._seek_container.close()
            self._seek_container = None

    def _frame_pts(self) -> list[int]:
        """Timestamps of every frame, from one pass over the packets (no decoding)."""
        if self._pts is None:
            container = self._open()
            try:
                stream = container.streams.video[0]
                self._pts = _libav(self.path, "reading packets", lambda: [
                    packet.pts for packet in container.demux(stream) if packet.size])
            finally:
                container.close()
            if any(b <= a for a, b in zip(self._pts, self._pts[1:])):
                raise DepthCodecError(f"{self.path}: frame timestamps are not increasing")
        return self._pts

    def __len__(self) -> int:
        return len(self._frame_pts())

    def __iter__(self) -> Iterator[np.ndarray]:
        """Decode frames in order, one at a time."""
        container = self._open()
        try:
            frames = container.decode(container.streams.video[0])
            index = 0
            while True:
                frame = _libav(self.path, f"decoding frame {index}", lambda: next(frames, None))
                if frame is None:
                    return
                yield self._to_array(frame, index)
                index += 1
        finally:
            container.close()

    def __getitem__(self, index: int) -> np.ndarray:
        """Frame ``index`` (negative counts from the end), by seeking to its keyframe."""
        pts = self._frame_pts()
        if index < 0:
            index += len(pts)
        if not 0 <= index < len(pts):
            raise IndexError(f"{self.path}: frame {index} out of range (0..{len(pts) - 1})")
        if self._seek_container is None:
            self._seek_container = self._open()
        container = self._seek_container
        stream = container.streams.video[0]
        what = f"decoding frame {index}"
        _libav(self.path, f"seeking to frame {index}",
               lambda: container.seek(pts[index], stream=stream, backward=True))
        frames = container.decode(stream)
        while True:
            frame = _libav(self.path, what, lambda: next(frames, None))
            if frame is None or frame.pts > pts[index]:
                raise DepthCodecError(f"{self.path}: {what}: not found after seeking to its "
                                      f"timestamp {pts[index]}")
            if frame.pts == pts[index]:
                return self._to_array(frame, index)

    def read_all(self) -> np.ndarray:
        """Every frame as one (N, height, width) uint16 array."""
        count = len(self)
        out = np.empty((count, self.height, self.width), np.uint16)
        decoded = 0
        for decoded, frame in enumerate(self, start=1):
            if decoded > count:
                break
            out[decoded - 1] = frame
        if decoded != count:
            raise DepthCodecError(f"{self.path}: {count} packets but {decoded} decodable frames")
        return out

    def verify(self, meta: DepthMeta, *, name: str | None = None) -> None:
        """Decode everything and check size, frame count, missing frames and checksum."""
        name = name or str(self.path)
        if (self.width, self.height) != (meta.width, meta.height):
            raise DepthCodecError(f"{name}: frames are {self.width}x{self.height}, metadata says "
                                  f"{meta.width}x{meta.height}")
        digest = _FrameDigest()
        missing = set(meta.missing_frames)
        for index, frame in enumerate(self):
            if index in missing and frame.any():
                raise DepthCodecError(f"{name}: frame {index} is listed as missing but is not "
                                      f"all {INVALID_VALUE}")
            digest.update(frame)
        if digest.count != meta.num_frames:
            raise DepthCodecError(f"{name}: decoded {digest.count} frames, metadata says "
                                  f"{meta.num_frames}")
        if digest.hexdigest() != meta.checksum["value"]:
            raise DepthCodecError(f"{name}: decoded frames have sha256 {digest.hexdigest()}, "
                                  f"metadata says {meta.checksum['value']}")

    def _to_array(self, frame: Any, index: int) -> np.ndarray:
        array = frame.to_ndarray()
        if frame.format.name != PIX_FMT or array.shape != (self.height, self.width):
            raise DepthCodecError(f"{self.path}: frame {index} decoded as {frame.format.name} "
                                  f"{array.shape}, expected {PIX_FMT} "
                                  f"({self.height}, {self.width})")
        return array


def encode_depth_stack(frames: Iterable[np.ndarray], path: os.PathLike | str, fps: float,
                       settings: FFV1Config, *, meta_path: os.PathLike | str | None = None,
                       source: dict[str, Any] | None = None) -> DepthMeta:
    """Encode an iterable of (H, W) uint16 frames (streamed, sized by the first) to ``path``."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise DepthCodecError(f"{path}: no depth frames to encode")
    if not isinstance(first, np.ndarray) or first.ndim != 2:
        raise DepthCodecError(f"{path}: frame 0: expected a 2-D uint16 array, got "
                              f"{getattr(first, 'shape', type(first).__name__)}")
    height, width = first.shape
    with DepthWriter(path, width, height, fps, settings, meta_path=meta_path,
                     source=source) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.meta


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _png_frames(folder: Path) -> Iterator[np.ndarray]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png"), key=_natural_key)
    if not files:
        raise DepthCodecError(f"{folder}: no .png depth frames in this folder")
    shape = None
    for file in files:
        frame = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
        if frame is None:
            raise DepthCodecError(f"{file}: not a readable PNG")
        if frame.dtype != np.uint16 or frame.ndim != 2:
            raise DepthCodecError(f"{file}: expected a single-channel 16-bit PNG, got "
                                  f"{frame.dtype} with shape {frame.shape}")
        if shape is not None and frame.shape != shape:
            raise DepthCodecError(f"{file}: size {frame.shape} differs from the first frame's "
                                  f"{shape}")
        shape = frame.shape
        yield frame


def _npy_frames(stream: BinaryIO, name: str) -> Iterator[np.ndarray]:
    """Frames of an .npy stream read one at a time (works on compressed .npz members too)."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise DepthCodecError(f"{name}: unsupported .npy format version {version}")
    except ValueError as exc:
        raise DepthCodecError(f"{name}: not a valid .npy array: {exc}") from exc
    if dtype.kind != "u" or dtype.itemsize != 2 or len(shape) not in (2, 3) or 0 in shape:
        raise DepthCodecError(f"{name}: expected a uint16 array of shape (N, H, W) or (H, W), "
                              f"got {dtype} {shape}")
    if fortran_order and len(shape) == 3:
        raise DepthCodecError(f"{name}: Fortran-ordered stacks are not supported; save it with "
                              "np.save(path, np.ascontiguousarray(depth))")
    count, (height, width) = (1, shape) if len(shape) == 2 else (shape[0], shape[1:])
    frame_bytes = height * width * 2
    for index in range(count):
        data = stream.read(frame_bytes)
        if len(data) != frame_bytes:
            raise DepthCodecError(f"{name}: truncated: frame {index} of {count} is incomplete")
        frame = np.frombuffer(data, dtype).reshape((width, height) if fortran_order
                                                   else (height, width))
        yield frame.T if fortran_order else frame


def _npz_frames(path: Path, key: str | None) -> Iterator[np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DepthCodecError(f"{path}: not a readable .npz archive: {exc}") from exc
    with archive:
        keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            key = keys[0] if len(keys) == 1 else "depth" if "depth" in keys else None
            if key is None:
                raise DepthCodecError(f"{path}: holds arrays {keys}; name the depth stack "
                                      "with --key")
        if key not in keys:
            raise DepthCodecError(f"{path}: no array named {key!r} (has {keys})")
        with archive.open(f"{key}.npy") as member:
            yield from _npy_frames(member, f"{path}[{key}]")


def legacy_depth_frames(source: os.PathLike | str, *, key: str | None = None
                        ) -> Iterator[np.ndarray]:
    """Stream frames from the layouts older conversions left: a folder of 16-bit PNGs (sorted by
    name, numbers in natural order), an .npy stack, or an .npz holding one (``key`` selects it)."""
    source = Path(source)
    if not source.exists():
        raise DepthCodecError(f"{source}: no such file or folder")
    if source.is_dir():
        yield from _png_frames(source)
    elif source.suffix.lower() == ".npy" and source.is_file():
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise DepthCodecError(f"{source}: cannot open: {exc.strerror}") from exc
        with stream:
            yield from _npy_frames(stream, str(source))
    elif source.suffix.lower() == ".npz" and source.is_file():
        yield from _npz_frames(source, key)
    else:
        raise DepthCodecError(f"{source}: expected a folder of 16-bit PNGs, an .npy or an .npz "
                              "file")


def convert_to_mkv(source: os.PathLike | str, output: os.PathLike | str, fps: float,
                   settings: FFV1Config, *, key: str | None = None,
                   meta_path: os.PathLike | str | None = None) -> DepthMeta:
    """Convert a legacy depth layout (see :func:`legacy_depth_frames`) to a verified depth.mkv."""
    source = Path(source)
    layout = "png_folder" if source.is_dir() else source.suffix.lower().lstrip(".")
    provenance = {"converted_from": source.name, "layout": layout}
    if key is not None:
        provenance["key"] = key
    return encode_depth_stack(legacy_depth_frames(source, key=key), output, fps, settings,
                              meta_path=meta_path, source=provenance)


def decode_to_pngs(path: os.PathLike | str, out_dir: os.PathLike | str, *,
                   meta_path: os.PathLike | str | None = None) -> int:
    """Write every frame as ``000000.png``... (16-bit) into ``out_dir``; returns the count.

    When the metadata exists (``meta_path`` or the default beside the file) the frames are
    checked against it before the folder appears. The folder is filled under a temporary name
    and renamed when complete; an existing non-empty ``out_dir`` is an error.
    """
    path, out_dir = Path(path), Path(out_dir)
    meta_file = Path(meta_path) if meta_path is not None else meta_path_for(path)
    meta = DepthMeta.load(meta_file) if meta_path is not None or meta_file.exists() else None
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DepthCodecError(f"{out_dir}: exists and is not an empty folder")
    reader = DepthReader(path)
    if meta is not None and (reader.width, reader.height) != (meta.width, meta.height):
        raise DepthCodecError(f"{path}: frames are {reader.width}x{reader.height}, {meta_file} "
                              f"says {meta.width}x{meta.height}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        digest = _FrameDigest()
        for index, frame in enumerate(reader):
            file = tmp_dir / f"{index:06d}.png"
            if not cv2.imwrite(str(file), frame):
                raise DepthCodecError(f"{file}: cannot write PNG")
            digest.update(frame)
        if meta is not None and (digest.count, digest.hexdigest()) != (meta.num_frames,
                                                                        meta.checksum["value"]):
            raise DepthCodecError(f"{path}: decoded {digest.count} frames with sha256 "
                                  f"{digest.hexdigest()}, {meta_file} says {meta.num_frames} "
                                  f"frames with {meta.checksum['value']}")
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return digest.count
