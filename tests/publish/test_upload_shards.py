"""The sharded layout: the real uploader (subprocesses, kill -9, 429 storms) and the real
huggingface_hub client against the loopback Hub server enforcing the Hub's limits; shards read
back with tarfile and webdataset, the index with pyarrow and datasets, the card's YAML with PyYAML."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from hub_server import HubServer, Limits
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
from droid_pipeline.publish.shards import episode_id_of, episode_key
from droid_pipeline.publish.staging import publish_episode
from droid_pipeline.publish.targets import repo_slug

META = "hf://datasets/user/droid-meta"
FULL = "hf://datasets/user/droid-full"
SERIALS = {"wrist": "18907304", "ext1": "26357468"}
MAX_FILES = 5
SHARD_EPISODES = 4


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def shard_episode_files(pipeline: str, seed: int, episode_id: str, rel: str) -> dict[str, bytes]:
    """Small random files laid out like an episode, with the quality.json fields the index reads."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    lab, outcome, date = rel.split("/")[:3]
    quality = {"episode": {"episode_id": episode_id, "relative_path": rel, "lab": lab, "outcome": outcome,
                           "date": date, "serials": SERIALS},
               "num_frames": 10 + seed, "num_normalized_steps": 50 + seed, "fps": 15.0,
               "cameras_with_2d_tracks": list(SERIALS.values()),
               "visible_fraction": {SERIALS["ext1"]: 0.5}, "path_length_mm": 12.5,
               "wrist_pose_deviation": {"max_translation_mm": 0.25, "within_tolerance": True},
               "calibration": {"cameras": {SERIALS["ext1"]: {"source": "cam2base:cam2base_extrinsics.json"}}},
               "warnings": []}
    files = {"tracks.npz": npz_bytes(tracks_3d=np_rng.random((10 + seed, 8, 3), np.float32)),
             "extrinsics.npz": npz_bytes(serials=np.array(list(SERIALS.values()))),
             "quality.json": json.dumps(quality).encode()}
    for serial in SERIALS.values():
        files[f"recordings/{serial}/intrinsics.json"] = json.dumps({"fx": rng.random()}).encode()
    if pipeline == "full":
        files[f"recordings/{SERIALS['ext1']}/depth.mkv"] = b"\0" + rng.randbytes(9000)
        files[f"recordings/{SERIALS['ext1']}/depth_meta.json"] = json.dumps({"frames": seed}).encode()
    return files


def publish_many(root: Path, count: int, first: int = 0) -> list[tuple[str, str, dict[str, bytes], str]]:
    """``count`` episodes (numbered from ``first``), every third a full one; (episode id, relative
    path, files, pipeline)."""
    episodes = []
    for index in range(first, first + count):
        pipeline = "full" if index % 3 == 0 else "metadata"
        episode_id = f"LAB+0000abcd+2023-08-18-12h-{index // 60:02d}m-{index % 60:02d}s"
        rel = f"LAB/success/2023-08-18/Fri_Aug_18_12:{index // 60:02d}:{index % 60:02d}_2023"
        work = root / "work" / str(index)
        files = shard_episode_files(pipeline, index, episode_id, rel)
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        publish_episode(work, root / "output", rel, episode_id, pipeline, root / "run")
        episodes.append((episode_id, rel, files, pipeline))
    return episodes


@pytest.fixture
def hub(tmp_path: Path):
    limits = Limits(max_files_per_repo=30, max_entries_per_folder=12, max_files_per_commit=MAX_FILES)
    with HubServer(tmp_path / "hub", token=TOKEN, limits=limits) as server:
        yield server


def shard_config(root: Path, **keys: object) -> Path:
    settings: dict[str, object] = {
        "metadata_repo": META, "full_repo": FULL, "hub_layout": "auto", "max_files_per_commit": MAX_FILES,
        "shard_max_episodes": SHARD_EPISODES, "shard_max_bytes": {"metadata": 60_000, "full": 80_000}}
    return write_config(root, **{**settings, **keys})


def member_role_name(path: str) -> str:
    """The ``<file>`` part of the member of a contract path, by the fixed roles of these episodes."""
    for role, serial in SERIALS.items():
        prefix = f"recordings/{serial}/"
        if path.startswith(prefix):
            return f"{role}.{path[len(prefix):]}"
    return path


def read_index(hub: HubServer, url: str, kind: str) -> list[dict]:
    return pq.read_table(io.BytesIO(hub.read(repo_id(url), f"index/{kind}.parquet"))).to_pylist()


