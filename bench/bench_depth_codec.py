"""Depth codec benchmark: the verified FFV1 path against FFmpeg's own command line, and the size of
the default and the remapped (``ffv1.remap_values``) files.

Input: the stereo backend's depth of a synthetic 1280x720 episode (built first, about a minute per
camera on 2 cores; ``--workdir DIR`` keeps it for the next run), and synthetic quantized-disparity
depth made from the episode's ground truth the way stereo depth is made: disparity ``fx * B / z``
plus Gaussian sub-pixel noise, rounded to 1/16 pixel, back to ``fx * B / d`` in millimetres.

Sections (``--sections``, default all but codecs):
- ``speed``: the stereo depth of the ext1 camera, ``--runs`` times in turn: our encode
  (``DepthWriter.write`` of every frame), our verify (``close``: decode, hash, compare), FFmpeg's
  command-line encode of the same raw frames with the same settings and its decode of that file to
  ``-f null``, and our own libavcodec doing that encode and decode through PyAV with nothing
  around it. Medians of wall clock and CPU seconds (all threads; FFmpeg's as a child process).
- ``overlap``: the depth step (``extract_depth``) on the episode, its frame source replaced by
  each camera's stereo depth replayed from memory at ``--grab-ms`` per frame (a sleep: a GPU's
  grab leaves the CPUs free); wall seconds of the whole step, medians of ``--runs``. Run it
  with an older checkout on PYTHONPATH for the figure before verification overlapped.
- ``ratio``: raw bytes / file bytes of the default and the remapped file, every camera of the
  stereo depth and of the quantized-disparity depth; each file verified by its writer, and
  read back through DepthReader equal to its input.
- ``codecs``: FFV1 against PNG (OpenCV, level 1) and zstd level 3 on a smooth synthetic scene,
  each codec in a fresh process (sizes, frames per second and per CPU-second, peak memory).
Usage: python bench/bench_depth_codec.py [--frames 60] [--runs 5] [--workdir DIR] [--grab-ms 30]
                                         [--sections speed,overlap,ratio,codecs] [--noise 0,0.15]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.config import FFV1Config, load_config
from droid_pipeline.formats.depth_codec import (
    DepthMeta,
    DepthReader,
    DepthWriter,
    encoder_options,
    legacy_depth_frames,
)

SIZE = (1280, 720)
FPS = 15.0
SECTIONS = ("speed", "overlap", "ratio", "codecs")
CODECS = ("ffv1", "png", "zstd")


class Stopwatch:
    """Wall-clock seconds and CPU seconds (this process's threads, or its children's) spent in
    ``with`` blocks."""

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self.wall = self.cpu = 0.0

    def _cpu(self) -> float:
        if not self.children:
            return time.process_time()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> Stopwatch:
        self._wall, self._start_cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += self._cpu() - self._start_cpu


# ---------------------------------------------------------------- inputs

def stereo_episode(workdir: Path, frames: int) -> tuple[Any, dict[str, dict[str, Any]]]:
    """A synthetic 720p episode and its stereo-backend depth (built unless already in ``workdir``);
    returns the dataset and, per camera serial, its role, depth.mkv and depth_meta.json source."""
    from droid_pipeline.raw.discovery import build_index
    from droid_pipeline.steps.depth import extract_depth
    from droid_pipeline.synthetic.generator import generate_dataset, load_dataset_info

    data_dir, stereo_dir = workdir / "dataset", workdir / "stereo"
    if (data_dir / "ground_truth" / "dataset.json").is_file():
        dataset = load_dataset_info(data_dir)
    else:
        print(f"building a synthetic {SIZE[0]}x{SIZE[1]} episode of {frames} steps in {data_dir}",
              flush=True)
        dataset = generate_dataset(data_dir, episodes=1, frames=frames, size=SIZE, seed=0)
    synthetic = dataset.episodes[0]
    if (synthetic.num_frames, synthetic.width, synthetic.height) != (frames, *SIZE):
        raise SystemExit(f"{data_dir} holds {synthetic.num_frames} frames of {synthetic.width}x"
                         f"{synthetic.height}, not {frames} of {SIZE[0]}x{SIZE[1]}: use another --workdir")
    cameras = {}
    for role, serial in synthetic.serials.items():
        depth_path = stereo_dir / "recordings" / serial / "depth.mkv"
        if not depth_path.with_name("depth_meta.json").is_file():
            print(f"stereo backend, camera {serial} ({role})", flush=True)
            config = load_config([dataset.config_path], [f"episode_index_path={workdir / 'index.json'}"])
            episode = build_index(config.droid_root, None).get(synthetic.episode_id)
            extract_depth(config, episode, stereo_dir, backend="stereo", cameras=[serial])
        meta = DepthMeta.load(depth_path.with_name("depth_meta.json"))
        cameras[serial] = {"role": role, "path": depth_path, "source": meta.source}
    return dataset, cameras


def read_frames(path: Path) -> list[np.ndarray]:
    with DepthReader(path) as reader:
        return list(reader)


def quantized_disparity_depth(truth_mm: np.ndarray, fx: float, baseline_m: float, noise_px: float,
                              depth_range_mm: list[float], seed: int = 0) -> list[np.ndarray]:
    """Ground-truth depth as stereo would measure it: disparity plus noise on a 1/16-pixel grid."""
    from droid_pipeline.steps.depth import depth_to_uint16_mm

    rng = np.random.default_rng(seed)
    fx_baseline = fx * baseline_m * 1000.0
    frames = []
    for truth in truth_mm:
        valid = truth > 0
        disparity = np.where(valid, fx_baseline / np.where(valid, truth, 1.0), 0.0)
        disparity = np.round((disparity + rng.normal(0.0, noise_px, truth.shape)) * 16) / 16
        with np.errstate(divide="ignore"):
            depth = np.where(valid & (disparity > 0), fx_baseline / disparity, np.nan)
        frames.append(depth_to_uint16_mm(depth, *depth_range_mm))
    return frames


# ---------------------------------------------------------------- speed

def ffmpeg_commands(settings: FFV1Config, raw: Path, mkv: Path) -> tuple[list[str], list[str]]:
    """FFmpeg's own encode of raw gray16le frames with ``settings``, and its decode of the result."""
    width, height = SIZE
    encode = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray16le", "-s",
              f"{width}x{height}", "-r", f"{FPS:g}", "-i", str(raw), "-c:v", "ffv1", "-level",
              str(settings.level), "-g", str(settings.gop), "-slices", str(settings.slices),
              "-slicecrc", "1", "-context", str(settings.context), "-coder", settings.coder,
              "-threads", str(settings.threads), str(mkv)]
    decode = ["ffmpeg", "-v", "error", "-threads", "0", "-i", str(mkv), "-f", "null", "-"]
    return encode, decode


