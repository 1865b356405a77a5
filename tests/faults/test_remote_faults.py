"""The metadata driver from a gs:// root (fake-gcs-server) through a loopback fault proxy: every
network fault ends in its documented outcome (docs/running.md, "Raw DROID from a bucket"), every
episode is accounted for in timing.csv, outputs equal a local run's and the scratch folder is
empty afterwards. Part of the long fault suite (make test-faults)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from gcs_emulator import PREFIX, ROOT_URL, Fault
from remote_runs import METADATA, assert_same_outputs, run, scratch_files, timing_rows

from droid_pipeline.synthetic.generator import generate_dataset

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=4, frames=10)


@pytest.fixture(scope="module")
def local_out(dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("local")
    run(METADATA, dataset, work, None, check_rc=0)
    return work / "out"


def sorted_episodes(dataset):
    return sorted(dataset.episodes, key=lambda e: e.relative_path)


def test_transient_faults_are_retried_and_outputs_stay_equal(dataset, proxy, local_out, tmp_path):
    episodes = sorted_episodes(dataset)
    proxy.add(Fault(f"{episodes[0].relative_path}/trajectory.h5", "status", status=503, retry_after="1"))
    proxy.add(Fault(f"{episodes[1].relative_path}/recordings/MP4/", "status", status=429, retry_after="1"))
    proxy.add(Fault(f"{episodes[2].relative_path}/trajectory.h5", "cut"))
    corrupt = proxy.add(Fault(f"{episodes[3].relative_path}/trajectory.h5", "corrupt"))
    run(METADATA, dataset, tmp_path, proxy.url, check_rc=0)
    assert corrupt.seen == 1
    assert_same_outputs(local_out, tmp_path / "out", dataset.episodes)
    assert {r["status"] for r in timing_rows(tmp_path)} == {"done"}
    assert not scratch_files(tmp_path)


def test_missing_and_always_corrupt_objects_fail_their_episode_naming_the_object(dataset, proxy, local_out,
                                                                                 tmp_path):
    episodes = sorted_episodes(dataset)
    missing, corrupt = episodes[0], episodes[2]
    proxy.add(Fault(f"{missing.relative_path}/trajectory.h5", "status", status=404, times=99, media_only=False))
    proxy.add(Fault(f"{corrupt.relative_path}/trajectory.h5", "corrupt", times=99))
    result = run(METADATA, dataset, tmp_path, proxy.url, check_rc=1)
    rows = {r["episode_id"]: r for r in timing_rows(tmp_path)}
    assert sorted(rows) == sorted(e.episode_id for e in dataset.episodes)  # every episode accounted for
    gone = rows[missing.episode_id]
    assert (gone["status"], gone["failed_step"]) == ("failed", "fetch")
    assert f"{ROOT_URL}/{missing.relative_path}/trajectory.h5: no such object" in gone["error"]
    bad = rows[corrupt.episode_id]
    assert (bad["status"], bad["failed_step"]) == ("failed", "fetch")
    assert f"{ROOT_URL}/{corrupt.relative_path}/trajectory.h5: failed after 4 attempts" in bad["error"]
    assert "MD5 of the copy" in bad["error"]
    assert f"failed: episode {missing.episode_id}: step fetch" in result.stderr
    others = [e for e in episodes if e not in (missing, corrupt)]
    assert [rows[e.episode_id]["status"] for e in others] == ["done", "done"]
    assert_same_outputs(local_out, tmp_path / "out", others)
    assert not (tmp_path / "out" / missing.relative_path).exists()
    assert not (tmp_path / "out" / corrupt.relative_path).exists()
    assert not scratch_files(tmp_path)


def test_prefetch_stays_bounded_by_a_held_object_then_kill_9_of_the_worker_mid_fetch(dataset, proxy, local_out,
                                                                                    tmp_path):
    # The first episode's trajectory.h5 is held half-sent by the proxy (a deterministic wait
    # point): the worker prefetches one more episode and no further; then it is killed with
    # SIGKILL mid-fetch. Its replacement removes the dead worker's scratch, fetches again, and
    # the run ends equal to the local one: nothing partial was used.
    episodes = sorted_episodes(dataset)
    held = proxy.add(Fault(f"{episodes[0].relative_path}/trajectory.h5", "hold"))
    env = dict(os.environ, TMPDIR=str(tmp_path / "node-tmp"), STORAGE_EMULATOR_HOST=proxy.url)
    (tmp_path / "node-tmp").mkdir()
    args = ["--config", str(dataset.config_path), "--out", str(tmp_path / "out"), "--set",
            f"run_root={tmp_path / 'runs'}", "--set", "outcomes=[success, failure]", "--workers", "1",
            "--no-upload", "--droid-root", ROOT_URL, "--set", "prefetch_episodes=1"]
    driver = subprocess.Popen([str(METADATA), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        assert held.held.wait(120), "the held object was never requested"
        (worker_dir,) = [p for p in (tmp_path / "node-tmp" / "droid-fetch").iterdir() if p.is_dir()]
        deadline = time.monotonic() + 60
        while not (worker_dir / episodes[1].episode_id).is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert sorted(p.name for p in worker_dir.iterdir() if p.name != ".lock") == \
            sorted([f"{episodes[0].episode_id}.partial", episodes[1].episode_id])
        os.kill(int(worker_dir.name.rsplit("-", 1)[1]), signal.SIGKILL)
        held.release()
        out, _ = driver.communicate(timeout=300)
    finally:
        held.release()
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out
    assert_same_outputs(local_out, tmp_path / "out", dataset.episodes)
    rows = timing_rows(tmp_path)
    assert sorted(r["episode_id"] for r in rows) == sorted(e.episode_id for e in dataset.episodes)
    assert not scratch_files(tmp_path) and not worker_dir.exists()


def test_a_full_scratch_budget_fails_each_episode_naming_it(dataset, proxy, tmp_path):
    result = run(METADATA, dataset, tmp_path, proxy.url, "--set", "scratch_max_bytes=1000", check_rc=1)
    rows = timing_rows(tmp_path)
    assert len(rows) == len(dataset.episodes)
    assert all(r["failed_step"] == "fetch" and "bytes of scratch, more than scratch_max_bytes=1000" in r["error"]
               for r in rows), result.stderr
    assert not scratch_files(tmp_path)


def test_a_listing_error_fails_the_unlisted_folder_alone(dataset, proxy, local_out, tmp_path):
    episodes = sorted_episodes(dataset)
    date_folder = episodes[0].relative_path.rsplit("/", 1)[0]
    proxy.add(Fault(f"prefix={PREFIX}/{date_folder}/", "status", status=403, times=99, media_only=False))
    result = run(METADATA, dataset, tmp_path, proxy.url, check_rc=1)
    (run_dir,) = (tmp_path / "runs").glob("metadata-*")
    failed = (run_dir / "failed.txt").read_text()
    assert f"{date_folder}\tdiscovery\t" in failed and "cannot list folder" in failed
    others = [e for e in dataset.episodes if not e.relative_path.startswith(date_folder + "/")]
    assert sorted(r["episode_id"] for r in timing_rows(tmp_path)) == sorted(e.episode_id for e in others)
    assert_same_outputs(local_out, tmp_path / "out", others)
    assert "cannot be run" in result.stdout


def test_the_debug_run_keeps_its_scratch_copy_and_says_where(dataset, proxy, tmp_path):
    episode = dataset.episodes[2]
    result = run(METADATA, dataset, tmp_path, proxy.url, "--episode_id", episode.episode_id, check_rc=0)
    kept = result.stderr.split("scratch copy kept: ", 1)[1].split()[0]
    assert (tmp_path / "node-tmp") in Path(kept).parents
    assert (Path(kept) / episode.relative_path / "trajectory.h5").is_file()


def test_slurm_array_tasks_fetch_into_their_node_scratch(slurm_cluster, dataset, proxy, local_out, tmp_path):
    scratch = tmp_path / "node-tmp"
    scratch.mkdir()
    env = dict(slurm_cluster.env, TMPDIR=str(scratch), STORAGE_EMULATOR_HOST=proxy.url)
    args = ["--config", str(dataset.config_path), "--out", str(tmp_path / "out"), "--set",
            f"run_root={tmp_path / 'runs'}", "--set", "outcomes=[success, failure]", "--no-upload",
            "--droid-root", ROOT_URL, "--slurm", "--set", "slurm.num_tasks=2", "--set", "slurm.cpus_per_task=1",
            "--set", "slurm.max_parallel_tasks=2", "--set", "slurm.time=00:20:00", "--set", "slurm.partition=debug"]
    result = subprocess.run([str(METADATA), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr + slurm_cluster.logs()
    job_id = re.search(r"submitted SLURM job (\d+): 2 array task", result.stdout).group(1)
    slurm_cluster.wait_job(job_id)
    assert slurm_cluster.job_states(job_id) == {"0": "COMPLETED", "1": "COMPLETED"}, slurm_cluster.logs()
    rows = timing_rows(tmp_path)
    assert sorted(r["episode_id"] for r in rows) == sorted(e.episode_id for e in dataset.episodes)
    assert all(r["status"] == "done" and int(r["fetch_bytes"]) > 0 for r in rows)
    assert_same_outputs(local_out, tmp_path / "out", dataset.episodes)
    assert not scratch_files(tmp_path)
