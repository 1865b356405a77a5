"""Reading a sharded repo (docs/upload.md): on the Hub or in a local folder laid out like one.

A sharded repo holds ``index/<kind>.parquet`` (one row per episode: where each of its files lies
in which shard) and the tar shards under ``shards/``. Here:

- :func:`fetch_episode` finds one episode's row in the index (reading the footer and the one
  row group that can hold it) and fetches only that episode's members: on the Hub with one HTTP
  range request per member (``huggingface_hub``'s ``HfFileSystem``), locally by seeking in the
  shard. Members are checked against the index's SHA-256 and laid out as an episode folder
  (contract paths) in a cache folder, which ``outputs.loader`` then reads like any other.
- :func:`iter_sharded_folders` streams whole shards front to back, in shard order, and yields
  the episode folders of the rows the filter keeps (each materialised in a temporary folder,
  removed when the next is asked for).
- :func:`check_sharded` streams every shard the index names, checks each member against the
  index and against its episode's manifest and yields each episode's folder with what is wrong
  with its members; ``outputs.verify`` runs the contract checks on it.

This module reads shards into folders and knows nothing of what an episode folder holds beyond
its manifest, so the loader and the verifier build on it, not it on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from droid_pipeline.core.schema import DEPTH, DEPTH_META, MANIFEST
from droid_pipeline.publish import index as episode_index
from droid_pipeline.publish.shards import (
    REPO_KINDS,
    STUB_PATH,
    ShardError,
    arrange_episode,
    copy_range,
    episode_key,
    index_path,
    is_camera_member,
    iter_shard,
    stub_bytes,
)

if TYPE_CHECKING:
    import pyarrow as pa

# Members read at once from the Hub (one range request each).
RANGE_CHUNK = 16 << 20
CACHE_ENV = "DROID_PIPELINE_CACHE"


class ShardedReadError(ValueError):
    """A sharded repo cannot be read: no index, no such episode, or members that do not match."""


class ShardSource:
    """Where a sharded repo's files are read from; ``chunk``: bytes asked for at once."""

    name: str
    index_file: str
    chunk: int

    def open(self, path: str, *, stream: bool = False) -> IO[bytes]:
        """A binary file object of ``path`` in the repo, seekable (each read of a Hub file is one
        HTTP range request), or with ``stream`` read front to back in one request."""
        raise NotImplementedError


class FolderSource(ShardSource):
    """A local folder laid out like a sharded repo (a ``file://`` target, or a downloaded repo)."""

    chunk = 1 << 20

    def __init__(self, root: Path, index_file: str):
        self.root, self.index_file, self.name = root, index_file, str(root)

    def open(self, path: str, *, stream: bool = False) -> IO[bytes]:
        return open(self.root / path, "rb")


class HubSource(ShardSource):
    """A sharded dataset repo on the Hub, at one commit, through ``HfFileSystem``."""

    chunk = RANGE_CHUNK

    def __init__(self, repo_type: str, repo_id: str, commit: str, index_file: str, url: str):
        from huggingface_hub import HfFileSystem

        self.fs = HfFileSystem(skip_instance_cache=True)  # the endpoint and token of now, not of an earlier call
        self.prefix = f"{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}@{commit}"
        self.index_file, self.name = index_file, url

    def open(self, path: str, *, stream: bool = False) -> IO[bytes]:
        if stream:
            return self.fs.open(f"{self.prefix}/{path}", "rb", block_size=0)
        return self.fs.open(f"{self.prefix}/{path}", "rb", cache_type="none")  # no read-ahead: exact ranges


def folder_index(root: Path) -> str | None:
    """The index of a local folder laid out like a sharded repo, None if it is not one."""
    found = [index_path(kind) for kind in REPO_KINDS if (root / index_path(kind)).is_file()]
    return found[-1] if found else None


def hub_source(repo_type: str, repo_id: str, revision: str | None, url: str) -> HubSource | None:
    """The Hub repo as a sharded source at ``revision``'s commit, None if it has no episode index."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    commit = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    assert commit is not None
    found = [entry.path for entry in api.get_paths_info(repo_id, [index_path(k) for k in REPO_KINDS],
                                                        repo_type=repo_type, revision=commit)
             if isinstance(entry, RepoFile)]
    return HubSource(repo_type, repo_id, commit, sorted(found)[-1], url) if found else None


def find_episode(source: ShardSource, episode: str) -> dict[str, Any]:
    """The index row of an episode id (or relative path)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with source.open(source.index_file) as fh:
        parquet = pq.ParquetFile(fh)
        if "/" not in episode:
            row = episode_index.find_row(parquet, episode)
        else:
            table = parquet.read()
            found = table.filter(pc.equal(table["relative_path"], episode.strip("/"))).to_pylist()
            row = found[0] if found else None
    if row is None:
        raise ShardedReadError(f"{source.name}: episode {episode} is not in {source.index_file}")
    return row


def read_index_rows(source: ShardSource) -> list[dict[str, Any]]:
    """Every row of the index."""
    import pyarrow.parquet as pq

    with source.open(source.index_file) as fh:
        return pq.ParquetFile(fh).read().to_pylist()


