"""Start-up cost of each step's command: import time and peak memory, then a real run on a demo episode.

For each command it measures, in fresh interpreters:
- import: wall time of ``python -c 'import MODULE'`` (median over --repeats) for the module the
  command imports at start, its peak RSS, and which heavy libraries that import loads;
- run: wall time (median over --repeats) and peak RSS (largest of the runs) of the command itself
  on one synthetic episode written by ``python -m droid_pipeline.demo``.
Peak RSS is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read in a small launcher process, so the
figure is the command's own (a child forked from this process would report this process's
memory). The metadata driver row is the largest process of the whole run (plan, worker, summary).

    .venv/bin/python bench/bench_step_imports.py [--tree DIR] [--frames 120] [--size 320x180] [--repeats 5]

``--tree`` measures another checkout of the project (e.g. an older commit unpacked with
``git archive``) with this interpreter: its package comes first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("av", "cv2", "h5py", "matplotlib", "scipy.optimize", "scipy.stats", "huggingface_hub", "tqdm",
         "pyarrow")
# Runs COMMAND... with stdout discarded and stderr to FILE; prints its wall time, peak RSS and exit code.
LAUNCHER = """\
import json, resource, subprocess, sys, time
with open(sys.argv[1], "wb") as err:
    start = time.perf_counter()
    code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err).returncode
    seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "code": code}))
"""


@dataclass(frozen=True)
class Command:
    name: str
    imports: tuple[str, ...]  # what the command's process imports before it does any work
    run: list[str]


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_mib: float


def launch(command: list[str], cwd: Path, env: dict[str, str], scratch: Path) -> Measure:
    """Run ``command`` under the launcher; a failure stops the benchmark with the command's stderr."""
    err = scratch / "stderr.txt"
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(err), *command], cwd=cwd, env=env,
                            capture_output=True, text=True, check=True)
    figures = json.loads(result.stdout)
    if figures["code"] != 0:
        raise SystemExit(f"{' '.join(command)} exited {figures['code']}:\n{err.read_text()}")
    return Measure(figures["seconds"], figures["peak_kib"] / 1024)


def repeated(command: list[str], cwd: Path, env: dict[str, str], scratch: Path, repeats: int) -> Measure:
    """Median wall time and largest peak RSS over ``repeats`` runs."""
    runs = [launch(command, cwd, env, scratch) for _ in range(repeats)]
    return Measure(statistics.median(r.seconds for r in runs), max(r.peak_mib for r in runs))


def heavy_loaded(modules: tuple[str, ...], cwd: Path, env: dict[str, str]) -> list[str]:
    """The heavy libraries that importing ``modules`` loads."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join(h for h in {HEAVY!r} if h in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def import_line(modules: tuple[str, ...]) -> str:
    return "import " + ", ".join(modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO_ROOT, help="checkout to measure (default: this one)")
    parser.add_argument("--frames", type=int, default=120, help="control steps of the demo episode")
    parser.add_argument("--size", default="320x180", help="video size of the demo episode")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tree = args.tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(tree), "DROID_PYTHON": sys.executable}
    env.pop("DROID_PIPELINE_SITE_CONFIG", None)
    py = sys.executable
    package = subprocess.run([py, "-c", "import droid_pipeline; print(droid_pipeline.__file__)"], cwd=tree, env=env,
                             check=True, capture_output=True, text=True).stdout.strip()
    if not Path(package).is_relative_to(tree):
        raise SystemExit(f"the package imported is {package}, not the one in {tree}")
    with tempfile.TemporaryDirectory(prefix="bench_imports_") as tmp:
        scratch = Path(tmp)
        demo = scratch / "demo"
        subprocess.run([py, "-m", "droid_pipeline.demo", "--out", str(demo), "--episodes", "1",
                        "--frames", str(args.frames), "--size", args.size], cwd=tree, env=env,
                       check=True, capture_output=True)
        config = str(demo / "config.yaml")
        listing = subprocess.run([py, "-m", "droid_pipeline.episodes", "--config", config, "--outcome", "all",
                                  "--json"], cwd=tree, env=env, check=True, capture_output=True, text=True)
        episode_id = json.loads(listing.stdout.splitlines()[0])["episode_id"]
        step = ["--config", config, "--episode_id", episode_id]
        commands = [
            Command("intrinsics", ("droid_pipeline.cli.intrinsics",),
                    [py, "extract_intrinsics_only.py", *step]),
            Command("depth (stereo)", ("droid_pipeline.cli.depth",),
                    [py, "extract_rgb_depth.py", *step, "--depth-backend", "stereo"]),
            Command("tracks", ("droid_pipeline.cli.tracks",), [py, "generate_tracks_and_metadata.py", *step]),
            Command("uploader --help", ("droid_pipeline.cli.upload",), [py, "upload_batches.py", "--help"]),
            Command("metadata worker / driver", ("droid_pipeline.execution.runner", "droid_pipeline.steps.intrinsics",
                                                 "droid_pipeline.steps.tracks"),
                    [str(tree / "run_pipeline_metadata_only.sh"), "--config", config, "--workers", "1",
                     "--no-upload", "--force", "--out", str(scratch / "driver_out"),
                     "--set", f"run_root={scratch / 'runs'}"]),
        ]
        print(f"tree {tree} (python {sys.version.split()[0]}); demo episode: {args.frames} steps at {args.size}; "
              f"median of {args.repeats} runs, peak RSS the largest")
        bare = repeated([py, "-c", "pass"], tree, env, scratch, args.repeats)
        print(f"bare interpreter (python -c pass): {bare.seconds:.3f} s, {bare.peak_mib:.0f} MiB")
        header = (f"{'command':<26} {'import s':>8} {'import MiB':>10} {'run s':>7} {'run peak MiB':>12}  "
                  "heavy libraries loaded by the import")
        print(header)
        print("-" * len(header))
        for command in commands:
            imported = repeated([py, "-c", import_line(command.imports)], tree, env, scratch, args.repeats)
            run = repeated(command.run, tree, env, scratch, args.repeats)
            heavy = " ".join(heavy_loaded(command.imports, tree, env)) or "-"
            print(f"{command.name:<26} {imported.seconds:8.3f} {imported.peak_mib:10.0f} {run.seconds:7.2f} "
                  f"{run.peak_mib:12.0f}  {heavy}")
        print("import: " + "; ".join(f"{c.name}: {import_line(c.imports)}" for c in commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())
