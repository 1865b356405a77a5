"""Input files checked before they are opened: a regular file of bounded size, never a FIFO,
device or socket, and text read with a size cap.

Opening a FIFO blocks until a writer comes, reading a device such as ``/dev/zero`` never ends,
and a JSON file of gigabytes takes the process's memory with it. Every input file the pipeline
opens (metadata, trajectory.h5, MP4s, SVOs, calibration, intrinsics and ZED conf files) goes
through :func:`check_input_file` first, and every JSON or text input is read by
:func:`read_text_capped`, which opens without blocking and checks the open file itself.
:class:`UnusableFile` is an :class:`OSError`, so the handlers that already turn an unreadable file
into an episode's error or a discovery problem name it with its cause.
"""

from __future__ import annotations

import os
import stat

# Caps on what an input file may hold (bytes). Metadata json is a few kB in DROID; a published
# calibration or intrinsics file of all 92k episodes is tens of MB; trajectory.h5, MP4s and SVOs
# of an episode are at most a few GB (an SVO of 10 min at 2K is about 25 GB).
MAX_METADATA_BYTES = 1 << 20
MAX_TEXT_BYTES = 1 << 30
MAX_BINARY_BYTES = 256 << 30

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class UnusableFile(OSError):
    """An input file is not a regular file, or larger than its cap; the message names both."""

    def __str__(self) -> str:
        return str(self.args[0])


def file_kind(mode: int) -> str:
    """What a file of ``mode`` is, in words ("a FIFO (named pipe)", "a regular file", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode)
                else "not a regular file")


def check_stat(path: os.PathLike | str, status: os.stat_result, max_bytes: int) -> None:
    """Raise UnusableFile unless ``status`` (of ``path``) is a regular file of at most ``max_bytes``."""
    if not stat.S_ISREG(status.st_mode):
        raise UnusableFile(f"{os.fspath(path)} is {file_kind(status.st_mode)}, not a regular file")
    if status.st_size > max_bytes:
        raise UnusableFile(f"{os.fspath(path)} holds {status.st_size} bytes, more than the {max_bytes} "
                           "bytes an input of its kind may hold")


def check_input_file(path: os.PathLike | str, max_bytes: int = MAX_BINARY_BYTES) -> int:
    """The size of ``path`` (symbolic links followed), checked to be a regular file of at most
    ``max_bytes``: UnusableFile otherwise, FileNotFoundError when it does not exist. Never opens it."""
    status = os.stat(path)
    check_stat(path, status, max_bytes)
    return status.st_size


def read_bytes_capped(path: os.PathLike | str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``: opened without blocking (a FIFO
    swapped in after a check cannot block), checked on the open file, read at most to the cap."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        check_stat(path, os.fstat(fd), max_bytes)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UnusableFile(f"{os.fspath(path)} grew beyond {max_bytes} bytes while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_capped(path: os.PathLike | str, max_bytes: int = MAX_TEXT_BYTES, encoding: str = "utf-8") -> str:
    """The text of a regular file of at most ``max_bytes`` (:func:`read_bytes_capped`)."""
    return read_bytes_capped(path, max_bytes).decode(encoding)
