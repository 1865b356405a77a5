"""The fault suite: both drivers over a corpus of damaged episodes mixed with good ones, workers
and the uploader killed at random moments (seeded), disks filled; after each run the invariants
of :mod:`checks` hold. ``make test-faults`` runs all of it (about 15 minutes on two
cores, as root for the tmpfs); ``make test`` runs the tests without the ``faults`` mark, a short
subset of the same checks (about a minute).

Figures (trials, what was killed, peak RSS) are printed; run with ``-s`` to see them, as the
README's Reliability section quotes them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checks import (
    MEMORY_FACTOR,
    MEMORY_SLACK_MIB,
    array_bytes,
    check_corpus_run,
    check_memory,
    cmdline,
    csv_rows,
    driver_command,
    environment,
    leftovers,
    one_row_per_attempt,
    published,
    run_dirs,
    run_driver,
    uploader_processes,
    verify,
    wait_until,
    within_memory_bound,
    worker_processes,
)
from corpus import DISCOVERY, KINDS, Corpus, build
from hub_server import HubServer

from droid_pipeline.core.schema import UNKNOWN
from droid_pipeline.outputs.loader import read_episode_dir
from droid_pipeline.publish.ledger import Ledger
from droid_pipeline.synthetic.generator import generate_dataset

faults = pytest.mark.faults
# The short subset (unmarked faults) is long too: make test-slow runs it, make test-faults the whole.
pytestmark = pytest.mark.slow
FRAMES = 20
# The make-test subset of the corpus: one or two kinds of each layer.
QUICK_KINDS = ("uuid_dot_dot", "folder_is_a_symlink_loop", "duplicate_uuid", "metadata_not_an_object",
               "mp4_of_random_bytes", "trajectory_of_random_bytes", "too_many_steps", "positions_in_millimetres",
               "gripper_on_a_0_255_scale", "control_timestamps_scrambled", "mp4_cut_short_behind_its_index",
               "mp4_loses_its_last_frame_behind_its_index", "trajectory_is_a_fifo",
               "metadata_links_to_an_endless_device", "control_timestamps_in_seconds",
               "camera_missing_from_the_metadata", "intrinsics_in_fx_fy_cx_cy_order")
# Input that says something else than it is and that the pipeline corrects: published with the
# corrected data (checked against the synthetic ground truth) and a warning.
CORRECTED_KINDS = ("wrist_mp4_at_half_size", "ext1_mp4_at_a_size_no_source_has", "intrinsics_in_fx_fy_cx_cy_order",
                   "published_principal_point_off_centre", "camera_missing_from_the_metadata",
                   "metadata_ext2_serial_repeats_ext1", "joints_in_degrees", "one_joint_beyond_its_limit")
# The kinds of that class the depth step sees, through the full driver.
DEPTH_KINDS = ("wrist_mp4_at_half_size", "stereo_halves_swapped", "stereo_mp4_five_frames_longer",
               "ext1_mp4_at_a_size_no_source_has", "stereo_mp4_at_another_size_than_its_camera")
# Damaged episodes mixed into the kill and disk trials.
MIXED_KINDS = ("positions_in_millimetres", "uuid_dot_dot")
TOKEN = "hf_faultsuite0123456789"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=3, frames=FRAMES)


def roots(tmp: Path, name: str) -> tuple[Path, Path, list[str]]:
    out, runs = tmp / f"{name}-out", tmp / f"{name}-runs"
    return out, runs, ["--out", str(out), "--set", f"run_root={runs}"]


def test_the_corpus_has_at_least_30_named_kinds_each_with_an_expected_outcome():
    assert len(KINDS) >= 30
    for name, kind in KINDS.items():
        assert kind.damage.__name__ == name
        for pipeline in ("metadata", "full"):
            step = kind.step(pipeline)
            assert step in (DISCOVERY, "intrinsics", "depth", "tracks", None), (name, step)
            assert kind.phrase or step is None
    layers = collections.Counter(kind.step("metadata") for kind in KINDS.values())
    assert layers[DISCOVERY] >= 10 and layers["tracks"] >= 10 and layers["intrinsics"] >= 3


def test_a_subset_of_the_corpus_through_the_metadata_driver(dataset, tmp_path):
    corpus = build(dataset, tmp_path / "corpus", QUICK_KINDS, seed=1)
    out, runs, args = roots(tmp_path, "quick")
    result = run_driver("metadata", corpus, "--workers", "2", *args)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = run_dirs(runs, "metadata")[-1]
    check_corpus_run(corpus, "metadata", run_dir, out)
    memory = check_memory(run_dir, out)
    print(f"\nquick corpus: {len(QUICK_KINDS)} kinds, {memory}")


@faults
@pytest.mark.parametrize("pipeline", ["metadata", "full"])
def test_the_whole_corpus_through_each_driver(dataset, tmp_path, pipeline):
    corpus = build(dataset, tmp_path / "corpus", list(KINDS), seed=2)
    out, runs, args = roots(tmp_path, pipeline)
    started = time.monotonic()
    result = run_driver(pipeline, corpus, "--workers", "2", *args)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = run_dirs(runs, pipeline)[-1]
    check_corpus_run(corpus, pipeline, run_dir, out)
    memory = check_memory(run_dir, out)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"\n{pipeline} driver, {len(KINDS)} kinds + {len(corpus.good)} good episodes in "
          f"{time.monotonic() - started:.0f} s: {summary['done']} done, {summary['failed']} failed "
          f"({summary['failed_by_step']}), {summary.get('discovery_failed', 0)} discovery failures; {memory}")
    # A second run has nothing left but the damaged episodes, which fail the same way again.
    again = run_driver(pipeline, corpus, "--workers", "2", *args)
    assert again.returncode == 1
    rerun = json.loads((run_dirs(runs, pipeline)[-1] / "summary.json").read_text())
    assert rerun["done"] == 0 and rerun["failed"] == summary["failed"]
    assert leftovers(out) == []


# ---------------------------------------------------------------- input wrong about itself

def truth_cameras(dataset, corpus: Corpus) -> dict[str, dict]:
    """role -> the synthetic ground truth of the template episode's camera (every victim's cameras)."""
    template = next(e for e in dataset.episodes if e.outcome == "success")
    cameras = json.loads((dataset.ground_truth_path(template) / "cameras.json").read_text())
    return {camera["role"]: camera for camera in cameras.values()}


def check_projections_against_the_truth(folder: Path, truth: dict[str, dict]) -> dict[str, tuple[int, int]]:
    """Every camera's 2D tracks against OpenCV's projectPoints of the 3D tracks with the true
    intrinsics, scaled per axis to the camera's published image size (pixel centres kept); returns
    each role's image size."""
    import cv2
    import numpy as np

    data = read_episode_dir(folder)
    sizes = {}
    for role, camera in truth.items():
        published = data.camera(role)
        assert published.has_2d_tracks, f"{folder.name}: {role} camera has no 2D tracks"
        width, height = published.image_size
        sx, sy = width / camera["width"], height / camera["height"]
        K = np.array(camera["K"], dtype=np.float64)
        K_true = np.array([[K[0, 0] * sx, 0, (K[0, 2] + 0.5) * sx - 0.5],
                           [0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5], [0, 0, 1]])
        worst = 0.0
        for step in range(data.num_frames):
            base_from_camera = published.pose(step)
            points = (data.tracks_3d[step] - base_from_camera[:3, 3]) @ base_from_camera[:3, :3]
            pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), K_true, np.zeros(5))
            seen = published.visibility[step]
            if seen.any():
                worst = max(worst, float(np.abs(pixels[:, 0][seen] - published.tracks_2d[step][seen]).max()))
        # zed_conf's intrinsics of another ZED size are its own rectification, within 0.05 px of the
        # true ones scaled; everything else agrees to float32 rounding.
        assert worst < 0.1, f"{folder.name}: {role} camera projects {worst:.3f} px off the truth"
        sizes[role] = (width, height)
    return sizes


