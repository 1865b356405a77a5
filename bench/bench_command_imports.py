"""Import time of every command (``python -X importtime``): what each command's process imports
before it does any work, and the heavy libraries among it.

For each command (the console scripts of pyproject.toml; the drivers' Python processes are the
runner's plan, worker and summary, the worker then importing its steps), runs a fresh
``python -X importtime -c 'import MODULE'`` --repeats times and prints the median of the
top-level module's cumulative import time, and which heavy libraries it loaded. With ``--before
DIR`` (another checkout, e.g. ``git worktree add /tmp/before <commit>``) the same imports of that
checkout run in turn with these, so both see the same load.

    .venv/bin/python bench/bench_command_imports.py [--repeats 7] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("scipy", "scipy.spatial", "scipy.optimize", "h5py", "av", "cv2", "matplotlib", "huggingface_hub", "tqdm",
         "pyarrow", "yaml")
# command -> the modules its process imports before it works
COMMANDS = {
    "droid-run-metadata / -full (plan, summary)": ("droid_pipeline.execution.runner",),
    "driver worker (runner + preloaded steps)": ("droid_pipeline.execution.runner", "droid_pipeline.steps.intrinsics",
                                                 "droid_pipeline.steps.tracks", "h5py", "av"),
    "droid-intrinsics": ("droid_pipeline.cli.common", "droid_pipeline.cli.intrinsics"),
    "droid-depth": ("droid_pipeline.cli.common", "droid_pipeline.cli.depth"),
    "droid-tracks": ("droid_pipeline.cli.common", "droid_pipeline.cli.tracks"),
    "droid-compress-depth": ("droid_pipeline.cli.common", "droid_pipeline.cli.compress_depth"),
    "droid-upload": ("droid_pipeline.cli.common", "droid_pipeline.cli.upload"),
    "droid-render": ("droid_pipeline.cli.common", "droid_pipeline.cli.render"),
    "droid-episodes": ("droid_pipeline.cli.common", "droid_pipeline.cli.episodes"),
    "droid-verify": ("droid_pipeline.cli.common", "droid_pipeline.cli.verify"),
    "droid-timing": ("droid_pipeline.cli.common", "droid_pipeline.cli.timing"),
    "droid-demo": ("droid_pipeline.cli.common", "droid_pipeline.cli.demo"),
}
# Prints which of HEAVY the imports loaded, after them.
PROBE = "import sys\n{imports}\nprint(' '.join(h for h in {heavy!r} if h in sys.modules))"


def top_level(stderr: str) -> dict[str, int]:
    """Top-level modules of a -X importtime report (one space after the last bar) -> cumulative microseconds."""
    found = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit() \
                and not parts[2].startswith("  "):
            found[parts[2].strip()] = int(parts[1])
    return found


def measure(tree: Path, modules: tuple[str, ...], startup: set[str]) -> tuple[float, list[str]]:
    """Seconds of importing ``modules`` in a fresh interpreter with ``tree`` first on the path (the
    top-level modules' cumulative -X importtime figures, less those of the interpreter's own
    start-up, ``startup``), and the heavy libraries loaded."""
    code = PROBE.format(imports="\n".join(f"import {m}" for m in modules), heavy=HEAVY)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=tree, env=env, capture_output=True,
                            text=True, check=True)
    return sum(t for name, t in top_level(result.stderr).items() if name not in startup) / 1e6, result.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", type=Path, help="another checkout, measured in turn with this one")
    args = parser.parse_args()
    trees = {"now": REPO_ROOT} | ({"before": args.before.resolve()} if args.before else {})
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                          check=True)
    startup = set(top_level(bare.stderr))
    seconds: dict[tuple[str, str], list[float]] = {(v, c): [] for v in trees for c in COMMANDS}
    heavy: dict[tuple[str, str], list[str]] = {}
    for _ in range(args.repeats):  # every command of every tree once per round
        for command, modules in COMMANDS.items():
            for version, tree in trees.items():
                took, loaded = measure(tree, modules, startup)
                seconds[version, command].append(took)
                heavy[version, command] = loaded
    print(f"python -X importtime, median of {args.repeats} fresh interpreters each (python {sys.version.split()[0]})")
    columns = "".join(f" {v + ' s':>10s}" for v in trees)
    print(f"{'command':<44s}{columns}  heavy libraries loaded (now)" + ("  / before" if args.before else ""))
    for command in COMMANDS:
        figures = "".join(f" {statistics.median(seconds[v, command]):10.3f}" for v in trees)
        loaded = " ".join(heavy["now", command]) or "-"
        if args.before:
            loaded += "  / " + (" ".join(heavy["before", command]) or "-")
        print(f"{command:<44s}{figures}  {loaded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
