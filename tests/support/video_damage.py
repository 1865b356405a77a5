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
