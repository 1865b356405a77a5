"""Write files under a temporary name and rename on success, so nothing half-written looks done;
checksum files in chunks. An OS error while writing (a full disk, a lost mount) names the file
it was writing, even where the failing call (``write``, ``fsync``) knows no path. Folders held
by their live processes (:func:`hold_folder`): what dead ones leave is removed, nothing else."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The file is created with mode 0666 less the umask, as ``open`` would (``mkstemp`` makes it
    0600, which the rename would carry onto the output and lock the group out of it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_beside(path)
    try:
        with naming_path(path):
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def naming_path(path: os.PathLike | str) -> Iterator[None]:
    """An OSError raised in the block without a file name (``write``, ``fsync``, a zip member
    being written) is raised again, same errno, naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path)) from exc


# The names _create_beside gives; a file so named outside an atomic_path block is a leftover of
# a killed process.
_TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp(\.[^.]*)?")


def remove_temporaries(folder: os.PathLike | str) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left in ``folder`` (not below it) when its
    process was killed; return them. Only for a folder whose writers are known to be gone (the
    caller holds the lock they write under)."""
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(os.fspath(folder)) as entries:
        for entry in entries:
            if _TEMPORARY_NAME.fullmatch(str(entry.name)) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def _create_beside(path: Path) -> Path:
    """A new empty file ``.<name>.<random>.tmp<suffix>`` in ``path``'s folder, honouring the umask."""
    while True:
        tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp_path


def write_text_atomic(path: os.PathLike | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: os.PathLike | str, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def append_locked(path: os.PathLike | str, text: str, header: str = "") -> None:
    """Append whole lines under an exclusive ``flock``, ``header`` first if the file is empty.

    Safe with concurrent writers and against kill -9: a line torn by a killed writer is closed
    with a newline first, so it stays one bad line that readers skip; the append is fsynced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        data = text
        if size == 0:
            data = header + text
        elif os.pread(fd, 1, size - 1) != b"\n":
            data = "\n" + text
        with naming_path(path):
            os.write(fd, data.encode())
            os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: os.PathLike | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def hold_folder(folder: os.PathLike | str, lock_name: str = ".lock") -> int:
    """Create ``folder`` and hold a shared lock on its ``lock_name`` until the returned descriptor
    is closed (children inherit it): while any process holds it, :func:`remove_unheld_folder`
    leaves the folder alone. A folder removed meanwhile as unheld is made again."""
    lock = Path(folder) / lock_name
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # removed meanwhile as unheld: make it again
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_unheld_folder(folder: os.PathLike | str, lock_name: str = ".lock") -> bool:
    """Remove ``folder`` if no process holds its lock (its holders are gone); True if removed."""
    folder = Path(folder)
    lock = folder / lock_name
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                return False
        except FileNotFoundError:
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def remove_unheld_folders(parent: os.PathLike | str, lock_name: str = ".lock") -> list[Path]:
    """Remove every folder in ``parent`` that no process holds; return them."""
    try:
        with os.scandir(os.fspath(parent)) as it:
            entries = list(it)
    except OSError:
        return []
    return [Path(e.path) for e in entries
            if e.is_dir(follow_symlinks=False) and remove_unheld_folder(e.path, lock_name)]
