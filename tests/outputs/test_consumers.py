"""Every consumer reads every episode the same way (output schema 5): twelve synthetic episodes from
seven labs (so seven sets of camera serials), some with idle stretches written into their h5 and some
with DROID language annotations, converted and published as WebDataset shards by the real uploader,
then read back with Hugging Face ``datasets`` (its webdataset builder, normal and streaming), with
the ``webdataset`` package, with ``iter_episodes(part=...)`` as a DataLoader's workers would, and
the index with ``datasets``' own loader against the repo folder. The idle-step mask is checked
against an implementation of openpi's rule written here, and a schema-4 episode made by the previous
writer still loads and verifies."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from uploads import run_uploader, uploader_env, write_config

from droid_pipeline import iter_episodes, load_episode, shard_features
from droid_pipeline.core.config import IdleFilterConfig, load_config
from droid_pipeline.core.schema import CAMERA_ROLES, SCHEMA_VERSION, TRACKS_NPZ
from droid_pipeline.outputs.verify import verify_episode
from droid_pipeline.publish.shards import episode_id_of
from droid_pipeline.publish.staging import finished_state, publish_episode
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import droid_keep_mask, generate_tracks, published_metadata
from droid_pipeline.synthetic.generator import generate_dataset

pytestmark = pytest.mark.slow

EPISODES = 12
FRAMES = 16
# Idle stretches written into action/joint_velocity: episode number -> [start, end) runs where the
# commanded velocities stay exactly those of the step before the run.
IDLE_RUNS = {0: [(3, 8)], 4: [(1, 3), (9, 15)], 7: [(5, 11)], 10: [(2, 4), (6, 8), (12, 16)]}
IDLE_RULE = {"min_idle_steps": 3, "min_kept_steps": 4, "cut_last_steps": 2}
# DROID language annotations for some episodes: none of the first six, so readers that take value
# types from the first samples meet the unannotated ones first.
ANNOTATED = (6, 8, 11)
# Metadata paths older recorders did not write: absent from the raw metadata of every episode but
# the last published, so quality.json has null there in the first samples of a shard and a string
# in the last (and only the last has a recorder key outside the fixed set, so ``other`` too).
LATE_METADATA = ("left_mp4_path", "right_mp4_path")
# The first episode published: its ext2 camera left without intrinsics (allow_missing_intrinsics),
# so its shard holds a stub ext2.intrinsics.json where every other episode has the file.
NO_INTRINSICS = (0, "ext2")
SCHEMA4 = Path(__file__).resolve().parents[1] / "data" / "schema4"
PER_CAMERA = ("tracks_2d", "visibility", "occlusion", "intrinsics", "distortion", "image_size")


def openpi_keep(joint_velocity: np.ndarray, min_idle: int, min_kept: int, cut_last: int) -> np.ndarray:
    """Physical-Intelligence/openpi examples/droid/compute_droid_nonidle_ranges.py, step by step as
    it is written there (padded diffs of the idle flags, then of the kept mask, ranges shortened at
    their end), returned as a mask instead of ranges."""
    steps = len(joint_velocity)
    idle = np.hstack([[False], np.all(np.abs(joint_velocity[1:] - joint_velocity[:-1]) < 1e-3, axis=1)])
    change = np.diff(np.concatenate([[False], idle, [False]]).astype(int))
    idle_starts, idle_ends = np.where(change == 1)[0], np.where(change == -1)[0]
    long_runs = (idle_ends - idle_starts) >= min_idle
    keep = np.ones(steps, dtype=bool)
    for start, end in zip(idle_starts[long_runs], idle_ends[long_runs]):
        keep[start:end] = False
    change = np.diff(np.concatenate([[False], keep, [False]]).astype(int))
    kept_starts, kept_ends = np.where(change == 1)[0], np.where(change == -1)[0]
    long_kept = (kept_ends - kept_starts) >= min_kept
    mask = np.zeros(steps, dtype=bool)
    for start, end in zip(kept_starts[long_kept], kept_ends[long_kept]):
        mask[start:end - cut_last] = True     # openpi's range (start, end - cut_last)
    return mask


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> dict:
    """The twelve episodes converted, published once into a one-shard repo folder and once into a
    three-shard one (the real uploader, shards layout)."""
    root = tmp_path_factory.mktemp("consumers")
    info = generate_dataset(root / "synthetic", episodes=EPISODES, frames=FRAMES, size=(320, 180), seed=3)
    for number, runs in IDLE_RUNS.items():
        with h5py.File(info.droid_root / info.episodes[number].relative_path / "trajectory.h5", "r+") as h5:
            velocity = h5["action/joint_velocity"][...]
            for start, end in runs:
                velocity[start:end] = velocity[max(start - 1, 0)]
            h5["action/joint_velocity"][...] = velocity
    for number, planned in enumerate(info.episodes):
        (path,) = (info.droid_root / planned.relative_path).glob("metadata_*.json")
        metadata = json.loads(path.read_text())
        if number < EPISODES - 1:
            for key in LATE_METADATA:
                del metadata[key]
        else:
            metadata["newer_recorder_field"] = 0.5
        path.write_text(json.dumps(metadata))
    annotations = {info.episodes[n].episode_id: {f"language_instruction{i}": f"task {n} wording {i}"
                                                 for i in (1, 2, 3)} for n in ANNOTATED}
    (root / "droid_language_annotations.json").write_text(json.dumps(annotations))
    config = load_config([info.config_path], [
        f"output_root={root / 'output'}", f"run_root={root / 'run'}", f"episode_index_path={root / 'index.json'}",
        f"language_annotations_file={root / 'droid_language_annotations.json'}", "allow_missing_intrinsics=true",
        *(f"idle_filter.{key}={value}" for key, value in IDLE_RULE.items())])
    index = build_index(config.droid_root, config.index_path)
    episodes = [index.get(e.episode_id) for e in info.episodes]
    for number, episode in enumerate(episodes):
        work = root / "work" / str(number)
        extract_intrinsics(config, episode, work)
        if number == NO_INTRINSICS[0]:   # as the intrinsics step leaves out a camera no source covers
            (work / "recordings" / episode.serials[NO_INTRINSICS[1]] / "intrinsics.json").unlink()
        generate_tracks(config, episode, work)
        publish_episode(work, config.output_root, episode.relative_path, episode.episode_id, "metadata",
                        config.run_root)
    folders = {}
    for name, per_shard in (("one", EPISODES), ("three", 4)):
        folders[name] = root / "repos" / name
        upload = write_config(root, metadata_repo=f"file://{folders[name]}", hub_layout="shards",
                              shard_max_episodes=per_shard, delete_after_upload=False)
        done = run_uploader(upload, uploader_env(None, root, token=None), "--once")
        assert done.returncode == 0, done.stdout + done.stderr
    return {"root": root, "info": info, "episodes": episodes, "output": config.output_root, "repos": folders,
            "annotations": annotations}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """Hugging Face caches of this test only."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    return tmp_path / "hf_datasets"


def shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in (folder / "shards").rglob("*.tar"))


def episode_files(repo: dict, episode_id: str) -> dict:
    episode = next(e for e in repo["episodes"] if e.episode_id == episode_id)
    folder = repo["output"] / episode.relative_path
    with np.load(folder / "tracks.npz", allow_pickle=False) as data:
        tracks = {key: data[key] for key in data.files}
    intrinsics = {role: json.loads(path.read_text()) if (path := folder / "recordings" / serial / "intrinsics.json")
                  .is_file() else None for role, serial in episode.serials.items()}
    return {"tracks": tracks, "quality": json.loads((folder / "quality.json").read_text()), "episode": episode,
            "intrinsics": intrinsics}


def json_keys(value: object, prefix: str = "") -> set[str]:
    """Every dict key path in a JSON value (list items share their paths)."""
    if isinstance(value, dict):
        return {f"{prefix}/{k}" for k in value} | {p for k, v in value.items() for p in json_keys(v, f"{prefix}/{k}")}
    if isinstance(value, list):
        return {p for item in value for p in json_keys(item, f"{prefix}[]")}
    return set()


def assert_tracks_equal(sample_tracks: dict, files: dict) -> None:
    """Every array of the published tracks.npz, as a reader got it, equal to the episode's file."""
    assert set(sample_tracks) == set(files["tracks"])
    for key, expected in files["tracks"].items():
        got = np.asarray(sample_tracks[key], dtype=expected.dtype) if expected.dtype.kind != "U" \
            else np.asarray(sample_tracks[key]).astype(str)
        np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=key)


