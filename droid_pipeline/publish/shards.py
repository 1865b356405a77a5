"""The sharded repo layout: WebDataset tar shards of whole episodes, where they go, how they are
named, planned, written, verified and read back.

A shard is a plain tar file ``shards/<repo kind>/<NNN>/<NNNNNN>.tar`` (at most
:data:`SHARDS_PER_FOLDER` shards per folder). Each episode is a run of contiguous members named
``<key>.<file>``:

- ``<key>`` is the episode id made file-system safe (:func:`episode_key`): every character
  outside ``A-Z a-z 0-9 + _ -`` is percent-encoded, so a DROID id
  (``AUTOLab+84bd5053+2023-08-18-12h-01m-10s``) stays as it is, and no key holds a ``.`` (WebDataset
  splits a member name into key and field at the first dot of its base name), a ``/`` or a ``:``;
  :func:`episode_id_of` reverses it.
- ``<file>`` is one of the output contract's files, byte for byte: ``manifest.json``,
  ``quality.json``, ``tracks.npz``, ``extrinsics.npz``, and for each camera
  ``<role>.intrinsics.json`` (and in the full repo ``<role>.depth_meta.json``,
  ``<role>.depth.mkv``, optionally ``<role>.rgb.mp4``), where ``<role>`` is ``wrist``, ``ext1`` or
  ``ext2``. Every episode of a repo has the same members: a camera file the episode lacks (a
  camera without intrinsics, a role without a camera, a camera without depth) is a *stub* member,
  ``null`` for a JSON file and empty otherwise (:func:`stub_members`), listed in the index with an
  empty contract path (:data:`STUB_PATH`) and never laid out as a file when an episode is read.
  Per-camera members carry the camera's role, not its serial, so that every sample has
  the same fields: ``datasets``' WebDataset loader refuses shards whose samples differ in their
  fields, and serials differ from lab to lab. The serial of each role is in quality.json
  (``episode.serials``), extrinsics.npz and the episode index.

:func:`episode_types` gives the Arrow type of every member of an episode as ``datasets``' webdataset
builder decodes it (JSON values, ``.npz`` as a struct of nested lists, videos as bytes), and
:func:`merge_types` unifies them across episodes (null and a type give the type, int and float give
float, structs take the union of their fields). The uploader keeps the merged types of every
episode it published with the index, so readers can declare them instead of letting ``datasets``
guess from the first samples, where a field still null there, or an int later a float, fails the load.

Shards are byte-for-byte deterministic (members in a fixed order, ``mtime`` from the manifest,
no owner names), so rebuilding a shard after a killed upload gives the same file, which the Hub
then does not upload again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from droid_pipeline.core.atomic import atomic_path
from droid_pipeline.core.schema import (
    DEPTH,
    DEPTH_META,
    EXTRINSICS,
    INTRINSICS,
    MANIFEST,
    QUALITY,
    RGB,
    TRACKS,
    OutputFile,
    output_file,
)

if TYPE_CHECKING:
    import pyarrow as pa

SHARDS_DIR = "shards"
INDEX_DIR = "index"
CARD_NAME = "README.md"
SHARDS_PER_FOLDER = 1000
REPO_KINDS = ("metadata", "full")
# The Hub refuses larger files; no shard may reach it.
HUB_MAX_FILE_BYTES = 20_000_000_000
ROLES = ("wrist", "ext1", "ext2")
# Member order inside an episode: what tells what the episode is first, depth last.
EPISODE_FILES_ORDER: tuple[OutputFile, ...] = (MANIFEST, QUALITY, TRACKS, EXTRINSICS)
CAMERA_FILES_ORDER: tuple[OutputFile, ...] = (INTRINSICS, DEPTH_META, DEPTH, RGB)
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_KEY_SAFE = "+_-"
_COPY_CHUNK = 1 << 20
# The contract path of a stub member (a camera file the episode lacks).
STUB_PATH = ""


class ShardError(ValueError):
    """An episode cannot go into a shard, or a shard does not hold what it should; ``episode_id``
    names the episode at fault when there is one."""

    def __init__(self, message: str, episode_id: str | None = None):
        super().__init__(message)
        self.episode_id = episode_id


def shard_path(kind: str, number: int) -> str:
    """Path in the repo of shard ``number``: ``shards/<kind>/<number // 1000:03d>/<number:06d>.tar``."""
    return f"{SHARDS_DIR}/{kind}/{number // SHARDS_PER_FOLDER:03d}/{number:06d}.tar"


