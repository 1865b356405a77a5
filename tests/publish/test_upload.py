"""Uploader tests: the real huggingface_hub client against the loopback Hub server in
tests/support/hub_server.py, real uploader subprocesses, real signals (SIGTERM, kill -9)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hub_server import HubServer
from uploads import (
    REPO_ROOT,
    TOKEN,
    ledger_lines,
    repo_id,
    run_uploader,
    uploader_cmd,
    uploader_env,
    wait_for,
    write_config,
)

from droid_pipeline.publish.ledger import Ledger
from droid_pipeline.publish.staging import LOCK_NAME, append_record, publish_episode
from droid_pipeline.publish.targets import repo_slug

SERIAL = "13062452"
META = "hf://datasets/user/droid-meta"
FULL = "hf://datasets/user/droid-full"
DEPTH_NAMES = ("depth.mkv", "depth_meta.json")


def fake_episode(work_dir: Path, pipeline: str, seed: int) -> dict[str, bytes]:
    """Small random files laid out like an episode; text files go inline, binary ones via LFS."""
    rng = random.Random(seed)
    files = {
        "tracks.npz": b"\0" + rng.randbytes(5000),
        "extrinsics.npz": b"\0" + rng.randbytes(300),
        "quality.json": json.dumps({"seed": seed, "note": "x" * rng.randint(1, 50)}).encode(),
        f"recordings/{SERIAL}/intrinsics.json": json.dumps({"fx": rng.random()}).encode(),
    }
    if pipeline == "full":
        files[f"recordings/{SERIAL}/depth.mkv"] = b"\0" + rng.randbytes(9000)
        files[f"recordings/{SERIAL}/depth_meta.json"] = json.dumps({"frames": seed}).encode()
    for rel, data in files.items():
        (work_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (work_dir / rel).write_bytes(data)
    return files


def publish_fake(root: Path, index: int, pipeline: str) -> tuple[str, str, dict[str, bytes]]:
    """Publish one fake episode under ``root/output``; returns (episode id, relative path, files)."""
    episode_id = f"LAB+0000abcd+2023-08-18-12h-{index // 60:02d}m-{index % 60:02d}s"
    relative_path = f"LAB/success/2023-08-18/Fri_Aug_18_12:{index // 60:02d}:{index % 60:02d}_2023"
    work = root / "work" / f"{episode_id}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    files = fake_episode(work, pipeline, index)
    publish_episode(work, root / "output", relative_path, episode_id, pipeline, root / "run")
    return episode_id, relative_path, files


def ledger_files(root: Path, repo: str) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every file the ledger records in ``repo`` (each path once)."""
    files: dict[str, tuple[int, str]] = {}
    for line in ledger_lines(root):
        if line["repo"] == repo:
            for f in line["files"]:
                assert f["path"] not in files, f"{f['path']} recorded twice"
                files[f["path"]] = (f["size"], f["sha256"])
    return files


@pytest.fixture
def hub(tmp_path: Path):
    with HubServer(tmp_path / "hub", token=TOKEN) as server:
        yield server


def server_files(hub: HubServer, url: str) -> dict[str, tuple[int, str]]:
    if ("dataset", repo_id(url)) not in hub.repos:
        return {}
    return {p: (f.size, f.sha256) for p, f in hub.repo(repo_id(url)).files.items()}


def expected_contents(root: Path, episodes: list[tuple], full: bool) -> dict[str, bytes | str]:
    """What a repo must hold: episode files by kind (their bytes), plus each episode's
    manifest.json (its checksum, from the journal)."""
    manifests = {}
    for entry in (json.loads(line) for line in (root / "run" / "published.jsonl").read_text().splitlines()):
        manifests[entry["relative_path"]] = entry["manifest_sha256"]
    contents = {}
    for _, rel, files, pipeline in episodes:
        if full and pipeline != "full":
            continue
        contents.update({f"{rel}/{p}": data for p, data in files.items()
                         if full or not p.endswith(DEPTH_NAMES)})
        contents[f"{rel}/manifest.json"] = manifests[rel]
    return contents


