"""Lossless depth codec: 16-bit millimetre depth frames <-> FFV1 in Matroska, verified.

``depth.mkv`` holds one gray16le FFV1 frame per control step (depth in mm, 0 = invalid); beside it
``depth_meta.json`` records the layout, the encoder settings, a SHA-256 of the raw frames and how
to decode the file without this package. :class:`DepthWriter` encodes frames as they arrive, then
decodes the finished file and compares it with the running checksum before the file is renamed
into place, so a ``depth.mkv`` that exists is known to decode to exactly the frames written; the
check can run in another thread while the caller goes on (:meth:`DepthWriter.finish`, then
:meth:`DepthWriter.publish`). With ``ffv1.remap_values`` the file holds codes instead of
millimetres (code i >= 1 = the i-th smallest value the sequence uses, listed in depth_meta.json's
``value_table``), which stereo depth, quantized in disparity, compresses better as.
:class:`DepthReader` streams, seeks and verifies, in millimetres either way. FFmpeg only logs
damaged slices and truncated containers, so every decode step here collects FFmpeg's error
messages and raises on them. PyAV and OpenCV are imported where used: :class:`DepthMeta` and
:func:`meta_path_for` need neither. The format is described in docs/depth_format.md.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import numpy as np

from droid_pipeline.core.atomic import atomic_path, write_json_atomic
from droid_pipeline.core.config import ConfigError, FFV1Config

FORMAT = "mkv"
CODEC: Final = "ffv1"
PIX_FMT = "gray16le"
UNIT = "mm"
SCALE_MM_PER_UNIT = 1.0
INVALID_VALUE = 0
CHECKSUM_ALGORITHM = "sha256"
# Matroska tag of the video stream in a file that holds value codes (ffv1.remap_values).
CODES_TAG = "DEPTH_VALUES"
CODES_TAG_TEXT = "codes: 0 = invalid, code c >= 1 is value_table[c - 1] mm (depth_meta.json)"
_VALUE_RANGE = 1 << 16

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
    if settings.coder not in _CODER_OPTION:
        raise ConfigError(f"ffv1.coder {settings.coder} cannot code 16-bit depth (FFmpeg replaces "
                          "Golomb-Rice with range_tab); use range_tab or range_def")
    return {"level": str(settings.level), "g": str(settings.gop), "slices": str(settings.slices),
            "slicecrc": "1", "context": str(settings.context),
            "coder": _CODER_OPTION[settings.coder]}


@dataclass
class DepthMeta:
    """Contents of ``depth_meta.json``: what the frames are and how to check and decode them.

    ``value_table`` exists only for a file written with ``ffv1.remap_values``: the sorted distinct
    non-zero millimetre values of the sequence; the file stores code i + 1 for ``value_table[i]``
    and 0 for invalid. ``checksum`` is always over the millimetre frames.
    """

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
    value_table: list[int] | None = None

    _JSON_ORDER = ("format", "codec", "pix_fmt", "unit", "scale", "invalid_value", "width",
                   "height", "fps", "num_frames", "missing_frames", "checksum", "encoder",
                   "decode", "source", "value_table")
    _OPTIONAL = ("value_table",)
    _FIXED = {"format": FORMAT, "codec": CODEC, "pix_fmt": PIX_FMT, "unit": UNIT,
              "invalid_value": INVALID_VALUE}

    def to_dict(self) -> dict[str, Any]:
        """JSON form, keys in reading order (``value_table`` only when there is one)."""
        data = asdict(self)
        return {key: data[key] for key in self._JSON_ORDER
                if key not in self._OPTIONAL or data[key] is not None}

    @classmethod
    def from_dict(cls, data: Any, where: str = "depth metadata") -> DepthMeta:
        """Parse and validate the JSON form; ``where`` names the file in errors."""
        if not isinstance(data, dict):
            raise DepthCodecError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [key for key in cls._JSON_ORDER if key not in data and key not in cls._OPTIONAL]
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
        table = data.get("value_table")
        if table is not None and not _is_value_table(table):
            raise DepthCodecError(f"{where}: value_table must be increasing integers in "
                                  f"1..{_VALUE_RANGE - 1}")
        try:
            return cls(**{key: data[key] for key in cls._JSON_ORDER if key in data})
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


def _is_value_table(table: Any) -> bool:
    if not isinstance(table, list) or not all(type(value) is int for value in table):
        return False
    values = np.asarray(table, dtype=np.int64)
    return bool(values.size == 0 or (values[0] >= 1 and values[-1] < _VALUE_RANGE
                                     and np.all(np.diff(values) > 0)))


class _FrameDigest:
    """Running SHA-256 over little-endian uint16 frames, with the frame count.

    Each frame is hashed in a helper thread while the caller encodes or decodes (hashlib releases
    the GIL): :meth:`submit` hands a frame over once the previous one is hashed, :meth:`wait`
    returns when it is. Use it in a ``with`` block, which ends the thread.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth-sha256")
        self._pending: Future[None] | None = None
        self.count = 0

    def __enter__(self) -> _FrameDigest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, frame: np.ndarray) -> None:
        """Hash ``frame`` after the frames before it; it must not change until :meth:`wait`."""
        self.wait()
        self._pending = self._thread.submit(self._sha.update,
                                            np.ascontiguousarray(frame, dtype="<u2").data)
        self.count += 1

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def hexdigest(self) -> str:
        self.wait()
        return self._sha.hexdigest()

    def close(self) -> None:
        self._thread.shutdown(wait=True)