def bare_libavcodec(frames: list[np.ndarray], settings: FFV1Config, path: Path) -> tuple[Stopwatch, Stopwatch]:
    """Our libavcodec driven directly through PyAV, nothing else: encode every frame into ``path``
    with ``settings``, then decode it (no checksum, no error capture, no checks)."""
    import av

    encoding, decoding = Stopwatch(), Stopwatch()
    with encoding, av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "gray16le"
        stream.codec_context.options = encoder_options(settings)
        stream.codec_context.thread_type = "SLICE"
        stream.codec_context.thread_count = settings.threads
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="gray16le")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    with decoding, av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        stream.thread_count = 0
        for _ in container.decode(stream):
            pass
    return encoding, decoding


def speed(frames: list[np.ndarray], settings: FFV1Config, runs: int, work: Path) -> None:
    raw, cli_mkv, ours_mkv = work / "frames.raw", work / "ffmpeg.mkv", work / "ours.mkv"
    raw.write_bytes(b"".join(np.ascontiguousarray(frame, "<u2").tobytes() for frame in frames))
    encode_cmd, decode_cmd = ffmpeg_commands(settings, raw, cli_mkv)
    versions = subprocess.run(["ffmpeg", "-version"], check=True, capture_output=True, text=True).stdout
    import av

    print(f"\nspeed: {len(frames)} frames {SIZE[0]}x{SIZE[1]} (stereo depth, ext1), {runs} runs, "
          f"medians; FFmpeg command line: {versions.splitlines()[0]}; ours: libavcodec "
          f"{'.'.join(map(str, av.library_versions['libavcodec']))} (PyAV {av.__version__})")
    print("  " + " ".join(encode_cmd).replace(str(work) + "/", ""))
    print("  " + " ".join(decode_cmd).replace(str(work) + "/", ""))
    rows: dict[str, list[tuple[float, float]]] = {}
    for _ in range(runs):
        clocks = {name: Stopwatch(children=name.startswith("ffmpeg"))
                  for name in ("our encode", "our verify", "ffmpeg encode", "ffmpeg decode")}
        clocks["libavcodec encode"], clocks["libavcodec decode"] = bare_libavcodec(
            frames, settings, work / "bare.mkv")
        writer = DepthWriter(ours_mkv, SIZE[0], SIZE[1], FPS, settings)
        with clocks["our encode"]:
            for frame in frames:
                writer.write(frame)
        with clocks["our verify"]:
            writer.close()
        with clocks["ffmpeg encode"]:
            subprocess.run(encode_cmd, check=True)
        with clocks["ffmpeg decode"]:
            subprocess.run(decode_cmd, check=True)
        for name, clock in clocks.items():
            rows.setdefault(name, []).append((clock.wall, clock.cpu))
        rows.setdefault("our encode + verify", []).append(
            (clocks["our encode"].wall + clocks["our verify"].wall,
             clocks["our encode"].cpu + clocks["our verify"].cpu))
        for tool, second in (("ffmpeg", "decode"), ("libavcodec", "decode")):
            first_clock, second_clock = clocks[f"{tool} encode"], clocks[f"{tool} {second}"]
            rows.setdefault(f"{tool} encode + {second}", []).append(
                (first_clock.wall + second_clock.wall, first_clock.cpu + second_clock.cpu))
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(cli_mkv), "-f", "rawvideo", "-"],
                             check=True, capture_output=True).stdout
    if decoded != raw.read_bytes():
        raise SystemExit("FFmpeg's own file does not decode to the input frames")
    print(f"  {'':28s}{'wall s':>8s}{'fps':>8s}{'CPU s':>8s}   (min-max wall)")
    medians = {}
    for name, values in rows.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        medians[name] = wall, cpu
        print(f"  {name:28s}{wall:8.3f}{len(frames) / wall:8.1f}{cpu:8.3f}   "
              f"({min(v[0] for v in values):.3f}-{max(v[0] for v in values):.3f})")
    ours = medians["our encode + verify"]
    for name, label in (("ffmpeg encode + decode", "FFmpeg's command line"),
                        ("libavcodec encode + decode", "our libavcodec alone")):
        print(f"  ours / {label}: {ours[0] / medians[name][0]:.2f}x wall, "
              f"{ours[1] / medians[name][1]:.2f}x CPU")
    print(f"  files: ours {ours_mkv.stat().st_size}, FFmpeg's {cli_mkv.stat().st_size}, "
          f"libavcodec alone {(work / 'bare.mkv').stat().st_size} bytes")