def test_the_episodes_differ_in_serials_but_not_in_keys(repo):
    serial_sets = {tuple(e.serials[r] for r in CAMERA_ROLES) for e in repo["episodes"]}
    assert len(serial_sets) >= 5
    keys = {frozenset(episode_files(repo, e.episode_id)["tracks"]) for e in repo["episodes"]}
    assert keys == {frozenset(TRACKS_NPZ.expected())}
    lacking = repo["episodes"][NO_INTRINSICS[0]]
    quality_keys = {frozenset(json_keys(episode_files(repo, e.episode_id)["quality"])) for e in repo["episodes"]
                    if e is not lacking}
    assert len(quality_keys) == 1
    # a camera without intrinsics has null where the others have its intrinsics and occlusion counts
    (every_key,) = quality_keys
    quality = episode_files(repo, lacking.episode_id)["quality"]
    role = NO_INTRINSICS[1]
    assert quality["intrinsics"][role] is None and quality["occlusion"]["cameras"][role] is None
    assert every_key - json_keys(quality) == {key for key in every_key if key.startswith(
        (f"/intrinsics/{role}/", f"/occlusion/cameras/{role}/"))}
    for episode in repo["episodes"]:
        files = episode_files(repo, episode.episode_id)
        assert files["tracks"]["camera_serials"].tolist() == [episode.serials[r] for r in CAMERA_ROLES]
        assert not any(serial in key for serial in episode.serials.values()
                       for key in (*files["tracks"], *json_keys(files["quality"]))), episode.episode_id


def test_the_first_samples_of_a_shard_have_nulls_a_later_one_fills(repo):
    """What makes ``datasets``' inference from the first five samples fail: the published files
    have null where the last episode of the shard has a value."""
    (shard,) = shards(repo["repos"]["one"])
    with tarfile.open(shard) as tar:
        metadata = [json.loads(tar.extractfile(m).read())["metadata"] for m in tar.getmembers()   # type: ignore[union-attr]
                    if m.name.endswith(".quality.json")]
    assert len(metadata) == EPISODES
    assert all(m[key] is None for m in metadata[:-1] for key in (*LATE_METADATA, "other"))
    assert all(isinstance(metadata[-1][key], str) for key in (*LATE_METADATA, "other"))


@pytest.mark.parametrize("repo_name, streaming", [("one", False), ("one", True), ("three", False)],
                         ids=["one-shard", "one-shard-streaming", "three-shards"])
def test_datasets_webdataset_builder_reads_every_episode_whole(repo, hf_cache, repo_name, streaming):
    """With the features the package declares from the index, every episode reads whole, the fields
    null in the first samples included; over three shards only the last of which has those values,
    so their types come from the index, kept across the uploader's commits."""
    import datasets

    features = shard_features(repo["repos"][repo_name])
    assert features == shard_features(repo["repos"]["one"])
    loaded = datasets.load_dataset("webdataset", data_files=shards(repo["repos"][repo_name]), split="train",
                                   streaming=streaming, features=features, cache_dir=str(hf_cache))
    samples = list(loaded)
    assert sorted(episode_id_of(s["__key__"]) for s in samples) == sorted(e.episode_id for e in repo["episodes"])
    assert len({frozenset(s) for s in samples}) == 1
    for sample in samples:
        files = episode_files(repo, episode_id_of(sample["__key__"]))
        assert_tracks_equal(sample["tracks.npz"], files)
        for role in CAMERA_ROLES:   # a camera without intrinsics: its member None, its tracks NaN
            assert sample[f"{role}.intrinsics.json"] == files["intrinsics"][role]
            tracks_2d = np.asarray(sample["tracks.npz"][f"tracks_2d_{role}"], dtype=np.float32)
            assert np.isfinite(tracks_2d).all() if files["intrinsics"][role] else np.isnan(tracks_2d).all()
        assert sample["quality.json"] == files["quality"]
        for i in (1, 2, 3):
            key = f"language_instruction_{i}"
            assert sample["quality.json"][key] == \
                repo["annotations"].get(files["episode"].episode_id, {}).get(f"language_instruction{i}", "")
    late = [s["quality.json"]["metadata"] for s in samples if s["quality.json"]["metadata"]["other"] is not None]
    assert len(late) == 1 and all(isinstance(late[0][key], str) for key in LATE_METADATA)
    missing = [(episode_id_of(s["__key__"]), role) for s in samples for role in CAMERA_ROLES
               if s[f"{role}.intrinsics.json"] is None]
    assert missing == [(repo["episodes"][NO_INTRINSICS[0]].episode_id, NO_INTRINSICS[1])]


