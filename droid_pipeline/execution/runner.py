"""Driver back end: the plan of a run, one episode's steps, and the run's summary.

The bash drivers (``run_pipeline_metadata_only.sh``, ``run_pipeline_compressed_depth.sh``) call:

- ``plan``: parse the driver's options, select episodes, skip finished and already uploaded
  ones (an older schema or an unfinished folder is redone), write the run folder and hand the
  driver a ``key=value`` plan file; ``--dry-run`` prints the plan, ``--slurm`` submits an array
  (:mod:`droid_pipeline.execution.slurm`) and ``--slurm-task`` plans one array task's shard.
- ``worker``: run its episodes one after the other, each in a process forked from the warm
  worker (imports are paid once; a crash or out-of-memory kill fails that episode only): the
  steps in order, in-process, in a private work folder, each timed; log to
  ``logs/<episode_id>.log``; publish with the manifest; append the timing row. The slot given
  by ``xargs --process-slot-var`` picks the GPU. SIGTERM/SIGINT discards the work in progress.
- ``summary``: done / skipped / failed by step and episodes per hour; its exit code is the
  driver's (0 all done, 1 anything failed or not run, 130 interrupted).

Run folder (``<run_root>/<pipeline>-<UTC time>-<pid>/``): ``config.yaml`` (effective config),
``run.json`` (options), ``plan.json`` (selection and why episodes were skipped or redone),
``episodes.txt`` (ids to run), ``todo.jsonl`` (their records, fed to the workers),
``logs/``, ``timing.csv``, ``failed.txt``, ``summary.txt``/``summary.json`` (one per array task
under SLURM: ``summary.task<I>.*``) and ``slurm/``.
"""

from __future__ import annotations

import argparse
import faulthandler
import fcntl
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import (
    append_locked,
    write_json_atomic,
    write_text_atomic,
)
from droid_pipeline.core.config import Config, ConfigError, dump_config, load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.execution.slurm import SlurmError, sbatch_script, submit
from droid_pipeline.execution.timing import (
    EPISODE_LIST_NAME,
    TIMING_NAME,
    append_row,
    create_csv,
    parse_timestamp,
    read_rows,
    utc_timestamp,
)
from droid_pipeline.raw.discovery import (
    DiscoveryError,
    Episode,
    build_index,
    read_id_file,
)

log = logging.getLogger("droid_pipeline.execution.runner")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# A worker exits 255 when interrupted: GNU xargs then starts no further episode.
EXIT_WORKER_STOP = 255
WORKERS_LOCK = ".workers.lock"
FAILED_NAME = "failed.txt"
SLOT_VAR = "DROID_WORKER_SLOT"
MAX_BATCH = 8
# Episodes to redo, or failed, listed on the terminal (plan.json and failed.txt hold them all).
REDO_SHOWN = 20


@dataclass(frozen=True)
class PipelineSpec:
    name: str  # as in the manifest: metadata | full
    driver: str
    steps: tuple[str, ...]


