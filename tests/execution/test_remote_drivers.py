"""Both drivers from a gs:// root served by fake-gcs-server, read through a loopback proxy: the
outputs equal, array by array, those of the same episodes run from the local folder, including an
episode under a date folder that is not its timestamp's (by listing and by DROID's map file) and
folders spelling ``_`` for ``:``. The network faults run in tests/faults/test_remote_faults.py."""

from __future__ import annotations

import json

import pytest
from gcs_emulator import PREFIX, ROOT_URL
from remote_runs import FULL, MAP_URL, METADATA, REPO, assert_same_outputs, run, scratch_files, timing_rows

from droid_pipeline.cli.episodes import main as episodes_main
from droid_pipeline.execution.steps import STEPS, markdown_table
from droid_pipeline.execution.timing import COLUMNS, format_review, read_rows
from droid_pipeline.execution.timing import review as timing_review
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.synthetic.generator import generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # 0: success; 1: failure, "_" for ":"; 2: under the date folder before its timestamp's.
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=3, frames=10)


def test_metadata_driver_from_gs_by_listing_equals_a_local_run(dataset, proxy, tmp_path):
    run(METADATA, dataset, tmp_path / "local", None, check_rc=0)
    result = run(METADATA, dataset, tmp_path / "remote", proxy.url, check_rc=0)
    assert f"raw episodes from {ROOT_URL} (listed)" in result.stdout
    assert_same_outputs(tmp_path / "local" / "out", tmp_path / "remote" / "out", dataset.episodes)
    rows = timing_rows(tmp_path / "remote")
    assert sorted(r["episode_id"] for r in rows) == sorted(e.episode_id for e in dataset.episodes)
    assert all(r["status"] == "done" and float(r["fetch_s"]) > 0 and int(r["fetch_bytes"]) > 0 for r in rows)
    assert not any(r["fetch_bytes"] for r in timing_rows(tmp_path / "local"))
    assert not scratch_files(tmp_path / "remote")
    (run_dir,) = (tmp_path / "remote" / "runs").glob("metadata-*")
    assert f"droid_root: {ROOT_URL}" in (run_dir / "config.yaml").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["fetch"]["bytes"] == sum(int(r["fetch_bytes"]) for r in rows)
    assert "fetched: " in result.stdout
    review = format_review(timing_review(read_rows(run_dir / "timing.csv")), "timing.csv")
    assert f"fetched: {summary['fetch']['bytes'] / 1e6:.1f} MB for 3 episodes" in review and " MB/s" in review
    # Exactly the files the pipeline reads: never trajectory_im128.h5, SVOs or stereo MP4s
    # (every camera here has its left-image MP4).
    media = [r for r in proxy.requests if "alt=media" in r]
    assert media and not any("trajectory_im128" in r or ".svo" in r or "-stereo.mp4" in r for r in media)


def test_full_driver_from_gs_by_the_map_file_equals_a_local_run(dataset, proxy, tmp_path):
    moved = dataset.episodes[2]  # its date folder is not its timestamp's date
    ids = tmp_path / "ids.txt"
    ids.write_text(moved.episode_id + "\n")
    run(FULL, dataset, tmp_path / "local", None, "--episodes", str(ids), check_rc=0)
    run(FULL, dataset, tmp_path / "remote", proxy.url, "--episodes", str(ids), "--set",
        f"episode_paths_file={MAP_URL}", check_rc=0)
    assert_same_outputs(tmp_path / "local" / "out", tmp_path / "remote" / "out", [moved])
    listings = [r for r in proxy.requests if "prefix=" in r]
    assert listings and all(f"prefix={PREFIX}/{moved.relative_path}/" in r for r in listings), \
        "with the map file only the episode's own folder is listed"
    (run_dir,) = (tmp_path / "remote" / "runs").glob("full-*")
    assert f"episode_paths_file: {MAP_URL}" in (run_dir / "config.yaml").read_text()
    media = [r for r in proxy.requests if "alt=media" in r]
    assert any("-stereo.mp4" in r for r in media) and not any(".svo" in r for r in media)
    assert not scratch_files(tmp_path / "remote")


def test_droid_episodes_lists_a_remote_root_with_the_same_selection(dataset, proxy, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    local = build_index(dataset.droid_root)
    base = ["--config", str(dataset.config_path), "--set", f"output_root={tmp_path / 'out'}",
            "--set", f"droid_root={ROOT_URL}", "--json", "--rescan"]
    for extra, expected in ((["--outcome", "all"], local.select(outcomes=("success", "failure"))),
                            (["--outcome", "failure"], local.select(outcomes=("failure",))),
                            (["--outcome", "all", "--set", f"episode_paths_file={MAP_URL}", "--limit", "2"],
                             local.select(outcomes=("success", "failure"), limit=2)),
                            (["--episode_id", local.episodes[2].episode_id], [local.episodes[2]])):
        assert episodes_main([*base, *extra]) == 0
        out = capsys.readouterr()
        listed = [json.loads(line) for line in out.out.splitlines()]
        assert listed == [e.to_json() for e in expected], (extra, out.err)
    # Date folder listings and episode records are cached under output_root: a second look
    # lists the labs and outcomes again, no date or episode folder.
    proxy.requests.clear()
    assert episodes_main([*base[:-1], "--outcome", "all"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == \
        [e.to_json() for e in local.select(outcomes=("success", "failure"))]
    folders = {f"prefix={PREFIX}/{e.relative_path.rsplit('/', 1)[0]}/" for e in local.episodes}
    folders |= {f"prefix={PREFIX}/{e.relative_path}/" for e in local.episodes}
    assert proxy.requests and not [r for r in proxy.requests if any(f in r for f in folders)]


def test_the_step_table_of_the_docs_is_the_declared_one():
    assert markdown_table() in (REPO / "docs" / "running.md").read_text()
    assert [f"{s.name}_s" for s in STEPS] == [c for c in COLUMNS if c.endswith("_s")][:len(STEPS)]