_LogRecord = tuple[int, str, str]


class _LibavErrors:
    """FFmpeg's error messages logged while a block runs (PyAV discards them by default).

    FFV1 slice-CRC mismatches and truncated Matroska files are only logged by FFmpeg, never
    returned as errors; this is how they become exceptions. Blocks may run in several threads at
    once (a verification decodes while the next camera encodes), so the log settings are shared:
    the first block to start sets the level to ERROR and turns off PyAV's suppression of a
    message that repeats the previous one (or a second damaged file would go unseen); the last
    one to end restores them. A block owns what its own thread logs. Messages from FFmpeg's slice
    threads name only the codec: a ``decoding`` block also takes the FFV1 ones logged while it
    runs (the FFV1 decoder reports damaged slices from its slice threads), and decoding blocks
    run one at a time (:func:`_libav`), so those are its own. Encoders report their failures as
    error codes and take none, so a file being verified in one thread never fails the encoder in
    another, and nothing the H.264 decoder of a stereo video logs is taken for FFV1's.
    """

    _lock = threading.Lock()
    _blocks = 0
    _settings: tuple[int | None, bool] = (None, True)
    _shared_capture: Any = None
    _shared: list[_LogRecord] = []

    def __init__(self, decoding: bool = False) -> None:
        self.decoding = decoding
        self.records: list[_LogRecord] = []

    def __enter__(self) -> _LibavErrors:
        import av.logging

        shared = _LibavErrors
        with shared._lock:
            if shared._blocks == 0:
                shared._settings = av.logging.get_level(), av.logging.get_skip_repeated()
                if shared._settings[0] is None or shared._settings[0] < av.logging.ERROR:
                    av.logging.set_level(av.logging.ERROR)
                av.logging.set_skip_repeated(False)
                shared._shared_capture = av.logging.Capture(local=False)
                shared._shared = shared._shared_capture.__enter__()
            shared._blocks += 1
            self._shared_start = len(shared._shared)
        self._own_capture = av.logging.Capture(local=True)
        self._own = self._own_capture.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        import av.logging

        self._own_capture.__exit__(None, None, None)
        shared = _LibavErrors
        with shared._lock:
            theirs = [record for record in shared._shared[self._shared_start:]
                      if record[1] == CODEC] if self.decoding else []
            shared._blocks -= 1
            if shared._blocks == 0:
                shared._shared_capture.__exit__(None, None, None)
                av.logging.set_level(shared._settings[0])
                av.logging.set_skip_repeated(shared._settings[1])
        self.records = [*self._own, *theirs]

    def text(self) -> str:
        import av.logging

        lines = [message.strip() for level, _, message in self.records
                 if level <= av.logging.ERROR and message.strip()]
        return "; ".join(lines)


# Held by each decoding call: one FFV1 decoder at a time owns what FFmpeg's slice threads log.
_DECODING = threading.RLock()


def _libav(path: Path, what: str, call: Callable[[], _T], *, decoding: bool = False) -> _T:
    """Run one PyAV call; its exceptions and FFmpeg's logged errors become DepthCodecError.
    ``decoding`` calls (reading a depth file) run one at a time, encoding calls beside them."""
    import av

    log = _LibavErrors(decoding)
    try:
        with _DECODING if decoding else contextlib.nullcontext(), log:
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
    import av

    major, minor, micro = av.library_versions["libavcodec"]
    return f"libavcodec {major}.{minor}.{micro} (PyAV {av.__version__})"