# ---------------------------------------------------------------- overlap

def overlap(dataset: Any, cameras: dict[str, dict[str, Any]], settings: FFV1Config, grab_s: float,
            runs: int, work: Path) -> None:
    import contextlib

    from droid_pipeline.raw.discovery import build_index
    from droid_pipeline.steps import depth as depth_step

    depth = {serial: [frame.astype(np.float32) for frame in read_frames(camera["path"])]
             for serial, camera in cameras.items()}

    @contextlib.contextmanager
    def replayed_source(config: Any, episode: Any, episode_dir: Path, output_dir: Path, backend: str,
                        serial: str) -> Iterator[Any]:
        def frames() -> Iterator[tuple[np.ndarray | None, None]]:
            for frame in depth[serial]:
                time.sleep(grab_s)
                yield frame, None

        yield depth_step.FrameSource(SIZE[0], SIZE[1], len(depth[serial]), FPS, frames())

    config = load_config([dataset.config_path], [f"episode_index_path={work / 'index.json'}"])
    episode = build_index(config.droid_root, None).get(dataset.episodes[0].episode_id)
    original, depth_step._open_source = depth_step._open_source, replayed_source
    try:
        walls = []
        for run in range(runs):
            start = time.perf_counter()
            depth_step.extract_depth(config, episode, work / f"overlap{run}", backend="stereo")
            walls.append(time.perf_counter() - start)
    finally:
        depth_step._open_source = original
    count = sum(len(frames) for frames in depth.values())
    wall = statistics.median(walls)
    print(f"\noverlap: depth step, {len(depth)} cameras x {count // len(depth)} frames replayed at "
          f"{grab_s * 1000:g} ms per frame ({count * grab_s:.1f} s of grabbing): {wall:.2f} s, "
          f"{count / wall:.1f} frames/s (median of {runs}, {min(walls):.2f}-{max(walls):.2f} s)")


# ---------------------------------------------------------------- ratio

