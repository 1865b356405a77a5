"""Speed and bytes of ways to write a tracks.npz: NumPy's savez_compressed against the project's
parallel writer at several deflate levels, strategies, engines (zlib, and ISA-L when the package
isal is installed) and thread counts, on the arrays of a real tracks step output (default: a
300-step synthetic episode made by bench_tracks.py --keep DIR).

    .venv/bin/python bench/bench_npz.py --npz DIR_OR_FILE [--repeats 5]

Prints, per way, the median wall and CPU seconds of writing to memory and the bytes written; every
way's output is loaded back with np.load(allow_pickle=False) and compared array by array.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from droid_pipeline.formats.npz import Deflate, write_npz  # noqa: E402

LARGE_BYTES = 4 << 20


def ways(arrays: dict[str, np.ndarray]) -> dict[str, Callable[[io.BytesIO], None]]:
    largest = {key for key, array in arrays.items() if array.nbytes >= LARGE_BYTES}

    def huffman_for_large(key: str, array: object) -> Deflate:
        return Deflate(1, zlib.Z_HUFFMAN_ONLY) if key in largest else Deflate(1)

    table: dict[str, Callable[[io.BytesIO], None]] = {
        "np.savez_compressed (zlib level 6, 1 thread)": lambda fh: np.savez_compressed(fh, **arrays),
        "np.savez (stored)": lambda fh: np.savez(fh, **arrays),
    }
    for level in (1, 3, 6):
        for threads in (1, 2, 4):
            table[f"write_npz level {level}, {threads} thread(s)"] = (
                lambda fh, level=level, threads=threads: write_npz(fh, arrays, deflate=Deflate(level), threads=threads))
    for threads in (1, 2):
        table[f"write_npz Huffman-only >= 4 MiB, level 1 rest, {threads} thread(s)"] = (
            lambda fh, threads=threads: write_npz(fh, arrays, deflate=huffman_for_large, threads=threads))
    if importlib.util.find_spec("isal") is None:
        print("the package isal is not installed: the isal engine's rows are left out")
        return table

    def zlib_for_large(key: str, array: object) -> Deflate:
        return Deflate(1) if key in largest else Deflate(3, engine="isal")

    for level in (1, 2, 3):
        for threads in (1, 2):
            table[f"write_npz isal level {level}, {threads} thread(s)"] = (
                lambda fh, level=level, threads=threads: write_npz(fh, arrays, deflate=Deflate(level, engine="isal"),
                                                                   threads=threads))
    for threads in (1, 2):
        table[f"write_npz zlib level 1 >= 4 MiB, isal level 3 rest, {threads} thread(s)"] = (
            lambda fh, threads=threads: write_npz(fh, arrays, deflate=zlib_for_large, threads=threads))
    return table


def measure(write: Callable[[io.BytesIO], None], repeats: int) -> tuple[float, float, bytes]:
    walls, cpus = [], []
    data = b""
    for _ in range(repeats):
        buffer = io.BytesIO()
        wall, cpu = time.perf_counter(), time.process_time()
        write(buffer)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        data = buffer.getvalue()
    return statistics.median(walls), statistics.median(cpus), data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, required=True, help="a tracks.npz, or a folder holding one")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = args.npz if args.npz.is_file() else next(args.npz.rglob("tracks.npz"))
    with np.load(path, allow_pickle=False) as source:
        arrays = {key: source[key] for key in source.files}
    raw = sum(array.nbytes for array in arrays.values())
    print(f"{path}: {len(arrays)} arrays, {raw:,} bytes raw; medians of {args.repeats} runs, written to memory")
    print(f"{'way':62s} {'wall s':>7s} {'cpu s':>7s} {'bytes':>12s} {'of raw':>7s}")
    for name, write in ways(arrays).items():
        wall, cpu, data = measure(write, args.repeats)
        with np.load(io.BytesIO(data), allow_pickle=False) as back:
            if back.files != list(arrays) or not all(np.array_equal(back[k], a) and back[k].dtype == a.dtype
                                                      for k, a in arrays.items()):
                raise SystemExit(f"{name}: the archive does not read back as the arrays written")
        print(f"{name:62s} {wall:7.3f} {cpu:7.3f} {len(data):12,} {len(data) / raw:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
