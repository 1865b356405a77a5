"""A raw DROID root on an object store (``gs://bucket/prefix``): listing, reading and checked copies.

The client is fsspec's: ``gcsfs`` for ``gs://`` (Google's own Python clients are heavier and
synchronous; gcsfs is maintained under the fsspec project, speaks the JSON API, honours
``STORAGE_EMULATOR_HOST`` as Google's clients do, and gives ranged reads and object metadata with
``crc32c``/``md5Hash``), any other fsspec protocol (``s3://``, ``https://``) through
``fsspec.filesystem``. Reads are anonymous unless ``storage_token`` names credentials.

:meth:`RemoteRoot.download` copies one object into a local file and checks it against the size
and the MD5 (else CRC32C) the store reports; copies that fail their check and broken connections
are retried here with exponential backoff (:data:`ATTEMPTS`). A missing object, a full local
disk, or an object still failing after the retries raises :class:`FetchError` naming the object
and the cause. HTTP errors come out of gcsfs after its own
retries (429, 5xx and timeouts, six tries with exponential backoff, about 30 s) and are not
retried again; other 4xx answers (gcsfs raises 403, no access, as an OSError without errno) fail
at once.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Objects larger than this download as parallel ranges of this size.
RANGE_BYTES = 16 * 1024 * 1024
RANGE_THREADS = 4
# Attempts per object (the first and the retries) and the first backoff (doubled each retry).
ATTEMPTS = 4
BACKOFF_S = 0.5
# Local errors no retry can cure: the scratch disk or quota is full, the file is too large.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class FetchError(Exception):
    """An object could not be listed, read or copied; the message names it and the cause."""


@dataclass(frozen=True)
class ObjectInfo:
    """An object's size and the checksums its store reports (base64, as the JSON API gives them)."""

    name: str
    size: int
    md5: str | None
    crc32c: str | None


def is_remote(root: object) -> bool:
    """Whether a droid_root is an object-store URL rather than a local folder."""
    return isinstance(root, str) and "://" in root


class RemoteRoot:
    """A release root on an object store: ``url`` is ``<protocol>://<bucket>/<prefix>``."""

    def __init__(self, url: str, token: str | None = None, *, backoff_s: float = BACKOFF_S) -> None:
        protocol, _, rest = url.partition("://")
        self.url = url.rstrip("/")
        self.base = rest.strip("/")
        self.backoff_s = backoff_s
        self.fs = _filesystem(protocol, token)

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def subfolders(self, rel: str) -> list[str]:
        """Names of the folders (prefixes) directly under ``rel``, sorted; FetchError if unlistable."""
        def listing() -> list[dict[str, Any]]:
            try:
                return self.fs.ls(self._path(rel), detail=True, refresh=True)
            except FileNotFoundError:
                return []  # an empty prefix: no such folder

        entries = self._retry(f"{self.url}/{rel}", listing)
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def objects(self, rel: str) -> dict[str, ObjectInfo]:
        """Every object under the folder ``rel``, by its path relative to that folder."""
        prefix = self._path(rel) + "/"
        found = self._retry(f"{self.url}/{rel}/", lambda: self.fs.find(prefix, detail=True))
        return {name[len(prefix):]: _object_info(name[len(prefix):], info)
                for name, info in found.items() if name.startswith(prefix) and info.get("type") != "directory"}

    def read_bytes(self, rel: str) -> bytes:
        """A small object's bytes (metadata files, the map file)."""
        return self._retry(f"{self.url}/{rel}", lambda: self.fs.cat_file(self._path(rel)))

    def info(self, rel: str) -> ObjectInfo:
        return _object_info(rel, self._retry(f"{self.url}/{rel}", lambda: self.fs.info(self._path(rel))))

    def download(self, info: ObjectInfo, rel: str, dest: Path) -> int:
        """Copy the object ``rel`` (described by ``info``) to ``dest``, checked; returns its size."""
        name = f"{self.url}/{rel}"

        def attempt() -> int:
            self._copy(self._path(rel), info.size, dest)
            _check(name, info, dest)
            return info.size

        return self._retry(name, attempt)

    def _copy(self, path: str, size: int, dest: Path) -> None:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            if size <= RANGE_BYTES:
                _write_all(fd, self.fs.cat_file(path), 0)
                return
            starts = range(0, size, RANGE_BYTES)

            def part(start: int) -> None:
                data = self.fs.cat_file(path, start=start, end=min(start + RANGE_BYTES, size))
                _write_all(fd, data, start)

            with ThreadPoolExecutor(RANGE_THREADS) as pool:
                list(pool.map(part, starts))
        finally:
            os.close(fd)

    def _retry(self, name: str, action: Callable[[], Any]) -> Any:
        """Run ``action``, retrying what may pass on a second try (see module docstring)."""
        for attempt in range(ATTEMPTS):
            try:
                return action()
            except FileNotFoundError as exc:
                raise FetchError(f"{name}: no such object") from exc
            except OSError as exc:
                if exc.errno in _FULL:
                    raise FetchError(f"{name}: scratch full: {exc}") from exc
                if exc.errno is None and not isinstance(exc, ConnectionError):  # the store refused
                    raise FetchError(f"{name}: {' '.join(str(exc).split())}") from exc
                cause: Exception = exc
            except Exception as exc:  # the client's errors: HTTP, connection, checks
                http_status = _http_code(exc)
                if http_status is not None:  # gcsfs retried 429, 5xx and timeouts already, with backoff
                    again = " (after the client's retries)" if http_status in (408, 429) or http_status >= 500 else ""
                    raise FetchError(f"{name}: HTTP {http_status}: {exc}{again}") from exc
                cause = exc
            if attempt + 1 == ATTEMPTS:
                raise FetchError(f"{name}: failed after {ATTEMPTS} attempts: {type(cause).__name__}: {cause}") \
                    from cause
            time.sleep(self.backoff_s * 2 ** attempt * (1 + random.random()))
        raise AssertionError("unreachable")


class ChecksumMismatch(Exception):
    """A copy's size or checksum differs from the object's (retried)."""


def _check(name: str, info: ObjectInfo, dest: Path) -> None:
    size = dest.stat().st_size
    if size != info.size:
        raise ChecksumMismatch(f"{name}: copied {size} bytes, the object has {info.size}")
    digest: Any
    if info.md5:
        digest = hashlib.md5(usedforsecurity=False)
        expected, kind = info.md5, "MD5"
    elif info.crc32c:
        import google_crc32c

        digest = google_crc32c.Checksum()
        expected, kind = info.crc32c, "CRC32C"
    else:
        return
    with open(dest, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    got = base64.b64encode(digest.digest()).decode()
    if got != expected:
        raise ChecksumMismatch(f"{name}: {kind} of the copy {got} differs from the object's {expected}")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _http_code(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _object_info(name: str, info: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(name=name, size=int(info["size"]), md5=info.get("md5Hash") or None,
                      crc32c=info.get("crc32c") or None)


def _filesystem(protocol: str, token: str | None) -> Any:
    """The fsspec filesystem: anonymous unless ``token`` names credentials."""
    if protocol in ("gs", "gcs"):
        # The plain class: the package's default probes each bucket over gRPC first, which an
        # emulator or mirror never answers (a 60 s wait).
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(token=token or "anon", skip_instance_cache=True)
    import fsspec

    options: dict[str, Any] = {"anon": True} if token is None and protocol in ("s3", "s3a") else {}
    return fsspec.filesystem(protocol, skip_instance_cache=True, **options)
