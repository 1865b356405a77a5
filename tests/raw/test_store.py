"""Remote roots through the real client (gcsfs) against fake-gcs-server behind a loopback fault
proxy: checked copies, retries, the failures that name their object, remote discovery with and
without DROID's map file, and the prefetcher's bounds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from gcs_emulator import PREFIX, ROOT_URL, Fault, FaultProxy, start_emulator
from remote_runs import MAP_URL

from droid_pipeline.core.atomic import remove_unheld_folders
from droid_pipeline.core.config import load_config
from droid_pipeline.execution import fetch
from droid_pipeline.execution.steps import files_to_fetch
from droid_pipeline.raw import store
from droid_pipeline.raw.discovery import DiscoveryError, build_index, build_remote_index
from droid_pipeline.raw.store import FetchError, RemoteRoot
from droid_pipeline.synthetic.generator import generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=3, frames=6)


@pytest.fixture
def proxy(emulator, monkeypatch):
    proxy = FaultProxy(emulator.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    yield proxy
    proxy.close()


@pytest.fixture
def local(dataset):
    return build_index(dataset.droid_root)


def remote_root() -> RemoteRoot:
    return RemoteRoot(ROOT_URL, backoff_s=0.01)


def copy(local, dataset, tmp_path, name="trajectory.h5", episode=0):
    """Download one object of an episode; returns (its local original, the copy)."""
    chosen = local.episodes[episode]
    rel = f"{chosen.relative_path}/{name}"
    root = remote_root()
    dest = tmp_path / "copy"
    root.download(root.info(rel), rel, dest)
    return dataset.droid_root / rel, dest


def test_a_copy_is_byte_identical_and_anonymous(local, dataset, proxy, tmp_path):
    original, dest = copy(local, dataset, tmp_path)
    assert dest.read_bytes() == original.read_bytes()
    assert not any("Authorization" in r for r in proxy.requests)


def test_large_objects_download_as_parallel_ranges(local, dataset, proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RANGE_BYTES", 10_000)
    mp4 = f"recordings/MP4/{local.episodes[0].serials['ext1']}.mp4"
    original, dest = copy(local, dataset, tmp_path, mp4)
    assert dest.read_bytes() == original.read_bytes()
    assert original.stat().st_size > 3 * 10_000  # so several ranges were read


@pytest.mark.parametrize("fault", [Fault("trajectory.h5", "status", status=503, retry_after="1"),
                                   Fault("trajectory.h5", "status", status=429, retry_after="1"),
                                   Fault("trajectory.h5", "cut"),
                                   Fault("trajectory.h5", "corrupt")],
                         ids=["503", "429", "cut", "corrupt"])
def test_transient_faults_are_retried(local, dataset, proxy, tmp_path, fault):
    proxy.add(fault)
    original, dest = copy(local, dataset, tmp_path)
    assert fault.seen == 1
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()


def test_a_body_that_never_matches_its_checksum_fails_naming_the_object(local, proxy, tmp_path):
    proxy.add(Fault("trajectory.h5", "corrupt", times=99))
    rel = f"{local.episodes[0].relative_path}/trajectory.h5"
    with pytest.raises(FetchError, match=f"{ROOT_URL}/{rel}: failed after 4 attempts: .*MD5 of the copy"):
        remote_root().download(remote_root().info(rel), rel, tmp_path / "copy")


def test_a_missing_object_fails_at_once_naming_it(local, proxy, tmp_path):
    rel = f"{local.episodes[0].relative_path}/no-such-file.h5"
    with pytest.raises(FetchError, match=f"{ROOT_URL}/{rel}: no such object"):
        remote_root().info(rel)
    asked = [r for r in proxy.requests if "no-such-file" in r]
    assert 1 <= len(asked) <= 3  # gcsfs's one lookup (object, folder); each retry would add as many


def test_a_full_scratch_disk_fails_without_retry(local, proxy, tmp_path):
    rel = f"{local.episodes[0].relative_path}/trajectory.h5"
    root = remote_root()
    with pytest.raises(FetchError, match=f"{ROOT_URL}/{rel}: scratch full: .*No space left on device"):
        root.download(root.info(rel), rel, Path("/dev/full"))  # every write: ENOSPC
    assert sum("alt=media" in r for r in proxy.requests) == 1


def test_remote_discovery_by_listing_and_by_the_map_equals_the_local_scan(local, proxy, tmp_path):
    listed = build_remote_index(ROOT_URL, tmp_path / "index.json")
    assert [e.to_json() for e in listed.episodes] == [e.to_json() for e in local.episodes]
    assert listed.problems == []
    wanted = [local.episodes[2].episode_id, local.episodes[1].episode_id]  # moved date; "_" for ":"
    proxy.requests.clear()
    mapped = build_remote_index(ROOT_URL, None, paths_file=MAP_URL, ids=wanted)
    assert [e.episode_id for e in mapped.select(episode_ids=wanted)] == wanted
    assert [e.to_json() for e in mapped.episodes] == [e.to_json() for e in local.episodes if e.episode_id in wanted]
    assert not any(f"prefix={PREFIX}/&" in r for r in proxy.requests)


def test_a_recorded_camera_the_metadata_does_not_name_is_never_dropped_on_a_remote_root(dataset, tmp_path,
                                                                                       monkeypatch):
    # Locally it is recovered from trajectory.h5 with a warning; on a remote root, where only the
    # names of the files are at hand before the fetch (which copies the named cameras' videos), it
    # is a problem naming the camera.
    raw = tmp_path / "droid_raw"
    shutil.copytree(dataset.droid_root, raw)
    episode = build_index(raw).episodes[0]
    meta_path = raw / episode.relative_path / episode.metadata_file
    meta = json.loads(meta_path.read_text())
    meta["ext2_cam_serial"] = None
    meta_path.write_text(json.dumps(meta))
    recovered = build_index(raw).get(episode.episode_id)
    assert recovered.serials == episode.serials and "recovered as ext2" in recovered.warnings[0]
    server = start_emulator(raw, tmp_path)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        index = build_remote_index(ROOT_URL, None)
    finally:
        server.stop()
    assert episode.episode_id not in [e.episode_id for e in index.episodes]
    (problem,) = [p for p in index.problems if p["path"] == episode.relative_path]
    assert f"recordings/MP4 has camera(s) {episode.serials['ext2']} that the metadata does not name " \
           "(the metadata names no ext2_cam_serial)" in problem["problem"]


def test_a_map_entry_whose_metadata_names_another_episode_is_a_problem(local, proxy, tmp_path):
    first, second = local.episodes[0], local.episodes[1]
    paths = tmp_path / "map.json"
    paths.write_text(json.dumps({first.episode_id: second.relative_path, second.episode_id: "bad/path"}))
    index = build_remote_index(ROOT_URL, None, paths_file=paths)
    assert index.episodes == []
    causes = {p["path"]: p["problem"] for p in index.problems}
    assert f"episode_paths_file maps episode {first.episode_id} here, but its metadata names " \
           f"{second.episode_id}" in causes[second.relative_path]
    assert "maps to 'bad/path', not <LAB>/<outcome>/<date>/<folder>" in causes["bad/path"]
    with pytest.raises(DiscoveryError, match="cannot be read"):
        build_remote_index(ROOT_URL, None, paths_file=tmp_path / "absent.json")


def test_listing_errors_become_problems_of_the_folder_and_the_rest_is_found(local, proxy, tmp_path):
    # 403 (no access to one date folder) fails at once; a 503 on a lab's listing is retried.
    broken = local.episodes[0].relative_path.rsplit("/", 1)[0]
    proxy.add(Fault(f"prefix={PREFIX}/{broken}/", "status", status=403, times=99, media_only=False))
    transient = proxy.add(Fault(f"prefix={PREFIX}/{local.episodes[1].lab}/", "status", status=503,
                                media_only=False))
    index = build_remote_index(ROOT_URL, tmp_path / "index.json")
    assert [e.episode_id for e in index.episodes] == [e.episode_id for e in local.episodes[1:]]
    assert [p["path"] for p in index.problems] == [broken]
    assert "cannot list folder" in index.problems[0]["problem"] and "Forbidden" in index.problems[0]["problem"]
    assert transient.seen == 1
    proxy.add(Fault(f"prefix={PREFIX}/&", "status", status=403, times=99, media_only=False))
    with pytest.raises(DiscoveryError, match=f"droid_root {ROOT_URL}: cannot list it"):
        build_remote_index(ROOT_URL, None)


def test_the_prefetcher_stays_within_its_episode_and_byte_bounds(dataset, local, proxy, tmp_path):
    config = load_config([dataset.config_path], [f"droid_root={ROOT_URL}", f"scratch_dir={tmp_path}",
                                                 "prefetch_episodes=1"])
    episodes = local.episodes
    held = proxy.add(Fault(f"{episodes[0].relative_path}/trajectory.h5", "hold"))
    scratch, lock_fd = fetch.claim_scratch(config)
    prefetcher = fetch.Prefetcher(config, "metadata", list(episodes), scratch)
    taken: list[object] = []
    taker = threading.Thread(target=lambda: taken.append(prefetcher.take(0)))
    taker.start()
    try:
        assert held.held.wait(60)
        deadline = time.monotonic() + 60
        while not (scratch / episodes[1].episode_id).is_dir() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert sorted(p.name for p in scratch.iterdir() if p.name != ".lock") == \
            sorted([f"{episodes[0].episode_id}.partial", episodes[1].episode_id])
    finally:
        held.release()
        taker.join(60)
    first = taken[0]
    assert isinstance(first, fetch.Fetched)
    expected = files_to_fetch("metadata", episodes[0], config)
    assert sorted(p.relative_to(first.root / episodes[0].relative_path).as_posix()
                  for p in first.root.rglob("*") if p.is_file()) == sorted(expected)
    assert first.bytes == sum((dataset.droid_root / episodes[0].relative_path / n).stat().st_size for n in expected)
    prefetcher.release(0)
    assert isinstance(prefetcher.take(1), fetch.Fetched)
    prefetcher.release(1)
    prefetcher.close()
    # A worker gone (its lock free) leaves a folder the next worker removes.
    os.close(lock_fd)
    assert remove_unheld_folders(scratch.parent, fetch.LOCK_NAME) == [scratch]


def test_an_episode_larger_than_the_scratch_budget_fails_naming_the_budget(dataset, local, proxy, tmp_path):
    config = load_config([dataset.config_path], [f"droid_root={ROOT_URL}", f"scratch_dir={tmp_path}",
                                                 "scratch_max_bytes=1000"])
    scratch, _ = fetch.claim_scratch(config)
    prefetcher = fetch.Prefetcher(config, "metadata", list(local.episodes[:1]), scratch)
    failure = prefetcher.take(0)
    assert isinstance(failure, FetchError) and "more than scratch_max_bytes=1000" in str(failure)
    assert not any(p.name != ".lock" for p in scratch.iterdir())
    prefetcher.close()