def read_shard_types(source: ShardSource) -> pa.Schema:
    """The Arrow types of the shards' members kept in the index (``publish.index``); ShardedReadError
    when the index has none (rows published before they were kept: publish those episodes again)."""
    import pyarrow.parquet as pq

    with source.open(source.index_file) as fh:
        metadata = pq.ParquetFile(fh).schema_arrow.metadata or {}
    try:
        types = episode_index.shard_types(metadata)
    except episode_index.EpisodeIndexError as exc:
        raise ShardedReadError(f"{source.index_file}: {exc}") from exc
    if types is None:
        raise ShardedReadError(f"{source.index_file} keeps no member types: it has episodes published before "
                               "they were kept; publish those again")
    return types


def default_cache_dir() -> Path:
    """``$DROID_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/droid_pipeline`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "droid_pipeline"


def _is_depth(path: str) -> bool:
    return any(f.matches(path) for f in (DEPTH, DEPTH_META))


def fetch_episode(source: ShardSource, episode: str, cache_dir: os.PathLike | str | None,
                  include_depth: bool) -> Path:
    """The cache folder holding one episode of a sharded repo, its members fetched by range (see
    module docstring)."""
    row = find_episode(source, episode)
    members = [m for m in row["members"] if m["path"] != STUB_PATH and (include_depth or not _is_depth(m["path"]))]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "episodes" / f"{row['key']}-{row['manifest_sha256'][:16]}{'' if include_depth else '-nodepth'}"
    if not folder.is_dir():
        incoming = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
        try:
            with source.open(row["shard"]) as shard:
                for member in members:
                    sha = copy_range(shard, member["offset"], member["size"], incoming / member["path"], source.chunk)
                    if sha != member["sha256"]:
                        raise ShardedReadError(f"{source.name}: {row['shard']} member {member['name']}: sha256 "
                                               "differs from the index")
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(incoming, folder)
            except OSError:  # another reader put it there first
                if not folder.is_dir():
                    raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
    return folder


@contextmanager
def _scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="droid-shard-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _by_shard(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """shard -> key -> row, shards in order."""
    shards: dict[str, dict[str, dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["shard"], r["members"][0]["offset"] if r["members"] else 0)):
        shards.setdefault(row["shard"], {})[row["key"]] = row
    return shards


def part_rows(rows: list[dict[str, Any]], part: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The rows of part ``(i, n)`` of a repo: the shards whose rank (in shard order) is i modulo n
    when the repo has at least n shards, else the episodes whose rank (in shard and member order)
    is i modulo n. The n parts are disjoint and together hold every row; every reader of the same
    index computes the same parts."""
    if part is None:
        return rows
    index, count = part
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        raise ValueError(f"part={part!r}: expected (i, n) with 0 <= i < n")
    shards = sorted({r["shard"] for r in rows})
    if len(shards) >= count:
        mine = {shard for rank, shard in enumerate(shards) if rank % count == index}
        return [r for r in rows if r["shard"] in mine]
    ordered = [row for by_key in _by_shard(rows).values() for row in by_key.values()]
    return [row for rank, row in enumerate(ordered) if rank % count == index]


def iter_sharded_folders(source: ShardSource, keep: Callable[[Mapping[str, Any]], bool] | None,
                         include_depth: bool, part: tuple[int, int] | None = None) -> Iterator[Path]:
    """The folders of the episodes of ``part`` (:func:`part_rows`; all without one) whose index row
    ``keep`` accepts, streaming whole shards in order; each folder is removed when the next is
    asked for."""
    rows = [r for r in part_rows(read_index_rows(source), part) if keep is None or keep(r)]
    for shard, wanted in _by_shard(rows).items():
        with _scratch() as scratch, source.open(shard, stream=True) as stream:
            def make_folder(key: str, wanted: Mapping[str, Any] = wanted, scratch: Path = scratch) -> Path | None:
                if key not in wanted:
                    return None
                folder = scratch / "members" / key
                folder.mkdir(parents=True)
                return folder

            for streamed in iter_shard(stream, make_folder):
                row = wanted[streamed.key]
                problems = _member_problems(row, streamed.suffixes)
                if problems:
                    raise ShardedReadError(f"{source.name}/{shard}: {'; '.join(problems)}")
                dest = scratch / "episode" / streamed.key
                arrange_episode(streamed.folder, {s: h for s, h in _files_of(row, streamed.suffixes).items()
                                                  if include_depth or not _is_depth(_path_of(row, s))},
                                episode_index.row_serials(row), dest)
                yield dest
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(streamed.folder, ignore_errors=True)


def _path_of(row: Mapping[str, Any], suffix: str) -> str:
    name = f"{row['key']}.{suffix}"
    return next((m["path"] for m in row["members"] if m["name"] == name), suffix)


