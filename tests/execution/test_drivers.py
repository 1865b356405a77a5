"""Both bash drivers end to end on synthetic episodes, as real subprocesses with real signals."""

from __future__ import annotations

import collections
import csv
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from fifo_episodes import episode_pid, pausing_env, wait_for_reader
from pause_points import pause_env, release_one

from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.execution.timing import COLUMNS
from droid_pipeline.publish.ledger import Ledger
from droid_pipeline.publish.staging import finished_state, read_manifest
from droid_pipeline.synthetic.generator import generate_dataset

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "run_pipeline_metadata_only.sh"
DEPTH = REPO / "run_pipeline_compressed_depth.sh"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=6, frames=12)


def run_driver(script: Path, *args: str, cwd: Path, check_rc: int | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    if check_rc is not None:
        assert result.returncode == check_rc, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def interruptible() -> None:
    """Give the child SIGINT's default disposition, as a shell in a terminal does.

    A runner that starts the suite in the background (a CI job, `cmd &` in a script) hands it SIGINT
    ignored; ignored signals are inherited through exec and bash cannot trap them, so Ctrl-C would
    never reach the driver under test.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def common_args(dataset, work: Path) -> list[str]:
    return ["--config", str(dataset.config_path), "--out", str(work / "out"),
            "--set", f"run_root={work / 'runs'}"]


def run_dirs(work: Path, pipeline: str) -> list[Path]:
    return sorted((work / "runs").glob(f"{pipeline}-*"))


def timing_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "timing.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def published_ids(work: Path) -> list[str]:
    lines = (work / "runs" / "published.jsonl").read_text().splitlines()
    return [json.loads(line)["episode_id"] for line in lines]


def leftover_work_files(work: Path) -> list[Path]:
    return [p for p in (work / "out" / ".work").rglob("*") if p.is_file()]


def test_help_documents_the_options():
    for script, extra in ((METADATA, []), (DEPTH, ["--gpus", "--workers-per-gpu", "--depth-backend"])):
        result = run_driver(script, "--help", cwd=REPO, check_rc=0)
        for option in ["--episodes", "--episode_id", "--workers", "--config", "--set", "--droid-root",
                       "--out", "--no-upload", "--force", "--dry-run", "--slurm", *extra]:
            assert option in result.stdout, option
        assert f"usage: {script.name} " in result.stdout


def test_drivers_are_shellcheck_clean():
    scripts = [METADATA, DEPTH, REPO / "droid_pipeline" / "execution" / "driver.sh"]
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_metadata_driver_sigint_then_rerun_does_every_episode_once(dataset, tmp_path):
    repo = tmp_path / "hub"
    args = [*common_args(dataset, tmp_path), "--workers", "2", "--episodes-per-worker", "2",
            "--set", f"metadata_repo=file://{repo}"]
    ids = [e.episode_id for e in dataset.episodes]
    # Every episode waits before its tracks step; one is let through, and once it is done the run
    # is interrupted with the others still waiting: the interrupt cannot come too late.
    gates = tmp_path / "gates"
    env = pause_env(gates, "tracks", ids)
    with open(tmp_path / "first.out", "w") as out:
        driver = subprocess.Popen([str(METADATA), *args], cwd=tmp_path, stdout=out, env=env,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=interruptible)
        try:
            released = release_one(gates)
            deadline = time.monotonic() + 300
            while driver.poll() is None and time.monotonic() < deadline:
                found = run_dirs(tmp_path, "metadata")
                csv_path = found[0] / "timing.csv" if found else None
                if csv_path and csv_path.exists() and released in csv_path.read_text():
                    break
                time.sleep(0.05)
            assert driver.poll() is None, (tmp_path / "first.out").read_text()
            os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            assert driver.wait(timeout=120) == 130, (tmp_path / "first.out").read_text()
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    first = run_dirs(tmp_path, "metadata")[0]
    summary = json.loads((first / "summary.json").read_text())
    assert summary["interrupted"] and summary["exit_code"] == 130
    assert summary["done"] == 1
    # Nothing half-finished: every output folder is complete, no work folder survives.
    for episode in dataset.episodes:
        state, _ = finished_state(tmp_path / "out" / episode.relative_path)
        assert state in ("finished", "missing")
    assert not leftover_work_files(tmp_path)
    done_first = {r["episode_id"] for r in timing_rows(first) if r["status"] == "done"}
    assert len(done_first) == summary["done"]
    assert "interrupted" in (tmp_path / "first.out").read_text()

    second = run_driver(METADATA, *args, cwd=tmp_path, check_rc=0)
    assert f"{len(done_first)} finished and 0 uploaded skipped" in second.stdout
    rerun = run_dirs(tmp_path, "metadata")[1]
    rows = timing_rows(rerun)
    assert {r["episode_id"] for r in rows} == set(ids) - done_first
    assert all(r["status"] == "done" for r in rows)
    assert collections.Counter(published_ids(tmp_path)) == collections.Counter(ids)  # once each
    for episode in dataset.episodes:
        assert finished_state(tmp_path / "out" / episode.relative_path)[0] == "finished"
    # The background uploader and the final flush put every episode in the repo.
    assert Ledger(tmp_path / "runs").has(ids[0], [f"file://{repo}"])
    assert all(Ledger(tmp_path / "runs").has(i, [f"file://{repo}"]) for i in ids)
    assert len(list(repo.rglob("tracks.npz"))) == len(ids)

    third = run_driver(METADATA, *args, cwd=tmp_path, check_rc=0)
    assert "nothing left to do" in third.stdout
    last = run_dirs(tmp_path, "metadata")[2]
    assert timing_rows(last) == [] and (last / "timing.csv").read_text().startswith("episode_id,")
    assert (last / "episodes.txt").read_text() == ""
    # Deleted locally after upload: still skipped, thanks to the ledger.
    shutil.rmtree(tmp_path / "out" / dataset.episodes[0].relative_path)
    fourth = run_driver(METADATA, *args, "--dry-run", cwd=tmp_path, check_rc=0)
    assert f"{len(ids) - 1} finished and 1 uploaded skipped, 0 to run" in fourth.stdout


def _fake_old_output(folder: Path, *, schema: int | None) -> None:
    """An output of an older pipeline: 3D tracks only, with an old manifest or none at all."""
    folder.mkdir(parents=True)
    (folder / "tracks.npz").write_bytes(b"old")
    if schema is not None:
        (folder / "manifest.json").write_text(json.dumps({
            "schema_version": schema, "episode_id": "x", "relative_path": "x", "pipeline": "full",
            "created": 0.0, "files": [{"path": "tracks.npz", "size": 3, "sha256": "0", "kind": "metadata"}]}))


def test_depth_driver_broken_episode_fails_alone_and_old_outputs_are_redone(dataset, tmp_path):
    droid_root = tmp_path / "droid_raw"
    shutil.copytree(dataset.droid_root, droid_root)
    episodes = sorted(dataset.episodes, key=lambda e: e.relative_path)[:4]
    broken, stale, unfinished = episodes[1], episodes[2], episodes[3]
    serial = broken.serials["ext1"]
    (droid_root / broken.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4").unlink()
    _fake_old_output(tmp_path / "out" / stale.relative_path, schema=SCHEMA_VERSION - 1)
    _fake_old_output(tmp_path / "out" / unfinished.relative_path, schema=None)
    args = [*common_args(dataset, tmp_path), "--droid-root", str(droid_root), "--workers", "2",
            "--gpus", "none", "--depth-backend", "stereo", "4"]

    dry = run_driver(DEPTH, *args, "--dry-run", cwd=tmp_path, check_rc=0)
    assert f"redo {stale.episode_id}: stale-schema" in dry.stdout
    assert f"redo {unfinished.episode_id}: incomplete" in dry.stdout
    assert dry.stdout.count("  run ") == 4 and not (tmp_path / "runs").exists()

    result = run_driver(DEPTH, *args, cwd=tmp_path, check_rc=1)
    run_dir = run_dirs(tmp_path, "full")[0]
    rows = timing_rows(run_dir)
    assert sorted(r["episode_id"] for r in rows) == sorted(e.episode_id for e in episodes)
    by_id = {r["episode_id"]: r for r in rows}
    assert by_id[broken.episode_id]["status"] == "failed"
    assert by_id[broken.episode_id]["failed_step"] == "depth"
    assert serial in by_id[broken.episode_id]["error"]
    assert float(by_id[broken.episode_id]["intrinsics_s"]) > 0
    failed = (run_dir / "failed.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in failed] == [[broken.episode_id, "depth"]]
    for episode in episodes:
        folder = tmp_path / "out" / episode.relative_path
        if episode is broken:
            assert finished_state(folder)[0] == "missing"
            continue
        row = by_id[episode.episode_id]
        assert row["status"] == "done" and row["gpu"] == "-"
        for step in ("intrinsics", "depth", "tracks", "publish"):
            assert float(row[f"{step}_s"]) >= 0 and len(row[f"{step}_s"].split(".")[1]) == 3
        assert finished_state(folder)[0] == "finished"
        manifest = read_manifest(folder)
        assert manifest.pipeline == "full" and manifest.schema_version == SCHEMA_VERSION
        assert {f.path for f in manifest.files_of_kind("depth")} >= {
            f"recordings/{s}/depth.mkv" for s in episode.serials.values()}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["failed_by_step"] == {"depth": 1} and summary["done"] == 3
    assert "step depth" in result.stdout and broken.episode_id in result.stdout
    log = (run_dir / "logs" / f"{broken.episode_id}.log").read_text()
    assert "Traceback" in log and "step depth failed" in log
    assert "upload: off (no metadata_repo/full_repo in the config)" in result.stdout
    assert "remaining" not in result.stderr  # no progress line when stderr is not a terminal


def test_depth_workers_are_pinned_to_gpus_by_slot(dataset, tmp_path):
    # The zed backend cannot run here (no ZED SDK): every episode fails at its depth step, but
    # only after its worker slot chose its GPU, which the timing row records.
    chosen = [e.episode_id for e in dataset.episodes[1:5]]
    (tmp_path / "ids.txt").write_text("# four of them\n" + "\n".join(chosen) + "\n")
    args = [*common_args(dataset, tmp_path), "--depth-backend", "zed", "--gpus", "3,7",
            "--workers-per-gpu", "2", "--episodes", str(tmp_path / "ids.txt")]
    result = run_driver(DEPTH, *args, cwd=tmp_path, check_rc=1)
    assert "with 4 worker(s) on GPUs 3,7 x 2" in result.stdout
    run_dir = run_dirs(tmp_path, "full")[0]
    assert (run_dir / "episodes.txt").read_text().split() == chosen
    rows = timing_rows(run_dir)
    assert sorted(r["episode_id"] for r in rows) == sorted(chosen)
    for row in rows:
        assert row["gpu"] == ["3", "7"][int(row["slot"]) // 2]
        assert row["status"] == "failed" and row["failed_step"] == "depth"
        assert "ZED" in row["error"]
    refused = run_driver(DEPTH, *common_args(dataset, tmp_path), "--depth-backend", "zed",
                         "--gpus", "none", cwd=tmp_path, check_rc=2)
    assert "depth_backend zed needs a GPU" in refused.stderr and "--depth-backend stereo" in refused.stderr


def test_single_episode_debug_run(dataset, tmp_path):
    episode = dataset.episodes[2]
    repo = tmp_path / "hub"
    args = [*common_args(dataset, tmp_path), "--set", f"metadata_repo=file://{repo}",
            "--episode_id", episode.episode_id]
    result = run_driver(METADATA, *args, cwd=tmp_path, check_rc=0)
    run_dir = run_dirs(tmp_path, "metadata")[0]
    # Verbose log on the terminal, the same in the episode log.
    assert "DEBUG droid_pipeline.execution.runner: episode record" in result.stderr
    assert "INFO droid_pipeline.execution.runner: step intrinsics" in result.stderr
    assert "step tracks" in (run_dir / "logs" / f"{episode.episode_id}.log").read_text()
    work = run_dir / "work" / episode.episode_id
    assert f"work folder kept: {work}" in result.stderr
    assert (work / "tracks.npz").is_file()
    assert {p.name for p in (work / "recordings").iterdir()} == set(episode.serials.values())
    assert finished_state(tmp_path / "out" / episode.relative_path)[0] == "finished"
    assert "debug run without --upload" in result.stdout
    assert not repo.exists() and not (run_dir / "uploader.log").exists()
    rows = timing_rows(run_dir)
    assert [(r["episode_id"], r["status"]) for r in rows] == [(episode.episode_id, "done")]


def test_killed_episode_process_fails_alone(dataset, tmp_path):
    # One episode's process blocks as it is about to open its trajectory.h5 (in the tracks step:
    # intrinsics come from the published file), and this test, the writer of the FIFO it blocks
    # on, knows exactly when, then kills that process as the out-of-memory killer would.
    droid_root = tmp_path / "droid_raw"
    shutil.copytree(dataset.droid_root, droid_root)
    episodes = sorted(dataset.episodes, key=lambda e: e.relative_path)[:3]
    stuck = episodes[1]
    fifo = tmp_path / "pause.fifo"
    env = pausing_env(droid_root / stuck.relative_path / "trajectory.h5", fifo)
    args = [*common_args(dataset, tmp_path), "--droid-root", str(droid_root), "--workers", "2",
            "--episodes-per-worker", "3", "3"]
    driver = subprocess.Popen([str(METADATA), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        writer = wait_for_reader(fifo)
        pid = episode_pid(run_dirs(tmp_path, "metadata")[0] / "logs" / f"{stuck.episode_id}.log")
        os.kill(pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=120)
        writer.close()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, out
    run_dir = run_dirs(tmp_path, "metadata")[0]
    rows = {r["episode_id"]: r for r in timing_rows(run_dir)}
    assert len(rows) == 3 and len({r["slot"] for r in rows.values()}) == 1  # one worker, in turn
    row = rows[stuck.episode_id]
    assert (row["status"], row["failed_step"]) == ("failed", "tracks")
    assert row["error"] == f"episode process {pid} killed by SIGKILL (out of memory?) during step tracks"
    assert [r["status"] for e, r in rows.items() if e != stuck.episode_id] == ["done", "done"]
    assert f"failed: episode {stuck.episode_id}: step tracks" in out
    assert not leftover_work_files(tmp_path)


def test_live_progress_line_on_a_terminal_only(dataset, tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    args = [*common_args(dataset, tmp_path), "--workers", "2", "2"]
    driver = subprocess.Popen([str(METADATA), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=slave, text=True)
    os.close(slave)
    terminal = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # every writer closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + terminal.decode(errors="replace")
    screen = terminal.decode(errors="replace")
    assert "2/2" in screen and "done 2 failed 0 remaining 0" in screen
    assert "remaining" not in out  # the progress line goes to the terminal only


def test_a_failure_keeps_its_cause_in_the_log_and_one_line_on_the_terminal(dataset, tmp_path):
    droid_root = tmp_path / "droid_raw"
    shutil.copytree(dataset.droid_root, droid_root)
    broken = sorted(dataset.episodes, key=lambda e: e.relative_path)[0]
    (droid_root / broken.relative_path / "trajectory.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4096))
    args = [*common_args(dataset, tmp_path), "--droid-root", str(droid_root), "--workers", "1",
            "--episodes", str(_id_file(tmp_path, [broken.episode_id]))]
    result = run_driver(METADATA, *args, cwd=tmp_path, check_rc=1)
    run_dir = run_dirs(tmp_path, "metadata")[0]
    terminal = result.stdout + result.stderr
    failure_lines = [line for line in terminal.splitlines() if line.startswith("failed: episode")]
    assert len(failure_lines) == 1 and broken.episode_id in failure_lines[0]
    assert "trajectory.h5" in failure_lines[0] and "Traceback" not in terminal
    log = (run_dir / "logs" / f"{broken.episode_id}.log").read_text()
    # The episode error and, above it, the library error it was raised from, each with its traceback.
    assert "The above exception was the direct cause of the following exception" in log
    assert log.count("Traceback (most recent call last)") >= 2
    assert "EpisodeError" in log and ("OSError" in log or "h5py" in log)


def _id_file(folder: Path, ids: list[str]) -> Path:
    path = folder / "ids.txt"
    path.write_text("".join(f"{i}\n" for i in ids))
    return path