PIPELINES = {
    "metadata": PipelineSpec("metadata", "run_pipeline_metadata_only.sh", ("intrinsics", "tracks")),
    "full": PipelineSpec("full", "run_pipeline_compressed_depth.sh", ("intrinsics", "depth", "tracks")),
}
# Step name -> (module, function(config, episode, output_dir)); imported only when run.
STEP_FUNCTIONS = {
    "intrinsics": ("droid_pipeline.steps.intrinsics", "extract_intrinsics"),
    "depth": ("droid_pipeline.steps.depth", "extract_depth"),
    "tracks": ("droid_pipeline.steps.tracks", "generate_tracks"),
}


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached a worker: stop, discard the work folder, publish nothing."""


# ---------------------------------------------------------------------------------------- plan

def _driver_parser(spec: PipelineSpec) -> argparse.ArgumentParser:
    steps = " -> ".join("depth + FFV1" if s == "depth" else s for s in spec.steps)
    parser = argparse.ArgumentParser(
        prog=spec.driver,
        description=f"Run the {spec.name} pipeline ({steps}) over DROID episodes with parallel "
                    "workers, publish each finished episode with its manifest and upload in "
                    "batches. Writes a run folder under run_root (config, episode list, logs, "
                    "timing.csv, failed list, summary); exits non-zero when anything failed, "
                    "130 when interrupted. A rerun skips finished and uploaded episodes. "
                    "See docs/running.md.")
    parser.add_argument("limit", nargs="?", type=int, metavar="N",
                        help="only the first N selected episodes (default: all)")
    parser.add_argument("--episodes", metavar="FILE", help="run the episode ids listed in FILE")
    parser.add_argument("--episode_id", "--episode-id", metavar="ID",
                        help="debug one episode: foreground, verbose log on the terminal, work "
                             "folder kept, no upload unless --upload; runs even if finished")
    parser.add_argument("--workers", type=int, metavar="K",
                        help="parallel workers (default: config 'workers', else the number of cores)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file overriding configs/default.yaml (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config key, e.g. --set slurm.partition=cpu (repeatable)")
    parser.add_argument("--droid-root", metavar="DIR", help="raw DROID root (config 'droid_root')")
    parser.add_argument("--out", metavar="DIR", help="output root (config 'output_root')")
    parser.add_argument("--episodes-per-worker", type=int, metavar="B",
                        help="episodes each worker process runs in turn (default: up to "
                             f"{MAX_BATCH}, fewer for short runs); start-up is paid once per process")
    parser.add_argument("--no-upload", action="store_true", help="do not start the uploader")
    parser.add_argument("--upload", action="store_true", help="with --episode_id: upload too")
    parser.add_argument("--force", action="store_true", help="redo finished and uploaded episodes")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (or, with --slurm, the sbatch script) and exit")
    parser.add_argument("--slurm", action="store_true",
                        help="submit the run as a SLURM array (slurm.* in the config)")
    if spec.name == "full":
        parser.add_argument("--gpus", metavar="LIST|auto|none",
                            help="GPUs to use: comma list, 'auto' (all visible) or 'none' (config "
                                 "'gpus'); each worker slot is pinned to gpus[slot // workers-per-gpu]; "
                                 "ignored by --depth-backend stereo, which runs on CPU")
        parser.add_argument("--workers-per-gpu", type=int, metavar="K",
                            help="worker slots per GPU (config 'workers_per_gpu')")
        parser.add_argument("--depth-backend", choices=("zed", "stereo"),
                            help="zed = ZED SDK on a GPU; stereo = OpenCV on the stereo MP4s, CPU only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging in episode logs")
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), required=True, help=argparse.SUPPRESS)
    parser.add_argument("--plan-file", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--slurm-task", metavar="RUN_DIR", help=argparse.SUPPRESS)
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    """The driver's shortcut options as config overrides, after the user's --set."""
    pairs = [("droid_root", args.droid_root), ("output_root", args.out), ("workers", args.workers)]
    if args.pipeline == "full":
        pairs += [("gpus", args.gpus), ("workers_per_gpu", args.workers_per_gpu),
                  ("depth_backend", args.depth_backend)]
    return list(args.overrides) + [f"{key}={value}" for key, value in pairs if value is not None]


def cores() -> int:
    """CPUs this process may run on (the allocation's, under SLURM or taskset)."""
    return len(os.sched_getaffinity(0))


def resolve_gpus(setting: str) -> list[str]:
    """GPU ids for ``gpus``: a comma list, ``none``, or ``auto`` (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    setting = setting.strip()
    if setting.lower() == "none":
        return []
    if setting.lower() != "auto":
        return [g.strip() for g in setting.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in (x.strip() for x in visible.split(",")) if g and g not in ("-1", "NoDevFiles")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def worker_layout(config: Config, pipeline: str, env_cpus: int | None = None) -> tuple[int, list[str]]:
    """``(workers, gpus)``: GPUs only pin depth workers of the zed backend (stereo runs on CPU)."""
    gpus = resolve_gpus(config.gpus) if pipeline == "full" and config.depth_backend == "zed" else []
    if pipeline == "full" and config.depth_backend == "zed":
        if not gpus:
            raise ConfigError(f"depth_backend zed needs a GPU but gpus={config.gpus!r} gives none; "
                              "use --depth-backend stereo on CPU-only nodes")
        slots = len(gpus) * config.workers_per_gpu
        if config.workers is not None and config.workers > slots:
            raise ConfigError(f"workers={config.workers} exceeds {len(gpus)} GPU(s) x "
                              f"workers_per_gpu={config.workers_per_gpu}")
        return config.workers or slots, gpus
    return config.workers or env_cpus or cores(), []


def episode_state(config: Config, spec: PipelineSpec, episode: Episode, ledger: Any,
                  repos: list[str]) -> tuple[str, str]:
    """Why an episode is skipped or run: ``finished``, ``uploaded``, or a reason to (re)do it.

    States to redo: ``missing``, ``incomplete`` (no valid manifest: killed, or an output from
    before manifests), ``stale-schema`` and ``metadata-only`` (for the full pipeline).
    """
    from droid_pipeline.publish.staging import finished_state, read_manifest

    folder = config.output_root / episode.relative_path
    state, reason = finished_state(folder)
    if state == "finished":
        if spec.name == "full" and read_manifest(folder).pipeline != "full":
            return "metadata-only", f"{folder} holds the metadata pipeline's output only"
        return "finished", ""
    if state == "missing" and repos and ledger.has(episode.episode_id, repos):
        return "uploaded", f"in the upload ledger for {', '.join(repos)}"
    return state, reason


def plan_main(argv: Sequence[str]) -> int:
    raw = list(argv)
    pipeline = raw[raw.index("--pipeline") + 1] if "--pipeline" in raw else "metadata"
    args = _driver_parser(PIPELINES.get(pipeline, PIPELINES["metadata"])).parse_args(raw)
    spec = PIPELINES[args.pipeline]
    plan_file = Path(args.plan_file)
    if args.slurm_task:
        return _plan_slurm_task(spec, Path(args.slurm_task), plan_file)
    if args.episode_id and (args.episodes or args.limit is not None or args.slurm):
        raise ConfigError("--episode_id runs one episode: it excludes N, --episodes and --slurm")
    config = load_config(args.config, _overrides(args))
    index = build_index(config.droid_root, config.index_path)
    for problem in index.problems:
        print(f"warning: {problem['path']}: {problem['problem']}", file=sys.stderr)
    if args.episode_id:
        ids: list[str] | None = [args.episode_id]
    elif args.episodes:
        ids = read_id_file(args.episodes)
    else:
        ids = None
    selected = index.select(episode_ids=ids, labs=config.labs, outcomes=config.outcomes,
                            limit=args.limit)
    debug = bool(args.episode_id)
    workers, gpus = worker_layout(config, spec.name)
    if debug:
        workers, gpus = 1, gpus[:1]
    from droid_pipeline.publish.ledger import Ledger, repos_for

    repos = repos_for(spec.name, config.metadata_repo, config.full_repo)
    ledger = Ledger(config.run_root) if repos else None
    todo, skipped, redo = [], {"finished": 0, "uploaded": 0}, []
    for episode in selected:
        state, reason = ("forced", "") if args.force or debug else \
            episode_state(config, spec, episode, ledger, repos)
        if state in skipped:
            skipped[state] += 1
            continue
        todo.append(episode)
        if state not in ("missing", "forced"):
            redo.append({"episode_id": episode.episode_id, "state": state, "reason": reason})
    upload = bool(repos) and not args.no_upload and (args.upload or not debug)
    batch = batch_size(len(todo), workers, args.episodes_per_worker)
    plan = {"pipeline": spec.name, "schema_version": SCHEMA_VERSION, "selected": len(selected),
            "skipped": skipped, "redo": redo, "todo": len(todo), "workers": workers, "gpus": gpus,
            "workers_per_gpu": config.workers_per_gpu, "upload": upload, "repos": repos,
            "episodes_per_worker": args.episodes_per_worker, "debug": debug, "verbose": args.verbose}
    _print_plan(plan, todo, args, config)
    if args.dry_run and not args.slurm:
        return _write_plan_file(plan_file, action="exit", exit_code=EXIT_OK)
    if args.slurm:
        return _submit_slurm(spec, config, plan, todo, args, plan_file)
    run_dir = _make_run_dir(config, spec, plan, todo)
    return _write_plan_file(plan_file, action="run", run_dir=run_dir, run_root=config.run_root,
                            todo_file=run_dir / "todo.jsonl", todo=len(todo), workers=workers,
                            batch=batch, gpus=",".join(gpus), upload=int(upload), debug=int(debug),
                            summary_task="")


def _print_plan(plan: dict[str, Any], todo: list[Episode], args: argparse.Namespace,
                config: Config) -> None:
    skipped = plan["skipped"]
    print(f"{plan['pipeline']} pipeline: {plan['selected']} selected, {skipped['finished']} finished "
          f"and {skipped['uploaded']} uploaded skipped, {plan['todo']} to run "
          f"({len(plan['redo'])} redone) with {plan['workers']} worker(s)"
          + (f" on GPUs {','.join(plan['gpus'])} x {plan['workers_per_gpu']}" if plan["gpus"] else ""))
    shown = plan["redo"] if args.dry_run else plan["redo"][:REDO_SHOWN]
    for item in shown:
        print(f"  redo {item['episode_id']}: {item['state']}: {item['reason']}")
    if len(shown) < len(plan["redo"]):
        print(f"  ... and {len(plan['redo']) - len(shown)} more (all listed by --dry-run and in plan.json)")
    if not plan["upload"]:
        why = ("--no-upload" if args.no_upload else "no metadata_repo/full_repo in the config"
               if not plan["repos"] else "debug run without --upload")
        print(f"upload: off ({why}); finished episodes stay in {config.output_root}")
    if args.dry_run and not args.slurm:
        for episode in todo:
            print(f"  run {episode.episode_id}  {episode.relative_path}")
    if not todo:
        print("nothing left to do: 0 episodes to run")


def _make_run_dir(config: Config, spec: PipelineSpec, plan: dict[str, Any],
                  todo: list[Episode]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(config.run_root) / f"{spec.name}-{stamp}-{os.getpid()}"
    (run_dir / "logs").mkdir(parents=True)
    create_csv(run_dir / TIMING_NAME)
    dump_config(config, run_dir / "config.yaml")
    write_json_atomic(run_dir / "run.json", {**plan, "run_root": str(config.run_root),
                                             "output_root": str(config.output_root),
                                             "created": utc_timestamp(time.time())})
    write_json_atomic(run_dir / "plan.json", plan)
    write_text_atomic(run_dir / EPISODE_LIST_NAME, "".join(f"{e.episode_id}\n" for e in todo))
    write_text_atomic(run_dir / "todo.jsonl",
                      "".join(json.dumps(e.to_json(), separators=(",", ":")) + "\n" for e in todo))
    print(f"run folder: {run_dir}")
    return run_dir


def _write_plan_file(path: Path, **values: Any) -> int:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return EXIT_OK


def _submit_slurm(spec: PipelineSpec, config: Config, plan: dict[str, Any], todo: list[Episode],
                  args: argparse.Namespace, plan_file: Path) -> int:
    num_tasks = min(config.slurm.num_tasks, len(todo))
    if num_tasks == 0:
        print("nothing left to do: no SLURM job submitted")
        return _write_plan_file(plan_file, action="exit", exit_code=EXIT_OK)
    plan = {**plan, "slurm_tasks": num_tasks}
    if args.dry_run:
        run_dir = Path(config.run_root) / f"{spec.name}-<submit time>"
        print(sbatch_script(spec.name, run_dir, config.slurm, num_tasks))
        return _write_plan_file(plan_file, action="exit", exit_code=EXIT_OK)
    run_dir = _make_run_dir(config, spec, plan, todo)
    job_id = submit(spec.name, run_dir, config.slurm, num_tasks)
    print(f"submitted SLURM job {job_id}: {num_tasks} array task(s), at most "
          f"{config.slurm.max_parallel_tasks} at once")
    print(f"logs: {run_dir / 'slurm'}/{job_id}_<task>.out, episode logs in {run_dir / 'logs'}, "
          f"timing in {run_dir / TIMING_NAME}")
    return _write_plan_file(plan_file, action="exit", exit_code=EXIT_OK)


def batch_size(todo: int, workers: int, requested: int | None) -> int:
    """Episodes per worker process: amortizes interpreter and import start-up (about 2 s) while
    leaving each worker about four batches, so the last ones end close together."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--episodes-per-worker must be >= 1, got {requested}")
        return requested
    return max(1, min(MAX_BATCH, todo // (workers * 4)))


def shard(items: Sequence[Any], index: int, count: int) -> list[Any]:
    """Array task ``index`` of ``count`` takes items index, index+count, ... (deterministic)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} out of range for {count} shards")
    return list(items[index::count])


def _plan_slurm_task(spec: PipelineSpec, run_dir: Path, plan_file: Path) -> int:
    """One array task: its shard of the run's episodes, minus those finished meanwhile."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ:
        raise ConfigError("--slurm-task is for the array tasks of a --slurm run (no SLURM_ARRAY_TASK_ID)")
    run = json.loads((run_dir / "run.json").read_text())
    task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    config = load_config([run_dir / "config.yaml"])
    from droid_pipeline.publish.ledger import Ledger

    lines = (run_dir / "todo.jsonl").read_text().splitlines()
    mine = [Episode.from_json(json.loads(line)) for line in shard(lines, task, run["slurm_tasks"])]
    repos = run["repos"]
    ledger = Ledger(config.run_root) if repos else None
    todo = [e for e in mine if episode_state(config, spec, e, ledger, repos)[0]
            not in ("finished", "uploaded")]
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    workers, gpus = worker_layout(config, spec.name, int(slurm_cpus) if slurm_cpus else None)
    todo_file = run_dir / f"todo.task{task}.jsonl"
    write_text_atomic(todo_file, "".join(
        json.dumps(e.to_json(), separators=(",", ":")) + "\n" for e in todo))
    print(f"array task {task} of {run['slurm_tasks']}: {len(mine)} episodes in the shard, "
          f"{len(todo)} to run with {workers} worker(s) on {socket.gethostname()}")
    if not todo:
        print("nothing left to do in this shard")
    return _write_plan_file(plan_file, action="run", run_dir=run_dir, run_root=config.run_root,
                            todo_file=todo_file, todo=len(todo), workers=workers,
                            batch=batch_size(len(todo), workers, run["episodes_per_worker"]),
                            gpus=",".join(gpus), upload=int(run["upload"]), debug=0,
                            summary_task=str(task))


# -------------------------------------------------------------------------------------- worker

class _Signals:
    """SIGTERM/SIGINT: raise :class:`Interrupted`, or only remember them while ``deferred``."""

    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred
        self.pending = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = True
        if not self.deferred:
            raise Interrupted(signal.Signals(signum).name)


@dataclass(frozen=True)
class _Slot:
    """What a worker process knows: its run, its slot and the GPU the slot is pinned to."""

    run_dir: Path
    run: dict[str, Any]
    slot: int
    gpu: str | None

    @property
    def spec(self) -> PipelineSpec:
        return PIPELINES[self.run["pipeline"]]

    def work_dir(self, episode: Episode) -> Path:
        if self.run["debug"]:
            return self.run_dir / "work" / episode.episode_id
        return Path(self.run["output_root"]) / ".work" / self.run_dir.name / episode.episode_id

    def new_row(self, episode: Episode, start: float) -> dict[str, Any]:
        return {"episode_id": episode.episode_id, "pipeline": self.spec.name,
                "host": socket.gethostname(), "slot": self.slot, "gpu": self.gpu or "-",
                "start_time": utc_timestamp(start), "status": "done"}


def _setup_logging(log_path: Path, terminal: Any, debug: bool, verbose: bool) -> Any:
    """Log to the episode's file (and the terminal in debug runs); returns the open log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "a", buffering=1)
    if not debug:
        # Libraries that print (FFmpeg, OpenCV) go to the episode log, not the shared terminal.
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    handlers: list[logging.Handler] = [logging.StreamHandler(log_file)]
    if debug:
        handlers.append(logging.StreamHandler(terminal))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("droid_pipeline").setLevel(logging.DEBUG if debug or verbose else logging.INFO)
    logging.captureWarnings(True)
    faulthandler.enable(log_file)
    return log_file


# Exit codes of an episode process, read by its worker.
_EPISODE_EXIT = {0: "done", 1: "failed", 2: "interrupted"}


def worker_main(argv: Sequence[str]) -> int:
    """Run episodes one after the other, each in a forked process of this warm worker."""
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.runner worker")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--gpus", default="", help="comma list: slot S uses gpus[S // workers_per_gpu]")
    parser.add_argument("episodes", nargs="+", metavar="EPISODE_JSON", help="lines of the todo file")
    args = parser.parse_args(argv)
    signals = _Signals(deferred=True)  # the worker only stops between episodes
    signals.install()
    lock_fd = os.open(args.run_dir / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)  # held until exit: the driver waits on this lock
    run = json.loads((args.run_dir / "run.json").read_text())
    stop = EXIT_INTERRUPTED if run["debug"] else EXIT_WORKER_STOP
    slot_number = int(os.environ.get(SLOT_VAR, "0"))
    gpus = [g for g in args.gpus.split(",") if g]
    gpu = gpus[slot_number // run["workers_per_gpu"]] if gpus else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    slot = _Slot(args.run_dir, run, slot_number, gpu)
    _preload(slot.spec)
    failed = False
    for line in args.episodes:
        if signals.pending:
            return stop
        status = _attempt(slot, Episode.from_json(json.loads(line)), signals)
        if status == "interrupted" or signals.pending:
            return stop
        failed = failed or status == "failed"
    return EXIT_FAILED if failed else EXIT_OK


def _preload(spec: PipelineSpec) -> None:
    """Import the step modules once, so every forked episode process starts warm.

    A module that cannot be imported is left alone here: the episode process imports it again
    and records the error as that step's failure.
    """
    for step in spec.steps:
        try:
            importlib.import_module(STEP_FUNCTIONS[step][0])
        except Exception:  # noqa: BLE001 - reported per episode, see docstring
            continue


def _attempt(slot: _Slot, episode: Episode, signals: _Signals) -> str:
    """Run one episode in a forked process; record it here if that process dies (OOM, crash)."""
    start = time.time()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read_fd)
            code = _episode_process(slot, episode, start, write_fd, signals)
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        started = [line.strip() for line in pipe]  # the steps it began, until it exits
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) in _EPISODE_EXIT:
        return _EPISODE_EXIT[os.WEXITSTATUS(status)]
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        how = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        how = f"exited with {os.WEXITSTATUS(status)}"
    step = started[-1] if started else "setup"
    row = slot.new_row(episode, start)
    row.update(status="interrupted" if signals.pending else "failed", failed_step=step,
               error=f"episode process {pid} {how} during step {step}", total_s=time.time() - start)
    if not slot.run["debug"]:
        shutil.rmtree(slot.work_dir(episode), ignore_errors=True)
    _record(slot, episode, row, sys.stderr)
    return row["status"]


def _episode_process(slot: _Slot, episode: Episode, start: float, notify_fd: int,
                     inherited: _Signals) -> int:
    """Body of the forked episode process; returns its exit code (see ``_EPISODE_EXIT``)."""
    signals = _Signals(deferred=False)
    try:
        signals.install()
        if inherited.pending:  # a signal reached it before its own handlers were in place
            return 2
        terminal = os.fdopen(os.dup(2), "w", buffering=1)
        _setup_logging(slot.run_dir / "logs" / f"{episode.episode_id}.log", terminal,
                       slot.run["debug"], slot.run["verbose"])
    except Interrupted:
        return 2

    def notify(step: str) -> None:
        os.write(notify_fd, f"{step}\n".encode())

    status = run_episode(slot, episode, start, signals, terminal, notify)
    logging.shutdown()
    terminal.flush()
    return {v: k for k, v in _EPISODE_EXIT.items()}[status]


def run_episode(slot: _Slot, episode: Episode, start: float, signals: _Signals, terminal: Any,
                notify: Any) -> str:
    """Run the steps in a work folder, publish, record the attempt; return its status."""
    spec, debug = slot.spec, slot.run["debug"]
    row = slot.new_row(episode, start)
    work_dir = slot.work_dir(episode)
    step = "setup"
    t0 = time.perf_counter()
    try:
        log.info("episode %s (%s): %s pipeline, slot %d, gpu %s, process %d, work folder %s",
                 episode.episode_id, episode.relative_path, spec.name, slot.slot, slot.gpu or "-",
                 os.getpid(), work_dir)
        log.debug("episode record: %s", json.dumps(episode.to_json()))
        log.debug("effective config: %s", slot.run_dir / "config.yaml")
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        config = load_config([slot.run_dir / "config.yaml"])
        for step in spec.steps:
            notify(step)
            t0 = time.perf_counter()
            module, function = STEP_FUNCTIONS[step]
            getattr(importlib.import_module(module), function)(config, episode, work_dir)
            row[f"{step}_s"] = time.perf_counter() - t0
            log.info("step %s: %.3f s", step, row[f"{step}_s"])
        step = "publish"
        notify(step)
        t0 = time.perf_counter()
        _publish(slot, episode, work_dir, signals)
        row["publish_s"] = time.perf_counter() - t0
        log.info("published to %s", Path(slot.run["output_root"]) / episode.relative_path)
    except Interrupted as exc:
        row.update(status="interrupted", failed_step=step, error=f"interrupted by {exc}")
        log.warning("interrupted by %s during step %s; work folder discarded", exc, step)
    except Exception as exc:  # noqa: BLE001 - any failure fails this episode only
        if step != "setup":
            row[f"{step}_s"] = time.perf_counter() - t0
        cause = exc.cause if isinstance(exc, EpisodeError) else f"{type(exc).__name__}: {exc}"
        row.update(status="failed", failed_step=step, error=cause)
        log.error("step %s failed:\n%s", step, traceback.format_exc())
    signals.deferred = True  # the row is the record of this attempt: write it whole
    row["total_s"] = time.time() - start
    if row["status"] != "done" and not debug:
        shutil.rmtree(work_dir, ignore_errors=True)
    _record(slot, episode, row, terminal)
    if debug:
        print(f"{row['status']}: episode {episode.episode_id} in {row['total_s']:.3f} s; "
              f"work folder kept: {work_dir}", file=terminal)
    return row["status"]


def _record(slot: _Slot, episode: Episode, row: dict[str, Any], terminal: Any) -> None:
    """Append the timing row; a failure also goes to failed.txt and one line on the terminal."""
    append_row(slot.run_dir / TIMING_NAME, row)
    if row["status"] == "failed":
        error = " ".join(row["error"].split())
        append_locked(slot.run_dir / FAILED_NAME, f"{episode.episode_id}\t{row['failed_step']}\t{error}\n")
        print(f"failed: episode {episode.episode_id}: step {row['failed_step']}: {error} "
              f"(log: {slot.run_dir / 'logs' / (episode.episode_id + '.log')})", file=terminal)


def _publish(slot: _Slot, episode: Episode, work_dir: Path, signals: _Signals) -> None:
    """Publish atomically; a signal arriving from now on takes effect once the row is written."""
    from droid_pipeline.publish.staging import publish_episode

    output_root = Path(slot.run["output_root"])
    source = work_dir
    if slot.run["debug"]:  # keep the debug work folder: publish a copy of it
        source = output_root / ".work" / f"debug-{os.getpid()}" / episode.episode_id
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(work_dir, source)
    signals.deferred = True  # from here on the episode completes; a signal stops the worker after
    try:
        publish_episode(source, output_root, episode.relative_path, episode.episode_id,
                        slot.spec.name, slot.run["run_root"])
    finally:
        if slot.run["debug"]:
            shutil.rmtree(source.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------- summary

def summarize(run_dir: Path, task: str, interrupted: bool) -> tuple[dict[str, Any], int]:
    """Counts for this driver invocation's episodes (one array task's under SLURM) and exit code."""
    plan = json.loads((run_dir / "plan.json").read_text())
    todo_file = run_dir / (f"todo.task{task}.jsonl" if task else "todo.jsonl")
    todo_ids = [json.loads(line)["episode_id"] for line in todo_file.read_text().splitlines() if line]
    wanted = set(todo_ids)
    last: dict[str, dict[str, str]] = {}
    for row in read_rows(run_dir / TIMING_NAME):
        if row["episode_id"] in wanted:
            last[row["episode_id"]] = row
    done = [r for r in last.values() if r["status"] == "done"]
    failed = [r for r in last.values() if r["status"] == "failed"]
    by_step: dict[str, int] = {}
    for r in failed:
        by_step[r["failed_step"]] = by_step.get(r["failed_step"], 0) + 1
    attempts = done + failed
    rate = None
    if attempts:
        begin = min(parse_timestamp(r["start_time"]) for r in attempts)
        end = max(parse_timestamp(r["start_time"]) + float(r["total_s"]) for r in attempts)
        rate = len(attempts) / (end - begin) * 3600.0 if end > begin else None
    summary = {"task": task or None, "to_run": len(todo_ids), "done": len(done),
               "skipped": plan["skipped"] if not task else {}, "failed": len(failed),
               "failed_by_step": by_step, "interrupted": interrupted,
               "not_run": len(todo_ids) - len(done) - len(failed),
               "episodes_per_hour": rate,
               "failed_episodes": [{"episode_id": r["episode_id"], "step": r["failed_step"],
                                    "error": r["error"]} for r in failed]}
    code = EXIT_INTERRUPTED if interrupted else (
        EXIT_FAILED if failed or summary["not_run"] else EXIT_OK)
    summary["exit_code"] = code
    return summary, code


def format_summary(summary: dict[str, Any], run_dir: Path) -> str:
    skipped = summary["skipped"]
    skip_text = (f", skipped {skipped.get('finished', 0)} finished + {skipped.get('uploaded', 0)} "
                 "uploaded" if skipped else "")
    by_step = ", ".join(f"{step}: {n}" for step, n in sorted(summary["failed_by_step"].items()))
    rate = summary["episodes_per_hour"]
    lines = [f"summary{' of array task ' + summary['task'] if summary['task'] else ''}: "
             f"{summary['done']} done{skip_text}, {summary['failed']} failed"
             + (f" ({by_step})" if by_step else "")
             + f", {summary['not_run']} not run of {summary['to_run']}"
             + (" (interrupted)" if summary["interrupted"] else ""),
             f"episodes per hour: {'n/a' if rate is None else f'{rate:.1f}'}"]
    if summary["failed"]:
        lines.append(f"failed episodes (all in {run_dir / FAILED_NAME}):")
        lines += [f"  {f['episode_id']}: step {f['step']}: {f['error']}"
                  for f in summary["failed_episodes"][:REDO_SHOWN]]
        if summary["failed"] > REDO_SHOWN:
            lines.append(f"  ... and {summary['failed'] - REDO_SHOWN} more")
    lines.append(f"run folder: {run_dir}; review: python -m droid_pipeline.timing review {run_dir}")
    return "\n".join(lines)


def summary_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m droid_pipeline.execution.runner summary")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--task", default="", help="SLURM array task id (its own summary files)")
    parser.add_argument("--interrupted", action="store_true")
    args = parser.parse_args(argv)
    summary, code = summarize(args.run_dir, args.task, args.interrupted)
    if not args.task:  # array tasks share the work root; each run's own is empty by now
        run = json.loads((args.run_dir / "run.json").read_text())
        for folder in (Path(run["output_root"]) / ".work" / args.run_dir.name,
                       Path(run["output_root"]) / ".work"):
            try:
                folder.rmdir()
            except OSError:
                pass
    suffix = f".task{args.task}" if args.task else ""
    text = format_summary(summary, args.run_dir)
    write_json_atomic(args.run_dir / f"summary{suffix}.json", summary)
    write_text_atomic(args.run_dir / f"summary{suffix}.txt", text + "\n")
    print(text)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"plan": plan_main, "worker": worker_main, "summary": summary_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m droid_pipeline.execution.runner {{{','.join(commands)}}} ...", file=sys.stderr)
        return EXIT_USAGE
    try:
        return commands[argv[0]](argv[1:])
    except (ConfigError, DiscoveryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