def index_path(kind: str) -> str:
    """Path in the repo of the episode index of a repo of ``kind``."""
    return f"{INDEX_DIR}/{kind}.parquet"


def episode_key(episode_id: str) -> str:
    """File-system-safe, dot-free, reversible form of an episode id (see module docstring)."""
    if not episode_id:
        raise ShardError("an empty episode id has no key")
    return quote(episode_id, safe=_KEY_SAFE).replace(".", "%2E")


def episode_id_of(key: str) -> str:
    """The episode id a key stands for (inverse of :func:`episode_key`)."""
    return unquote(key)


def member_suffix(path: str, roles: Mapping[str, str]) -> str:
    """The ``<file>`` part of a member name for the contract path ``path`` of an episode whose
    cameras have the roles ``roles`` (serial -> role)."""
    file = output_file(path)
    if file is None:
        raise ShardError(f"{path}: not a file of the output contract")
    if not file.per_camera:
        return path
    serial = path.split("/")[-2]
    if serial not in roles:
        raise ShardError(f"{path}: camera {serial} has no role in {QUALITY.path} (episode.serials)")
    return f"{roles[serial]}.{file.name}"


def contract_path(suffix: str, serials: Mapping[str, str]) -> str:
    """The contract path of a member's ``<file>`` part, given the episode's role -> serial map."""
    role, _, name = suffix.partition(".")
    if role in ROLES:
        file = next((f for f in CAMERA_FILES_ORDER if f.name == name), None)
        if file is None or role not in serials:
            raise ShardError(f"member field {suffix!r}: no such camera file, or no camera {role}")
        return file.for_camera(serials[role])
    if output_file(suffix) is None:
        raise ShardError(f"member field {suffix!r}: not a file of the output contract")
    return suffix


def member_order(path: str, roles: Mapping[str, str]) -> tuple[int, int, int]:
    """Sort key of a contract path inside its episode (see :data:`EPISODE_FILES_ORDER`)."""
    file = output_file(path)
    if file in EPISODE_FILES_ORDER:
        return (0, EPISODE_FILES_ORDER.index(file), 0)
    role = roles.get(path.split("/")[-2], "")
    rank = ROLES.index(role) if role in ROLES else len(ROLES)
    return (1, rank, CAMERA_FILES_ORDER.index(file) if file in CAMERA_FILES_ORDER else len(CAMERA_FILES_ORDER))


def is_camera_member(suffix: str) -> bool:
    """Whether ``suffix`` is a ``<role>.<camera file>`` member name (what a stub can be)."""
    role, _, name = suffix.partition(".")
    return role in ROLES and any(file.name == name for file in CAMERA_FILES_ORDER)


def stub_bytes(suffix: str) -> bytes:
    """What a stub member ``<role>.<file>`` holds: ``null`` for a JSON file, nothing for others."""
    return b"null" if suffix.endswith(".json") else b""


def repo_camera_files(kind: str, paths: Sequence[str]) -> tuple[OutputFile, ...]:
    """The camera files every episode of a repo of ``kind`` has a member for, per role: intrinsics,
    in the full repo also depth and its metadata, and RGB when the episode (``paths``) has any."""
    if kind == "metadata":
        return (INTRINSICS,)
    return (INTRINSICS, DEPTH_META, DEPTH) + ((RGB,) if any(RGB.matches(p) for p in paths) else ())