def assert_sharded_repo_complete(root: Path, hub: HubServer, url: str, kind: str, episodes: list[tuple]) -> None:
    """Every episode of the repo exactly once in its shards and the index, member bytes equal to the
    published files and their manifest, members of an episode contiguous, the ledger agreeing."""
    expected = {e[0]: e for e in episodes if kind == "metadata" or e[3] == "full"}
    repo = hub.repo(repo_id(url))
    journal = {e["episode_id"]: e for e in map(json.loads, (root / "run" / "published.jsonl").read_text().splitlines())}
    shards = sorted(p for p in repo.files if p.startswith("shards/"))
    assert set(repo.files) == {*shards, "README.md", f"index/{kind}.parquet"}
    assert all(path.startswith(f"shards/{kind}/000/") and path.endswith(".tar") for path in shards)
    writes = hub.writes_per_path(repo_id(url))
    assert all(writes[path] == 1 for path in shards), "a shard was committed twice"
    found: dict[str, str] = {}
    for path in shards:
        with tarfile.open(fileobj=io.BytesIO(hub.read(repo_id(url), path))) as tar:
            names = [m.name for m in tar.getmembers()]
            keys = [name.partition(".")[0] for name in names]
            runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
            assert len(runs) == len(set(runs)), f"{path}: an episode's members are not contiguous"
            for key in runs:
                episode_id = episode_id_of(key)
                assert episode_id not in found, f"{episode_id} in {found.get(episode_id)} and {path}"
                found[episode_id] = path
                _, rel, files, pipeline = expected[episode_id]
                manifest = json.loads(tar.extractfile(f"{key}.manifest.json").read())
                listed = {f["path"]: f for f in manifest["files"]}
                members = {n.partition(".")[2] for n in names if n.partition(".")[0] == key}
                wanted = {member_role_name(p) for p in files if kind == "full" or "depth" not in p}
                camera_files = ("intrinsics.json",) if kind == "metadata" else \
                    ("intrinsics.json", "depth_meta.json", "depth.mkv")
                stubs = {f"{role}.{name}" for role in ("wrist", "ext1", "ext2") for name in camera_files} - wanted
                assert stubs and members == wanted | {"manifest.json"} | stubs
                for stub in stubs:   # a camera file the episode lacks: null JSON, empty otherwise
                    assert tar.extractfile(f"{key}.{stub}").read() == (b"null" if stub.endswith(".json") else b"")
                for name, data in files.items():
                    if kind == "metadata" and "depth" in name:
                        continue
                    member = tar.extractfile(f"{key}.{member_role_name(name)}").read()
                    assert member == data
                    assert hashlib_sha256(member) == listed[name]["sha256"]
    assert set(found) == set(expected), "an episode is missing from the shards"
    rows = read_index(hub, url, kind)
    assert sorted(r["episode_id"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["shard"] == found[row["episode_id"]] and row["key"] == episode_key(row["episode_id"])
        assert row["manifest_sha256"] == journal[row["episode_id"]]["manifest_sha256"]
        data = hub.read(repo_id(url), row["shard"])
        for member in row["members"]:
            assert member["shard"] == row["shard"]
            assert hashlib_sha256(data[member["offset"]:member["offset"] + member["size"]]) == member["sha256"]
    ledger = Ledger(root / "run")
    assert all(ledger.holds(url, episode_id) for episode_id in expected)
    recorded = [line["episode_id"] for line in ledger_lines(root) if line["repo"] == url]
    assert sorted(recorded) == sorted(expected), "an episode was recorded twice"


def hashlib_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_thirty_episodes_publish_into_few_files_with_small_commits(tmp_path, hub):
    episodes = publish_many(tmp_path, 30)
    result = run_uploader(shard_config(tmp_path), uploader_env(hub.endpoint, tmp_path), "--once")
    assert result.returncode == 0, result.stderr + result.stdout
    assert hub.violations == []
    full_count = sum(1 for e in episodes if e[3] == "full")
    for url, kind, count in ((META, "metadata", 30), (FULL, "full", full_count)):
        assert_sharded_repo_complete(tmp_path, hub, url, kind, episodes)
        repo = hub.repo(repo_id(url))
        shards = [p for p in repo.files if p.startswith("shards/")]
        # at most SHARD_EPISODES per shard; shard_max_bytes may close one earlier, never later
        assert -(-count // SHARD_EPISODES) <= len(shards) <= count
        assert len(repo.files) == len(shards) + 2 < count * 7
        assert all(len(c.changed) <= MAX_FILES for c in repo.commits)
        assert len(repo.commits) == len(shards)  # one commit per shard, index and card in it
    card = hub.read(repo_id(META), "README.md").decode()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "cc-by-4.0" and "robotics" in meta["task_categories"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "index", "default": True,
                                "data_files": [{"split": "train", "path": "index/metadata.parquet"}]}]
    assert "| `tracks_3d` |" in card and "30 episode(s)" in card
    again = run_uploader(shard_config(tmp_path), uploader_env(hub.endpoint, tmp_path), "--once")
    assert again.returncode == 0 and "0 commit(s)" in again.stdout


def test_a_republished_episode_supersedes_its_row_without_rewriting_old_shards(tmp_path, hub):
    episodes = publish_many(tmp_path, 3)
    config = shard_config(tmp_path)
    env = uploader_env(hub.endpoint, tmp_path)
    assert run_uploader(config, env, "--once").returncode == 0
    old_shard = read_index(hub, META, "metadata")[1]["shard"]
    old_bytes = hub.read(repo_id(META), old_shard)
    episode_id, rel, _, _ = episodes[1]
    work = tmp_path / "work" / "again"
    files = shard_episode_files("metadata", 99, episode_id, rel)
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    publish_episode(work, tmp_path / "output", rel, episode_id, "metadata", tmp_path / "run")
    assert run_uploader(config, env, "--once").returncode == 0
    rows = {r["episode_id"]: r for r in read_index(hub, META, "metadata")}
    assert len(rows) == 3 and rows[episode_id]["shard"] != old_shard
    assert hub.read(repo_id(META), old_shard) == old_bytes
    tracks = next(m for m in rows[episode_id]["members"] if m["path"] == "tracks.npz")
    new_shard = hub.read(repo_id(META), rows[episode_id]["shard"])
    assert new_shard[tracks["offset"]:tracks["offset"] + tracks["size"]] == files["tracks.npz"]


@pytest.mark.slow
def test_kill_9_at_random_points_and_429_storms_lose_and_duplicate_nothing(tmp_path, hub):
    episodes = publish_many(tmp_path, 30)
    config = shard_config(tmp_path, delete_after_upload=True)
    env = uploader_env(hub.endpoint, tmp_path)
    rng = random.Random(11)
    for round_number in range(5):
        if round_number % 2:
            hub.inject("commit", status=429, headers={"Retry-After": "1"}, times=rng.randint(1, 3))
        proc = subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        goal = len(hub.requests) + rng.randint(3, 40)
        wait_for(lambda goal=goal, proc=proc: len(hub.requests) >= goal or proc.poll() is not None,
                 "uploader requests")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    hub.clear_faults()
    hub.inject("commit", status=429, headers={"Retry-After": "1"}, times=3)  # a storm lived through
    results: list[subprocess.CompletedProcess] = []
    while not results or results[-1].returncode != 0:
        assert len(results) < 6 and all(r.returncode == 3 for r in results), results[-1].stdout
        results.append(run_uploader(config, env, "--once"))  # a 429 beyond the one waited out: exit 3
    assert len(results) > 1
    assert hub.violations == []
    assert_sharded_repo_complete(tmp_path, hub, META, "metadata", episodes)
    assert_sharded_repo_complete(tmp_path, hub, FULL, "full", episodes)
    assert not list((tmp_path / "run" / "upload_shards").rglob("*.tar"))  # built shards removed once committed
    left = [p for p in (tmp_path / "output").rglob("*") if p.is_file() and p.name != ".publish.lock"]
    assert left == []


def test_a_shard_left_half_written_by_a_killed_uploader_is_removed_by_the_next(tmp_path, hub):
    episodes = publish_many(tmp_path, 3)
    folders = [tmp_path / "run" / "upload_shards" / repo_slug(url) for url in (META, FULL)]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / ".000000.tar.0123abcd.tmp.tar").write_bytes(b"half a shard")
    result = run_uploader(shard_config(tmp_path), uploader_env(hub.endpoint, tmp_path), "--once")
    assert result.returncode == 0, result.stderr + result.stdout
    assert_sharded_repo_complete(tmp_path, hub, META, "metadata", episodes)
    assert [list(folder.iterdir()) for folder in folders] == [[], []]
    assert "left by a killed uploader" in result.stderr


def test_two_uploaders_of_two_run_roots_never_overwrite_each_other_s_shards(tmp_path, hub):
    """B reads the index, A commits, then B's commit (built on the old head) arrives: the Hub
    refuses it (412), B reads the index again and commits its episodes as the next shard."""
    first, second = tmp_path / "a", tmp_path / "b"
    episodes = publish_many(first, 5) + publish_many(second, 5, first=100)
    hub.inject("commit", action="hold", times=1)
    late = subprocess.Popen(uploader_cmd(shard_config(second), "--once"), env=uploader_env(hub.endpoint, second),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: hub.held.is_set() or late.poll() is not None, "the second uploader's first commit")
        early = run_uploader(shard_config(first), uploader_env(hub.endpoint, first), "--once")
        assert early.returncode == 0, early.stderr + early.stdout
    finally:
        hub.release()
        out, err = late.communicate(timeout=120)
    assert late.returncode == 0, err + out
    assert hub.moved_parents >= 1 and "another uploader committed first" in err
    for url, kind in ((META, "metadata"), (FULL, "full")):
        expected = {e[0]: e for e in episodes if kind == "metadata" or e[3] == "full"}
        rows = read_index(hub, url, kind)
        assert sorted(r["episode_id"] for r in rows) == sorted(expected)
        writes = hub.writes_per_path(repo_id(url))
        assert all(writes[path] == 1 for path in writes if path.startswith("shards/")), writes
        for row in rows:
            shard = hub.read(repo_id(url), row["shard"])
            files = expected[row["episode_id"]][2]
            for member in row["members"]:
                if member["path"] in files:
                    assert shard[member["offset"]:member["offset"] + member["size"]] == files[member["path"]]
    for root, ids in ((first, [e[0] for e in episodes[:5]]), (second, [e[0] for e in episodes[5:]])):
        assert all(Ledger(root / "run").has(episode_id, [META]) for episode_id in ids)


def test_commit_quota_429s_are_waited_out_and_the_budget_holds(tmp_path):
    with HubServer(tmp_path / "hub", token=TOKEN, limits=Limits(commits_per_hour=2)) as hub:
        publish_many(tmp_path, 12)
        config = shard_config(tmp_path, full_repo=None)
        env = uploader_env(hub.endpoint, tmp_path)
        first = run_uploader(config, env, "--once")
        assert first.returncode == 3, first.stdout  # the server's quota: 429, a long Retry-After carried over
        assert len(hub.repo(repo_id(META)).commits) == 2 and hub.rate_limited == 1
        assert "rate limited (HTTP 429" in run_uploader(config, env, "status").stdout


def test_shards_read_with_webdataset_and_the_index_with_datasets(tmp_path):
    import datasets
    import webdataset

    episodes = publish_many(tmp_path, 6)
    folder = tmp_path / "repo" / "meta"
    config = write_config(tmp_path, metadata_repo=f"file://{folder}", hub_layout="shards",
                          shard_max_episodes=SHARD_EPISODES)
    assert run_uploader(config, uploader_env(None, tmp_path, token=None), "--once").returncode == 0
    shards = sorted(str(p) for p in (folder / "shards").rglob("*.tar"))
    assert len(shards) == 2
    samples = list(webdataset.WebDataset(shards, shardshuffle=False))
    assert [episode_id_of(s["__key__"]) for s in samples] == [e[0] for e in episodes]
    for sample, (_, _, files, _) in zip(samples, episodes):
        assert sample["tracks.npz"] == files["tracks.npz"]
        assert sample["ext1.intrinsics.json"] == files[f"recordings/{SERIALS['ext1']}/intrinsics.json"]
    index = datasets.load_dataset(str(folder), "index", split="train")
    assert sorted(index["episode_id"]) == sorted(e[0] for e in episodes)
    assert index[0]["members"][0]["shard"].startswith("shards/metadata/000/")
    streamed = datasets.load_dataset("webdataset", data_files=shards, split="train")
    assert sorted(streamed["__key__"]) == sorted(episode_key(e[0]) for e in episodes)


@pytest.mark.parametrize("hold", ["hold_then_reject", "apply_then_hold"])
def test_kill_9_while_a_shard_commit_is_in_flight_then_rerun(tmp_path, hub, hold):
    episodes = publish_many(tmp_path, 9)
    hub.inject("commit", action=hold, repo_id=repo_id(META))
    config = shard_config(tmp_path, full_repo=None)
    env = uploader_env(hub.endpoint, tmp_path)
    proc = subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(hub.held.is_set, "a shard commit to reach the server")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hub.release()
    state = json.loads(next((tmp_path / "run" / "upload_state").glob("*.json")).read_text())
    assert state["pending"]["shard"] == 0  # numbered before the commit
    assert [u["path"] for u in state["pending"]["uploads"]] == [
        "shards/metadata/000/000000.tar", "README.md", "index/metadata.parquet"]
    result = run_uploader(config, env, "--once")
    assert result.returncode == 0, result.stderr + result.stdout
    assert_sharded_repo_complete(tmp_path, hub, META, "metadata", episodes)
    first = [line for line in ledger_lines(tmp_path) if line["batch"] == state["pending"]["marker"]]
    assert bool(first) == (hold == "apply_then_hold")  # landed: settled under its marker, not made again


def test_folder_target_killed_mid_commit_never_indexes_a_missing_shard(tmp_path):
    episodes = publish_many(tmp_path, 12)
    folder = tmp_path / "repo" / "meta"
    config = write_config(tmp_path, metadata_repo=f"file://{folder}", hub_layout="shards",
                          shard_max_episodes=2)
    env = uploader_env(None, tmp_path, token=None)
    rng = random.Random(5)
    for _ in range(4):
        proc = subprocess.Popen(uploader_cmd(config, "--once"), env=env, cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        index = folder / "index" / "metadata.parquet"
        if index.exists():
            assert all((folder / row["shard"]).is_file() for row in pq.read_table(index).to_pylist())
    assert run_uploader(config, env, "--once").returncode == 0
    rows = pq.read_table(folder / "index" / "metadata.parquet").to_pylist()
    assert sorted(r["episode_id"] for r in rows) == sorted(e[0] for e in episodes)
    for row in rows:
        data = (folder / row["shard"]).read_bytes()
        assert all(hashlib_sha256(data[m["offset"]:m["offset"] + m["size"]]) == m["sha256"] for m in row["members"])
    assert sorted(line["episode_id"] for line in ledger_lines(tmp_path)) == sorted(e[0] for e in episodes)


def test_an_episode_whose_file_differs_from_its_manifest_stays_out_of_the_shard(tmp_path):
    episodes = publish_many(tmp_path, 3)
    bad_id, bad_rel, bad_files, _ = episodes.pop(1)
    (tmp_path / "output" / bad_rel / "tracks.npz").write_bytes(b"\1" * len(bad_files["tracks.npz"]))
    folder = tmp_path / "repo" / "meta"
    config = write_config(tmp_path, metadata_repo=f"file://{folder}", hub_layout="shards")
    result = run_uploader(config, uploader_env(None, tmp_path, token=None), "--once")
    assert result.returncode == 1
    assert f"failed file://{folder} {bad_id}: checksum or file differs from the manifest" in result.stdout
    rows = pq.read_table(folder / "index" / "metadata.parquet").to_pylist()
    assert sorted(r["episode_id"] for r in rows) == sorted(e[0] for e in episodes)
    with tarfile.open(folder / rows[0]["shard"]) as tar:
        assert not any(name.startswith(episode_key(bad_id)) for name in tar.getnames())


def test_an_episode_whose_types_conflict_with_the_published_ones_stays_out(tmp_path):
    """The types the index keeps must hold every published episode: one whose quality.json has a
    dict where the others have a number fails, named, and the others publish with their types."""
    from droid_pipeline import shard_features

    episodes = []
    for index in range(3):
        episode_id = f"LAB+0000abcd+2023-08-18-12h-00m-{index:02d}s"
        rel = f"LAB/success/2023-08-18/Fri_Aug_18_12:00:{index:02d}_2023"
        files = shard_episode_files("metadata", index, episode_id, rel)
        if index == 1:
            quality = json.loads(files["quality.json"])
            files["quality.json"] = json.dumps({**quality, "path_length_mm": {"value": 12.5}}).encode()
        work = tmp_path / "work" / str(index)
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        publish_episode(work, tmp_path / "output", rel, episode_id, "metadata", tmp_path / "run")
        episodes.append(episode_id)
    folder = tmp_path / "repo" / "meta"
    config = write_config(tmp_path, metadata_repo=f"file://{folder}", hub_layout="shards")
    result = run_uploader(config, uploader_env(None, tmp_path, token=None), "--once")
    assert result.returncode == 1
    assert f"failed file://{folder} {episodes[1]}: cannot go into a shard: episode {episodes[1]}: its members' " \
           "types differ from those already published" in result.stdout
    rows = pq.read_table(folder / "index" / "metadata.parquet").to_pylist()
    assert sorted(r["episode_id"] for r in rows) == [episodes[0], episodes[2]]
    with tarfile.open(folder / rows[0]["shard"]) as tar:
        assert not any(name.startswith(episode_key(episodes[1])) for name in tar.getnames())
    assert shard_features(folder)["quality.json"]["path_length_mm"].dtype == "float64"
