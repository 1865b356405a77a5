"""Episode discovery on hand-built DROID roots: spellings, outcomes, broken folders, selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from droid_pipeline.raw.discovery import DiscoveryError, build_index, read_id_file

SERIALS = {"wrist_cam_serial": "13062452", "ext1_cam_serial": "24259877", "ext2_cam_serial": "26405488"}


def make_episode(root: Path, lab: str, outcome: str, date: str, folder: str, episode_id: str,
                 *, mp4: bool = True, stereo: bool = True, h5: bool = True) -> Path:
    path = root / lab / outcome / date / folder
    (path / "recordings" / "MP4").mkdir(parents=True)
    (path / f"metadata_{episode_id}.json").write_text(json.dumps({"uuid": episode_id, "lab": lab, **SERIALS}))
    if h5:
        (path / "trajectory.h5").write_bytes(b"")
    for serial in SERIALS.values():
        if mp4:
            (path / "recordings" / "MP4" / f"{serial}.mp4").write_bytes(b"")
        if stereo:
            (path / "recordings" / "MP4" / f"{serial}-stereo.mp4").write_bytes(b"")
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "droid_raw"
    make_episode(root, "AUTOLab", "success", "2023-07-07", "Fri_Jul__7_09:42:23_2023",
                 "AUTOLab+84bd5053+2023-07-07-09h-42m-23s")
    make_episode(root, "AUTOLab", "success", "2023-08-18", "Fri_Aug_18_12_01_10_2023",
                 "AUTOLab+84bd5053+2023-08-18-12h-01m-10s", stereo=False)
    make_episode(root, "IRIS", "failure", "2023-03-07", "Tue_Mar__7_16_19_59_2023",
                 "IRIS+ef107c49+2023-03-07-16h-19m-59s", h5=False)
    return root


def test_discovers_both_spellings_and_outcomes(root: Path, tmp_path: Path):
    index = build_index(root, tmp_path / "index.json")
    assert not index.problems
    ids = {e.episode_id: e for e in index.episodes}
    assert set(ids) == {"AUTOLab+84bd5053+2023-07-07-09h-42m-23s",
                        "AUTOLab+84bd5053+2023-08-18-12h-01m-10s",
                        "IRIS+ef107c49+2023-03-07-16h-19m-59s"}
    colon = ids["AUTOLab+84bd5053+2023-07-07-09h-42m-23s"]
    assert colon.relative_path == "AUTOLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023"
    assert colon.folder_spelling_ok and ids["IRIS+ef107c49+2023-03-07-16h-19m-59s"].folder_spelling_ok
    assert colon.serials == {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
    assert colon.has_h5 and len(colon.mp4) == 3 and len(colon.stereo_mp4) == 3 and colon.svo == ()
    assert ids["AUTOLab+84bd5053+2023-08-18-12h-01m-10s"].stereo_mp4 == ()
    failure = ids["IRIS+ef107c49+2023-03-07-16h-19m-59s"]
    assert failure.outcome == "failure" and failure.lab == "IRIS" and not failure.has_h5


def test_selection_filters(root: Path):
    index = build_index(root)
    assert [e.lab for e in index.select()] == ["AUTOLab", "AUTOLab"]
    assert len(index.select(outcomes=["success", "failure"])) == 3
    assert [e.lab for e in index.select(outcomes=["failure"])] == ["IRIS"]
    assert index.select(labs=["IRIS"]) == []
    assert len(index.select(outcomes=["success", "failure"], limit=2)) == 2
    wanted = ["IRIS+ef107c49+2023-03-07-16h-19m-59s", "AUTOLab+84bd5053+2023-07-07-09h-42m-23s"]
    assert [e.episode_id for e in index.select(episode_ids=wanted)] == wanted


def test_unknown_id_suggests_closest(root: Path):
    index = build_index(root)
    with pytest.raises(DiscoveryError) as info:
        index.get("AUTOLab+84bd5053+2023-07-07-09h-42m-24s")
    assert "unknown episode id" in str(info.value)
    assert "AUTOLab+84bd5053+2023-07-07-09h-42m-23s" in str(info.value)


def test_broken_folders_are_reported_not_fatal(root: Path):
    no_meta = root / "AUTOLab" / "success" / "2023-07-07" / "Fri_Jul__7_10:00:00_2023"
    no_meta.mkdir(parents=True)
    bad = make_episode(root, "AUTOLab", "success", "2023-07-08", "Sat_Jul__8_10:00:00_2023",
                       "AUTOLab+84bd5053+2023-07-08-10h-00m-00s")
    (bad / "metadata_AUTOLab+84bd5053+2023-07-08-10h-00m-00s.json").write_text("{not json")
    index = build_index(root)
    problems = {p["path"]: p["problem"] for p in index.problems}
    assert "no metadata" in problems["AUTOLab/success/2023-07-07/Fri_Jul__7_10:00:00_2023"]
    assert "unreadable metadata" in problems["AUTOLab/success/2023-07-08/Sat_Jul__8_10:00:00_2023"]
    assert len(index.episodes) == 3


def test_duplicate_ids_are_reported_and_refused(root: Path):
    make_episode(root, "AUTOLab", "success", "2023-07-09", "Sun_Jul__9_09:42:23_2023",
                 "AUTOLab+84bd5053+2023-07-07-09h-42m-23s")
    index = build_index(root)
    assert any("duplicate episode id" in p["problem"] for p in index.problems)
    with pytest.raises(DiscoveryError, match="duplicated"):
        index.get("AUTOLab+84bd5053+2023-07-07-09h-42m-23s")
    assert all(e.episode_id != "AUTOLab+84bd5053+2023-07-07-09h-42m-23s" for e in index.select())


def test_cache_reuses_unchanged_date_folders_and_sees_new_ones(root: Path, tmp_path: Path):
    cache = tmp_path / "index.json"
    build_index(root, cache)
    # A cached date folder is not re-read: corrupt its metadata behind the cache's back.
    folder = root / "AUTOLab" / "success" / "2023-07-07" / "Fri_Jul__7_09:42:23_2023"
    meta = folder / "metadata_AUTOLab+84bd5053+2023-07-07-09h-42m-23s.json"
    meta.write_text("{")
    assert not build_index(root, cache).problems
    assert build_index(root, cache, rescan=True).problems
    meta.write_text(json.dumps({"uuid": "AUTOLab+84bd5053+2023-07-07-09h-42m-23s", **SERIALS}))
    build_index(root, cache, rescan=True)
    make_episode(root, "AUTOLab", "success", "2023-07-07", "Fri_Jul__7_11:00:00_2023",
                 "AUTOLab+84bd5053+2023-07-07-11h-00m-00s")
    date_dir = folder.parent
    os.utime(date_dir, ns=(date_dir.stat().st_atime_ns, date_dir.stat().st_mtime_ns + 1_000_000))
    assert len(build_index(root, cache).episodes) == 4


def test_uuid_disagreeing_with_file_name_is_a_problem(root: Path):
    folder = root / "IRIS" / "failure" / "2023-03-07" / "Tue_Mar__7_16_19_59_2023"
    (folder / "metadata_IRIS+ef107c49+2023-03-07-16h-19m-59s.json").write_text(json.dumps({"uuid": "other"}))
    index = build_index(root)
    assert any("disagrees with the file name" in p["problem"] for p in index.problems)


def test_id_file_and_missing_root(tmp_path: Path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# wanted\nA+1+2023-01-01-1h-2m-3s\n\nB+2+2023-01-01-1h-2m-3s  # second\n")
    assert read_id_file(ids) == ["A+1+2023-01-01-1h-2m-3s", "B+2+2023-01-01-1h-2m-3s"]
    with pytest.raises(DiscoveryError, match="not a folder"):
        build_index(tmp_path / "nowhere")


def test_cli_prints_index(root: Path, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(f"droid_root: {root}\noutput_root: {tmp_path / 'out'}\n")
    result = subprocess.run([sys.executable, "-m", "droid_pipeline.episodes", "--config", str(config),
                             "--outcome", "all"], capture_output=True, text=True, check=True)
    assert "IRIS+ef107c49+2023-03-07-16h-19m-59s" in result.stdout
    assert "3 selected of 3 episodes" in result.stdout
    assert (tmp_path / "out" / "episode_index.json").is_file()
    unknown = subprocess.run([sys.executable, "-m", "droid_pipeline.episodes", "--config", str(config),
                              "--episode_id", "IRIS+ef107c49+2023-03-07-16h-19m-58s"],
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "closest ids" in unknown.stderr
