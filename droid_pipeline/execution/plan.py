"""``runner plan``: the driver's options, the episodes to run, the run folder and the plan file.

Parses the driver's options, selects episodes, skips finished and already uploaded ones (an
older schema or an unfinished folder is redone), writes the run folder and hands the driver a
``key=value`` plan file (:class:`~droid_pipeline.execution.records.DriverRun`); ``--dry-run``
prints the plan, ``--slurm`` submits an array (:mod:`droid_pipeline.execution.slurm`) and
``--slurm-task`` plans one array task's shard.

Folders of the selection that discovery cannot run are the run's discovery failures (plan.json,
failed.txt, the summary; they fail the run), never a reason to stop it. Before anything runs,
the published calibration and intrinsics files are parsed (a corrupt one stops the run, once,
naming the file and the parse error) and what killed runs left in ``output_root`` is removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from droid_pipeline.core.atomic import append_locked, write_json_atomic, write_text_atomic
from droid_pipeline.core.config import Config, ConfigError, dump_config, load_config
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.execution.records import (
    FAILED_NAME,
    PIPELINES,
    PLAN_NAME,
    REDO_SHOWN,
    RUN_OPTIONS_NAME,
    DiscoveryFailure,
    DriverExit,
    DriverPlan,
    DriverRun,
    PipelineSpec,
    Redo,
    RunOptions,
    RunPlan,
    Skipped,
    read_run_options,
    read_todo,
    todo_name,
    write_todo,
)
from droid_pipeline.execution.slurm import sbatch_script, submit
from droid_pipeline.execution.timing import EPISODE_LIST_NAME, TIMING_NAME, create_csv, utc_timestamp
from droid_pipeline.raw.discovery import OUTCOMES, Episode, EpisodeIndex, discover, read_id_file

if TYPE_CHECKING:
    from droid_pipeline.publish.ledger import Ledger

# Episodes per worker process at most: its start-up (about 0.8 CPU s) then costs 0.01 s per episode.
MAX_BATCH = 64
# The config key naming each kind of published file, for errors.
PUBLISHED_FILE_KEYS = {"cam2base": "cam2base_extrinsics_paths", "cam2cam": "cam2cam_extrinsics_path",
                       "intrinsics": "intrinsics_path"}

T = TypeVar("T")


def _driver_parser(spec: PipelineSpec) -> argparse.ArgumentParser:
    steps = " -> ".join("depth + FFV1" if s == "depth" else "fetch (gs:// roots)" if s == "fetch" else s
                        for s in spec.steps)
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
    parser.add_argument("--droid-root", metavar="DIR|URL",
                        help="raw DROID root, a folder or gs://bucket/prefix (config 'droid_root')")
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


def episode_state(config: Config, spec: PipelineSpec, episode: Episode, ledger: Ledger | None,
                  repos: Sequence[str]) -> tuple[str, str]:
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
    if state == "missing" and repos and ledger is not None and ledger.has(episode.episode_id, repos):
        return "uploaded", f"in the upload ledger for {', '.join(repos)}"
    return state, reason


def main(argv: Sequence[str]) -> int:
    raw = list(argv)
    pipeline = raw[raw.index("--pipeline") + 1] if "--pipeline" in raw else "metadata"
    args = _driver_parser(PIPELINES.get(pipeline, PIPELINES["metadata"])).parse_args(raw)
    spec = PIPELINES[args.pipeline]
    plan_file = Path(args.plan_file)
    if args.slurm_task:
        return _hand_over(plan_file, _plan_slurm_task(spec, Path(args.slurm_task)))
    if args.episode_id and (args.episodes or args.limit is not None or args.slurm):
        raise ConfigError("--episode_id runs one episode: it excludes N, --episodes and --slurm")
    config = load_config(args.config, _overrides(args))
    if not args.dry_run:
        check_published_files(config)
    if args.episode_id:
        ids: list[str] | None = [args.episode_id]
    elif args.episodes:
        ids = read_id_file(args.episodes)
    else:
        ids = None
    index = discover(config, ids=ids, labs=config.labs, outcomes=config.outcomes, limit=args.limit)
    selected, discovery = select_with_failures(index, ids, config.labs, config.outcomes, args.limit)
    in_scope = {f.path for f in discovery}
    for problem in index.problems:
        if problem["path"] not in in_scope:
            print(f"warning: {problem['path']}: {problem['problem']}", file=sys.stderr)
    debug = bool(args.episode_id)
    workers, gpus = worker_layout(config, spec.name)
    if debug:
        workers, gpus = 1, gpus[:1]
    from droid_pipeline.publish.ledger import Ledger, repos_for

    repos = repos_for(spec.name, config.metadata_repo, config.full_repo)
    ledger = Ledger(config.run_root) if repos else None
    todo: list[Episode] = []
    skipped = {"finished": 0, "uploaded": 0}
    redo: list[Redo] = []
    for episode in selected:
        state, reason = ("forced", "") if args.force or debug else \
            episode_state(config, spec, episode, ledger, repos)
        if state in skipped:
            skipped[state] += 1
            continue
        todo.append(episode)
        if state not in ("missing", "forced"):
            redo.append(Redo(episode.episode_id, state, reason))
    upload = bool(repos) and not args.no_upload and (args.upload or not debug)
    batch = batch_size(len(todo), workers, args.episodes_per_worker, prefetched_batch(config))
    plan = RunPlan(pipeline=spec.name, schema_version=SCHEMA_VERSION, selected=len(selected),
                   skipped=Skipped(**skipped), redo=tuple(redo), todo=len(todo), workers=workers,
                   gpus=tuple(gpus), workers_per_gpu=config.workers_per_gpu, upload=upload,
                   repos=tuple(repos), episodes_per_worker=args.episodes_per_worker, debug=debug,
                   verbose=args.verbose, discovery_failures=tuple(discovery))
    _print_plan(plan, todo, args, config)
    if args.dry_run and not args.slurm:
        return _hand_over(plan_file, DriverExit(ExitCode.DONE))
    _remove_leftovers(config)
    if args.slurm:
        return _hand_over(plan_file, _submit_slurm(spec, config, plan, todo, args))
    run_dir = _make_run_dir(config, spec, plan, todo)
    return _hand_over(plan_file, DriverRun(
        run_dir=run_dir, run_root=config.run_root, todo_file=run_dir / todo_name(None), todo=len(todo),
        workers=workers, batch=batch, gpus=tuple(gpus), upload=upload, debug=debug))


def select_with_failures(index: EpisodeIndex, ids: list[str] | None, labs: Sequence[str], outcomes: Sequence[str],
                         limit: int | None) -> tuple[list[Episode], list[DiscoveryFailure]]:
    """The selected episodes and the discovery problems within the selection.

    Explicit ids: a requested id that discovery found but cannot run (its folder's problems
    name it) is a failure, not an unknown id. Otherwise a problem is within the selection when
    its folder lies in a selected lab and outcome and, with a ``limit``, sorts no later than the
    last episode selected.
    """
    if ids is not None:
        named: dict[str, list[dict[str, str]]] = {}
        for problem in index.problems:
            if problem.get("episode_id"):
                named.setdefault(problem["episode_id"], []).append(problem)
        selected = index.select(episode_ids=[i for i in ids if i not in named], limit=limit)
        wanted = [p for i in dict.fromkeys(ids) for p in named.get(i, [])]
        return selected, [DiscoveryFailure(p["path"], p["episode_id"], p["problem"]) for p in wanted]
    selected = index.select(labs=labs, outcomes=outcomes, limit=limit)
    last = selected[-1].relative_path if limit is not None and len(selected) == limit and selected else None
    failures = []
    for problem in index.problems:
        parts = problem["path"].split("/")
        if labs and parts[0] not in labs:
            continue
        if len(parts) > 1 and parts[1] in OUTCOMES and parts[1] not in outcomes:
            continue
        if last is not None and problem["path"] > last:
            continue
        failures.append(DiscoveryFailure(problem["path"], problem.get("episode_id", ""), problem["problem"]))
    return selected, failures


def check_published_files(config: Config) -> None:
    """Parse (and index) every configured published calibration and intrinsics file once, so a
    corrupt one stops the run with one error naming the file and the parse error."""
    from droid_pipeline.formats.calibration_files import INDEX_DIR_NAME, CalibrationFileError, check_file

    files = [(path, "cam2base") for path in config.cam2base_paths]
    files += [(path, kind) for path, kind in ((config.cam2cam_extrinsics_path, "cam2cam"),
                                              (config.intrinsics_path, "intrinsics")) if path is not None]
    for path, kind in files:
        try:
            check_file(path, config.output_root / INDEX_DIR_NAME, kind)
        except CalibrationFileError as exc:
            raise ConfigError(f"{PUBLISHED_FILE_KEYS[kind]}: {exc}") from exc


def _remove_leftovers(config: Config) -> None:
    """Remove what killed runs left in output_root (publishes' incoming and replaced copies, work
    folders of runs no process is left of); what a live run uses is locked and left alone."""
    from droid_pipeline.publish.staging import remove_dead_work_roots, remove_leftovers

    removed = remove_leftovers(config.output_root) + remove_dead_work_roots(config.output_root)
    if removed:
        print(f"removed {len(removed)} folder(s) left in {config.output_root} by killed runs: "
              + ", ".join(str(p.relative_to(config.output_root)) for p in removed[:REDO_SHOWN])
              + (" ..." if len(removed) > REDO_SHOWN else ""))


def _print_plan(plan: RunPlan, todo: list[Episode], args: argparse.Namespace, config: Config) -> None:
    print(f"{plan.pipeline} pipeline: {plan.selected} selected, {plan.skipped.finished} finished "
          f"and {plan.skipped.uploaded} uploaded skipped, {plan.todo} to run "
          f"({len(plan.redo)} redone) with {plan.workers} worker(s)"
          + (f" on GPUs {','.join(plan.gpus)} x {plan.workers_per_gpu}" if plan.gpus else ""))
    shown = plan.redo if args.dry_run else plan.redo[:REDO_SHOWN]
    for item in shown:
        print(f"  redo {item.episode_id}: {item.state}: {item.reason}")
    if len(shown) < len(plan.redo):
        print(f"  ... and {len(plan.redo) - len(shown)} more (all listed by --dry-run and in {PLAN_NAME})")
    failures = plan.discovery_failures
    if failures:
        print(f"discovery: {len(failures)} folder(s) of the selection cannot be run (listed in {PLAN_NAME} "
              f"and {FAILED_NAME}; the run fails):")
        for failure in failures[:REDO_SHOWN]:
            print(f"  {failure.cause}")
        if len(failures) > REDO_SHOWN:
            print(f"  ... and {len(failures) - REDO_SHOWN} more")
    if config.remote_root:
        print(f"raw episodes from {config.droid_root}"
              + (f" (folders from {config.episode_paths_file})" if config.episode_paths_file else " (listed)")
              + f", fetched into {config.scratch_root}, {config.prefetch_episodes} ahead per worker")
    if not plan.upload:
        why = ("--no-upload" if args.no_upload else "no metadata_repo/full_repo in the config"
               if not plan.repos else "debug run without --upload")
        print(f"upload: off ({why}); finished episodes stay in {config.output_root}")
    if args.dry_run and not args.slurm:
        for episode in todo:
            print(f"  run {episode.episode_id}  {episode.relative_path}")
    if not todo:
        print("nothing left to do: 0 episodes to run")


def _make_run_dir(config: Config, spec: PipelineSpec, plan: RunPlan, todo: list[Episode]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run_dir = Path(config.run_root) / f"{spec.name}-{stamp}-{os.getpid()}"
    (run_dir / "logs").mkdir(parents=True)
    create_csv(run_dir / TIMING_NAME)
    for failure in plan.discovery_failures:
        append_locked(run_dir / FAILED_NAME, failure.failed_line())
    dump_config(config, run_dir / "config.yaml")
    options = RunOptions(plan=plan, run_root=config.run_root, output_root=config.output_root,
                         created=utc_timestamp(time.time()))
    write_json_atomic(run_dir / RUN_OPTIONS_NAME, options.to_json())
    write_json_atomic(run_dir / PLAN_NAME, plan.to_json())
    write_text_atomic(run_dir / EPISODE_LIST_NAME, "".join(f"{e.episode_id}\n" for e in todo))
    write_todo(run_dir / todo_name(None), todo)
    print(f"run folder: {run_dir}")
    return run_dir


def _hand_over(path: Path, plan: DriverPlan) -> int:
    """Write the plan file the driver reads next; the plan step itself succeeded."""
    path.write_text(plan.to_plan_file())
    return ExitCode.DONE


def _submit_slurm(spec: PipelineSpec, config: Config, plan: RunPlan, todo: list[Episode],
                  args: argparse.Namespace) -> DriverExit:
    num_tasks = min(config.slurm.num_tasks, len(todo))
    if num_tasks == 0:
        print("nothing left to do: no SLURM job submitted")
        return DriverExit(ExitCode.DONE)
    plan = dataclasses.replace(plan, slurm_tasks=num_tasks)
    if args.dry_run:
        run_dir = Path(config.run_root) / f"{spec.name}-<submit time>"
        print(sbatch_script(spec.name, run_dir, config.slurm, num_tasks))
        return DriverExit(ExitCode.DONE)
    run_dir = _make_run_dir(config, spec, plan, todo)
    job_id = submit(spec.name, run_dir, config.slurm, num_tasks)
    print(f"submitted SLURM job {job_id}: {num_tasks} array task(s), at most "
          f"{config.slurm.max_parallel_tasks} at once")
    print(f"logs: {run_dir / 'slurm'}/{job_id}_<task>.out, episode logs in {run_dir / 'logs'}, "
          f"timing in {run_dir / TIMING_NAME}")
    return DriverExit(ExitCode.DONE)


def batch_size(todo: int, workers: int, requested: int | None, minimum: int = 1) -> int:
    """Episodes per worker process. A worker process costs about as much CPU to start as an
    episode (interpreter, imports, warm-up: 0.8 CPU s on a 2-core machine), and more batches per
    worker let the last ones end closer together (xargs hands the next batch to whichever worker
    is free). A single worker takes the whole run in one batch; K workers take about
    sqrt(todo / 2K) batches each, at most four, which balances start-ups against the last
    batches' uneven end (todo = 24, K = 2: two batches of 6 each). At most MAX_BATCH episodes, at
    least ``minimum`` (see :func:`prefetched_batch`)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--episodes-per-worker must be >= 1, got {requested}")
        return requested
    per_worker = 1 if workers <= 1 else min(4, max(1, round(math.sqrt(todo / (2 * workers)))))
    return max(1, minimum, min(MAX_BATCH, todo // (workers * per_worker)))


def prefetched_batch(config: Config) -> int:
    """The smallest batch that lets a worker prefetch (it fetches ahead within its batch): the
    episode it runs plus ``prefetch_episodes``, for remote roots."""
    return config.prefetch_episodes + 1 if config.remote_root else 1


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Array task ``index`` of ``count`` takes items index, index+count, ... (deterministic)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} out of range for {count} shards")
    return list(items[index::count])


def _plan_slurm_task(spec: PipelineSpec, run_dir: Path) -> DriverRun:
    """One array task: its shard of the run's episodes, minus those finished meanwhile."""
    if "SLURM_ARRAY_TASK_ID" not in os.environ:
        raise ConfigError("--slurm-task is for the array tasks of a --slurm run (no SLURM_ARRAY_TASK_ID)")
    plan = read_run_options(run_dir).plan
    if plan.slurm_tasks is None:
        raise ConfigError(f"--slurm-task {run_dir}: {RUN_OPTIONS_NAME} is not of a --slurm run")
    task = int(os.environ["SLURM_ARRAY_TASK_ID"])
    config = load_config([run_dir / "config.yaml"])
    _remove_leftovers(config)
    from droid_pipeline.publish.ledger import Ledger

    mine = shard(read_todo(run_dir / todo_name(None)), task, plan.slurm_tasks)
    ledger = Ledger(config.run_root) if plan.repos else None
    todo = [e for e in mine if episode_state(config, spec, e, ledger, plan.repos)[0]
            not in ("finished", "uploaded")]
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    workers, gpus = worker_layout(config, spec.name, int(slurm_cpus) if slurm_cpus else None)
    todo_file = run_dir / todo_name(task)
    write_todo(todo_file, todo)
    print(f"array task {task} of {plan.slurm_tasks}: {len(mine)} episodes in the shard, "
          f"{len(todo)} to run with {workers} worker(s) on {socket.gethostname()}")
    if not todo:
        print("nothing left to do in this shard")
    return DriverRun(run_dir=run_dir, run_root=config.run_root, todo_file=todo_file, todo=len(todo),
                     workers=workers,
                     batch=batch_size(len(todo), workers, plan.episodes_per_worker, prefetched_batch(config)),
                     gpus=tuple(gpus), upload=plan.upload, debug=False, summary_task=task)
