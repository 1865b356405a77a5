"""The Arrow types of shard members the uploader keeps with the index: each member typed as
``datasets``' webdataset builder decodes it (checked against ``datasets``' own inference), types
merged across episodes holding every episode's values (null then a value, int then float, a
struct's keys in some episodes only), a conflict naming its episode, and the types' round trip
through the index file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from droid_pipeline.publish import index as episode_index
from droid_pipeline.publish.shards import ShardEpisode, ShardError, SourceFile, episode_types, merge_types

ROLES = {"111": "wrist", "222": "ext1"}


def episode(folder: Path, number: int, quality: dict) -> ShardEpisode:
    """An episode of quality.json, a tracks.npz of assorted arrays and the wrist's intrinsics.json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(number)
    (folder / "quality.json").write_text(json.dumps(quality))
    np.savez(folder / "tracks.npz", tracks_3d=rng.normal(size=(4 + number, 2, 3)).astype(np.float32),
             keep=rng.random(4 + number) > 0.5, keep_computed=np.array(True),
             camera_serials=np.array(["111", "222", ""]), occlusion_ext1=np.zeros((4 + number, 2), np.uint8))
    (folder / "recordings" / "111").mkdir(parents=True)
    (folder / "recordings" / "111" / "intrinsics.json").write_text(json.dumps({"fx": 500 + number}))
    files = tuple(SourceFile(str(path.relative_to(folder)), path, path.stat().st_size, "")
                  for path in folder.rglob("*") if path.is_file())
    return ShardEpisode(f"LAB+{number:08x}+2023-08-18-12h-00m-00s", ROLES, files, 0)


def decoded(shard_episode: ShardEpisode) -> dict:
    """The episode's members as datasets' webdataset builder decodes them (json.loads, np.load)."""
    sample: dict = {}
    for file in shard_episode.ordered():
        name = shard_episode.member_name(file).split(".", 1)[1]
        data = file.local_path.read_bytes()
        sample[name] = json.loads(data) if name.endswith(".json") else dict(np.load(io.BytesIO(data)))
    return sample


def test_member_types_are_datasets_own_inference(tmp_path):
    from datasets.features.features import cast_to_python_objects

    one = episode(tmp_path / "0", 0, {"depth": {"ext1": {"frames": 3, "scale": 0.5}}, "metric": 0.25,
                                      "warnings": ["a"]})
    inferred = pa.Table.from_pylist(cast_to_python_objects([decoded(one)], only_1d_for_numpy=True)).schema
    ours = episode_types(one)
    assert set(ours.names) == {"quality.json", "tracks.npz", "wrist.intrinsics.json"}
    for field in ours:
        assert field.type == inferred.field(field.name).type, field.name


def test_merged_types_hold_every_episode(tmp_path):
    qualities = [{"depth": {"ext1": None}, "metric": 0, "warnings": [], "cam2base": {"wrist": None}},
                 {"depth": {"ext1": None}, "metric": 1, "warnings": [], "cam2base": {"wrist": None}},
                 {"depth": {"ext1": {"frames": 3, "scale": 0.5}}, "metric": 0.33, "warnings": ["late"],
                  "cam2base": {"wrist": {"serial": "111", "pose": [0.0, 1.5]}, "other": "{}"}}]
    episodes = [episode(tmp_path / str(n), n, q) for n, q in enumerate(qualities)]
    types = None
    for item in episodes:
        types = merge_types(types, episode_types(item), item.episode_id)
    assert types is not None
    quality = types.field("quality.json").type
    assert quality.field("metric").type == pa.float64()
    assert quality.field("depth").type.field("ext1").type == pa.struct([("frames", pa.int64()),
                                                                        ("scale", pa.float64())])
    samples = [decoded(item) for item in episodes]
    table = pa.Table.from_pylist([{name: sample[name] for name in ("quality.json", "wrist.intrinsics.json")}
                                  for sample in samples],
                                 schema=pa.schema([types.field("quality.json"), types.field("wrist.intrinsics.json")]))
    back = table.to_pylist()
    assert back[2]["quality.json"]["depth"] == qualities[2]["depth"]
    assert back[2]["quality.json"]["cam2base"] == qualities[2]["cam2base"]
    assert [row["quality.json"]["metric"] for row in back] == [0.0, 1.0, 0.33]
    assert back[0]["quality.json"]["cam2base"] == {"wrist": None, "other": None}


def test_a_type_conflict_names_the_episode(tmp_path):
    first = episode(tmp_path / "0", 0, {"calibration": {"wrist": {"file": "a.json"}}})
    second = episode(tmp_path / "1", 1, {"calibration": {"wrist": "a.json"}})
    with pytest.raises(ShardError, match="incompatible") as raised:
        merge_types(episode_types(first), episode_types(second), second.episode_id)
    assert raised.value.episode_id == second.episode_id


def test_mixed_json_list_cannot_be_typed_and_names_the_episode(tmp_path):
    item = episode(tmp_path / "0", 0, {"values": [1, "two"]})
    with pytest.raises(ShardError, match="quality.json: cannot be typed") as raised:
        episode_types(item)
    assert raised.value.episode_id == item.episode_id


def test_types_round_trip_through_the_index(tmp_path):
    item = episode(tmp_path / "0", 0, {"depth": {"ext1": None}})
    types = episode_types(item)
    path = tmp_path / "index.parquet"
    episode_index.write_index(path, episode_index.empty_table(), next_shard=3, kind="metadata", types=types)
    assert episode_index.read_index(path)[1:] == (3, types)
    episode_index.write_index(path, episode_index.empty_table(), next_shard=3, kind="metadata", types=None)
    assert episode_index.read_index(path)[2] is None