@faults
def test_input_wrong_about_itself_is_published_corrected_with_a_warning(dataset, tmp_path):
    corpus = build(dataset, tmp_path / "corpus", CORRECTED_KINDS, seed=6)
    out, runs, args = roots(tmp_path, "corrected")
    result = run_driver("metadata", corpus, "--workers", "2", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_corpus_run(corpus, "metadata", run_dirs(runs, "metadata")[-1], out)
    folders = published(out)
    truth = truth_cameras(dataset, corpus)
    sizes = {name: check_projections_against_the_truth(folders[victim.episode_id], truth)
             for name, victim in corpus.victims.items()}
    assert sizes["wrist_mp4_at_half_size"]["wrist"] == (160, 90)
    assert sizes["ext1_mp4_at_a_size_no_source_has"]["ext1"] == (240, 134)
    for name in ("joints_in_degrees", "one_joint_beyond_its_limit"):
        data = read_episode_dir(folders[corpus.victims[name].episode_id])
        assert all((camera.occlusion == UNKNOWN).all() for camera in data.cameras.values()), name
        assert data.quality["plausibility"]["joint_positions"]["occlusion_labels"] == "withheld"
        assert "joint_positions" in data.quality["occlusion"]["withheld"] and not data.quality["occlusion"]["enabled"]
    good = read_episode_dir(folders[corpus.good[0]])
    assert any((camera.occlusion != UNKNOWN).any() for camera in good.cameras.values())
    print(f"\ncorrected kinds: {len(CORRECTED_KINDS)} published with their warnings and true projections")


@faults
def test_input_wrong_about_itself_through_the_depth_driver(dataset, tmp_path):
    import numpy as np

    corpus = build(dataset, tmp_path / "corpus", DEPTH_KINDS, seed=8)
    out, runs, args = roots(tmp_path, "depth-kinds")
    result = run_driver("full", corpus, "--workers", "2", *args)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    check_corpus_run(corpus, "full", run_dirs(runs, "full")[-1], out)
    folder = published(out)[corpus.victims["wrist_mp4_at_half_size"].episode_id]
    truth = truth_cameras(dataset, corpus)
    assert check_projections_against_the_truth(folder, truth)["wrist"] == (160, 90)
    # The depth of the cameras at another size, against the true depth resized by OpenCV as the
    # video was (INTER_AREA): a wrong scale of fx would show as a wrong ratio.
    import cv2

    template = next(e for e in dataset.episodes if e.outcome == "success")
    for name, role in (("wrist_mp4_at_half_size", "wrist"), ("ext1_mp4_at_a_size_no_source_has", "ext1")):
        data = read_episode_dir(published(out)[corpus.victims[name].episode_id])
        true_mm = np.load(dataset.ground_truth_path(template) / truth[role]["depth_file"]).astype(np.float32)
        with data.depth(role) as frames:
            depth = frames.read_all().astype(np.float64)
        size = data.camera(role).image_size
        reference = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in true_mm[:len(depth)]])
        both = (depth > 0) & (reference > 0)
        ratio = float(np.median(depth[both] / reference[both]))
        assert abs(ratio - 1.0) < 0.05, (name, ratio)
        print(f"\n{role} depth at {size[0]}x{size[1]}: median ratio to the truth {ratio:.3f} over {both.mean():.0%} of "
              "the pixels")


