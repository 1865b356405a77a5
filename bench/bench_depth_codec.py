"""Depth codec benchmark: FFV1 (our settings, verified) vs PNG (OpenCV, level 1) vs zstd level 3.

Prints, per codec, compression ratio over the raw uint16 frames, encode and decode frames per
second (wall clock, and per CPU-second so that runs on a busy machine stay comparable), and peak
resident memory of a fresh process running only that codec. Input: synthetic 720p depth (smooth
surfaces, edges, sensor noise growing with distance, invalid holes), and with ``--png-dir DIR``
also a real sequence of 16-bit PNG depth frames. Every decode is checked equal to its input.
Usage: python bench/bench_depth_codec.py [--frames 240] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from droid_pipeline.core.config import load_config
from droid_pipeline.formats.depth_codec import (
    DepthReader,
    DepthWriter,
    legacy_depth_frames,
)

CODECS = ("ffv1", "png", "zstd")


def synthetic_depth(count: int, height: int = 720, width: int = 1280) -> Iterator[np.ndarray]:
    """Depth like a ZED camera over a table: planes, boxes and a sphere moving slowly, gentle
    surface ripple, noise growing with distance squared (0.5 mm at 1 m), rounded to mm, invalid
    (0) bands beside depth edges, far pixels and scattered dropouts."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    fx = 0.55 * width
    for i in range(count):
        pan = 3.0 * np.sin(i / 40.0)
        ray_y = (yy - height / 2) / fx
        ray_x = (xx - width / 2 + pan) / fx
        table = np.where(ray_y > 0.02, 900.0 / np.maximum(ray_y + 0.35, 1e-3), np.inf)
        wall = np.full_like(xx, 2600.0) + 300.0 * ray_x
        depth = np.minimum(table, wall)
        for k, (cx, cy, size, z) in enumerate(((0.15, 0.18, 0.10, 1100.0),
                                               (-0.22, 0.12, 0.07, 1500.0))):
            cx += 0.002 * i * (1 if k else -1)
            inside = (np.abs(ray_x - cx) < size) & (np.abs(ray_y - cy) < size * 0.8)
            depth = np.where(inside, np.minimum(depth, z + 150.0 * (ray_x - cx)), depth)
        sx, sy = -0.05 + 0.003 * np.sin(i / 15.0), 0.05
        r2 = (ray_x - sx) ** 2 + (ray_y - sy) ** 2
        sphere = np.where(r2 < 0.06 ** 2, 1000.0 - 1000.0 * np.sqrt(np.maximum(0.06 ** 2 - r2, 0)),
                          np.inf)
        depth = np.minimum(depth, sphere)
        depth += 4.0 * np.sin(xx / 37.0 + i / 9.0) * np.cos(yy / 53.0)
        depth += rng.normal(0.0, 0.5, depth.shape).astype(np.float32) * (depth / 1000.0) ** 2
        finite = np.minimum(depth, 5000.0).astype(np.float32)
        edges = np.abs(cv2.Sobel(finite, cv2.CV_32F, 1, 0, ksize=3)) > 400
        invalid = cv2.dilate(edges.astype(np.uint8), np.ones((3, 7), np.uint8)) > 0
        invalid |= ~np.isfinite(depth) | (depth > 4000) | (rng.random(depth.shape) < 0.002)
        yield np.where(invalid, 0, np.clip(np.rint(depth), 1, 65535)).astype(np.uint16)


def frames_for(source: str, count: int) -> Iterator[np.ndarray]:
    if source == "synthetic":
        return synthetic_depth(count)
    return legacy_depth_frames(source)