def _decode_instructions(path: Path, meta_path: Path, num_frames: int, height: int, width: int,
                         coded: bool) -> dict[str, str]:
    raw = path.with_suffix(".raw").name
    frames = f"np.stack([f.to_ndarray() for f in av.open({path.name!r}).decode(video=0)])"
    shape = f"({num_frames}, {height}, {width}) uint16, mm, 0 = invalid"
    layout = f"{raw}: {num_frames} x {height} x {width} little-endian uint16"
    if coded:
        python = (f"import av, json, numpy as np; mm = np.array([0] + json.load(open("
                  f"{meta_path.name!r}))['value_table'], np.uint16); depth = mm[{frames}]  "
                  f"# {shape}")
        layout += " value codes, not millimetres (0 = invalid, code c >= 1 is value_table[c - 1] mm)"
    else:
        python = f"import av, numpy as np; depth = {frames}  # {shape}"
    return {
        "python": python,
        "ffmpeg": f"ffmpeg -i {shlex.quote(path.name)} -f rawvideo -pix_fmt {PIX_FMT} "
                  f"{shlex.quote(raw)}",
        "raw_layout": f"{layout}, frames in order, rows top to bottom",
    }


class DepthWriter:
    """Encode depth frames one at a time into a verified ``depth.mkv`` plus ``depth_meta.json``.

    Frames go to a temporary file beside ``path`` as they arrive; nothing of the episode is held
    in memory. :meth:`close` (a clean ``with`` exit) is :meth:`finish` (flush and close the file)
    then :meth:`publish` (decode the file, check it against the checksum and count of the frames
    written, rename it to ``path`` and write the metadata); a caller may run :meth:`publish` in
    another thread while it goes on. :meth:`abort` (an exception in the ``with`` block) deletes
    the file. Any previous file at ``path`` and its metadata are removed when the writer opens,
    so a failed rewrite leaves nothing.

    With ``settings.remap_values`` the frames are kept in an unnamed temporary file beside
    ``path`` (their raw size on disk; memory stays flat) while the values they use are counted,
    and encoded as codes by :meth:`finish` (see :class:`DepthMeta`).
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
        self._missing: list[int] = []
        self._meta: DepthMeta | None = None
        self._finished: DepthMeta | None = None
        self._done = False
        self._spool: IO[bytes] | None = None
        self._values_used: np.ndarray | None = None
        self.meta_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._digest = _FrameDigest()
        self._container: Any = None
        try:
            self._container, self._stream = self._open_encoder()
            if settings.remap_values:
                self._spool = tempfile.TemporaryFile(dir=self.path.parent)
                self._values_used = np.zeros(_VALUE_RANGE, bool)
        except BaseException as exc:
            self._discard(exc)
            raise

    def _open_encoder(self) -> tuple[Any, Any]:
        import av

        container = _libav(self.path, "cannot create Matroska file",
                           lambda: av.open(str(self._tmp), "w", format="matroska"))
        stream = container.add_stream(CODEC, rate=Fraction(self.fps).limit_denominator(100_000))
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, PIX_FMT
        stream.codec_context.options = self._options
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = self.settings.threads
        if self.settings.remap_values:
            stream.metadata[CODES_TAG] = CODES_TAG_TEXT
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
        """The metadata written by :meth:`close` (or :meth:`publish`)."""
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
        index = self.num_frames
        self._digest.submit(data)  # hashed while the frame is encoded (or kept for remapping)
        try:
            if self._spool is not None and self._values_used is not None:
                self._spool.write(data.data)
                self._values_used |= np.bincount(data.ravel(), minlength=_VALUE_RANGE) > 0
            else:
                self._encode(data, index)
        finally:
            self._digest.wait()

    def write_missing(self) -> None:
        """Write an all-invalid frame for a step whose depth is missing, and record its index."""
        self._check_open()
        self._missing.append(self.num_frames)
        self.write(np.zeros((self.height, self.width), np.uint16))

    def finish(self) -> None:
        """Encode what is left, flush the encoder and close the file; :meth:`publish` is next."""
        self._check_open()
        try:
            if self.num_frames == 0:
                raise DepthCodecError(f"{self.path}: no frames were written")
            table = self._encode_spooled_codes() if self._spool is not None else None
            self._mux(_libav(self.path, "flushing the encoder", lambda: self._stream.encode(None)))
            _libav(self.path, "finishing the Matroska file", self._container.close)
            self._container = None
            self._finished = DepthMeta(
                width=self.width, height=self.height, fps=self.fps, num_frames=self.num_frames,
                missing_frames=list(self._missing),
                checksum={"algorithm": CHECKSUM_ALGORITHM, "value": self._digest.hexdigest()},
                encoder={"library": _library_version(), **asdict(self.settings), "slicecrc": 1},
                decode=_decode_instructions(self.path, self.meta_path, self.num_frames,
                                            self.height, self.width, coded=table is not None),
                source=self.source, value_table=table)
            self._digest.close()
        except BaseException as exc:
            self._discard(exc)
            raise

    def publish(self) -> DepthMeta:
        """Decode the finished file and compare it with what was written; only then rename it to
        ``path`` and write the metadata. Returns the metadata; on a mismatch nothing is left."""
        meta = self._finished
        if meta is None or self._done:
            raise DepthCodecError(f"{self.path}: publish needs a finished, unpublished writer")
        try:
            with DepthReader(self._tmp, meta=meta) as reader:
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

    def close(self) -> DepthMeta:
        """Finish, verify by decoding, publish ``path`` and the metadata; returns the metadata."""
        self.finish()
        return self.publish()

    def abort(self, reason: BaseException | None = None) -> None:
        """Stop and delete the partial file; ``path`` is left empty."""
        if not self._done:
            self._discard(reason or DepthCodecError(f"{self.path}: aborted"))

    def _encode(self, data: np.ndarray, index: int) -> None:
        """Encode a C-contiguous little-endian uint16 frame; FFmpeg reads it in place."""
        import av

        video_frame = av.VideoFrame.from_numpy_buffer(data, format=PIX_FMT)
        video_frame.pts = index
        self._mux(_libav(self.path, f"encoding frame {index}",
                         lambda: self._stream.encode(video_frame)))

    def _encode_spooled_codes(self) -> list[int]:
        """Second pass of remap_values: encode the kept frames as codes; returns the value table."""
        assert self._spool is not None and self._values_used is not None
        values = np.flatnonzero(self._values_used)
        values = values[values != INVALID_VALUE]
        codes = np.zeros(_VALUE_RANGE, np.uint16)
        codes[values] = np.arange(1, values.size + 1)
        frame_bytes = self.height * self.width * 2
        self._spool.seek(0)
        for index in range(self.num_frames):
            data = self._spool.read(frame_bytes)
            if len(data) != frame_bytes:
                raise DepthCodecError(f"{self.path}: frame {index}: temporary copy is incomplete")
            frame = np.frombuffer(data, "<u2").reshape(self.height, self.width)
            self._encode(np.take(codes, frame), index)
        self._spool.close()
        self._spool = None
        return values.tolist()

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            _libav(self.path, "writing a packet", functools.partial(self._container.mux, packet))

    def _check_open(self) -> None:
        if self._done or self._finished is not None:
            raise DepthCodecError(f"{self.path}: writer is already closed")

    def _discard(self, reason: BaseException) -> None:
        import av

        self._done = True
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass  # the file is deleted next; the original error is what matters
            self._container = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._digest.close()
        self._atomic.__exit__(type(reason), reason, reason.__traceback__)


class DepthReader:
    """Read a depth.mkv: ``len()``, streaming iteration, ``reader[i]``, :meth:`read_all`,
    :meth:`verify`. Frames are millimetres (0 = invalid); a file of value codes
    (``ffv1.remap_values``) is mapped back through the ``value_table`` of ``meta`` (a DepthMeta
    or its path; default: the depth_meta.json beside the file). Unreadable, truncated or corrupt
    files raise DepthCodecError."""

    def __init__(self, path: os.PathLike | str, *, threads: int = 0,
                 meta: DepthMeta | os.PathLike | str | None = None):
        self.path = Path(path)
        self.threads = threads
        if not self.path.is_file():
            raise DepthCodecError(f"{self.path}: no such depth file")
        container = self._open()
        stream = container.streams.video[0]
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate
        self.fps = float(rate) if rate else None
        coded = CODES_TAG in stream.metadata
        container.close()
        self._millimetres = self._value_lookup(coded, meta)
        self._pts: list[int] | None = None
        self._seek_container: Any = None

    def _value_lookup(self, coded: bool, meta: DepthMeta | os.PathLike | str | None
                      ) -> np.ndarray | None:
        """For a file of codes, the millimetres of each code (index 0 = invalid), else None."""
        if not coded:
            if isinstance(meta, DepthMeta) and meta.value_table is not None:
                raise DepthCodecError(f"{self.path}: holds millimetres, but its metadata has a "
                                      "value_table")
            return None
        if not isinstance(meta, DepthMeta):
            meta_file = Path(meta) if meta is not None else meta_path_for(self.path)
            if not meta_file.is_file():
                raise DepthCodecError(f"{self.path}: holds value codes (written with "
                                      f"ffv1.remap_values); their millimetres are in the "
                                      f"value_table of {meta_file.name}, which is missing")
            meta = DepthMeta.load(meta_file)
        if meta.value_table is None:
            raise DepthCodecError(f"{self.path}: holds value codes (written with "
                                  "ffv1.remap_values), but its metadata has no value_table")
        return np.array([INVALID_VALUE, *meta.value_table], np.uint16)

    def _open(self) -> Any:
        import av

        container = _libav(self.path, "not a readable video file",
                           lambda: av.open(str(self.path), "r"), decoding=True)
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
                    packet.pts for packet in container.demux(stream) if packet.size],
                    decoding=True)
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
                frame = _libav(self.path, f"decoding frame {index}", lambda: next(frames, None),
                               decoding=True)
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
               lambda: container.seek(pts[index], stream=stream, backward=True), decoding=True)
        frames = container.decode(stream)
        while True:
            frame = _libav(self.path, what, lambda: next(frames, None), decoding=True)
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
        missing = set(meta.missing_frames)
        with _FrameDigest() as digest:
            for index, frame in enumerate(self):
                if index in missing and frame.any():
                    raise DepthCodecError(f"{name}: frame {index} is listed as missing but is "
                                          f"not all {INVALID_VALUE}")
                digest.submit(frame)  # hashed while the next frame decodes
            checksum = digest.hexdigest()
        if digest.count != meta.num_frames:
            raise DepthCodecError(f"{name}: decoded {digest.count} frames, metadata says "
                                  f"{meta.num_frames}")
        if checksum != meta.checksum["value"]:
            raise DepthCodecError(f"{name}: decoded frames have sha256 {checksum}, "
                                  f"metadata says {meta.checksum['value']}")

    def _to_array(self, frame: Any, index: int) -> np.ndarray:
        array = frame.to_ndarray()
        if frame.format.name != PIX_FMT or array.shape != (self.height, self.width):
            raise DepthCodecError(f"{self.path}: frame {index} decoded as {frame.format.name} "
                                  f"{array.shape}, expected {PIX_FMT} "
                                  f"({self.height}, {self.width})")
        if self._millimetres is None:
            return array
        try:
            return np.take(self._millimetres, array)
        except IndexError as exc:
            raise DepthCodecError(f"{self.path}: frame {index} holds code {int(array.max())}, "
                                  f"beyond the {len(self._millimetres) - 1} values of its "
                                  "value_table") from exc


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
    import cv2

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


def _npy_frames(stream: IO[bytes], name: str) -> Iterator[np.ndarray]:
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
    import cv2

    path, out_dir = Path(path), Path(out_dir)
    meta_file = Path(meta_path) if meta_path is not None else meta_path_for(path)
    meta = DepthMeta.load(meta_file) if meta_path is not None or meta_file.exists() else None
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DepthCodecError(f"{out_dir}: exists and is not an empty folder")
    reader = DepthReader(path, meta=meta)
    if meta is not None and (reader.width, reader.height) != (meta.width, meta.height):
        raise DepthCodecError(f"{path}: frames are {reader.width}x{reader.height}, {meta_file} "
                              f"says {meta.width}x{meta.height}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        with _FrameDigest() as digest:
            for index, frame in enumerate(reader):
                file = tmp_dir / f"{index:06d}.png"
                if not cv2.imwrite(str(file), frame):
                    raise DepthCodecError(f"{file}: cannot write PNG")
                digest.submit(frame)
            checksum = digest.hexdigest()
        if meta is not None and (digest.count, checksum) != (meta.num_frames,
                                                             meta.checksum["value"]):
            raise DepthCodecError(f"{path}: decoded {digest.count} frames with sha256 "
                                  f"{checksum}, {meta_file} says {meta.num_frames} "
                                  f"frames with {meta.checksum['value']}")
        os.replace(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return digest.count