def assert_repo_complete(root: Path, hub: HubServer, url: str, episodes: list[tuple], full: bool) -> None:
    """Every file once on the server, identical to the published one, and the ledger equal to it."""
    expected = expected_contents(root, episodes, full)
    on_server = server_files(hub, url)
    assert set(on_server) == set(expected)
    for path, data in expected.items():
        if isinstance(data, str):  # manifest.json: its checksum comes from the journal
            assert on_server[path][1] == data
        else:
            assert hub.read(repo_id(url), path) == data, path
    assert set(hub.writes_per_path(repo_id(url)).values()) == {1}, "a file was committed twice"
    assert ledger_files(root, url) == on_server
    written_by = {p: c.oid for c in hub.repo(repo_id(url)).commits for p in c.changed}
    for line in ledger_lines(root):
        if line["repo"] == url:
            assert {written_by[f["path"]] for f in line["files"]} == {line["commit"]}


def publish_mix(root: Path, count: int) -> list[tuple]:
    """Alternate metadata and full episodes; (episode id, relative path, files, pipeline)."""
    episodes = []
    for index in range(count):
        pipeline = "full" if index % 2 else "metadata"
        episodes.append((*publish_fake(root, index, pipeline), pipeline))
    return episodes


def test_once_uploads_metadata_and_full_repos_with_both_transfer_paths(tmp_path, hub):
    episodes = publish_mix(tmp_path, 6)
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL, max_files_per_commit=12)
    env = uploader_env(hub.endpoint, tmp_path)
    result = run_uploader(config, env, "--once")
    assert result.returncode == 0, result.stderr
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)
    assert hub.repo(repo_id(META)).private
    for url in (META, FULL):
        assert all(len(c.changed) <= 12 for c in hub.repo(repo_id(url)).commits)
    methods = {(m, p.split("/")[1]) for m, p in hub.requests}
    assert ("PUT", "lfs-upload") in methods  # binary files went through the LFS batch API
    assert any(not f.lfs for f in hub.repo(repo_id(META)).files.values())  # text files inline
    commits = len(hub.repo(repo_id(META)).commits) + len(hub.repo(repo_id(FULL)).commits)
    again = run_uploader(config, env, "--once")
    assert again.returncode == 0, again.stderr
    assert len(hub.repo(repo_id(META)).commits) + len(hub.repo(repo_id(FULL)).commits) == commits
    status = run_uploader(config, env, "status").stdout
    assert "6 episode(s) published" in status and "uploaded: 6 episode(s); pending: 0" in status
    assert "uploaded: 3 episode(s); pending: 0" in status


def test_uploaded_files_download_through_resolve(tmp_path, hub):
    from huggingface_hub import hf_hub_download

    _, rel, files, _ = publish_mix(tmp_path, 2)[1]
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL)
    assert run_uploader(config, uploader_env(hub.endpoint, tmp_path), "--once").returncode == 0
    for name in (f"recordings/{SERIAL}/depth.mkv", "quality.json"):
        path = hf_hub_download(repo_id(FULL), f"{rel}/{name}", repo_type="dataset", endpoint=hub.endpoint,
                               token=TOKEN, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == files[name]


def test_file_targets_get_the_same_layout_and_ledger(tmp_path):
    episodes = publish_mix(tmp_path, 4)
    meta_dir, full_dir = tmp_path / "hub" / "meta", tmp_path / "hub" / "full"
    config = write_config(tmp_path, metadata_repo=f"file://{meta_dir}", full_repo=f"file://{full_dir}",
                          max_files_per_commit=5)
    result = run_uploader(config, uploader_env(None, tmp_path, token=None), "--once")
    assert result.returncode == 0, result.stderr
    assert f"repo file://{meta_dir}: {meta_dir}" in result.stdout
    for folder, full in ((meta_dir, False), (full_dir, True)):
        on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        expected = expected_contents(tmp_path, episodes, full)
        assert set(on_disk) == set(expected)  # no temporary files left either
        for path, data in expected.items():
            if not isinstance(data, str):
                assert on_disk[path].read_bytes() == data
        ledger = ledger_files(tmp_path, f"file://{folder}")
        assert set(ledger) == set(expected)


def test_429_with_short_retry_after_is_waited_out(tmp_path, hub):
    episodes = publish_mix(tmp_path, 2)
    hub.inject("commit", status=429, headers={"Retry-After": "1"}, repo_id=repo_id(META))
    config = write_config(tmp_path, metadata_repo=META)
    result = run_uploader(config, uploader_env(hub.endpoint, tmp_path), "--once")
    assert result.returncode == 0, result.stderr
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)


