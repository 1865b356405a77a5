"""The atomic writers create their files as ``open`` would: mode 0666 less the umask."""

from __future__ import annotations

import os
import signal
import stat

import numpy as np
import pytest

from droid_pipeline.core.atomic import (
    append_locked,
    atomic_path,
    remove_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from droid_pipeline.formats.npz import save_npz_atomic


@pytest.fixture(params=[0o002, 0o022, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_atomic_writers_honour_the_umask(tmp_path, umask):
    write_text_atomic(tmp_path / "a.txt", "text\n")
    write_json_atomic(tmp_path / "b.json", {"x": np.float32(1.5)})
    save_npz_atomic(tmp_path / "c.npz", {"x": np.arange(3)})
    append_locked(tmp_path / "d.csv", "1\n", header="n\n")
    with atomic_path(tmp_path / "e.bin") as tmp:
        tmp.write_bytes(b"\0")
    open(tmp_path / "reference", "w").close()  # what the umask gives a plain file
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.txt", "b.json", "c.npz", "d.csv", "e.bin", "reference"], 0o666 & ~umask)
    assert np.load(tmp_path / "c.npz", allow_pickle=False)["x"].tolist() == [0, 1, 2]


def test_a_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("step failed")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writer_s_temporary_is_recognised_and_nothing_else(tmp_path):
    """A child killed inside atomic_path leaves its temporary; remove_temporaries removes exactly
    that, not finished files or look-alikes."""
    pid = os.fork()
    if pid == 0:
        with atomic_path(tmp_path / "000001.tar") as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    (leftover,) = tmp_path.iterdir()
    kept = ["000000.tar", ".hidden", ".a.tar.tmp", ".a.tar.XYZ12345.tmp.tar", "x.a.0123abcd.tmp"]
    for name in kept:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".dir.0123abcd.tmp").mkdir()
    assert remove_temporaries(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".dir.0123abcd.tmp"])
    assert remove_temporaries(tmp_path / "missing") == []
