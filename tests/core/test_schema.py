"""The output schema is the one declaration of the contract: the tracks step writes exactly its
keys (a key added to the schema and not written, or written and not in the schema, fails the
write), docs/outputs.md's key tables and the tracks command's --help come from it, and file kinds
follow it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_fixtures import small_dataset

from droid_pipeline.core import schema
from droid_pipeline.core.config import load_config
from droid_pipeline.core.schema import ArrayKey, KeyTable, SchemaError
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "outputs.md"


@pytest.fixture(scope="module")
def episode_setup(tmp_path_factory) -> dict:
    """Episode 0 of the small synthetic dataset with its intrinsics, ready for the tracks step."""
    info = small_dataset(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("schema")
    config = load_config([info.config_path], [f"output_root={tmp / 'output'}",
                                              f"episode_index_path={tmp / 'index.json'}"])
    episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
    intrinsics = tmp / "intrinsics"
    extract_intrinsics(config, episode, intrinsics)
    return {"config": config, "episode": episode, "intrinsics": intrinsics}


def work_dir(setup: dict, tmp_path: Path) -> Path:
    """A fresh output folder holding the episode's intrinsics.json files."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(setup["intrinsics"], out)
    return out


def with_tables(npz: schema.NpzSchema, tables: tuple[KeyTable, ...]) -> schema.NpzSchema:
    return dataclasses.replace(npz, tables=tables)


def test_writer_writes_exactly_the_schema(episode_setup, tmp_path):
    out = work_dir(episode_setup, tmp_path)
    generate_tracks(episode_setup["config"], episode_setup["episode"], out)
    with np.load(out / "tracks.npz", allow_pickle=False) as data:
        tracks = {key: data[key] for key in data.files}
    with np.load(out / "extrinsics.npz", allow_pickle=False) as data:
        extrinsics = {key: data[key] for key in data.files}
    sizes = schema.shape_sizes(tracks)
    assert sizes == {"T": 40, "M": int(tracks["num_normalized_steps"]), "N": 480}
    assert schema.TRACKS_NPZ.problems(tracks, sizes) == []
    assert schema.EXTRINSICS_NPZ.problems(extrinsics, sizes) == []
    assert set(tracks) == set(schema.TRACKS_NPZ.expected())
    assert extrinsics["T_base_cam_wrist"].shape == (40, 4, 4)
    assert tracks["camera_serials"].tolist() == [episode_setup["episode"].serials[r] for r in schema.CAMERA_ROLES]


def test_schema_key_not_written_fails_the_write(episode_setup, tmp_path, monkeypatch):
    extra = KeyTable("extra", (ArrayKey("contact_speed", "float32", ("T",), "m/s", "", "nobody writes it"),))
    monkeypatch.setattr(schema, "TRACKS_NPZ", with_tables(schema.TRACKS_NPZ, (*schema.TRACKS_NPZ.tables, extra)))
    out = work_dir(episode_setup, tmp_path)
    with pytest.raises(SchemaError, match=r"tracks.npz: .*schema keys not written \['contact_speed'\]"):
        generate_tracks(episode_setup["config"], episode_setup["episode"], out)
    assert not (out / "tracks.npz").exists() and not (out / "quality.json").exists()


def test_key_written_but_not_in_the_schema_fails_the_write(episode_setup, tmp_path, monkeypatch):
    tables = tuple(KeyTable(t.id, tuple(k for k in t.keys if k.name != "fps")) for t in schema.TRACKS_NPZ.tables)
    monkeypatch.setattr(schema, "TRACKS_NPZ", with_tables(schema.TRACKS_NPZ, tables))
    out = work_dir(episode_setup, tmp_path)
    with pytest.raises(SchemaError, match=r"tracks.npz: written keys not in the schema \['fps'\]"):
        generate_tracks(episode_setup["config"], episode_setup["episode"], out)
    assert not (out / "tracks.npz").exists()


def test_storage_dtype_comes_from_the_schema(episode_setup, tmp_path, monkeypatch):
    tables = tuple(KeyTable(t.id, tuple(dataclasses.replace(k, dtype="float64") if k.name == "tracks_3d" else k
                                        for k in t.keys)) for t in schema.TRACKS_NPZ.tables)
    monkeypatch.setattr(schema, "TRACKS_NPZ", with_tables(schema.TRACKS_NPZ, tables))
    out = work_dir(episode_setup, tmp_path)
    generate_tracks(episode_setup["config"], episode_setup["episode"], out)
    with np.load(out / "tracks.npz", allow_pickle=False) as data:
        assert data["tracks_3d"].dtype == np.float64 and data["normalized_tracks_3d"].dtype == np.float32


def extrinsics_values(**changes: object) -> dict:
    """Schema-5 extrinsics.npz values of an episode whose wrist and ext1 cameras are 1 and 2 (no ext2)."""
    values = {"schema_version": 5, "serials": ["1", "2", ""], "roles": ["wrist", "ext1", "ext2"],
              "sources": ["a", "b", ""], "calibration_fallback": [False, True, False],
              "calibration_quality": [0.0, 0.0, 0.0], "calibration_metric_types": ["", "", ""],
              "wrist_serial": "1", "T_base_cam_wrist": np.tile(np.eye(4), (5, 1, 1)), "T_base_cam_ext1": np.eye(4),
              "T_base_cam_ext2": np.full((4, 4), np.nan)}
    return {**values, **changes}