def stub_members(kind: str, roles: Mapping[str, str], paths: Sequence[str]) -> tuple[str, ...]:
    """The ``<role>.<file>`` stubs an episode with the camera roles ``roles`` (serial -> role) and the
    contract paths ``paths`` needs in a repo of ``kind`` so that it has every member."""
    present = {member_suffix(path, roles) for path in paths
               if output_file(path) in CAMERA_FILES_ORDER and path.split("/")[-2] in roles}
    return tuple(f"{role}.{file.name}" for role in ROLES for file in repo_camera_files(kind, paths)
                 if f"{role}.{file.name}" not in present)


@dataclass(frozen=True)
class SourceFile:
    """One episode file to put into a shard: its contract path, the local file, its size and SHA-256."""

    path: str
    local_path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ShardEpisode:
    """One episode to put into a shard: its files (any order) and the role of each camera."""

    episode_id: str
    roles: Mapping[str, str]  # serial -> role
    files: tuple[SourceFile, ...]
    mtime: int  # the manifest's creation time, for deterministic headers
    stubs: tuple[str, ...] = ()  # <role>.<file> members written as stubs, after the files

    @property
    def key(self) -> str:
        return episode_key(self.episode_id)

    def ordered(self) -> list[SourceFile]:
        return sorted(self.files, key=lambda f: member_order(f.path, self.roles))

    def member_name(self, file: SourceFile) -> str:
        return f"{self.key}.{member_suffix(file.path, self.roles)}"


@dataclass(frozen=True)
class ShardMember:
    """Where one episode file lies in a shard: its member name, contract path, data offset and size."""

    name: str
    path: str
    offset: int
    size: int
    sha256: str


