"""Damaged MP4s as they are met in the wild: remuxed with the index at the front (``+faststart``)
and cut short, so the index still lists every frame."""

from __future__ import annotations

import os
from pathlib import Path

import av


def remux_faststart(source: Path, target: Path) -> None:
    """``source``'s video stream copied packet for packet into ``target`` with the index (moov) first."""
    with av.open(str(source)) as src, av.open(str(target), "w", options={"movflags": "+faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)


def packets_in_file_order(path: Path) -> list[tuple[int, int, int]]:
    """(pos, size, pts) of every video packet, in the order their data lies in the file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted((p.pos, p.size, p.pts) for p in container.demux(stream) if p.size)


def cut_after_packets(path: Path, keep: int) -> list[int]:
    """Truncate ``path`` inside its packet ``keep`` (in file order), so that only the first ``keep``
    packets are whole; return the presentation timestamps of the packets cut off."""
    packets = packets_in_file_order(path)
    pos, size, _ = packets[keep]
    os.truncate(path, pos + size // 2)
    return sorted(pts for _, _, pts in packets[keep:])


def faststart_cut(path: Path, keep: int) -> list[int]:
    """Replace the MP4 at ``path`` by a ``+faststart`` copy cut inside packet ``keep``; return the
    timestamps of the lost frames (in the stream's time base)."""
    tmp = path.with_name(path.stem + ".faststart.mp4")
    remux_faststart(path, tmp)
    lost = cut_after_packets(tmp, keep)
    os.replace(tmp, path)
    return lost


def keep_first_packets(path: Path, keep: int) -> None:
    """Rewrite the MP4 at ``path`` with only its first ``keep`` packets (in decode order): a
    recording that stopped early, its index telling the truth."""
    tmp = path.with_name(path.stem + ".short.mp4")
    with av.open(str(path)) as src, av.open(str(tmp), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        kept = 0
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None or kept == keep:
                continue
            packet.stream = stream
            dst.mux(packet)
            kept += 1
    os.replace(tmp, path)


def reencode(path: Path, change, frames: int | None = None) -> None:
    """Rewrite the MP4 at ``path`` losslessly enough (x264, CRF 12) with every frame passed through
    ``change`` (an RGB array -> RGB array, its size free), and with ``frames`` frames (the last one
    repeated, or the first ``frames``) when given."""
    import numpy as np

    with av.open(str(path)) as src:
        images = [change(frame.to_ndarray(format="rgb24")) for frame in src.decode(video=0)]
    if frames is not None:
        images = (images + [images[-1]] * frames)[:frames]
    tmp = path.with_name(path.stem + ".reencoded.mp4")
    with av.open(str(tmp), "w") as dst:
        stream = dst.add_stream("libx264", rate=15)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast", "x264-params": "rc-lookahead=0:mbtree=0"}
        for image in images:
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        dst.mux(stream.encode(None))
    os.replace(tmp, path)


def swap_halves(image):
    """A side-by-side left|right frame as right|left."""
    import numpy as np

    half = image.shape[1] // 2
    return np.concatenate([image[:, half:], image[:, :half]], axis=1)


def resized(width: int, height: int):
    """A frame change to ``width x height`` by area averaging (OpenCV's INTER_AREA)."""
    import cv2

    return lambda image: cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