class Stopwatch:
    """Wall-clock seconds and process CPU seconds (all threads) spent inside ``with`` blocks.

    CPU seconds per frame stay comparable when other jobs share the machine; wall-clock frames
    per second are what an otherwise idle node gets.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def _encode_all(frames: Iterator[np.ndarray], encode, clock: Stopwatch
                ) -> tuple[int, list[np.ndarray]]:
    """Feed frames to ``encode``, timing only the encoder; keep a few frames to check decoding."""
    count, kept = 0, []
    for frame in frames:
        with clock:
            encode(frame)
        if count % 25 == 0:
            kept.append(frame)
        count += 1
    return count, kept


def run_codec(codec: str, source: str, count: int, work: Path) -> dict:
    """Encode and decode every frame with one codec in this process; return the figures."""
    encoding, verifying, decoding = Stopwatch(), Stopwatch(), Stopwatch()
    decoded = []
    if codec == "ffv1":
        first = next(frames_for(source, 1))
        path = work / "depth.mkv"
        writer = DepthWriter(path, first.shape[1], first.shape[0], 15.0, load_config().ffv1)
        count, kept = _encode_all(frames_for(source, count), writer.write, encoding)
        with verifying:
            writer.close()
        size = path.stat().st_size
        with decoding:
            for i, frame in enumerate(DepthReader(path)):
                if i % 25 == 0:
                    decoded.append(frame)
    elif codec == "png":
        files: list[Path] = []

        def encode(frame: np.ndarray) -> None:
            _, data = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            files.append(work / f"{len(files):06d}.png")
            files[-1].write_bytes(data.tobytes())

        count, kept = _encode_all(frames_for(source, count), encode, encoding)
        size = sum(f.stat().st_size for f in files)
        with decoding:
            for i, file in enumerate(files):
                frame = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
                if i % 25 == 0:
                    decoded.append(frame)
    else:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3)
        lengths: list[int] = []
        shape: list[tuple[int, int]] = []
        stream = open(work / "depth.zst", "wb")

        def encode(frame: np.ndarray) -> None:
            data = compressor.compress(np.ascontiguousarray(frame, "<u2").tobytes())
            stream.write(data)
            lengths.append(len(data))
            shape[:] = [frame.shape]

        count, kept = _encode_all(frames_for(source, count), encode, encoding)
        stream.close()
        size = sum(lengths)
        decompressor = zstandard.ZstdDecompressor()
        with decoding, open(work / "depth.zst", "rb") as stream:
            for i, length in enumerate(lengths):
                frame = np.frombuffer(decompressor.decompress(stream.read(length)),
                                      "<u2").reshape(shape[0])
                if i % 25 == 0:
                    decoded.append(frame)
    if len(decoded) != len(kept) or not all(np.array_equal(a, b) for a, b in zip(decoded, kept)):
        raise SystemExit(f"{codec}: decoded frames differ from the input")
    height, width = kept[0].shape
    return {"codec": codec, "frames": count, "width": width, "height": height,
            "raw_bytes": count * height * width * 2, "bytes": size,
            "encode_s": encoding.wall, "encode_cpu_s": encoding.cpu,
            "verify_s": verifying.wall, "decode_s": decoding.wall, "decode_cpu_s": decoding.cpu}


def worker(args: argparse.Namespace) -> None:
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as work:
        result = run_codec(args.worker, args.source, args.frames, Path(work))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["baseline_rss_mib"] = baseline_kib / 1024
    print(json.dumps(result))


def report(source: str, count: int) -> None:
    rows = []
    for codec in CODECS:
        output = subprocess.run([sys.executable, __file__, "--worker", codec, "--source", source,
                                 "--frames", str(count)], check=True, capture_output=True,
                                text=True).stdout
        rows.append(json.loads(output.splitlines()[-1]))
    first = rows[0]
    print(f"\n{source}: {first['frames']} frames {first['width']}x{first['height']} uint16, "
          f"raw {first['raw_bytes'] / 2**20:.1f} MiB")
    print(f"{'codec':<20}{'ratio':>6}{'MiB':>7}{'enc fps':>9}{'dec fps':>9}{'enc f/cpu-s':>13}"
          f"{'dec f/cpu-s':>13}{'peak MiB':>10}{'(+start)':>10}")
    names = {"ffv1": "FFV1 (verified)", "png": "PNG OpenCV level 1", "zstd": "zstd level 3"}
    for row in rows:
        frames = row["frames"]
        print(f"{names[row['codec']]:<20}{row['raw_bytes'] / row['bytes']:>6.2f}"
              f"{row['bytes'] / 2**20:>7.1f}{frames / row['encode_s']:>9.1f}"
              f"{frames / row['decode_s']:>9.1f}{frames / row['encode_cpu_s']:>13.1f}"
              f"{frames / row['decode_cpu_s']:>13.1f}{row['peak_rss_mib']:>10.0f}"
              f"{row['peak_rss_mib'] - row['baseline_rss_mib']:>10.0f}")
    ffv1 = rows[0]
    print(f"FFV1 encode including decode-and-verify on close: "
          f"{ffv1['frames'] / (ffv1['encode_s'] + ffv1['verify_s']):.1f} fps")
    for row in rows[1:]:
        print(f"FFV1 vs {names[row['codec']]}: files {row['bytes'] / ffv1['bytes']:.2f}x "
              f"smaller; per CPU-second FFV1 encodes "
              f"{row['encode_cpu_s'] / ffv1['encode_cpu_s']:.2f}x and decodes "
              f"{row['decode_cpu_s'] / ffv1['decode_cpu_s']:.2f}x as many frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=240, help="synthetic 720p frames")
    parser.add_argument("--png-dir", help="folder of 16-bit PNG depth frames (a real sequence)")
    parser.add_argument("--worker", choices=CODECS, help=argparse.SUPPRESS)
    parser.add_argument("--source", default="synthetic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    settings = load_config().ffv1
    print(f"FFV1 settings: level {settings.level}, g {settings.gop}, slices {settings.slices}, "
          f"context {settings.context}, coder {settings.coder}, threads {settings.threads}")
    report("synthetic", args.frames)
    if args.png_dir:
        report(args.png_dir, 0)


if __name__ == "__main__":
    main()
