"""Catch an episode process in the act: about to open one of its input files, it blocks reading a
FIFO (the hook in pause_site/sitecustomize.py, put on the driver's PYTHONPATH by
:func:`pausing_env`) until the test, the FIFO's writer, has done what it wanted with it, e.g.
killed it."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

PAUSE_SITE = Path(__file__).with_name("pause_site")


def pausing_env(target: Path, fifo: Path) -> dict[str, str]:
    """The environment of a driver whose processes, about to open the input file ``target``, first
    block reading the FIFO made at ``fifo``."""
    os.mkfifo(fifo)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PAUSE_SITE), env.get("PYTHONPATH")]))
    env.update(DROID_TEST_PAUSE_FILE=os.path.abspath(target), DROID_TEST_PAUSE_FIFO=str(fifo))
    return env


def wait_for_reader(fifo: Path, timeout_s: float = 120) -> BinaryIO:
    """The FIFO's write end, once a process has opened it for reading (close it to let it go on)."""
    opened: list[BinaryIO] = []
    opener = threading.Thread(target=lambda: opened.append(open(fifo, "wb")), daemon=True)
    opener.start()
    opener.join(timeout=timeout_s)
    assert opened, f"no episode process opened {fifo.name} within {timeout_s:.0f} s"
    return opened[0]


def episode_pid(log: Path) -> int:
    """The episode process's id, from the first line of its episode log."""
    found = re.search(r", process (\d+),", log.read_text())
    assert found, f"no process id in {log}"
    return int(found.group(1))