def encoded_size(frames: list[np.ndarray], settings: FFV1Config, path: Path) -> tuple[int, float]:
    """Bytes of the verified file and seconds to write and close it; checks it reads back equal."""
    height, width = frames[0].shape
    start = time.perf_counter()
    with DepthWriter(path, width, height, FPS, settings) as writer:
        for frame in frames:
            writer.write(frame)
    seconds = time.perf_counter() - start
    if not all(np.array_equal(a, b) for a, b in zip(read_frames(path), frames, strict=True)):
        raise SystemExit(f"{path}: does not read back as its input")
    return path.stat().st_size, seconds


def ratio(inputs: list[tuple[str, list[np.ndarray]]], settings: FFV1Config, work: Path) -> None:
    remap = dataclasses.replace(settings, remap_values=True)
    print("\nratio: raw bytes / file bytes, default vs remap_values (each file verified, read back "
          "equal to its input)")
    print(f"  {'input':44s}{'values':>8s}{'default':>9s}{'remap':>8s}{'gain':>7s}"
          f"{'default s':>11s}{'remap s':>9s}")
    for name, frames in inputs:
        raw_bytes = sum(frame.nbytes for frame in frames)
        values = len(np.unique(np.concatenate([np.unique(frame) for frame in frames]))) - 1
        plain, plain_s = encoded_size(frames, settings, work / "plain.mkv")
        coded, coded_s = encoded_size(frames, remap, work / "coded.mkv")
        print(f"  {name:44s}{values:8d}{raw_bytes / plain:9.2f}{raw_bytes / coded:8.2f}"
              f"{plain / coded:7.2f}{plain_s:11.2f}{coded_s:9.2f}")


# ---------------------------------------------------------------- codecs (PNG, zstd)

def synthetic_depth(count: int, height: int = 720, width: int = 1280) -> Iterator[np.ndarray]:
    """Depth like a ZED camera over a table: planes, boxes and a sphere moving slowly, gentle
    surface ripple, noise growing with distance squared (0.5 mm at 1 m), rounded to mm, invalid
    (0) bands beside depth edges, far pixels and scattered dropouts."""
    import cv2

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


def _encode_all(frames: Iterator[np.ndarray], encode: Callable[[np.ndarray], None], clock: Stopwatch
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


def run_codec(codec: str, source: str, count: int, work: Path) -> dict[str, Any]:
    """Encode and decode every frame with one codec in this process; return the figures."""
    import cv2

    encoding, verifying, decoding = Stopwatch(), Stopwatch(), Stopwatch()
    decoded: list[Any] = []
    if codec == "ffv1":
        first = next(frames_for(source, 1))
        path = work / "depth.mkv"
        writer = DepthWriter(path, first.shape[1], first.shape[0], FPS, load_config().ffv1)
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

        def encode_png(frame: np.ndarray) -> None:
            _, data = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            files.append(work / f"{len(files):06d}.png")
            files[-1].write_bytes(data.tobytes())

        count, kept = _encode_all(frames_for(source, count), encode_png, encoding)
        size = sum(f.stat().st_size for f in files)
        with decoding:
            for i, file in enumerate(files):
                image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
                if i % 25 == 0:
                    decoded.append(image)
    else:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3)
        lengths: list[int] = []
        shape: list[tuple[int, int]] = []
        with open(work / "depth.zst", "wb") as out:
            def encode_zstd(frame: np.ndarray) -> None:
                data = compressor.compress(np.ascontiguousarray(frame, "<u2").tobytes())
                out.write(data)
                lengths.append(len(data))
                shape[:] = [frame.shape]

            count, kept = _encode_all(frames_for(source, count), encode_zstd, encoding)
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
        result = run_codec(args.worker, args.source, args.codec_frames, Path(work))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["baseline_rss_mib"] = baseline_kib / 1024
    print(json.dumps(result))