def test_429_with_long_retry_after_carries_over_and_is_respected_after_restart(tmp_path, hub):
    publish_mix(tmp_path, 2)
    hub.inject("commit", status=429, headers={"Retry-After": "900"})
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path)
    assert run_uploader(config, env, "--once").returncode == 3
    commit_calls = sum(1 for m, p in hub.requests if "/commit/" in p)
    assert run_uploader(config, env, "--once").returncode == 3
    assert sum(1 for m, p in hub.requests if "/commit/" in p) == commit_calls
    status = run_uploader(config, env, "status").stdout
    assert "blocked until" in status and "Retry-After 900" in status and "pending: 2" in status
    assert server_files(hub, META) == {} and ledger_lines(tmp_path) == []


def test_server_error_is_reported_then_retried(tmp_path, hub):
    episodes = publish_mix(tmp_path, 3)
    hub.inject("commit", status=503, body="storage unavailable")
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path)
    first = run_uploader(config, env, "--once")
    assert first.returncode == 1
    assert "storage unavailable" in first.stdout
    status = run_uploader(config, env, "status").stdout
    assert "failed: 3" in status and "storage unavailable" in status
    assert run_uploader(config, env, "--once").returncode == 0
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert "failed: 0" in run_uploader(config, env, "status").stdout


def test_episode_whose_file_no_longer_matches_its_manifest_fails_and_is_not_uploaded(tmp_path, hub):
    episodes = publish_mix(tmp_path, 3)
    bad_id, bad_rel, bad_files, _ = episodes.pop(1)
    corrupted = tmp_path / "output" / bad_rel / "tracks.npz"
    corrupted.write_bytes(b"\1" * len(bad_files["tracks.npz"]))  # same size, other content
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path)
    result = run_uploader(config, env, "--once")
    assert result.returncode == 1
    assert f"failed {META} {bad_id}: checksum or file differs from the manifest: tracks.npz" in result.stdout
    assert not any(path.startswith(bad_rel) for path in server_files(hub, META))
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert f"{bad_id}: checksum" in run_uploader(config, env, "status").stdout


def test_a_publish_killed_between_its_journal_line_and_its_move_does_not_block_uploads(tmp_path, hub):
    episodes = publish_mix(tmp_path, 2)
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path)
    assert run_uploader(config, env, "--once").returncode == 0
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    commits = len(hub.repo(repo_id(META)).commits)
    journal = tmp_path / "run" / "published.jsonl"
    append_record(journal, {**json.loads(journal.read_text().splitlines()[0]), "manifest_sha256": "0" * 64})
    assert "pending: 0 (0 waiting" in run_uploader(config, env, "status").stdout
    assert run_uploader(config, env, "--once").returncode == 0
    assert len(hub.repo(repo_id(META)).commits) == commits


def test_commit_that_lands_but_loses_its_answer_is_not_committed_twice(tmp_path, hub):
    episodes = publish_mix(tmp_path, 4)
    hub.inject("commit", action="apply_then_drop", times=2)
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL)
    result = run_uploader(config, uploader_env(hub.endpoint, tmp_path), "--once")
    assert result.returncode == 0, result.stderr
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)
    assert len(hub.repo(repo_id(META)).commits) == 1


def test_commit_that_lands_after_the_client_timed_out_is_recorded_once(tmp_path, hub, monkeypatch):
    from huggingface_hub import constants

    from droid_pipeline.core.config import load_config
    from droid_pipeline.publish.uploader import Uploader

    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    episodes = publish_mix(tmp_path, 2)
    hub.inject("commit", action="apply_then_delay", delay_s=2.0)
    config = load_config([write_config(tmp_path, metadata_repo=META)])
    report = Uploader(config, tmp_path / "run", token=TOKEN, request_timeout_s=0.5).run_batch()
    assert report.exit_code == 0
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert len(hub.repo(repo_id(META)).commits) == 1