def test_webdataset_package_reads_every_episode_whole(repo):
    import webdataset

    samples = list(webdataset.WebDataset(shards(repo["repos"]["three"]), shardshuffle=False))
    assert sorted(episode_id_of(s["__key__"]) for s in samples) == sorted(e.episode_id for e in repo["episodes"])
    assert len({frozenset(k for k in s if not k.startswith("__")) for s in samples}) == 1
    for sample in samples:
        files = episode_files(repo, episode_id_of(sample["__key__"]))
        with np.load(io.BytesIO(sample["tracks.npz"]), allow_pickle=False) as tracks:
            assert_tracks_equal({key: tracks[key] for key in tracks.files}, files)
        assert json.loads(sample["quality.json"]) == files["quality"]
        for role in CAMERA_ROLES:   # the stub of a camera without intrinsics is JSON null
            assert json.loads(sample[f"{role}.intrinsics.json"]) == files["intrinsics"][role]


def test_dataloader_parts_see_every_episode_exactly_once(repo):
    """A DataLoader-style loop: 2 ranks x 3 workers over the 3-shard repo (fewer shards than parts:
    split by episode), and 3 parts (one shard each)."""
    folder = repo["repos"]["three"]
    assert len(shards(folder)) == 3
    everyone = sorted(e.episode_id for e in repo["episodes"])
    for world_size, workers in ((2, 3), (1, 3), (1, 1)):
        seen: list[str] = []
        for rank in range(world_size):
            for worker in range(workers):
                part = (rank * workers + worker, world_size * workers)
                loaded = list(iter_episodes(folder, part=part))
                got = [episode.episode_id for episode in loaded]
                assert got, part
                for episode in loaded:   # the stub is no file: the camera reads as one without intrinsics
                    lacking = episode.episode_id == repo["episodes"][NO_INTRINSICS[0]].episode_id
                    assert (episode.camera(NO_INTRINSICS[1]).tracks_2d is None) == lacking
                seen += got
        assert sorted(seen) == everyone, (world_size, workers)
    successes = [e.episode_id for e in repo["episodes"] if e.outcome == "success"]
    filtered = [ep.episode_id for i in range(3)
                for ep in iter_episodes(folder, filter=lambda row: row["outcome"] == "success", part=(i, 3))]
    assert sorted(filtered) == sorted(successes)


def test_keep_follows_droid_idle_rule(repo):
    rule = IdleFilterConfig(**IDLE_RULE)
    some_dropped = 0
    for number, episode in enumerate(repo["episodes"]):
        files = episode_files(repo, episode.episode_id)
        with h5py.File(repo["info"].droid_root / episode.relative_path / "trajectory.h5", "r") as h5:
            velocity = h5["action/joint_velocity"][...]
        expected = openpi_keep(velocity, *IDLE_RULE.values())
        np.testing.assert_array_equal(files["tracks"]["keep"], expected, err_msg=episode.episode_id)
        assert bool(files["tracks"]["keep_computed"]) is True
        assert files["quality"]["kept_fraction"] == pytest.approx(expected.mean())
        assert files["quality"]["idle_filter"] == IDLE_RULE
        some_dropped += number in IDLE_RUNS and not expected[:-IDLE_RULE["cut_last_steps"]].all()
    assert some_dropped == len(IDLE_RUNS)
    assert droid_keep_mask(None, rule) is None


def test_keep_with_droid_numbers_matches_openpi_on_varied_idle_stretches():
    """DROID's own numbers (7, 16, 10) on 300-step sequences with idle runs of every length near
    the thresholds, kept runs near 16, idle at the start and at the end."""
    rng = np.random.default_rng(7)
    defaults = load_config([]).idle_filter
    assert (defaults.min_idle_steps, defaults.min_kept_steps, defaults.cut_last_steps) == (7, 16, 10)
    for trial in range(200):
        velocity = rng.normal(size=(300, 7))
        position = 0 if trial % 4 == 0 else int(rng.integers(0, 40))
        while position < 300:
            length = int(rng.integers(1, 12))
            velocity[position:position + length] = velocity[max(position - 1, 0)]
            position += length + int(rng.integers(1, 30))
        if trial % 5 == 0:
            velocity[-9:] = velocity[-10]
        if trial % 7 == 0:   # one joint changing by less than the threshold still counts as idle
            velocity[50:60, 3] += np.linspace(0, 5e-3, 10)
        expected = openpi_keep(velocity, 7, 16, 10)
        np.testing.assert_array_equal(droid_keep_mask(velocity, defaults), expected, err_msg=str(trial))


