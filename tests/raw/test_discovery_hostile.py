"""Discovery on hostile raw trees: ids and folder names that would become bad paths, symbolic link
loops and dangling links at every level, unreadable folders; each is a problem with its cause
and the scan goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from droid_pipeline.raw.discovery import (
    DiscoveryError,
    Episode,
    build_index,
    episode_id_problem,
    name_problem,
)

SERIALS = {"wrist_cam_serial": "13062452", "ext1_cam_serial": "24259877", "ext2_cam_serial": "26405488"}
GOOD_ID = "AUTOLab+84bd5053+2023-07-07-09h-42m-23s"


def make_episode(root: Path, rel: str, episode_id: str, metadata: object = None) -> Path:
    path = root / rel
    (path / "recordings" / "MP4").mkdir(parents=True)
    body = {"uuid": episode_id, **SERIALS} if metadata is None else metadata
    (path / f"metadata_{episode_id}.json").write_text(json.dumps(body))
    (path / "trajectory.h5").write_bytes(b"")
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "droid_raw"
    make_episode(root, "AUTOLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023", GOOD_ID)
    return root


def problems_of(root: Path) -> dict[str, str]:
    index = build_index(root)
    assert [e.episode_id for e in index.episodes] == [GOOD_ID]  # the good one is always found
    return {p["path"]: p["problem"] for p in index.problems}


@pytest.mark.parametrize("episode_id", [
    GOOD_ID, "IRIS+ef107c49+2023-03-07-16h-19m-59s", "TRI+0badc0de+2023-12-31-0h-5m-9s",
    "Penn_PAL-2+ABCDEF01+2024-02-29-23h-59m-59s"])
def test_droid_ids_pass_the_grammar(episode_id):
    assert episode_id_problem(episode_id) is None


@pytest.mark.parametrize("episode_id", [
    "..", ".", "", "a/b", "AUTOLab+84bd5053+2023-07-07-09h-42m-23s/../x", "AUTOLab+84bd505+2023-07-07-09h-42m-23s",
    "AUTOLab+84bd5053+2023-07-07-09h-42m-23s\n", "AUTO Lab+84bd5053+2023-07-07-09h-42m-23s",
    "AUTOLab+84bd5053+2023-13-07-09h-42m-23s", "AUTOLab+84bd5053+2023-07-07-24h-42m-23s",
    "AUTOLab+84bd5053+2023-07-07-09h-60m-23s", "AUTOLab+84bd5053+2023-07-07-123h-42m-23s",
    "+84bd5053+2023-07-07-1h-2m-3s"])
def test_anything_else_fails_the_grammar(episode_id):
    assert episode_id_problem(episode_id) is not None


@pytest.mark.parametrize("uuid", ["..", ".", "x/../..", "AUTOLab+zzzzzzzz+2023-07-07-09h-42m-23s"])
def test_an_id_that_is_no_droid_id_is_a_problem_not_an_episode(root, uuid):
    folder = root / "AUTOLab" / "success" / "2023-07-08" / "Sat_Jul__8_10:00:00_2023"
    folder.mkdir(parents=True)
    name = f"metadata_{uuid}.json"
    if "/" in uuid:
        name = "metadata_x.json"
    (folder / name).write_text(json.dumps({"uuid": uuid, **SERIALS}))
    problem = problems_of(root)["AUTOLab/success/2023-07-08/Sat_Jul__8_10:00:00_2023"]
    assert "grammar" in problem or "disagrees with the file name" in problem


@pytest.mark.parametrize("level", ["", "AUTOLab", "AUTOLab/success", "AUTOLab/success/2023-07-07"])
def test_symbolic_link_loops_and_dangling_links_at_every_level(root, level):
    (root / level / "loop").symlink_to("loop")
    (root / level / "dangling").symlink_to("nowhere")
    problems = problems_of(root)
    if level == "AUTOLab":  # a lab folder holds only success/ and failure/: nothing else is read
        assert problems == {}
        return
    prefix = f"{level}/" if level else ""
    assert "Too many levels of symbolic links" in problems[f"{prefix}loop"]
    assert "dangling symbolic link to nowhere" in problems[f"{prefix}dangling"]


def test_an_outcome_folder_that_loops_is_a_problem(root):
    (root / "IRIS").mkdir()
    (root / "IRIS" / "success").symlink_to("success")
    assert "Too many levels of symbolic links" in problems_of(root)["IRIS/success"]


def test_broken_links_inside_an_episode_make_it_a_problem_with_its_id(root):
    episode_id = "AUTOLab+84bd5053+2023-07-08-10h-00m-00s"
    folder = make_episode(root, "AUTOLab/success/2023-07-08/Sat_Jul__8_10:00:00_2023", episode_id)
    (folder / "recordings" / "MP4" / f"{SERIALS['ext1_cam_serial']}.mp4").symlink_to("/nonexistent/video.mp4")
    (folder / "trajectory.h5").unlink()
    (folder / "trajectory.h5").symlink_to("trajectory.h5")
    index = build_index(root)
    (problem,) = index.problems
    assert problem["episode_id"] == episode_id
    assert "trajectory.h5 is a broken symbolic link" in problem["problem"]
    assert f"recordings/MP4/{SERIALS['ext1_cam_serial']}.mp4 is a broken symbolic link" in problem["problem"]


@pytest.mark.parametrize("name", ["Sat Jul  8 10:00:00 2023", "bad\nname", "-rf", "\u00e9pisode"])
def test_folder_names_that_are_not_plain_names_are_problems(root, name):
    episode_id = "AUTOLab+84bd5053+2023-07-08-10h-00m-00s"
    make_episode(root, f"AUTOLab/success/2023-07-08/{name}", episode_id)
    problems = problems_of(root)
    (path, problem), = problems.items()
    assert "is not a plain name" in problem and "\n" not in path and "\n" not in problem
    assert name_problem("Fri_Jul__7_09:42:23_2023") is None and name_problem("Tue_Mar__7_16_19_59_2023") is None


@pytest.mark.parametrize("write, phrase", [
    (lambda f: (f / "metadata_AUTOLab+84bd5053+2023-07-08-10h-00m-00s.json").write_text("[1, 2]"),
     "metadata is not a JSON object"),
    (lambda f: (f / "metadata_AUTOLab+84bd5053+2023-07-08-10h-00m-00s.json").write_text("{\"uuid\": "),
     "unreadable metadata file"),
    (lambda f: (f / "metadata_AUTOLab+84bd5053+2023-07-08-10h-00m-00s.json").mkdir(), "unreadable metadata file"),
    (lambda f: [(f / f"metadata_AUTOLab+84bd5053+2023-07-08-10h-00m-0{i}s.json").write_text("{}") for i in (0, 1)],
     "several metadata files"),
    (lambda f: (f / "trajectory.h5").write_bytes(b""), "no metadata_<uuid>.json"),
])
def test_metadata_problems_are_listed_with_their_cause(root, write, phrase):
    folder = root / "AUTOLab" / "success" / "2023-07-08" / "Sat_Jul__8_10:00:00_2023"
    folder.mkdir(parents=True)
    write(folder)
    assert phrase in problems_of(root)["AUTOLab/success/2023-07-08/Sat_Jul__8_10:00:00_2023"]


def test_a_duplicate_id_is_a_problem_of_each_of_its_folders(root):
    make_episode(root, "AUTOLab/success/2023-07-09/Sun_Jul__9_09:42:23_2023", GOOD_ID)
    index = build_index(root)
    duplicates = [p for p in index.problems if "duplicate episode id" in p["problem"]]
    assert sorted(p["path"] for p in duplicates) == ["AUTOLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023",
                                                     "AUTOLab/success/2023-07-09/Sun_Jul__9_09:42:23_2023"]
    assert {p["episode_id"] for p in duplicates} == {GOOD_ID}


def test_an_unreadable_folder_is_a_problem(tmp_path):
    # The raw tree readable by all but one date folder.
    root = tmp_path / "droid_raw"
    make_episode(root, "AUTOLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023", GOOD_ID)
    blocked = root / "AUTOLab" / "success" / "2023-07-08"
    blocked.mkdir(parents=True)
    make_episode(root, "AUTOLab/success/2023-07-09/Sun_Jul__9_09:42:23_2023", "AUTOLab+84bd5053+2023-07-09-09h-42m-23s")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    blocked.chmod(0o000)
    code = ("import json, sys; from droid_pipeline.raw.discovery import build_index; i = build_index(sys.argv[1]); "
            "print(json.dumps([[e.episode_id for e in i.episodes], i.problems]))")
    command = [sys.executable, "-c", code, str(root)]
    if os.geteuid() == 0:
        # Root reads any folder through its DAC capabilities: drop just those. It stays uid 0, so it
        # still reads the checkout and the interpreter wherever they live (a folder only root may
        # enter included), while the folder with mode 000 is closed to it as to any user.
        dac = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={dac}", f"--inh-caps={dac}", *command]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        blocked.chmod(0o755)
    assert result.returncode == 0, result.stderr
    episodes, problems = json.loads(result.stdout)
    assert sorted(episodes) == sorted([GOOD_ID, "AUTOLab+84bd5053+2023-07-09-09h-42m-23s"])
    assert [(p["path"], "Permission denied" in p["problem"]) for p in problems] == [
        ("AUTOLab/success/2023-07-08", True)]


def test_a_cached_record_that_does_not_validate_makes_the_cache_ignored(root, tmp_path):
    cache = tmp_path / "index.json"
    build_index(root, cache)
    data = json.loads(cache.read_text())
    for entry in data["date_dirs"].values():
        for record in entry["episodes"]:
            record["episode_id"] = ".."
    cache.write_text(json.dumps(data))
    assert [e.episode_id for e in build_index(root, cache).episodes] == [GOOD_ID]


def test_episode_records_from_files_are_validated_again():
    good = {"episode_id": GOOD_ID, "relative_path": "AUTOLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023",
            "lab": "AUTOLab", "outcome": "success", "date": "2023-07-07", "folder": "Fri_Jul__7_09:42:23_2023",
            "metadata_file": f"metadata_{GOOD_ID}.json", "serials": {}, "has_h5": True}
    assert Episode.from_json(good).episode_id == GOOD_ID
    for change in ({"episode_id": "."}, {"folder": ".."}, {"relative_path": "AUTOLab/success/2023-07-07/../../x"},
                   {"outcome": "maybe"}, {"lab": "a/b"}):
        with pytest.raises(DiscoveryError, match="invalid episode record"):
            Episode.from_json({**good, **change})


# ---------------------------------------------------------------- special files and lying metadata

OTHER_ID = "AUTOLab+84bd5053+2023-07-07-10h-00m-00s"
OTHER_REL = "AUTOLab/success/2023-07-07/Fri_Jul__7_10:00:00_2023"


def scan_in_a_child(root: Path) -> dict[str, str]:
    """problems_of(root) in a child process that must end within a minute: a FIFO or a device
    read by mistake would block it or take its memory without end."""
    code = ("import json, sys; from droid_pipeline.raw.discovery import build_index; "
            "index = build_index(sys.argv[1]); "
            "print(json.dumps([[e.episode_id for e in index.episodes], index.problems]))")
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    episodes, problems = json.loads(result.stdout)
    assert episodes == [GOOD_ID]
    return {p["path"]: p["problem"] for p in problems}


@pytest.mark.parametrize("make, phrase", [
    (lambda path: os.mkfifo(path), "is a FIFO (named pipe), not a regular file"),
    (lambda path: path.symlink_to("/dev/zero"), "is a character device, not a regular file"),
    (lambda path: path.write_text(json.dumps({"uuid": OTHER_ID, "notes": " " * (1 << 20)})),
     "more than the 1048576 bytes"),
])
def test_metadata_that_is_a_special_file_or_too_big_is_a_problem_never_a_hang(root, make, phrase):
    folder = make_episode(root, OTHER_REL, OTHER_ID)
    metadata = folder / f"metadata_{OTHER_ID}.json"
    metadata.unlink()
    make(metadata)
    problems = scan_in_a_child(root)
    assert phrase in problems[OTHER_REL], problems


@pytest.mark.parametrize("name", ["trajectory.h5", "recordings/MP4/24259877.mp4", "recordings/MP4/x-stereo.mp4"])
def test_an_episode_file_that_is_a_fifo_or_socket_is_a_problem_with_the_episode_id(root, name):
    import socket

    folder = make_episode(root, OTHER_REL, OTHER_ID)
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    problems = scan_in_a_child(root)
    assert f"{name} is a FIFO (named pipe), not a regular file" in problems[OTHER_REL]
    assert build_index(root).problems[0]["episode_id"] == OTHER_ID
    (folder / name).unlink()
    with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX) as server:
        server.bind(f"{short}/s")  # (a socket's own path is limited to 108 bytes: linked from there)
        (folder / name).symlink_to(f"{short}/s")
        assert f"{name} is a socket, not a regular file" in scan_in_a_child(root)[OTHER_REL]


def h5_with_cameras(path: Path, types: dict[str, int]) -> None:
    """A trajectory.h5 with observation/camera_type and camera_extrinsics of each camera."""
    import h5py
    import numpy as np

    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as h5:
        for serial, camera_type in types.items():
            h5[f"observation/camera_type/{serial}"] = np.full(5, camera_type)
            h5[f"observation/camera_extrinsics/{serial}_left"] = np.zeros((5, 6))


def lying_episode(root: Path, metadata: dict, mp4s: list[str]) -> Path:
    folder = make_episode(root, OTHER_REL, OTHER_ID, {"uuid": OTHER_ID, **metadata})
    h5_with_cameras(folder / "trajectory.h5", {"13062452": 0, "24259877": 1, "26405488": 1})
    for serial in mp4s:
        (folder / "recordings" / "MP4" / f"{serial}.mp4").write_bytes(b"")
    return folder


def test_a_camera_the_metadata_lacks_is_recovered_from_the_h5_with_a_warning(root):
    metadata = {"wrist_cam_serial": "13062452", "ext1_cam_serial": "24259877"}
    lying_episode(root, metadata, ["13062452", "24259877", "26405488"])
    episode = build_index(root).get(OTHER_ID)
    assert episode.serials == {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
    assert episode.mp4 == ("13062452", "24259877", "26405488")
    assert "the metadata names no ext2_cam_serial: camera 26405488 recovered as ext2" in episode.warnings[0]
    assert Episode.from_json(json.loads(json.dumps(episode.to_json()))) == episode


def test_a_serial_named_twice_is_recovered_or_a_problem_naming_the_metadata(root):
    metadata = {"wrist_cam_serial": "13062452", "ext1_cam_serial": "24259877", "ext2_cam_serial": "24259877"}
    lying_episode(root, metadata, ["13062452", "24259877", "26405488"])
    episode = build_index(root).get(OTHER_ID)
    assert episode.serials["ext2"] == "26405488"
    assert "ext2_cam_serial repeats ext1_cam_serial 24259877" in episode.warnings[0]
    # Without the third camera's MP4 nothing can be recovered: the metadata is named, not the calibration.
    (root / OTHER_REL / "recordings" / "MP4" / "26405488.mp4").unlink()
    os.utime(root / OTHER_REL)
    problems = problems_of(root)
    assert "the metadata's ext2_cam_serial repeats ext1_cam_serial 24259877" in problems[OTHER_REL]


def test_two_unnamed_exterior_cameras_cannot_be_told_apart(root):
    lying_episode(root, {"wrist_cam_serial": "13062452"}, ["13062452", "24259877", "26405488"])
    problem = problems_of(root)[OTHER_REL]
    assert "have camera(s) 24259877 (exterior), 26405488 (exterior) that the metadata does not name" in problem


def test_a_serial_of_another_type_is_a_problem(root):
    make_episode(root, OTHER_REL, OTHER_ID, {"uuid": OTHER_ID, **SERIALS, "ext1_cam_serial": ["24259877"]})
    assert "ext1_cam_serial is list ['24259877'], not a camera serial" in problems_of(root)[OTHER_REL]