@pytest.mark.parametrize("hold", ["hold_then_reject", "apply_then_hold"])
def test_kill_9_while_a_commit_is_in_flight_then_rerun(tmp_path, hub, hold):
    episodes = publish_mix(tmp_path, 4)
    hub.inject("commit", action=hold, repo_id=repo_id(META))
    config = write_config(tmp_path, metadata_repo=META, max_files_per_commit=5)
    env = uploader_env(hub.endpoint, tmp_path)
    proc = subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(hub.held.is_set, "a commit to reach the server")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hub.release()
    assert "commit in flight" in run_uploader(config, env, "status").stdout
    hub.apply_commit(hub.repo(repo_id(META)), [{"key": "header", "value": {"summary": "another writer"}}])
    result = run_uploader(config, env, "--once")
    assert result.returncode == 0, result.stderr
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["hub", "folder"])
def test_kill_9_at_random_points_then_rerun_loses_and_duplicates_nothing(tmp_path, hub, target):
    episodes = publish_mix(tmp_path, 8)
    meta, full = (META, FULL) if target == "hub" else \
        (f"file://{tmp_path / 'hub' / 'meta'}", f"file://{tmp_path / 'hub' / 'full'}")
    config = write_config(tmp_path, metadata_repo=meta, full_repo=full, max_files_per_commit=3,
                          delete_after_upload=True)
    env = uploader_env(hub.endpoint, tmp_path)
    rng = random.Random(7)
    for _ in range(4 if target == "hub" else 3):
        proc = subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if target == "hub":  # kill after a random number of requests reached the server
            goal = len(hub.requests) + rng.randint(1, 30)
            wait_for(lambda goal=goal, proc=proc: len(hub.requests) >= goal or proc.poll() is not None,
                     "uploader requests")
        else:
            time.sleep(rng.uniform(0.4, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = run_uploader(config, env, "--once")
    assert result.returncode == 0, result.stderr
    if target == "hub":
        assert_repo_complete(tmp_path, hub, META, episodes, full=False)
        assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)
    else:
        for url, full_repo in ((meta, False), (full, True)):
            folder = Path(url.removeprefix("file://"))
            on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
            assert on_disk == set(expected_contents(tmp_path, episodes, full_repo))
            assert set(ledger_files(tmp_path, url)) == on_disk
    left = [p for p in (tmp_path / "output").rglob("*") if p.is_file() and p.name != LOCK_NAME]
    assert left == []  # all deleted after upload, leftovers of killed deletions too
    ledger = Ledger(tmp_path / "run")
    assert all(ledger.has(eid, [meta, full] if pipeline == "full" else [meta])
               for eid, _, _, pipeline in episodes)


def test_two_uploaders_on_one_staging_area_commit_each_file_once(tmp_path, hub):
    episodes = publish_mix(tmp_path, 6)
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL, max_files_per_commit=5)
    env = uploader_env(hub.endpoint, tmp_path)
    procs = [subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)


def test_sigterm_finishes_the_commit_in_flight_and_later_publications_are_not_lost(tmp_path, hub):
    episodes = publish_mix(tmp_path, 2)
    hub.inject("commit", action="hold", repo_id=repo_id(META))
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL)
    env = uploader_env(hub.endpoint, tmp_path)
    daemon = subprocess.Popen(uploader_cmd(config, "--daemon"), env=env, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(hub.held.is_set, "the first commit to reach the server")
        episodes += [(*publish_fake(tmp_path, 10 + i, "full"), "full") for i in range(2)]
        daemon.send_signal(signal.SIGTERM)
        hub.release()
        out, err = daemon.communicate(timeout=60)
    finally:
        daemon.kill()
    assert daemon.returncode == 0, err
    held_commit = hub.repo(repo_id(META)).commits[0]
    recorded = {line["episode_id"] for line in ledger_lines(tmp_path) if line["commit"] == held_commit.oid}
    assert recorded == {eid for eid, *_ in episodes[:2]}
    assert "commit in flight" not in run_uploader(config, env, "status").stdout
    assert run_uploader(config, env, "--once").returncode == 0
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)