def test_build_casts_and_checks_shapes():
    npz = schema.EXTRINSICS_NPZ
    values = extrinsics_values()
    arrays = npz.build(values, {"T": 5})
    assert arrays["schema_version"].dtype == np.int32 and arrays["serials"].dtype.kind == "U"
    assert list(arrays) == list(values)
    with pytest.raises(SchemaError, match=r"T_base_cam_wrist has shape \(5, 4, 4\), expected \(T, 4, 4\) with T=6"):
        npz.build(values, {"T": 6})
    with pytest.raises(SchemaError, match=r"T_base_cam_ext1 has shape \(5, 4, 4\), expected \(4, 4\)"):
        npz.build({**values, "T_base_cam_ext1": np.tile(np.eye(4), (5, 1, 1))}, {"T": 5})
    with pytest.raises(SchemaError, match=r"serials has shape \(2,\), expected \(3,\)"):
        npz.build({**values, "serials": ["1", "2"]}, {"T": 5})
    with pytest.raises(SchemaError, match=r"written keys not in the schema \['T_base_cam_2'\], "
                                          r"schema keys not written \['T_base_cam_ext1'\]"):
        npz.build({**{k: v for k, v in values.items() if k != "T_base_cam_ext1"}, "T_base_cam_2": np.eye(4)}, {"T": 5})


def test_every_role_has_its_keys_whatever_the_serials():
    """Schema 5's key set is the same for every episode: no key names a serial."""
    expected = set(schema.TRACKS_NPZ.expected())
    assert {f"{key}_{role}" for key in ("tracks_2d", "visibility", "occlusion", "intrinsics", "distortion",
                                        "image_size") for role in schema.CAMERA_ROLES} <= expected
    per_camera = [key for npz in schema.NPZ_FILES for key in npz.keys if key.per_camera]
    assert per_camera and all(key.name.endswith(schema.ROLE) for key in per_camera)


def test_problems_name_dtype_shape_missing_and_unexpected_keys():
    arrays = schema.EXTRINSICS_NPZ.build(extrinsics_values(), {"T": 5})
    arrays["T_base_cam_ext1"] = arrays["T_base_cam_ext1"].astype(np.float32)
    arrays["stray"] = np.zeros(1)
    del arrays["roles"]
    assert schema.EXTRINSICS_NPZ.problems(arrays, {}) == [
        "extrinsics.npz: key 'roles' missing",
        "extrinsics.npz: T_base_cam_ext1 has dtype float32, expected float64",
        "extrinsics.npz: unexpected key 'stray'"]


def test_schema_4_keys_by_serial_are_still_checked():
    legacy = schema.READABLE_NPZ[4][1]
    arrays = legacy.build(
        {"schema_version": 4, "serials": ["7"], "roles": ["ext1"], "sources": ["metadata:ext1_cam_extrinsics"],
         "calibration_fallback": [True], "calibration_quality": [0.0], "calibration_metric_types": [""],
         "wrist_serial": "", "T_base_cam_7": np.eye(4)}, {})
    assert legacy.problems(arrays, {}) == []
    arrays["T_base_cam_7"] = arrays["T_base_cam_7"].astype(np.float32)
    assert legacy.problems(arrays, {}) == ["extrinsics.npz: T_base_cam_7 has dtype float32, expected float64"]


def test_doc_key_tables_are_generated_from_the_schema():
    text = DOC.read_text()
    assert schema.render_doc(text) == text, "docs/outputs.md is stale: run python scripts/update_output_docs.py"
    declared = [key.name for npz in schema.NPZ_FILES for key in npz.keys]
    for name in declared:
        assert text.count(f"| `{name}` |") == declared.count(name), name


def test_doc_must_mark_every_table_once():
    text = DOC.read_text()
    without = text.replace("<!-- schema:tracks-scalars -->", "<!-- scalars -->")
    with pytest.raises(SchemaError, match="not marked exactly once: tracks-scalars"):
        schema.render_doc(without)
    with pytest.raises(SchemaError, match="unknown schema table 'tracks-extra'"):
        schema.render_doc(text + "\n<!-- schema:tracks-extra -->\n<!-- /schema -->\n")


def test_tracks_help_lists_every_key():
    result = subprocess.run([sys.executable, "generate_tracks_and_metadata.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    for npz in schema.NPZ_FILES:
        assert f"  {npz.file.path}: " in result.stdout
        for key in npz.keys:
            assert f"    {key.name} {key.shape_text()} {key.dtype_text()}" in result.stdout, key.name


@pytest.mark.parametrize("path, kind", [
    ("tracks.npz", "metadata"), ("extrinsics.npz", "metadata"), ("quality.json", "metadata"),
    ("manifest.json", "metadata"), ("recordings/24259877/intrinsics.json", "metadata"),
    ("recordings/24259877/depth.mkv", "depth"), ("recordings/24259877/depth_meta.json", "depth"),
    ("recordings/24259877/rgb.mp4", "depth"), ("recordings/24259877/notes.txt", None),
    ("recordings/a/b/depth.mkv", None), ("depth.mkv", None), ("tracks.npz.tmp", None),
])
def test_file_kinds(path, kind):
    found = schema.output_file(path)
    assert (found.kind if found else None) == kind
