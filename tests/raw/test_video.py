"""Frame positions from packet timestamps (no decoding) agree with the decoder's numbering and with
ffprobe's presentation timestamps, for B-frame H.264 and for a stream with a lost frame."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from droid_pipeline.raw.video import frame_indices, iter_frames, probe


def write(path: Path, pts: list[int], codec: str = "libx264", options: dict[str, str] | None = None,
          size: tuple[int, int] = (64, 48)) -> None:
    """Frames at the given positions (units of 1/15 s) of a 15 Hz stream, each a different grey."""
    width, height = size
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=15)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"bf": "3", "g": "12"}   # B-frames: packets leave out of presentation order
        for position in pts:
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), position * 9 % 256, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = position, Fraction(1, 15)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def ffprobe_positions(path: Path) -> list[int]:
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "json",
         str(path)], check=True, capture_output=True, text=True).stdout)
    times = sorted(float(p["pts_time"]) for p in probe["packets"])
    return [round((t - times[0]) * 15) for t in times]


@pytest.mark.parametrize("pts", [list(range(20)), [0, 1, 2, 3, 5, 6, 7, 8, 9, 10], [0, 1, 2, 4, 5, 9, 10]],
                         ids=["whole", "one-lost", "gaps"])
def test_frame_positions_match_the_decoder_and_ffprobe(tmp_path: Path, pts: list[int]) -> None:
    path = tmp_path / "video.mp4"
    write(path, pts)
    positions = frame_indices(path)
    assert positions.tolist() == pts
    assert positions.tolist() == [index for index, _ in iter_frames(path, "gray")]
    assert positions.tolist() == ffprobe_positions(path)
    info = probe(path, frames=True)   # the same scan in the probe's own opening
    assert info.frame_indices is not None and info.frame_indices.tolist() == pts
    assert (info.width, info.height, info.num_frames) == (64, 48, len(pts)) and probe(path).frame_indices is None


@pytest.mark.parametrize("name, codec, size", [
    ("video.mp4", "libx264", (1280, 720)), ("video.mp4", "libx265", (66, 50)), ("video.mkv", "libx264", (64, 48)),
    ("video.mkv", "ffv1", (62, 46)), ("video.mp4", "mpeg4", (64, 48))])
def test_the_probe_agrees_with_ffprobe(tmp_path: Path, name: str, codec: str, size: tuple[int, int]) -> None:
    """The probe's opening skips FFmpeg's frame decoding; ffprobe's default analysis decodes."""
    path = tmp_path / name
    write(path, [0, 1, 2, 4, 5, 6, 7, 9], codec=codec, size=size)
    stream = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
         "stream=width,height,r_frame_rate,nb_read_packets", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout)["streams"][0]
    info = probe(path, frames=True)
    assert (info.width, info.height) == (stream["width"], stream["height"]) == size
    assert info.num_frames == int(stream["nb_read_packets"]) == 8
    assert info.fps == float(Fraction(stream["r_frame_rate"])) == 15
    assert info.frame_indices is not None and info.frame_indices.tolist() == [0, 1, 2, 4, 5, 6, 7, 9] \
        == [index for index, _ in iter_frames(path, "gray")]


def test_the_probes_opening_has_the_start_time_the_decoder_numbers_from(tmp_path: Path) -> None:
    from droid_pipeline.raw.video import _analysed

    path = tmp_path / "video.mkv"
    write(path, [2, 3, 4, 6, 7], codec="libx264")   # B-frames in Matroska: no start without decoding
    with av.open(str(path)) as decoding, _analysed(path) as (_, stream):
        assert stream.start_time == decoding.streams.video[0].start_time is not None
    assert frame_indices(path).tolist() == [index for index, _ in iter_frames(path, "gray")] == [0, 1, 2, 4, 5]


def test_matroska_millisecond_timestamps_give_the_same_positions(tmp_path: Path) -> None:
    path = tmp_path / "video.mkv"
    write(path, [0, 1, 2, 4, 5], codec="ffv1")
    assert frame_indices(path).tolist() == [0, 1, 2, 4, 5] == [index for index, _ in iter_frames(path, "gray")]


def test_a_faststart_mp4_cut_short_lists_every_frame_but_holds_fewer(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    write(path, list(range(30)), codec="mpeg4", options={"movflags": "+faststart"})  # index first, no B-frames
    packets = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,size", "-of", "json",
         str(path)], check=True, capture_output=True, text=True).stdout)["packets"]
    cut = packets[20]   # the file ends half way through the 21st frame's data
    with open(path, "r+b") as fh:
        fh.truncate(int(cut["pos"]) + int(cut["size"]) // 2)
    info = probe(path, frames=True)
    assert info.num_frames == 30   # what the index lists
    assert info.frame_indices is not None and info.frame_indices.tolist() == list(range(20)) \
        == frame_indices(path).tolist()


@pytest.mark.parametrize("time_base, rate", [(Fraction(1, 15360), Fraction(15)),
                                             (Fraction(1, 90000), Fraction(30000, 1001)),
                                             (Fraction(1, 2), Fraction(3)), (Fraction(1, 1000), Fraction(15))])
def test_positions_in_integer_arithmetic_round_as_the_fractions_do(time_base: Fraction, rate: Fraction) -> None:
    from types import SimpleNamespace

    from droid_pipeline.raw.video import _FrameNumbering

    stream = SimpleNamespace(guessed_rate=rate, average_rate=rate, time_base=time_base)
    stamps = np.random.default_rng(7).integers(-1000, 10**9, 2000).tolist()   # demux order, ties included
    for origin in (0, 1234, -77):
        expected = [round((pts - origin) * time_base * rate) for pts in stamps]   # Python's exact rounding
        assert _FrameNumbering(stream, origin).indices(stamps).tolist() == expected