def test_daemon_uploads_episodes_published_while_a_commit_is_in_flight(tmp_path, hub):
    episodes = publish_mix(tmp_path, 2)
    hub.inject("commit", action="hold", repo_id=repo_id(META))
    config = write_config(tmp_path, metadata_repo=META)
    daemon = subprocess.Popen(uploader_cmd(config, "--daemon"), env=uploader_env(hub.endpoint, tmp_path),
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(hub.held.is_set, "the first commit to reach the server")
        episodes += [(*publish_fake(tmp_path, 20 + i, "metadata"), "metadata") for i in range(3)]
        hub.release()
        ledger = Ledger(tmp_path / "run")

        def all_recorded() -> bool:
            ledger.refresh()
            return all(ledger.has(e[0], [META]) for e in episodes)

        wait_for(all_recorded, "the episodes published during the commit")
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)
    finally:
        daemon.kill()
    assert daemon.returncode == 0
    assert_repo_complete(tmp_path, hub, META, episodes, full=False)


def test_local_files_are_deleted_only_once_every_repo_holds_them(tmp_path, hub):
    meta_dir = tmp_path / "hub" / "meta"
    episodes = publish_mix(tmp_path, 4)
    hub.inject("commit", status=500, times=100, repo_id=repo_id(FULL))
    config = write_config(tmp_path, metadata_repo=f"file://{meta_dir}", full_repo=FULL,
                          delete_after_upload=True)
    env = uploader_env(hub.endpoint, tmp_path)
    assert run_uploader(config, env, "--once").returncode == 1
    for _, rel, _, pipeline in episodes:
        assert (tmp_path / "output" / rel).exists() == (pipeline == "full")
    hub.clear_faults()
    assert run_uploader(config, env, "--once").returncode == 0
    assert not any((tmp_path / "output" / rel).exists() for _, rel, _, _ in episodes)
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)


def test_episodes_no_configured_repo_takes_are_never_deleted(tmp_path, hub):
    episodes = publish_mix(tmp_path, 2)
    config = write_config(tmp_path, full_repo=FULL, delete_after_upload=True)
    assert run_uploader(config, uploader_env(hub.endpoint, tmp_path), "--once").returncode == 0
    for _, rel, _, pipeline in episodes:
        assert (tmp_path / "output" / rel).exists() == (pipeline == "metadata")
    assert_repo_complete(tmp_path, hub, FULL, episodes, full=True)


def test_commit_budget_is_respected_across_restarts(tmp_path, hub):
    publish_mix(tmp_path, 6)
    config = write_config(tmp_path, metadata_repo=META, max_files_per_commit=5, max_commits_per_hour=2)
    env = uploader_env(hub.endpoint, tmp_path)
    assert run_uploader(config, env, "--once").returncode == 3
    assert run_uploader(config, env, "--once").returncode == 3
    assert len(hub.repo(repo_id(META)).commits) == 2
    status = run_uploader(config, env, "status").stdout
    assert "commits in the last hour: 2/2" in status and "uploaded: 2 episode(s); pending: 4" in status


def test_token_never_appears_in_logs_state_or_urls(tmp_path, hub):
    publish_mix(tmp_path, 2)
    hub.inject("commit", status=500, body=f"bad request from Bearer {TOKEN}")
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path)

    def state_files_clean() -> bool:
        return all(TOKEN.encode() not in p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())

    failed = run_uploader(config, env, "--once", "-v")
    assert failed.returncode == 1 and "bad request from Bearer ***" in failed.stdout
    assert state_files_clean()
    status = run_uploader(config, env, "status")
    assert "Bearer ***" in status.stdout and state_files_clean()
    succeeded = run_uploader(config, env, "--once", "-v")
    assert succeeded.returncode == 0 and state_files_clean()
    for run in (failed, status, succeeded):
        assert TOKEN not in run.stdout + run.stderr
    assert not any(TOKEN in url for _, url in hub.requests)


def test_a_token_the_hub_refuses_is_an_error(tmp_path, hub):
    publish_mix(tmp_path, 1)
    config = write_config(tmp_path, metadata_repo=META)
    result = run_uploader(config, uploader_env(hub.endpoint, tmp_path, token="hf_refused"), "--once")
    assert result.returncode == 1
    assert f"error {META}: cannot create or reach the repo" in result.stdout and "401" in result.stdout
    assert "hf_refused" not in result.stdout + result.stderr


