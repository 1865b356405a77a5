"""Publishing cleans up after itself: a publish that fails leaves no incoming copy, leftovers of
killed publishes and work folders of dead runs are removed, and never anything a live publish or
run is using (their locks say so)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from droid_pipeline.core.atomic import hold_folder
from droid_pipeline.publish.staging import (
    WORK_LOCK_NAME,
    StagingError,
    publish_episode,
    remove_dead_work_roots,
    remove_leftovers,
)

EPISODE_ID = "TESTLab+0badc0de+2023-07-07-09h-42m-23s"
REL = "TESTLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023"


def work_folder(parent: Path) -> Path:
    work = parent / "work" / EPISODE_ID
    (work / "recordings" / "111").mkdir(parents=True)
    (work / "tracks.npz").write_bytes(os.urandom(2048))
    (work / "quality.json").write_text("{}")
    (work / "recordings" / "111" / "intrinsics.json").write_text("{}")
    return work


def hidden_entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".publish.lock")


def test_a_copy_across_file_systems_that_fails_leaves_no_incoming_copy(tmp_path):
    # The work folder on another file system (/dev/shm), so publishing copies it; a link in it
    # that leads nowhere makes the copy fail half-way.
    shm = Path("/dev/shm")
    assert os.stat(shm).st_dev != os.stat(tmp_path).st_dev
    with tempfile.TemporaryDirectory(dir=shm) as other:
        work = work_folder(Path(other))
        (work / "recordings" / "111" / "depth.mkv").symlink_to("/nonexistent/depth.mkv")
        with pytest.raises(StagingError, match="cannot copy .* No such file or directory"):
            publish_episode(work, tmp_path / "out", REL, EPISODE_ID, "full", tmp_path / "runs")
        parent = tmp_path / "out" / Path(REL).parent
        assert hidden_entries(parent) == [] and not (tmp_path / "out" / REL).exists()
        assert not (tmp_path / "runs" / "published.jsonl").exists()


def test_a_journal_that_cannot_be_written_leaves_no_incoming_copy_and_names_the_path(tmp_path):
    work = work_folder(tmp_path)
    (tmp_path / "runs" / "published.jsonl").mkdir(parents=True)  # the append cannot open it
    with pytest.raises(IsADirectoryError) as info:
        publish_episode(work, tmp_path / "out", REL, EPISODE_ID, "metadata", tmp_path / "runs")
    assert info.value.filename == str(tmp_path / "runs" / "published.jsonl")
    parent = tmp_path / "out" / Path(REL).parent
    assert hidden_entries(parent) == [] and not (tmp_path / "out" / REL).exists()


def test_leftovers_of_killed_publishes_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    parent = out / Path(REL).parent
    folder = Path(REL).name
    names = [f".{folder}.incoming-0123456789ab", f".{folder}.replaced-ba9876543210",
             f".{folder}.deleting-0123456789ab", ".kept", folder]
    for name in names:
        (parent / name).mkdir(parents=True)
        (parent / name / "tracks.npz").write_bytes(b"x")
    (out / ".work" / "run" / f".{folder}.incoming-0123456789ab").mkdir(parents=True)  # not an episode tree
    removed = remove_leftovers(out)
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in parent.iterdir() if p.name != ".publish.lock") == sorted(names[2:])
    assert (out / ".work" / "run" / f".{folder}.incoming-0123456789ab").is_dir()


HOLDER = """
import os, sys
from pathlib import Path
from droid_pipeline.publish.staging import episode_lock
dest = Path(sys.argv[1])
incoming = dest.parent / f".{dest.name}.incoming-0123456789ab"
with episode_lock(dest):
    incoming.mkdir(parents=True)
    (incoming / "tracks.npz").write_bytes(b"published")
    print("holding", flush=True)
    sys.stdin.readline()
    os.rename(incoming, dest)
"""


def test_a_publish_in_progress_is_never_removed(tmp_path):
    # Another process is between bringing its copy in and moving it into place, under the lock.
    dest = tmp_path / "out" / REL
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(dest)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        removed: list = []
        sweeper = threading.Thread(target=lambda: removed.extend(remove_leftovers(tmp_path / "out")))
        sweeper.start()
        time.sleep(0.5)
        assert sweeper.is_alive()  # waiting for the lock, not removing the copy
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
        sweeper.join(timeout=60)
    finally:
        holder.kill()
    assert removed == [] and (dest / "tracks.npz").read_bytes() == b"published"


RUN = """
import os, sys, time
from droid_pipeline.core.atomic import hold_folder
hold_folder(sys.argv[1], ".lock")
pid = os.fork()
if pid == 0:  # a child inherits the lock, as episode processes do
    sys.stdin.readline()
    os._exit(0)
os._exit(0)
"""


def test_work_folders_of_dead_runs_go_and_those_of_live_runs_stay(tmp_path):
    out = tmp_path / "out"
    dead = out / ".work" / "metadata-20260101-000000-1"
    (dead / EPISODE_ID).mkdir(parents=True)
    (dead / EPISODE_ID / "tracks.npz").write_bytes(b"x")
    old_layout = out / ".work" / "metadata-20250101-000000-2"  # no lock file at all
    (old_layout / EPISODE_ID).mkdir(parents=True)
    fd = hold_folder(dead, WORK_LOCK_NAME)
    os.close(fd)  # its last process is gone
    live = out / ".work" / "metadata-20260101-000000-3"
    run = subprocess.Popen([sys.executable, "-c", RUN, str(live)], stdin=subprocess.PIPE, text=True)
    assert run.wait(timeout=60) == 0  # its child lives on, holding the lock
    (live / EPISODE_ID).mkdir()
    try:
        assert sorted(remove_dead_work_roots(out)) == sorted([dead, old_layout])
        assert (live / EPISODE_ID).is_dir()
    finally:
        run.stdin.write("done\n")
        run.stdin.close()
    deadline = time.monotonic() + 60
    while live.exists() and time.monotonic() < deadline:
        remove_dead_work_roots(out)
        time.sleep(0.1)
    assert not (out / ".work").exists()
