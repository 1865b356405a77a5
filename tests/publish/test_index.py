"""The episode index's columns from schema-5 and schema-4 quality.json files, and an index written
before the language, join and idle-step columns existed merging with new rows."""

from __future__ import annotations

import pyarrow as pa

from droid_pipeline.publish import index as episode_index
from droid_pipeline.publish.shards import ShardMember

EPISODE_ID = "LAB+0000abcd+2023-08-18-12h-00m-00s"
RLDS = "gs://xembodiment_data/r2d2/r2d2-data-full/LAB/success/2023-08-18/Fri_Aug_18_12:00:00_2023"


def quality(version: int) -> dict:
    episode = {"episode_id": EPISODE_ID, "relative_path": "LAB/success/2023-08-18/Fri_Aug_18_12:00:00_2023",
               "lab": "LAB", "outcome": "success", "date": "2023-08-18"}
    if version == 4:
        return {"schema_version": 4, "episode": {**episode, "serials": {"wrist": "111", "ext1": "222"}},
                "num_frames": 40, "visible_fraction": {"111": 0.25, "222": 0.5},
                "cameras_with_2d_tracks": ["111", "222"]}
    return {"schema_version": 5, "episode": {**episode, "serials": {"wrist": "111", "ext1": "222", "ext2": None}},
            "num_frames": 40, "visible_fraction": {"wrist": 0.25, "ext1": 0.5, "ext2": None},
            "cameras_with_2d_tracks": ["wrist", "ext1"], "current_task": "wipe the table",
            "language_instruction_1": "wipe it", "language_instruction_2": "", "language_instruction_3": "",
            "rlds": {"file_path": f"{RLDS}/trajectory.h5", "recording_folderpath": f"{RLDS}/recordings/MP4"},
            "kept_fraction": 0.75, "keep_computed": True}


def row(version: int, episode_id: str = EPISODE_ID) -> dict:
    info = episode_index.episode_info({**quality(version), "episode": {**quality(version)["episode"],
                                                                      "episode_id": episode_id}}, episode_id)
    member = ShardMember("k.tracks.npz", "tracks.npz", 512, 10, "0" * 64)
    return episode_index.index_row(episode_id=episode_id, relative_path="x", pipeline="metadata",
                                   schema_version=version, manifest_sha256="f" * 64, published=1.0, info=info,
                                   shard="shards/metadata/000/000000.tar", members=[member])


def test_schema_5_quality_gives_serials_language_join_and_keep_columns():
    values = row(5)
    assert values["camera_serials"] == ["111", "222", ""]
    assert [c["role"] for c in values["cameras"]] == ["wrist", "ext1"]
    assert (values["visible_fraction_wrist"], values["visible_fraction_ext1"], values["visible_fraction_ext2"]) == \
        (0.25, 0.5, None)
    assert (values["current_task"], values["language_instruction_1"], values["language_instruction_2"]) == \
        ("wipe the table", "wipe it", "")
    assert (values["file_path"], values["recording_folderpath"]) == (f"{RLDS}/trajectory.h5", f"{RLDS}/recordings/MP4")
    assert (values["kept_fraction"], values["keep_computed"]) == (0.75, True)


def test_schema_4_quality_keyed_by_serial_still_fills_the_role_columns():
    values = row(4)
    assert (values["visible_fraction_wrist"], values["visible_fraction_ext1"]) == (0.25, 0.5)
    assert values["camera_serials"] == ["111", "222", ""]
    assert values["current_task"] is None and values["file_path"] is None and values["kept_fraction"] is None


def test_an_index_without_the_new_columns_merges_with_new_rows():
    new_columns = {"camera_serials", "current_task", "language_instruction_1", "language_instruction_2",
                   "language_instruction_3", "file_path", "recording_folderpath", "kept_fraction", "keep_computed"}
    full = pa.Table.from_pylist([row(4, "LAB+0000abcd+2023-08-18-11h-00m-00s")], schema=episode_index.schema())
    old = full.drop_columns(sorted(new_columns))
    merged = episode_index.merge(old, [row(5)])
    assert merged.schema == episode_index.schema()
    rows = {r["episode_id"]: r for r in merged.to_pylist()}
    assert rows["LAB+0000abcd+2023-08-18-11h-00m-00s"]["current_task"] is None
    assert rows[EPISODE_ID]["current_task"] == "wipe the table"