def _files_of(row: Mapping[str, Any], suffixes: Mapping[str, str]) -> dict[str, str]:
    """The members of ``suffixes`` that are files of the episode (its stubs left out)."""
    return {suffix: sha for suffix, sha in suffixes.items() if _path_of(row, suffix) != STUB_PATH}


def _member_problems(row: Mapping[str, Any], suffixes: Mapping[str, str]) -> list[str]:
    """How the members streamed for an episode differ from its index row."""
    expected = {m["name"].partition(".")[2]: m["sha256"] for m in row["members"]}
    problems = [f"{row['episode_id']}: member {s} missing from the shard" for s in expected if s not in suffixes]
    problems += [f"{row['episode_id']}: member {s} is not in the index" for s in suffixes if s not in expected]
    problems += [f"{row['episode_id']}: member {s}: sha256 differs from the index"
                 for s, sha in suffixes.items() if s in expected and expected[s] != sha]
    return problems


def _manifest_problems(folder: Path, row: Mapping[str, Any], suffixes: Mapping[str, str]) -> list[str]:
    """Each member against its episode's manifest (listed, same SHA-256), the manifest against the index."""
    manifest_suffix = MANIFEST.path
    if manifest_suffix not in suffixes:
        return [f"{row['episode_id']}: no {MANIFEST.path} member"]
    problems = []
    if suffixes[manifest_suffix] != row["manifest_sha256"]:
        problems.append(f"{MANIFEST.path} is not the version the index names")
    try:
        manifest = json.loads((folder / manifest_suffix).read_text())
        listed = {f["path"]: f for f in manifest["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return problems + [f"{MANIFEST.path}: unreadable ({exc})"]
    for suffix, sha in suffixes.items():
        if suffix == manifest_suffix:
            continue
        path = _path_of(row, suffix)
        if path == STUB_PATH:
            if not is_camera_member(suffix) or sha != hashlib.sha256(stub_bytes(suffix)).hexdigest():
                problems.append(f"member {suffix} is listed as a stub but is not one")
            continue
        entry = listed.get(path)
        if entry is None:
            problems.append(f"member {suffix} ({path}) is not listed in {MANIFEST.path}")
        elif entry["sha256"] != sha or entry["size"] != (folder / suffix).stat().st_size:
            problems.append(f"member {suffix} ({path}) differs from {MANIFEST.path}")
    return problems


@dataclass(frozen=True)
class ShardedEpisodeCheck:
    """One index row of a sharded repo: its members laid out as an episode folder under ``root``
    (``folder`` None where they could not be) and what is wrong with them (``problems``)."""

    row: Mapping[str, Any]
    folder: Path | None
    root: Path | None
    problems: list[str]


def check_sharded(source: ShardSource,
                  progress: Callable[[Iterator[Any]], Iterator[Any]] = iter) -> Iterator[ShardedEpisodeCheck]:
    """Every episode the index names, member by member against the index and its manifest, in
    shard order; each folder is removed when the next check is asked for."""
    shards = _by_shard(read_index_rows(source))
    for shard, wanted in progress(iter(shards.items())):
        seen: set[str] = set()
        with _scratch() as scratch:
            try:
                with source.open(shard, stream=True) as stream:
                    def make_folder(key: str, scratch: Path = scratch) -> Path:
                        folder = scratch / "members" / key
                        folder.mkdir(parents=True)
                        return folder

                    for streamed in iter_shard(stream, make_folder):
                        row = wanted.get(streamed.key)
                        if row is None:
                            continue  # an older version, superseded in the index
                        seen.add(streamed.key)
                        yield from _check_one(row, streamed.folder, streamed.suffixes, scratch)
                        shutil.rmtree(streamed.folder, ignore_errors=True)
            except (OSError, ShardError, ValueError) as exc:
                problem = f"{shard}: unreadable shard ({type(exc).__name__}: {exc})"
                yield from (ShardedEpisodeCheck(row, None, None, [problem])
                            for key, row in wanted.items() if key not in seen)
                continue
        yield from (ShardedEpisodeCheck(row, None, None, [f"{shard} holds no members of this episode"])
                    for key, row in wanted.items() if key not in seen)


def _check_one(row: Mapping[str, Any], members: Path, suffixes: Mapping[str, str],
               scratch: Path) -> Iterator[ShardedEpisodeCheck]:
    problems = _member_problems(row, suffixes) + _manifest_problems(members, row, suffixes)
    relative = PurePosixPath(row["relative_path"])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        yield ShardedEpisodeCheck(row, None, None, [f"index relative_path {row['relative_path']!r} is not a "
                                                    "relative path"])
        return
    if row["key"] != episode_key(row["episode_id"]):
        problems.append(f"index key {row['key']} is not the key of {row['episode_id']}")
    root = scratch / "episodes"
    folder = root / relative
    try:
        arrange_episode(members, _files_of(row, suffixes), episode_index.row_serials(row), folder)
    except ShardError as exc:
        yield ShardedEpisodeCheck(row, None, None, [str(exc)])
        return
    yield ShardedEpisodeCheck(row, folder, root, problems)
    shutil.rmtree(folder, ignore_errors=True)
