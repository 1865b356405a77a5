"""Depth codec benchmark: FFV1 (our settings, verified) vs PNG (OpenCV, level 1) vs zstd level 3.

Prints, per codec, compression ratio over the raw uint16 frames, encode and decode frames per
second, and peak resident memory of a fresh process running only that codec. Input: synthetic
720p depth (smooth surfaces, edges, sensor noise growing with distance, invalid holes), and with
``--png-dir DIR`` also a real sequence of 16-bit PNG depth frames. Every decode is checked equal
to its input. Usage: python bench/bench_depth_codec.py [--frames 240] [--png-dir DIR]
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

from droid_pipeline.config import load_config
from droid_pipeline.depth_codec import DepthReader, DepthWriter, legacy_depth_frames

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


def _timed(frames: Iterator[np.ndarray], encode) -> tuple[float, int, list[np.ndarray]]:
    """Feed frames to ``encode``, timing only the encoder; keep a few frames to check decoding."""
    seconds, count, kept = 0.0, 0, []
    for frame in frames:
        start = time.perf_counter()
        encode(frame)
        seconds += time.perf_counter() - start
        if count % 25 == 0:
            kept.append(frame)
        count += 1
    return seconds, count, kept


def run_codec(codec: str, source: str, count: int, work: Path) -> dict:
    """Encode and decode every frame with one codec in this process; return the figures."""
    result = {"codec": codec}
    if codec == "ffv1":
        settings = load_config().ffv1
        first = next(frames_for(source, 1))
        path = work / "depth.mkv"
        writer = DepthWriter(path, first.shape[1], first.shape[0], 15.0, settings)
        seconds, count, kept = _timed(frames_for(source, count), writer.write)
        start = time.perf_counter()
        writer.close()
        result["verify_s"] = time.perf_counter() - start
        size = path.stat().st_size
        start = time.perf_counter()
        decoded = [frame for i, frame in enumerate(DepthReader(path)) if i % 25 == 0]
        decode_s = time.perf_counter() - start
    elif codec == "png":
        files: list[Path] = []

        def encode(frame: np.ndarray) -> None:
            _, data = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            files.append(work / f"{len(files):06d}.png")
            files[-1].write_bytes(data.tobytes())

        seconds, count, kept = _timed(frames_for(source, count), encode)
        size = sum(f.stat().st_size for f in files)
        start = time.perf_counter()
        decoded = []
        for i, file in enumerate(files):
            frame = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if i % 25 == 0:
                decoded.append(frame)
        decode_s = time.perf_counter() - start
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

        seconds, count, kept = _timed(frames_for(source, count), encode)
        stream.close()
        size = sum(lengths)
        decompressor = zstandard.ZstdDecompressor()
        start = time.perf_counter()
        decoded = []
        with open(work / "depth.zst", "rb") as stream:
            for i, length in enumerate(lengths):
                frame = np.frombuffer(decompressor.decompress(stream.read(length)),
                                      "<u2").reshape(shape[0])
                if i % 25 == 0:
                    decoded.append(frame)
        decode_s = time.perf_counter() - start
    if len(decoded) != len(kept) or not all(np.array_equal(a, b) for a, b in zip(decoded, kept)):
        raise SystemExit(f"{codec}: decoded frames differ from the input")
    height, width = kept[0].shape
    result.update(frames=count, width=width, height=height, raw_bytes=count * height * width * 2,
                  bytes=size, encode_s=seconds, decode_s=decode_s)
    return result


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
    print(f"{'codec':<24}{'ratio':>7}{'MiB':>9}{'enc fps':>9}{'dec fps':>9}{'peak MiB':>10}"
          f"{'(+ over start)':>15}")
    names = {"ffv1": "FFV1 (verified)", "png": "PNG OpenCV level 1", "zstd": "zstd level 3"}
    for row in rows:
        print(f"{names[row['codec']]:<24}{row['raw_bytes'] / row['bytes']:>7.2f}"
              f"{row['bytes'] / 2**20:>9.1f}{row['frames'] / row['encode_s']:>9.1f}"
              f"{row['frames'] / row['decode_s']:>9.1f}{row['peak_rss_mib']:>10.0f}"
              f"{row['peak_rss_mib'] - row['baseline_rss_mib']:>15.0f}")
    ffv1 = rows[0]
    print(f"FFV1 encode incl. decode-and-verify on close: "
          f"{ffv1['frames'] / (ffv1['encode_s'] + ffv1['verify_s']):.1f} fps")
    for row in rows[1:]:
        print(f"FFV1 vs {names[row['codec']]}: files {row['bytes'] / ffv1['bytes']:.2f}x "
              f"smaller, encodes {row['encode_s'] / ffv1['encode_s']:.2f}x and decodes "
              f"{row['decode_s'] / ffv1['decode_s']:.2f}x as fast")


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
