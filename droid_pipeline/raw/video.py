"""Read videos through PyAV: exact size and frame count without decoding, and streamed frames."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from droid_pipeline.core.files import check_input_file

if TYPE_CHECKING:
    import av


class VideoError(ValueError):
    """A video file is missing, unreadable, or has no video stream."""


@dataclass(frozen=True)
class VideoInfo:
    """Size in pixels, exact number of frames, and nominal frame rate (Hz) of a video's first
    stream; with ``probe(..., frames=True)`` also the positions of its frames (:func:`frame_indices`)."""

    width: int
    height: int
    num_frames: int
    fps: float
    frame_indices: np.ndarray | None = field(default=None, compare=False, repr=False)


def probe(path: os.PathLike | str, *, frames: bool = False) -> VideoInfo:
    """Size, frame count and rate of the first video stream; with ``frames``, also the positions
    of the frames whose data is in the file (:func:`frame_indices`), from the same opening.

    The frame count is the container's own count (MP4's sample table) when it has one; otherwise
    (MKV, some streams) the packets are counted by demuxing, which reads no pixels.
    """
    with _analysed(path) as (container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.guessed_rate or stream.average_rate  # nominal: a missing frame skews the average
        num_frames = stream.frames
        indices = None
        if frames or num_frames <= 0:
            packets = _packets(container, stream, path)
            num_frames = num_frames if num_frames > 0 else len(packets)
            indices = _frame_indices(packets, stream, path) if frames else None
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: video stream has no frame size")
    return VideoInfo(width=width, height=height, num_frames=num_frames,
                     fps=float(rate) if rate else float("nan"), frame_indices=indices)


def iter_frames(path: os.PathLike | str, fmt: str = "rgb24") -> Generator[tuple[int, np.ndarray], None, None]:
    """``(index, frame)`` of each decoded frame, the frame converted to ``fmt`` (an FFmpeg pixel format).

    ``index`` is the frame's position in the recording, from its presentation timestamp and the
    stream's frame rate: a frame the decoder drops leaves a gap instead of shifting every later
    frame (frame i must stay control step i). Frames without timestamps are numbered in order.
    Packed formats give (H, W, C) arrays, single-plane ones (``gray``, ``gray16le``) (H, W).
    Only one frame is held at a time, so whole episodes never sit in memory.
    """
    import av

    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        numbering = _FrameNumbering(stream, stream.start_time)
        previous = -1
        try:
            for frame in container.decode(stream):
                index = numbering.index(frame.pts, previous)
                if index <= previous:
                    raise VideoError(f"{path}: frame timestamps do not increase (frame {index} "
                                     f"after frame {previous})")
                previous = index
                yield index, frame.to_ndarray(format=fmt)
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: cannot decode video: {exc}") from exc


def frame_indices(path: os.PathLike | str) -> np.ndarray:
    """Sorted positions of the recording's frames, numbered as :func:`iter_frames` numbers them,
    from the packets' timestamps alone (demuxed, nothing decoded): the steps a video has a frame
    for. Equal positions (timestamps that do not advance) raise VideoError.

    Only frames whose data is in the file count: a packet the demuxer could read only in part
    (FFmpeg flags it corrupt) or that would end beyond the end of the file is left out, so an MP4
    cut short after its index (``+faststart`` puts the index first, listing every frame) has as
    many frames here as it really holds, not as its index lists.
    """
    with _analysed(path) as (container, stream):
        return _frame_indices(_packets(container, stream, path), stream, path)


def _packets(container: av.container.InputContainer, stream: av.VideoStream,
             path: os.PathLike | str) -> list[tuple[int | None, bool]]:
    """(pts, whole) of each non-empty packet, demuxed: ``whole`` unless FFmpeg flags it corrupt or
    it would end beyond the end of the file."""
    import av

    size = os.path.getsize(path)
    try:
        return [(packet.pts, not packet.is_corrupt
                 and (packet.pos is None or packet.pos < 0 or packet.pos + packet.size <= size))
                for packet in container.demux(stream) if packet.size > 0]
    except av.FFmpegError as exc:
        raise VideoError(f"{path}: cannot demux video stream: {exc}") from exc


def _frame_indices(packets: list[tuple[int | None, bool]], stream: av.VideoStream,
                   path: os.PathLike | str) -> np.ndarray:
    """:func:`frame_indices` of demuxed ``packets``."""
    stamps = [pts for pts, whole in packets if whole]
    known = [pts for pts in stamps if pts is not None]
    origin = stream.start_time if stream.start_time is not None else min(known, default=None)
    numbering = _FrameNumbering(stream, origin)
    if len(known) < len(stamps):
        indices = np.arange(len(stamps))  # no usable timestamps: frames in order
    else:
        indices = np.sort(numbering.indices(known))
    if indices.size and (np.diff(indices) <= 0).any():
        repeated = int(indices[1:][np.diff(indices) <= 0][0])
        raise VideoError(f"{path}: two frames have the timestamp of frame {repeated}")
    return indices


class _FrameNumbering:
    """A frame's position from its presentation timestamp at the stream's nominal rate (a gap
    skews the average rate); without a timestamp, rate or time base, the next position in order."""

    def __init__(self, stream: av.VideoStream, origin: int | None):
        self.rate, self.time_base, self.origin = stream.guessed_rate or stream.average_rate, stream.time_base, origin

    def index(self, pts: int | None, previous: int) -> int:
        if pts is None or not self.rate or self.time_base is None:
            return previous + 1
        self.origin = pts if self.origin is None else self.origin
        return round((pts - self.origin) * self.time_base * self.rate)

    def indices(self, stamps: list[int]) -> np.ndarray:
        """:meth:`index` of every timestamp (none missing; origin set), in exact integer arithmetic:
        (pts - origin) * a / b rounded half to even, as ``round`` rounds the Fraction."""
        if not self.rate or self.time_base is None:
            return np.arange(len(stamps), dtype=np.int64)
        scale = Fraction(self.time_base) * Fraction(self.rate)
        offsets = np.array(stamps, dtype=np.int64) - (stamps[0] if self.origin is None else self.origin)
        if offsets.size == 0 or np.abs(offsets).max() >= (1 << 62) // max(scale.numerator, scale.denominator):
            return np.array([round(offset * scale) for offset in offsets.tolist()], dtype=np.int64)
        quotient, remainder = np.divmod(offsets * scale.numerator, scale.denominator)
        twice = 2 * remainder
        return quotient + ((twice > scale.denominator) | ((twice == scale.denominator) & (quotient % 2 == 1)))


@contextlib.contextmanager
def _analysed(path: os.PathLike | str) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The video opened for its stream's parameters, with the values an opening for decoding has.

    FFmpeg's stream analysis is asked to decode no frame: sizes come from the codec headers, rates
    and the start time from the timestamps, for a fifth of the CPU. Where that leaves the size or
    the start time unknown (H.264 with B-frames in Matroska), the video is opened again with the
    decoding analysis, whose start time :func:`iter_frames` numbers frames from.
    """
    with _open(path, decode=False) as light:
        stream = _video_stream(light, path)
        if stream.start_time is not None and stream.codec_context.width > 0:
            yield light, stream
            return
    with _open(path) as decoding:
        yield decoding, _video_stream(decoding, path)


def _open(path: os.PathLike | str, *, decode: bool = True) -> av.container.InputContainer:
    """Open a video for reading; without ``decode``, FFmpeg's stream analysis decodes no frame."""
    import av

    try:
        check_input_file(path)
        return av.open(os.fspath(path), options=None if decode else {"skip_frame": "all"})
    except FileNotFoundError as exc:
        raise VideoError(f"{path}: video file not found") from exc
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{path}: cannot open video: {exc}") from exc


def _video_stream(container: av.container.InputContainer, path: os.PathLike | str) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
    return container.streams.video[0]
