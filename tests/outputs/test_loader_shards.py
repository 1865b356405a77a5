"""Sharded repos read back: load_episode by HTTP range requests (bytes the loopback Hub sent, counted)
and from a local shard folder, iter_episodes streaming whole shards, and verify over a folder and
a hf:// URL; arrays compared with the pipeline's own output files read by np.load and ffmpeg."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hub_server import HubServer
from synthetic_fixtures import converted_small_dataset
from test_loader import assert_same_arrays, ffmpeg_depth, npz
from uploads import REPO_ROOT

from droid_pipeline.cli.verify import main as verify_main
from droid_pipeline.core.config import load_config
from droid_pipeline.outputs.loader import LoadError, iter_episodes, load_episode, shard_features
from droid_pipeline.publish.staging import publish_episode
from droid_pipeline.publish.uploader import Uploader

META, FULL = "user/droid-meta", "user/droid-full"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    return converted_small_dataset(tmp_path_factory)


def republish(converted: dict, root: Path) -> None:
    """The converted episodes published again into a staging area of our own (episode 0 full)."""
    for number, episode in enumerate(converted["episodes"]):
        work = root / "work" / str(number)
        shutil.copytree(converted["root"] / episode.relative_path, work, ignore=shutil.ignore_patterns("manifest.json"))
        publish_episode(work, root / "output", episode.relative_path, episode.episode_id,
                        "full" if number == 0 else "metadata", root / "run")


def upload(root: Path, **keys: str) -> None:
    config = load_config([], [f"run_root={root / 'run'}", f"output_root={root / 'output'}",
                              *(f"{k}={v}" for k, v in keys.items())])
    report = Uploader(config, root / "run", token=None).run_batch()
    assert report.exit_code == 0, report.summary()


@pytest.fixture()
def hub(converted, tmp_path, monkeypatch):
    """The converted episodes uploaded as shards to a metadata and a full repo on a loopback Hub."""
    from huggingface_hub import constants

    with HubServer(tmp_path / "hub") as server:
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        republish(converted, tmp_path)
        upload(tmp_path, metadata_repo=f"hf://datasets/{META}", full_repo=f"hf://datasets/{FULL}")
        server.bytes_sent.clear()
        yield server


def index_rows(hub: HubServer, repo: str, kind: str) -> dict[str, dict]:
    import io

    table = pq.read_table(io.BytesIO(hub.read(repo, f"index/{kind}.parquet")))
    return {row["episode_id"]: row for row in table.to_pylist()}


def shard_bytes_sent(hub: HubServer, repo: str) -> dict[str, int]:
    return {path: n for (repo_id, path), n in hub.bytes_sent.items() if repo_id == repo and path.startswith("shards/")}


def assert_same_episode(got, folder: Path) -> None:
    assert_same_arrays(got.tracks_npz, npz(folder / "tracks.npz"))
    assert_same_arrays(got.extrinsics_npz, npz(folder / "extrinsics.npz"))


def test_one_episode_from_the_hub_reads_only_its_byte_ranges(converted, hub, tmp_path):
    episode = converted["episodes"][1]
    rows = index_rows(hub, META, "metadata")
    assert len({row["shard"] for row in rows.values()}) == 1  # all three share one shard
    data = load_episode(f"hf://datasets/{META}", episode.episode_id, cache_dir=tmp_path / "cache")
    assert_same_episode(data, converted["root"] / episode.relative_path)
    assert data.relative_path == episode.relative_path and data.episode_id == episode.episode_id
    row = rows[episode.episode_id]
    sent = shard_bytes_sent(hub, META)
    assert sent == {row["shard"]: sum(m["size"] for m in row["members"])}
    assert sent[row["shard"]] < len(hub.read(META, row["shard"])) / 2
    hub.bytes_sent.clear()
    again = load_episode(f"hf://datasets/{META}", episode.relative_path, cache_dir=tmp_path / "cache")
    assert again.path == data.path and shard_bytes_sent(hub, META) == {}  # the cached copy


def test_a_full_episode_from_the_hub_with_and_without_depth(converted, hub, tmp_path):
    episode = converted["episodes"][0]
    folder = converted["root"] / episode.relative_path
    data = load_episode(f"hf://datasets/{FULL}", episode.episode_id, cache_dir=tmp_path / "cache")
    assert_same_episode(data, folder)
    serial = data.camera("ext1").serial
    with data.depth("ext1") as reader:
        np.testing.assert_array_equal(reader.read_all(), ffmpeg_depth(folder / "recordings" / serial / "depth.mkv"))
    row = index_rows(hub, FULL, "full")[episode.episode_id]
    files = [m for m in row["members"] if m["path"]]   # stubs (no path) hold no file and are not fetched
    assert len(files) < len(row["members"])
    assert shard_bytes_sent(hub, FULL) == {row["shard"]: sum(m["size"] for m in files)}
    hub.bytes_sent.clear()
    light = load_episode(f"hf://datasets/{FULL}", episode.episode_id, cache_dir=tmp_path / "cache",
                         include_depth=False)
    assert light.depth_cameras == ()
    depth = sum(m["size"] for m in row["members"] if m["path"].endswith(("depth.mkv", "depth_meta.json")))
    assert shard_bytes_sent(hub, FULL) == {row["shard"]: sum(m["size"] for m in files) - depth}
    with pytest.raises(LoadError, match="is not in index/full.parquet"):
        load_episode(f"hf://datasets/{FULL}", converted["episodes"][1].episode_id, cache_dir=tmp_path / "cache")


def test_iter_episodes_streams_whole_shards_and_keeps_what_the_filter_accepts(converted, hub):
    wanted = [e for e in converted["episodes"] if e.outcome == "success"]
    assert 0 < len(wanted) < len(converted["episodes"])
    got = list(iter_episodes(f"hf://datasets/{META}", filter=lambda row: row["outcome"] == "success",
                             include_depth=False))
    assert sorted(e.episode_id for e in got) == sorted(e.episode_id for e in wanted)
    shard = next(iter(index_rows(hub, META, "metadata").values()))["shard"]
    assert shard_bytes_sent(hub, META) == {shard: len(hub.read(META, shard))}  # the whole shard, once
    features = shard_features(f"hf://datasets/{META}")   # the member types, from the index's footer
    assert {"__key__", "__url__", "quality.json", "tracks.npz", "ext1.intrinsics.json"} <= set(features)
    assert features["tracks.npz"]["tracks_3d"].feature.feature.feature.dtype == "float32"


def test_a_local_shard_folder_reads_like_the_hub(converted, tmp_path):
    republish(converted, tmp_path)
    folder = tmp_path / "repo"
    upload(tmp_path, metadata_repo=f"file://{folder / 'meta'}", full_repo=f"file://{folder / 'full'}",
           hub_layout="shards")
    for episode in converted["episodes"]:
        data = load_episode(folder / "meta", episode.episode_id, cache_dir=tmp_path / "cache")
        assert_same_episode(data, converted["root"] / episode.relative_path)
        assert ":" not in str(data.path.relative_to(tmp_path))  # cache folders are named by key
    full = converted["episodes"][0]
    streamed = []
    for episode in iter_episodes(folder / "full"):  # depth read before the next episode is asked for
        streamed.append(episode.episode_id)
        expected = converted["root"] / full.relative_path / "recordings" / episode.camera("ext1").serial
        with episode.depth("ext1") as reader:
            np.testing.assert_array_equal(reader.read_all(), ffmpeg_depth(expected / "depth.mkv"))
    assert streamed == [full.episode_id]
    with pytest.raises(LoadError, match="not a sharded repo"):
        list(iter_episodes(converted["root"]))


def test_verify_checks_every_member_of_a_shard_folder_and_a_hub_repo(converted, hub, tmp_path, capsys):
    assert verify_main([f"hf://datasets/{FULL}", "--no-progress"]) == 0
    assert "1 of 1 episodes pass" in capsys.readouterr().out
    assert verify_main([f"hf://datasets/{META}", "--no-progress", "--no-depth-decode"]) == 0
    # a folder laid out like the metadata repo, one member byte flipped
    folder = tmp_path / "copy"
    for path in hub.repo(META).files:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(hub.read(META, path))
    ok = subprocess.run([sys.executable, "-m", "droid_pipeline.verify", str(folder), "--no-progress"],
                        capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    row = index_rows(hub, META, "metadata")[converted["episodes"][2].episode_id]
    member = next(m for m in row["members"] if m["path"] == "extrinsics.npz")
    shard = folder / row["shard"]
    data = bytearray(shard.read_bytes())
    data[member["offset"] + member["size"] // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with tarfile.open(shard) as tar:  # still a valid tar: only the member's content changed
        assert member["name"] in tar.getnames()
    bad = subprocess.run([sys.executable, "-m", "droid_pipeline.verify", str(folder), "--no-progress"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 1
    assert "member extrinsics.npz: sha256 differs from the index" in bad.stdout
    assert "member extrinsics.npz (extrinsics.npz) differs from manifest.json" in bad.stdout
    assert "2 of 3 episodes pass, 1 FAILED" in bad.stdout
    # the full repo's stubs (camera files the episode lacks) pass; one changed is caught
    full = tmp_path / "full"
    for path in hub.repo(FULL).files:
        (full / path).parent.mkdir(parents=True, exist_ok=True)
        (full / path).write_bytes(hub.read(FULL, path))
    (row,) = index_rows(hub, FULL, "full").values()
    stub = next(m for m in row["members"] if m["path"] == "" and m["name"].endswith(".json"))
    shard = full / row["shard"]
    data = bytearray(shard.read_bytes())
    assert data[stub["offset"]:stub["offset"] + stub["size"]] == b"null"
    data[stub["offset"]] = ord("N")
    shard.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, "-m", "droid_pipeline.verify", str(full), "--no-progress"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 1
    suffix = stub["name"].partition(".")[2]
    assert f"member {suffix} is listed as a stub but is not one" in bad.stdout