def member_bytes(sizes: Sequence[int]) -> int:
    """Bytes an episode's members of these sizes take in a tar (a ustar header and the data padded
    to 512-byte blocks each; a pax header more for a name over 100 characters)."""
    return sum(_BLOCK + -(-size // _BLOCK) * _BLOCK for size in sizes)


def tar_bytes(episode_bytes: Sequence[int]) -> int:
    """Size of a tar holding episodes of these :func:`member_bytes` (with the end-of-archive blocks
    and the record padding Python's tarfile writes)."""
    return -(-(sum(episode_bytes) + 2 * _BLOCK) // _RECORD) * _RECORD


def plan_shards(episode_bytes: Sequence[int], max_episodes: int, max_bytes: int) -> list[list[int]]:
    """Group consecutive episodes (given their :func:`member_bytes`) into shards of at most
    ``max_episodes`` episodes whose tar stays within ``max_bytes``; an episode larger alone gets a
    shard of its own."""
    shards: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(episode_bytes):
        if current and (len(current) >= max_episodes or tar_bytes([total, size]) > max_bytes):
            shards.append(current)
            current, total = [], 0
        current.append(index)
        total += size
    if current:
        shards.append(current)
    return shards


class _HashingReader:
    """A file wrapper that hashes what is read through it (tarfile copies from it)."""

    def __init__(self, fh: IO[bytes]):
        self.fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data


def write_shard(dest: Path, episodes: Sequence[ShardEpisode]) -> dict[str, list[ShardMember]]:
    """Write the episodes into a tar at ``dest`` (through a temporary name, renamed when complete)
    and return each episode's members. A file whose content is not the checksum it was listed with
    raises ShardError naming the episode, and no file is left at ``dest``."""
    members: dict[str, list[ShardMember]] = {}
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for episode in episodes:
            listed = members[episode.episode_id] = []
            for file in episode.ordered():
                info = tarfile.TarInfo(episode.member_name(file))
                info.size, info.mtime, info.mode = file.size, episode.mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                try:
                    with open(file.local_path, "rb") as fh:
                        reader = _HashingReader(fh)
                        tar.addfile(info, reader)
                except OSError as exc:  # tarfile raises OSError("unexpected end of data") for a shorter file
                    raise ShardError(f"episode {episode.episode_id}: {file.path}: cannot be read whole "
                                     f"({exc})", episode.episode_id) from exc
                if reader.digest.hexdigest() != file.sha256:
                    raise ShardError(f"episode {episode.episode_id}: {file.path}: sha256 differs from the manifest",
                                     episode.episode_id)
                offset = tar.offset - -(-file.size // _BLOCK) * _BLOCK  # the data ends, padded, at tar.offset
                listed.append(ShardMember(info.name, file.path, offset, file.size, file.sha256))
            for suffix in episode.stubs:
                data = stub_bytes(suffix)
                info = tarfile.TarInfo(f"{episode.key}.{suffix}")
                info.size, info.mtime, info.mode = len(data), episode.mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
                offset = tar.offset - -(-len(data) // _BLOCK) * _BLOCK
                listed.append(ShardMember(info.name, STUB_PATH, offset, len(data), hashlib.sha256(data).hexdigest()))
    return members


def verify_shard(path: Path, expected: Mapping[str, Sequence[ShardMember]]) -> list[str]:
    """Problems found reading the tar at ``path`` back against ``expected`` (episode id -> its
    members, in order): every member there, in that order, at its offset, with its size and
    SHA-256, and nothing else. Empty when the shard is right."""
    want = [member for members in expected.values() for member in members]
    problems = []
    with tarfile.open(path, "r:") as tar:
        found = tar.getmembers()
        if [m.name for m in found] != [m.name for m in want]:
            problems.append(f"{path.name}: members {[m.name for m in found][:5]}... differ from the plan "
                            f"{[m.name for m in want][:5]}...")
            return problems
        with open(path, "rb") as fh:
            for info, member in zip(found, want):
                if (info.offset_data, info.size) != (member.offset, member.size):
                    problems.append(f"{member.name}: at {info.offset_data} with {info.size} bytes, "
                                    f"expected {member.offset} with {member.size}")
                elif read_sha256(fh, member.offset, member.size) != member.sha256:
                    problems.append(f"{member.name}: sha256 differs from the manifest")
    return problems


def read_sha256(fh: IO[bytes], offset: int, size: int) -> str:
    """SHA-256 of ``size`` bytes at ``offset`` of an open file."""
    digest = hashlib.sha256()
    fh.seek(offset)
    left = size
    while left:
        chunk = fh.read(min(left, _COPY_CHUNK))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StreamedEpisode:
    """One episode read from a shard stream: its key and its members, written as files into
    ``folder`` under their ``<file>`` names (``suffixes``), with the SHA-256 of each."""

    key: str
    folder: Path
    suffixes: dict[str, str]  # <file> -> sha256


def iter_shard(fileobj: IO[bytes], make_folder: Callable[[str], Path | None]) -> Iterator[StreamedEpisode]:
    """Read a shard front to back (a stream: no seeking), one episode at a time: the members of
    each key are written into ``make_folder(key)`` as they come (a key it answers None for is
    read past), then the episode is yielded. A key whose members are not contiguous raises ShardError."""
    seen: set[str] = set()
    key_now: str | None = None
    current: StreamedEpisode | None = None
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, dot, suffix = info.name.rpartition("/")[2].partition(".")
            if not dot:
                raise ShardError(f"member {info.name!r} is not named <key>.<file>")
            if key != key_now:
                if current is not None:
                    yield current
                if key in seen:
                    raise ShardError(f"members of {episode_id_of(key)} are not contiguous in the shard")
                seen.add(key)
                key_now = key
                folder = make_folder(key)
                current = None if folder is None else StreamedEpisode(key, folder, {})
            if current is None:
                continue
            source = tar.extractfile(info)
            assert source is not None  # a regular file
            digest = hashlib.sha256()
            with open(current.folder / suffix, "wb") as out:
                while chunk := source.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            current.suffixes[suffix] = digest.hexdigest()
    if current is not None:
        yield current


def arrange_episode(folder: Path, suffixes: Mapping[str, str], serials: Mapping[str, str], dest: Path) -> None:
    """Move members written under their ``<file>`` names in ``folder`` to their contract paths
    under ``dest`` (``serials``: role -> serial, from the episode's quality.json); ``suffixes``
    holds no stubs."""
    for suffix in suffixes:
        target = dest / contract_path(suffix, serials)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / suffix, target)


def copy_range(source: IO[bytes], offset: int, size: int, dest: Path, chunk_bytes: int = _COPY_CHUNK) -> str:
    """Copy ``size`` bytes at ``offset`` of ``source`` into ``dest``, ``chunk_bytes`` at a time;
    returns their SHA-256."""
    digest = hashlib.sha256()
    source.seek(offset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        left = size
        while left:
            chunk = source.read(min(left, chunk_bytes))
            if not chunk:
                raise ShardError(f"{dest.name}: the shard ends {left} bytes early")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def member_type(name: str, path: Path) -> pa.DataType:
    """The Arrow type of the member ``<key>.<name>`` (the file at ``path``) as ``datasets``' webdataset
    builder decodes it: a JSON value's type, an ``.npz`` as a struct of its arrays (an n-d array as
    n nested lists, a 0-d one as a scalar; only the headers are read), anything else as bytes.
    ValueError when the JSON cannot be one Arrow value (a list mixing types)."""
    import pyarrow as pa

    extension = name.rsplit(".", 1)[-1]
    if extension == "json":
        try:
            return pa.array([json.loads(path.read_bytes())]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"{name}: no single Arrow type ({exc})") from exc
    if extension == "npz":
        return pa.struct([(key, array_type(dtype, ndim)) for key, dtype, ndim in npz_headers(path)])
    return pa.binary()


def npz_headers(path: Path) -> list[tuple[str, Any, int]]:
    """(key, dtype, ndim) of every array of an ``.npz``, from the array headers alone."""
    import numpy as np

    headers = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(fh)
            headers.append((info.filename.removesuffix(".npy"), dtype, len(shape)))
    return headers


def array_type(dtype: Any, ndim: int) -> pa.DataType:
    """Arrow type of an ``ndim``-d NumPy array of ``dtype`` read as nested lists (0-d: the scalar)."""
    import pyarrow as pa

    kind = dtype.kind
    value = pa.string() if kind == "U" else pa.binary() if kind == "S" else pa.from_numpy_dtype(dtype)
    for _ in range(ndim):
        value = pa.list_(value)
    return value


def episode_types(episode: ShardEpisode) -> pa.Schema:
    """One field per member of ``episode`` (named by its ``<file>`` part) with its :func:`member_type`;
    ShardError naming the episode when a member cannot be typed."""
    import pyarrow as pa

    fields = []
    for file in episode.ordered():
        name = member_suffix(file.path, episode.roles)
        try:
            fields.append(pa.field(name, member_type(name, file.local_path)))
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ShardError(f"episode {episode.episode_id}: {file.path}: cannot be typed: {exc}",
                             episode.episode_id) from exc
    fields += [pa.field(suffix, pa.null() if suffix.endswith(".json") else pa.binary()) for suffix in episode.stubs]
    return pa.schema(fields)


def merge_types(known: pa.Schema | None, new: pa.Schema, episode_id: str) -> pa.Schema:
    """``known`` and ``new`` unified (see module docstring); ShardError naming the episode when a
    field has types that cannot be one (a string here, a struct before)."""
    import pyarrow as pa

    if known is None:
        return new
    try:
        return pa.unify_schemas([known, new], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ShardError(f"episode {episode_id}: its members' types differ from those already published: {exc}",
                         episode_id) from exc
