"""Every exit code of the project, in one table: commands, drivers, workers and episode processes.

Python modules read :class:`ExitCode`. The bash driver reads the same table from
``python -m droid_pipeline.core.exit_codes``, which prints one ``name=value`` line per name
(lower case, aliases included), so no number is typed twice.
"""

from __future__ import annotations

import enum
import signal
import sys


class ExitCode(enum.IntEnum):
    """The exit codes, by meaning.

    The episode-process codes are spoken only between a forked episode process and its warm
    worker and reuse the small numbers, so some names are aliases of others (Python's enum then
    shows the first name of a value): a value's meaning depends on who exits with it.
    """

    # Commands and drivers (the summary's code is the driver's).
    DONE = 0  # everything asked for was done
    FAILED = 1  # an episode, a check or an upload failed
    USAGE = 2  # bad usage, configuration or token
    CARRIED_OVER = 3  # an upload batch left work for a later one (rate limit, budget, files not ready)
    INTERRUPTED = 128 + signal.SIGINT  # 130: stopped by Ctrl-C or a signal it handles
    TERMINATED = 128 + signal.SIGTERM  # 143: killed by SIGTERM before its handler stood, as bash reports it
    WORKER_STOP = 255  # a driver's worker stopped by a signal: GNU xargs then starts no further worker

    # A forked warm worker or episode process that an exception escaped from.
    CRASHED = 3
    # An episode process to its warm worker: its timing row written (0-2) or not (4-6).
    EPISODE_DONE = 0
    EPISODE_FAILED = 1
    EPISODE_INTERRUPTED = 2
    EPISODE_DONE_UNRECORDED = 4
    EPISODE_FAILED_UNRECORDED = 5
    EPISODE_INTERRUPTED_UNRECORDED = 6

    def __str__(self) -> str:
        """The number, on every Python (3.10's IntEnum gave the name), as files and bash want it."""
        return str(self.value)


def shell_lines() -> list[str]:
    """``name=value`` per name of :class:`ExitCode`, aliases included, for bash to read."""
    return [f"{name.lower()}={int(code)}" for name, code in ExitCode.__members__.items()]


if __name__ == "__main__":
    print("\n".join(shell_lines()))
    sys.exit(ExitCode.DONE)