def test_missing_token_is_a_clear_error_before_any_work_and_the_token_file_works(tmp_path, hub):
    publish_mix(tmp_path, 1)
    config = write_config(tmp_path, metadata_repo=META)
    env = uploader_env(hub.endpoint, tmp_path, token=None)
    result = run_uploader(config, env, "--once")
    assert result.returncode == 2 and "HF_TOKEN" in result.stderr
    assert hub.requests == []
    (tmp_path / "hf_home").mkdir()
    (tmp_path / "hf_home" / "token").write_text(TOKEN)
    assert run_uploader(config, env, "--once").returncode == 0
    assert len(server_files(hub, META)) == 5


def test_dry_run_plans_without_touching_anything(tmp_path, hub):
    episodes = publish_mix(tmp_path, 3)
    config = write_config(tmp_path, metadata_repo=META, full_repo=FULL, max_files_per_commit=10)
    result = run_uploader(config, uploader_env(hub.endpoint, tmp_path, token=None), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{META}: 2 commit(s), 3 episode(s)" in result.stdout
    assert f"{FULL}: 1 commit(s), 1 episode(s)" in result.stdout
    assert episodes[1][0] in result.stdout
    assert hub.requests == [] and ledger_lines(tmp_path) == []


def old_state_with_commit_in_flight(root: Path, episodes: list[tuple], marker: str) -> dict:
    """upload_state/<repo>.json as the previous version left it when killed while committing the
    metadata files of ``episodes`` (the layout of such a file, built from the published files)."""
    journal = {e["episode_id"]: e for e in map(json.loads, (root / "run" / "published.jsonl").read_text().splitlines())}
    pending = []
    for episode_id, rel, files, _ in episodes:
        folder = Path(journal[episode_id]["episode_dir"])
        listed = [{"path": f"{rel}/{name}", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                   "local": str(folder / name)}
                  for name, data in sorted(files.items()) if not name.endswith(DEPTH_NAMES)]
        listed.append({"path": f"{rel}/manifest.json", "size": (folder / "manifest.json").stat().st_size,
                       "sha256": journal[episode_id]["manifest_sha256"], "local": str(folder / "manifest.json")})
        pending.append({"episode_id": episode_id, "relative_path": rel,
                        "manifest_sha256": journal[episode_id]["manifest_sha256"], "episode_files": len(listed),
                        "files": listed})
    return {"commit_times": [time.time() - 60.0], "blocked_until": 0.0, "blocked_reason": "",
            "pending": {"marker": marker, "episodes": pending}, "failures": {}, "last_error": ""}


@pytest.mark.parametrize("landed", [True, False])
def test_a_commit_left_in_flight_by_the_previous_version_is_settled(tmp_path, landed):
    episodes = publish_mix(tmp_path, 2)
    folder = tmp_path / "hub" / "meta"
    url = f"file://{folder}"
    marker = "20260101T000000-0123abcd-0001"
    old = old_state_with_commit_in_flight(tmp_path, episodes, marker)
    state_file = tmp_path / "run" / "upload_state" / f"{repo_slug(url)}.json"
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps(old, indent=2))
    if landed:  # the killed commit had copied every file
        for episode in old["pending"]["episodes"]:
            for f in episode["files"]:
                (folder / f["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f["local"], folder / f["path"])
    config = write_config(tmp_path, metadata_repo=url)
    env = uploader_env(None, tmp_path, token=None)
    assert f"commit in flight: {marker}" in run_uploader(config, env, "status").stdout
    result = run_uploader(config, env, "--once")
    assert result.returncode == 0, result.stderr
    lines = ledger_lines(tmp_path)
    assert sorted(line["episode_id"] for line in lines) == sorted(e[0] for e in episodes)
    # Landed: recorded under its own marker, not committed again; else committed anew.
    assert all((line["commit"] == marker) == landed for line in lines)
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == set(expected_contents(tmp_path, episodes, full=False)) == set(ledger_files(tmp_path, url))
    state = json.loads(state_file.read_text())
    assert list(state) == list(old) and state["pending"] is None
    assert len(state["commit_times"]) == (1 if landed else 2)