def test_index_has_language_join_and_keep_columns(repo, hf_cache):
    import datasets

    folder = repo["repos"]["three"]
    index = datasets.load_dataset(str(folder), split="train", cache_dir=str(hf_cache))
    rows = {row["episode_id"]: row for row in index}
    assert sorted(rows) == sorted(e.episode_id for e in repo["episodes"])
    for episode in repo["episodes"]:
        row, files = rows[episode.episode_id], episode_files(repo, episode.episode_id)
        assert row["camera_serials"] == [episode.serials[r] for r in CAMERA_ROLES]
        assert row["current_task"] == files["quality"]["metadata"]["current_task"] and row["current_task"]
        wanted = repo["annotations"].get(episode.episode_id)
        for i in (1, 2, 3):
            assert row[f"language_instruction_{i}"] == ("" if wanted is None else wanted[f"language_instruction{i}"])
        prefix = f"gs://xembodiment_data/r2d2/r2d2-data-full/{episode.relative_path}"
        assert (row["file_path"], row["recording_folderpath"]) == (f"{prefix}/trajectory.h5",
                                                                   f"{prefix}/recordings/MP4")
        assert row["kept_fraction"] == pytest.approx(float(files["tracks"]["keep"].mean()))
        assert row["visible_fraction_ext1"] == pytest.approx(files["quality"]["visible_fraction"]["ext1"])


def test_every_config_the_card_declares_loads_with_datasets(repo, hf_cache):
    import datasets

    folder = repo["repos"]["three"]
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    names = [config["config_name"] for config in front["configs"]]
    assert names and sum(bool(config.get("default")) for config in front["configs"]) == 1
    for name in names:
        loaded = datasets.load_dataset(str(folder), name, split="train", cache_dir=str(hf_cache))
        assert len(loaded) == EPISODES, name
    default = datasets.load_dataset(str(folder), split="train", cache_dir=str(hf_cache))
    assert "episode_id" in default.column_names and len(default) == EPISODES


def test_metadata_is_published_with_one_key_set_whatever_the_recorder_version():
    older = {"uuid": "LAB+1+2023-01-01-00h-00m-00s", "r2d2_version": "1.1", "current_task": "stack the cups",
             "wrist_svo_path": "x.svo"}
    newer = {"uuid": "LAB+2+2024-01-01-00h-00m-00s", "droid_version": "1.3", "current_task": "open the drawer",
             "wrist_svo_path": "y.svo", "wrist_mp4_path": "y.mp4", "left_mp4_path": "l.mp4", "new_field": [1, 2]}
    first, second = published_metadata(older), published_metadata(newer)
    assert list(first) == list(second)
    assert (first["droid_version"], first["version_key"]) == ("1.1", "r2d2_version")
    assert (second["droid_version"], second["version_key"]) == ("1.3", "droid_version")
    assert first["wrist_mp4_path"] is None and second["wrist_mp4_path"] == "y.mp4"
    assert first["other"] is None and json.loads(second["other"]) == {"new_field": [1, 2]}


def test_schema_4_episode_still_loads_and_verifies(tmp_path):
    root = tmp_path / "output"
    shutil.copytree(SCHEMA4, root)
    folder = next(p.parent for p in root.rglob("tracks.npz"))
    data = load_episode(folder)
    assert data.schema_version == 4 and len(data.cameras_with_2d_tracks) == 3
    with np.load(folder / "tracks.npz", allow_pickle=False) as tracks:
        for serial in tracks["cameras_with_2d_tracks"]:
            camera = data.cameras[str(serial)]
            np.testing.assert_array_equal(camera.tracks_2d, tracks[f"tracks_2d_{serial}"])
            assert data.camera(camera.role) is camera
    report = verify_episode(folder, root)
    assert report.ok, report.problems
    state, reason = finished_state(folder)     # what the drivers read: a schema-4 episode is redone
    assert state == "stale-schema" and f"current is {SCHEMA_VERSION}" in reason
