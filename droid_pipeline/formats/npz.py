"""A fast ``.npz`` writer: members deflated in parallel chunks, read back by plain ``np.load``.

``np.savez_compressed`` deflates every member at zlib's default level in one thread. For the
tracks step's arrays (float32 positions and pixels, whose low mantissa bytes are noise) level 1
is both about twice as fast and slightly smaller than the default, and a member's deflate
stream can be cut into chunks compressed on several threads (zlib releases the GIL) and joined
without a seam, as pigz does: each chunk but the last ends on a byte-aligned sync flush and is
primed with the 32 KiB of data before it, so matches reach back across chunk borders. The
container is an ordinary ZIP (ZIP64 when a member or the archive outgrows 4 GiB) holding one
``<key>.npy`` per array, so ``np.load(path, allow_pickle=False)`` reads it unchanged.

Memory stays bounded: a member is read and compressed chunk by chunk and each compressed chunk
is written as soon as the chunks before it are, so at most ``threads`` chunks are in flight. A
member can also be given as a :class:`StreamedArray` whose C-order bytes are produced piece by
piece (an array too large to hold whole is never assembled).

Two deflate engines write the same format: ``zlib`` and ``isal``, Intel's ISA-L through the
package of that name (a dependency; the config's default engine, at level 3), which takes a
quarter to a seventh of zlib level 1's CPU time on these arrays for 2-6% more bytes
(``bench/bench_npz.py`` prints the table). Both release the GIL. :class:`Deflate` on its own
means zlib level 1, which needs nothing beyond the standard library.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, BinaryIO, Literal

import numpy as np

from droid_pipeline.core.atomic import atomic_path
from droid_pipeline.core.config import DEFLATE_LEVELS, NpzConfig

# Bytes of raw member data per compressed chunk: large enough that the restart costs nothing
# measurable in ratio, small enough to spread a 10 MB member over the threads.
CHUNK_BYTES = 1 << 21
# zlib's sliding window: a chunk is primed with this much of the data before it.
WINDOW_BYTES = 1 << 15
DEFAULT_LEVEL = 1
MAX_THREADS = 4

_ZIP64_LIMIT = 0xFFFFFFFF
_DEFLATED, _STORED = 8, 0
_VERSION_ZIP64 = 45
_MADE_BY_UNIX = 3 << 8


@dataclass(frozen=True)
class StreamedArray:
    """An array given by its dtype, shape and its C-order bytes in pieces (any split)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    pieces: Iterable[bytes | memoryview | np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


Member = np.ndarray | StreamedArray


Engine = Literal["zlib", "isal"]


@dataclass(frozen=True)
class Deflate:
    """How one member is stored: ``level`` 0 stores it, 1-9 (isal: 1-3) deflates it with
    ``engine`` and, for zlib, ``strategy``."""

    level: int = DEFAULT_LEVEL
    strategy: int = zlib.Z_DEFAULT_STRATEGY
    engine: Engine = "zlib"

    def __post_init__(self) -> None:
        levels = DEFLATE_LEVELS.get(self.engine)
        if levels is None:
            raise ValueError(f"deflate engine must be one of {', '.join(DEFLATE_LEVELS)}, got {self.engine!r}")
        if self.level not in levels:
            raise ValueError(f"{self.engine} deflate level must be 0..{levels[-1]}, got {self.level}")
        if self.engine == "isal" and self.strategy != zlib.Z_DEFAULT_STRATEGY:
            raise ValueError("the isal engine has no deflate strategies")


def deflate_by_member(npz: NpzConfig) -> Callable[[str, Member], Deflate]:
    """The config's setting of each member, for :func:`write_npz`: ``npz.level``, or the member's own
    in ``npz.level_by_member``."""
    default = Deflate(npz.level, engine=npz.engine)
    own = {key: Deflate(level, engine=npz.engine) for key, level in npz.level_by_member.items()}
    return lambda key, member: own.get(key, default)


def engine_module(engine: Engine) -> ModuleType:
    """The zlib-like module of a deflate engine; ImportError naming the package if isal is missing."""
    if engine == "zlib":
        return zlib
    try:
        from isal import isal_zlib
    except ImportError as exc:
        raise ImportError("the isal deflate engine needs the package isal (pip install isal)") from exc
    return isal_zlib


def default_threads() -> int:
    """The CPUs this process may use, at most :data:`MAX_THREADS`."""
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


def write_npz(fh: BinaryIO, arrays: Mapping[str, Member], *,
              deflate: Deflate | Callable[[str, Member], Deflate] = Deflate(),
              threads: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write ``arrays`` as an npz archive to the binary stream ``fh`` (positioned at 0).

    ``deflate`` is one setting for every member, or a function of the key and the member.
    ``threads`` compress chunks side by side (None: :func:`default_threads`).
    """
    if chunk_bytes < WINDOW_BYTES:
        raise ValueError(f"chunk_bytes must be at least {WINDOW_BYTES}, got {chunk_bytes}")
    choose = deflate if callable(deflate) else (lambda key, member: deflate)
    writer = _ZipWriter(fh)
    workers = threads or default_threads()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npz") as pool:
        for key, member in arrays.items():
            setting = choose(key, member)
            engine_module(setting.engine)  # a missing engine fails before the member starts
            header, body = _npy_parts(member)
            writer.member(f"{key}.npy", setting, _pieces(_chain([memoryview(header)], body), chunk_bytes),
                          pool, workers)
    writer.close()


def save_npz_atomic(path: os.PathLike | str, arrays: Mapping[str, Member], **options: Any) -> None:
    """:func:`write_npz` through a temporary file renamed on success (see ``core.atomic``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write_npz(fh, arrays, **options)


def _npy_parts(member: Member) -> tuple[bytes, Iterator[memoryview]]:
    """The ``.npy`` header and the data's bytes in C order, without copying contiguous arrays."""
    if isinstance(member, StreamedArray):
        dtype, shape = np.dtype(member.dtype), tuple(member.shape)
        pieces: Iterable[bytes | memoryview | np.ndarray] = member.pieces
    else:
        array = np.asanyarray(member)
        if array.dtype.hasobject:
            raise ValueError("object arrays cannot be written to an npz that loads without pickle")
        dtype, shape = array.dtype, array.shape
        pieces = [np.ascontiguousarray(array)]
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header beyond version 1.0's 64 KiB (a very long shape)
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue(), (_as_bytes(piece) for piece in pieces)


def _as_bytes(piece: bytes | memoryview | np.ndarray) -> memoryview:
    if isinstance(piece, np.ndarray):
        return np.ascontiguousarray(piece).reshape(-1).view(np.uint8).data
    return memoryview(piece).cast("B")


def _pieces(body: Iterator[memoryview], size: int) -> Iterator[memoryview]:
    """Re-cut a stream of byte pieces into pieces of ``size`` bytes (the last may be shorter)."""
    pending: list[memoryview] = []
    held = 0
    for piece in body:
        while len(piece):
            take = min(size - held, len(piece))
            pending.append(piece[:take])
            held += take
            piece = piece[take:]
            if held == size:
                yield memoryview(b"".join(pending)) if len(pending) > 1 else pending[0]
                pending, held = [], 0
    if held:
        yield memoryview(b"".join(pending)) if len(pending) > 1 else pending[0]


def _deflate_chunk(data: memoryview, previous: bytes, setting: Deflate, last: bool) -> bytes:
    engine = engine_module(setting.engine)
    compressor = engine.compressobj(setting.level, engine.DEFLATED, -15, 8, setting.strategy,
                                    **({"zdict": previous} if previous else {}))
    return compressor.compress(data) + compressor.flush(engine.Z_FINISH if last else engine.Z_SYNC_FLUSH)


@dataclass
class _Entry:
    name: bytes
    method: int
    crc: int
    compressed: int
    size: int
    offset: int
    dos_time: int
    dos_date: int


class _ZipWriter:
    """Just enough of the ZIP format for npz: members written once, sizes in data descriptors."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._offset = 0
        self._entries: list[_Entry] = []
        now = time.localtime()
        self._dos_time = now.tm_hour << 11 | now.tm_min << 5 | now.tm_sec // 2
        self._dos_date = max(now.tm_year - 1980, 0) << 9 | now.tm_mon << 5 | now.tm_mday

    def _write(self, data: bytes | memoryview) -> None:
        self._fh.write(data)
        self._offset += len(data)

    def member(self, name: str, setting: Deflate, pieces: Iterator[memoryview], pool: ThreadPoolExecutor,
               threads: int) -> None:
        """Write one member from its bytes in chunks, deflating up to ``threads`` chunks at once."""
        method = _DEFLATED if setting.level else _STORED
        entry = _Entry(name.encode(), method, 0, 0, 0, self._offset, self._dos_time, self._dos_date)
        # Local header: sizes follow the data (flag bit 3), with a ZIP64 extra so they may be 64-bit.
        extra = struct.pack("<HHQQ", 0x0001, 16, 0, 0)
        self._write(struct.pack("<IHHHHHIIIHH", 0x04034B50, _VERSION_ZIP64, 0x08, method, entry.dos_time,
                                entry.dos_date, 0, _ZIP64_LIMIT, _ZIP64_LIMIT, len(entry.name), len(extra)))
        self._write(entry.name + extra)
        crc, size, compressed = 0, 0, 0
        if method == _STORED:
            for piece in pieces:
                crc = zlib.crc32(piece, crc)
                size += len(piece)
                self._write(piece)
            compressed = size
        else:
            in_flight: list[Future[bytes]] = []
            previous = b""
            checksum = engine_module(setting.engine).crc32   # the same CRC-32; ISA-L's is 8x as fast
            current = next(pieces, None)
            while current is not None:
                following = next(pieces, None)
                crc = checksum(current, crc)
                size += len(current)
                in_flight.append(pool.submit(_deflate_chunk, current, previous, setting, following is None))
                previous = bytes(current[-WINDOW_BYTES:])
                current = following
                while len(in_flight) > threads or (current is None and in_flight):
                    data = in_flight.pop(0).result()
                    compressed += len(data)
                    self._write(data)
        entry.crc, entry.size, entry.compressed = crc, size, compressed
        self._write(struct.pack("<IIQQ", 0x08074B50, crc, compressed, size))
        self._entries.append(entry)

    def close(self) -> None:
        start = self._offset
        for entry in self._entries:
            extra = struct.pack("<HHQQQ", 0x0001, 24, entry.size, entry.compressed, entry.offset)
            self._write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY_UNIX | _VERSION_ZIP64,
                                    _VERSION_ZIP64, 0x08, entry.method, entry.dos_time, entry.dos_date, entry.crc,
                                    _ZIP64_LIMIT, _ZIP64_LIMIT, len(entry.name), len(extra), 0, 0, 0,
                                    0o644 << 16, _ZIP64_LIMIT))
            self._write(entry.name + extra)
        directory_size = self._offset - start
        end64 = self._offset
        count = len(self._entries)
        self._write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _VERSION_ZIP64, _VERSION_ZIP64, 0, 0, count, count,
                                directory_size, start))
        self._write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                min(directory_size, _ZIP64_LIMIT), min(start, _ZIP64_LIMIT), 0))


def _chain(first: Iterable[memoryview], rest: Iterator[memoryview]) -> Iterator[memoryview]:
    yield from first
    yield from rest