# ---------------------------------------------------------------- killing workers

def kill_trial(corpus: Corpus, pipeline: str, rng: random.Random, tmp: Path, number: int) -> dict:
    """One driver run with one worker process killed (SIGKILL) at a random moment, then reruns
    until nothing is left; returns what was killed and what the runs recorded."""
    out, runs, args = roots(tmp, f"kill{number}")
    command = driver_command(pipeline, corpus, "--workers", "2", "--episodes-per-worker", "2", *args)
    driver = subprocess.Popen(command, cwd=corpus.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    role, killed = rng.choice(["episode", "episode", "warm", "warm", "supervisor"]), None
    started = rng.randint(1, len(corpus.good))  # kill once this many episodes have begun, and a bit
    wait_until(lambda: len(list(runs.glob(f"{pipeline}-*/logs/*.log"))) >= started or driver.poll() is not None,
               limit_s=300)
    time.sleep(rng.uniform(0.0, 0.25 if pipeline == "metadata" else 2.0))  # a metadata episode: ~0.3 s
    live = worker_processes(driver.pid)
    for candidate in [role, "episode", "warm", "supervisor"]:
        if live[candidate]:
            role, killed = candidate, rng.choice(live[candidate])
            break
    if killed is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(killed, signal.SIGKILL)
    assert driver.wait(timeout=600) in (0, 1)
    first = run_dirs(runs, pipeline)[-1]
    first_rows = one_row_per_attempt(first)
    summary = json.loads((first / "summary.json").read_text())
    reruns = 0
    while True:  # rerun until every good episode is finished: nothing lost
        reruns += 1
        result = run_driver(pipeline, corpus, "--workers", "2", *args)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        last = run_dirs(runs, pipeline)[-1]
        one_row_per_attempt(last)
        done = published(out)
        if set(corpus.good) <= set(done) or reruns == 3:
            break
    assert set(done) == set(corpus.good), f"trial {number}: lost {set(corpus.good) - set(done)}"
    assert leftovers(out) == []
    killed_rows = [r for r in first_rows if "killed by SIGKILL" in r["error"]]
    assert "BrokenPipe" not in (first / "timing.csv").read_text()
    return {"role": role if killed is not None else "none", "killed_rows": len(killed_rows),
            "not_run": summary["not_run"], "reruns": reruns, "out": out}


def run_kill_trials(dataset, tmp_path: Path, pipeline: str, trials: int, seed: int) -> collections.Counter:
    corpus = build(dataset, tmp_path / "corpus", MIXED_KINDS, seed=seed)
    rng = random.Random(seed)
    figures: collections.Counter = collections.Counter()
    for number in range(trials):
        outcome = kill_trial(corpus, pipeline, rng, tmp_path, number)
        figures[f"killed {outcome['role']}"] += 1
        figures["episodes recorded as killed"] += outcome["killed_rows"]
        figures["episodes not run in the killed run"] += outcome["not_run"]
        figures["reruns"] += outcome["reruns"]
        if number == trials - 1:
            verify(outcome["out"])
        shutil.rmtree(outcome["out"])
    print(f"\n{pipeline} driver, {trials} kill trials (seed {seed}): {dict(figures)}")
    return figures


def test_a_worker_killed_at_a_random_moment_loses_and_duplicates_nothing(dataset, tmp_path):
    figures = run_kill_trials(dataset, tmp_path, "metadata", trials=1, seed=11)
    assert sum(v for k, v in figures.items() if k.startswith("killed ")) == 1


@faults
@pytest.mark.parametrize("pipeline, trials", [("metadata", 40), ("full", 10)])
def test_fifty_worker_kills_at_random_moments(dataset, tmp_path, pipeline, trials):
    figures = run_kill_trials(dataset, tmp_path, pipeline, trials=trials, seed=20 + trials)
    assert figures["killed none"] <= trials // 5  # most kills hit a live worker


# ---------------------------------------------------------------- killing the uploader

def uploader_trial(corpus: Corpus, hub: HubServer, repo: str, rng: random.Random, tmp: Path, number: int,
                   delete: bool) -> str:
    """A driver run whose background uploader (or final flush) is killed at a random moment, then
    reruns and a final flush; every episode must be in the repo once and nothing left behind."""
    out, runs, args = roots(tmp, f"upload{number}")
    env = environment(HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN)
    settings = ["--set", f"metadata_repo={repo}", "--set", "upload_interval_s=0.3", "--set", "max_files_per_commit=4",
                "--set", f"delete_after_upload={'true' if delete else 'false'}"]
    command = driver_command("metadata", corpus, "--workers", "2", *args, *settings)
    driver = subprocess.Popen(command, cwd=corpus.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=env, start_new_session=True)
    target = rng.choice(["daemon", "daemon", "flush"])
    wait_until(lambda: bool(uploader_processes(driver.pid)) or driver.poll() is not None, limit_s=300)
    goal = len(hub.requests) + rng.randint(1, 8)
    wait_until(lambda: len(hub.requests) >= goal or not uploader_processes(driver.pid), limit_s=300)
    pids = [] if target == "flush" else uploader_processes(driver.pid)
    if not pids:  # the final flush instead (the daemon is done, or the flush was chosen)
        target = "flush"
        wait_until(lambda: bool(flushes(driver.pid)) or driver.poll() is not None, limit_s=300)
        time.sleep(rng.uniform(0.0, 0.3))
        pids = flushes(driver.pid)
    hit = "none"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            hit = target
    driver.wait(timeout=600)
    for _ in range(2):  # a rerun skips what is finished or uploaded and flushes the rest
        result = run_driver("metadata", corpus, "--workers", "2", *args, *settings, env=env)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    flush = subprocess.run([sys.executable, "-m", "droid_pipeline.upload", "--once", "--config",
                            str(run_dirs(runs, "metadata")[-1] / "config.yaml"), "--run-root", str(runs)],
                           capture_output=True, text=True, env=env, timeout=300)
    assert flush.returncode == 0, flush.stdout + flush.stderr
    ledger = Ledger(runs)
    assert all(ledger.has(episode_id, [repo]) for episode_id in corpus.good), f"trial {number}: an episode was lost"
    writes = hub.writes_per_path(repo.removeprefix("hf://datasets/"))
    shards = {path: count for path, count in writes.items() if path.startswith("shards/")}
    assert shards and set(shards.values()) == {1}, f"trial {number}: a shard was committed twice: {writes}"
    assert set(writes) - set(shards) <= {"README.md", "index/metadata.parquet"}, f"trial {number}: {writes}"
    left = leftovers(out) + list(out.rglob(".*.deleting-*"))
    assert left == [], left
    if delete:
        assert published(out) == {}
    shutil.rmtree(out)
    return hit


def flushes(driver_pid: int) -> list[int]:
    """The driver's final upload flush (``--once``), if running."""
    return [pid for pid in uploader_processes(driver_pid) if "--once" in cmdline(pid)]


def run_uploader_trials(dataset, tmp_path: Path, trials: int, seed: int) -> collections.Counter:
    corpus = build(dataset, tmp_path / "corpus", MIXED_KINDS, seed=seed)
    rng = random.Random(seed)
    figures: collections.Counter = collections.Counter()
    with HubServer(tmp_path / "hub", token=TOKEN) as hub:
        for number in range(trials):
            repo = f"hf://datasets/suite/meta-{number}"
            figures[uploader_trial(corpus, hub, repo, rng, tmp_path, number, delete=number % 2 == 0)] += 1
    print(f"\nmetadata driver, {trials} uploader kill trials (seed {seed}): {dict(figures)}")
    return figures


def test_the_uploader_killed_at_a_random_moment_loses_and_duplicates_nothing(dataset, tmp_path):
    run_uploader_trials(dataset, tmp_path, trials=1, seed=5)


@faults
def test_twenty_uploader_kills_at_random_moments(dataset, tmp_path):
    figures = run_uploader_trials(dataset, tmp_path, trials=20, seed=31)
    assert figures["none"] <= 5


# ---------------------------------------------------------------- full disks

@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (needs root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def require_mount() -> None:
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a small tmpfs and need root (run make test-faults as root)")


def test_a_full_output_disk_fails_episodes_naming_the_path_and_leaves_nothing(dataset, tmp_path):
    require_mount()
    corpus = build(dataset, tmp_path / "corpus", MIXED_KINDS, seed=3)
    runs = tmp_path / "runs"
    with small_disk(tmp_path / "small", "700k") as disk:
        out = disk / "out"
        args = ["--out", str(out), "--set", f"run_root={runs}",
                "--set", f"episode_index_path={tmp_path / 'index.json'}"]
        result = run_driver("metadata", corpus, "--workers", "1", *args)
        assert result.returncode == 1
        run_dir = run_dirs(runs, "metadata")[-1]
        assert "summary:" in result.stdout and (run_dir / "summary.json").is_file()
        rows = one_row_per_attempt(run_dir)
        full = [r for r in rows if "No space left on device" in r["error"]]
        assert full, [r["error"] for r in rows]
        for row in full:
            assert f"'{disk}/" in row["error"] or f" {disk}/" in row["error"], row["error"]
        good_done = {r["episode_id"] for r in rows if r["status"] == "done"}
        assert set(published(out)) == good_done and leftovers(out) == []
        verify(out)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = run_driver("metadata", corpus, "--workers", "2", *args)
        assert again.returncode == 1  # the damaged ones only
        assert set(published(out)) == set(corpus.good) and leftovers(out) == []
        verify(out)
    print(f"\nfull output disk: {len(full)} of {len(rows)} attempts failed with ENOSPC naming the path")


@faults
def test_a_full_run_root_still_prints_the_summary_and_publishes_nothing_unfinished(dataset, tmp_path):
    require_mount()
    corpus = build(dataset, tmp_path / "corpus", MIXED_KINDS, seed=4)
    out = tmp_path / "out"
    with small_disk(tmp_path / "small", "256k") as disk:
        runs = disk / "runs"
        args = ["--out", str(out), "--set", f"run_root={runs}"]
        filler = disk / "filler"
        with open(filler, "wb") as fh:  # leave room for the plan's files and a little more only
            with contextlib.suppress(OSError):
                while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > 36 * 1024:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        result = run_driver("metadata", corpus, "--workers", "1", *args)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        assert "summary:" in result.stdout
        full = [line for line in (result.stdout + result.stderr).splitlines() if "No space left on device" in line]
        assert full and all(str(disk) in line for line in full), full[:5]
        assert leftovers(out) == [] and not set(published(out)) - set(corpus.good)
        verify(out)
        filler.unlink()
        again = run_driver("metadata", corpus, "--workers", "2", *args)
        assert again.returncode == 1
        assert set(published(out)) == set(corpus.good) and leftovers(out) == []
    print(f"\nfull run_root: {len(full)} line(s) naming what could not be written, e.g. {full[0]}")


# ---------------------------------------------------------------- memory of long episodes

@faults
@pytest.mark.parametrize("steps", [300, 3000, 20000])
def test_memory_of_long_episodes_stays_within_the_bound(dataset, tmp_path, steps):
    # The long episode and one that fails at its first step, whose peak is the baseline: an
    # episode process forked from the warm worker that did next to nothing.
    corpus = build(dataset, tmp_path / "corpus", ["mp4_of_random_bytes"], seed=steps, stretch_to=steps)
    out, runs, args = roots(tmp_path, f"long{steps}")
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{corpus.long.episode_id}\n{corpus.victims['mp4_of_random_bytes'].episode_id}\n")
    result = run_driver("metadata", corpus, "--workers", "1", *args, "--set", "plausibility.max_steps=30000",
                        "--episodes", str(ids), timeout=1800)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    rows = csv_rows(run_dirs(runs, "metadata")[-1] / "peak_rss.csv")
    peaks = {r["episode_id"]: float(r["peak_rss_mib"]) for r in rows}
    baseline, peak = peaks[corpus.victims["mp4_of_random_bytes"].episode_id], peaks[corpus.long.episode_id]
    written = array_bytes(published(out)[corpus.long.episode_id]) / 2 ** 20
    print(f"\nT = {steps}: peak RSS {peak:.0f} MiB, {peak - baseline:.0f} MiB above an episode process that did "
          f"nothing ({baseline:.0f} MiB), for {written:.1f} MiB of arrays written: "
          f"{(peak - baseline) / written:.1f}x (bound: {MEMORY_SLACK_MIB:.0f} MiB + {MEMORY_FACTOR:.0f}x)")
    assert within_memory_bound(peak, baseline, written)