def codecs(source: str, count: int) -> None:
    rows = []
    for codec in CODECS:
        output = subprocess.run([sys.executable, __file__, "--worker", codec, "--source", source,
                                 "--codec-frames", str(count)], check=True, capture_output=True,
                                text=True).stdout
        rows.append(json.loads(output.splitlines()[-1]))
    first = rows[0]
    print(f"\ncodecs, {source}: {first['frames']} frames {first['width']}x{first['height']} uint16, "
          f"raw {first['raw_bytes'] / 2**20:.1f} MiB")
    print(f"  {'codec':<20}{'ratio':>6}{'MiB':>7}{'enc fps':>9}{'dec fps':>9}{'enc f/cpu-s':>13}"
          f"{'dec f/cpu-s':>13}{'peak MiB':>10}{'(+start)':>10}")
    names = {"ffv1": "FFV1 (verified)", "png": "PNG OpenCV level 1", "zstd": "zstd level 3"}
    for row in rows:
        frames = row["frames"]
        print(f"  {names[row['codec']]:<20}{row['raw_bytes'] / row['bytes']:>6.2f}"
              f"{row['bytes'] / 2**20:>7.1f}{frames / row['encode_s']:>9.1f}"
              f"{frames / row['decode_s']:>9.1f}{frames / row['encode_cpu_s']:>13.1f}"
              f"{frames / row['decode_cpu_s']:>13.1f}{row['peak_rss_mib']:>10.0f}"
              f"{row['peak_rss_mib'] - row['baseline_rss_mib']:>10.0f}")
    ffv1 = rows[0]
    print(f"  FFV1 encode including decode-and-verify on close: "
          f"{ffv1['frames'] / (ffv1['encode_s'] + ffv1['verify_s']):.1f} fps")
    for row in rows[1:]:
        print(f"  FFV1 vs {names[row['codec']]}: files {row['bytes'] / ffv1['bytes']:.2f}x "
              f"smaller; per CPU-second FFV1 encodes "
              f"{row['encode_cpu_s'] / ffv1['encode_cpu_s']:.2f}x and decodes "
              f"{row['decode_cpu_s'] / ffv1['decode_cpu_s']:.2f}x as many frames")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="steps of the synthetic 720p episode")
    parser.add_argument("--runs", type=int, default=5, help="runs of the speed section (medians)")
    parser.add_argument("--workdir", type=Path, help="keep the episode and its stereo depth here "
                        "(reused when present); default: a temporary folder")
    parser.add_argument("--sections", default="speed,overlap,ratio",
                        help=f"comma list of {', '.join(SECTIONS)} (default speed,overlap,ratio)")
    parser.add_argument("--grab-ms", type=float, default=30.0,
                        help="overlap section: milliseconds the stand-in source takes per frame")
    parser.add_argument("--noise", default="0,0.15",
                        help="disparity noise (pixels, standard deviation) of the quantized-disparity "
                             "inputs; 0.15 is about the stereo backend's error on the synthetic episode")
    parser.add_argument("--codec-frames", type=int, default=240, help="frames of the codecs section")
    parser.add_argument("--png-dir", help="codecs section: also a real sequence of 16-bit PNG frames")
    parser.add_argument("--worker", choices=CODECS, help=argparse.SUPPRESS)
    parser.add_argument("--source", default="synthetic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sections = args.sections.split(",")
    if not set(sections) <= set(SECTIONS):
        parser.error(f"--sections: expected some of {', '.join(SECTIONS)}")
    settings = load_config().ffv1
    print(f"FFV1 settings: {dataclasses.asdict(settings)}")
    with tempfile.TemporaryDirectory(prefix="bench_depth_") as tmp:
        work = Path(tmp)
        if {"speed", "overlap", "ratio"} & set(sections):
            dataset, cameras = stereo_episode(args.workdir or work, args.frames)
            by_role = {camera["role"]: serial for serial, camera in cameras.items()}
            if "speed" in sections:
                speed(read_frames(cameras[by_role["ext1"]]["path"]), settings, args.runs, work)
            if "overlap" in sections:
                overlap(dataset, cameras, settings, args.grab_ms / 1000, args.runs, work)
            if "ratio" in sections:
                truth_dir = dataset.ground_truth_path(dataset.episodes[0])
                inputs: list[tuple[str, list[np.ndarray]]] = []
                for camera in cameras.values():
                    inputs.append((f"stereo backend, {camera['role']}", read_frames(camera["path"])))
                for noise in map(float, args.noise.split(",")):
                    for serial, camera in cameras.items():
                        source = camera["source"]
                        frames = quantized_disparity_depth(
                            np.load(truth_dir / f"{serial}_depth_mm.npy"), source["fx"],
                            source["baseline_m"], noise, source["depth_range_mm"])
                        inputs.append((f"1/16-px disparity, noise {noise:g} px, {camera['role']}",
                                       frames))
                ratio(inputs, settings, work)
        if "codecs" in sections:
            codecs("synthetic", args.codec_frames)
            if args.png_dir:
                codecs(args.png_dir, 0)


if __name__ == "__main__":
    main()
