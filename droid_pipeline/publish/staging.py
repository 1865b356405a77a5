"""Staging: how a finished episode is published for upload, and how its completeness is judged.

A worker builds an episode in a private work folder, then calls :func:`publish_episode`, which

1. lists every file with its size, SHA-256 and kind (``metadata`` or ``depth``),
2. writes ``manifest.json`` into the work folder, last,
3. appends one line (a :class:`JournalEntry`) to the publish journal ``<run_root>/published.jsonl``,
4. moves the folder to ``<output_root>/<relative_path>/`` (replacing an older copy).

Step 4 brings the folder beside its destination under a hidden ``.<folder>.incoming-<id>`` name
first (a rename, or a copy across file systems), then renames it into place, the older copy
aside as ``.<folder>.replaced-<id>`` until it is removed. Steps 3 and 4 run under
:func:`episode_lock`, which the uploader also takes to delete an uploaded folder or to settle a
folder that does not hold the journaled version. The journal line comes first, so a kill can
never leave a finished folder the uploader does not know about; a kill between the two leaves a
line whose version never arrived, and the uploader, under the lock, then takes the version the
folder really holds. A publish that fails removes its incoming copy; what a killed one leaves
is removed by :func:`remove_leftovers` (every driver run starts with it), under the same lock,
so a publish in progress is never touched.

Work folders live in ``<output_root>/.work/<run>/``; every process of a run holds a shared lock
on that folder's ``.lock`` (:func:`~droid_pipeline.core.atomic.hold_folder`), so
:func:`remove_dead_work_roots` removes the folders of runs no process is left of, and nothing else.

The journal and the uploader's ledger are append-only JSON Lines files shared by several
processes: :func:`append_record` holds an exclusive ``flock`` while it writes one line and
fsyncs it; :func:`read_records` skips a torn line left by a killed writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from droid_pipeline.core.atomic import append_locked, remove_unheld_folders, sha256_file, write_json_atomic
from droid_pipeline.core.schema import MANIFEST_NAME, SCHEMA_VERSION, FileKind, output_file

log = logging.getLogger(__name__)

JOURNAL_NAME = "published.jsonl"
LOCK_NAME = ".publish.lock"
WORK_DIR_NAME = ".work"
WORK_LOCK_NAME = ".lock"
# What publishes leave beside an episode folder while they run: the copy being brought in and
# the older copy being replaced (the uploader's own ".deleting-" folders are its to remove).
LEFTOVER_PATTERN = re.compile(r"^\..+\.(incoming|replaced)-[0-9a-f]{12}$")
PIPELINES = ("metadata", "full")
Pipeline = Literal["metadata", "full"]


class StagingError(ValueError):
    """An episode folder cannot be published (unknown file, wrong pipeline, bad path)."""


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str
    kind: FileKind


@dataclass(frozen=True)
class Manifest:
    """What a finished episode folder holds; written last, so its presence means complete."""

    schema_version: int
    episode_id: str
    relative_path: str
    pipeline: Pipeline
    created: float
    files: tuple[ManifestFile, ...]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["files"] = [dataclasses.asdict(f) for f in self.files]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        files = tuple(ManifestFile(**f) for f in data["files"])
        return cls(schema_version=data["schema_version"], episode_id=data["episode_id"],
                   relative_path=data["relative_path"], pipeline=data["pipeline"],
                   created=data["created"], files=files)

    def files_of_kind(self, *kinds: FileKind) -> list[ManifestFile]:
        return [f for f in self.files if f.kind in kinds]


@dataclass(frozen=True)
class JournalEntry:
    """One line of the publish journal: the version of an episode folder published last."""

    episode_id: str
    relative_path: str
    pipeline: Pipeline
    episode_dir: Path  # absolute
    manifest_sha256: str  # checksum of the manifest.json file: which version
    published: float

    def to_json(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "relative_path": self.relative_path, "pipeline": self.pipeline,
                "episode_dir": str(self.episode_dir), "manifest_sha256": self.manifest_sha256,
                "published": self.published}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        """The entry a journal line holds; KeyError, TypeError or ValueError when it holds none."""
        if data["pipeline"] not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, got {data['pipeline']!r}")
        return cls(episode_id=str(data["episode_id"]), relative_path=str(data["relative_path"]),
                   pipeline=data["pipeline"], episode_dir=Path(data["episode_dir"]),
                   manifest_sha256=str(data["manifest_sha256"]), published=float(data.get("published", 0.0)))


def file_kind(path: str) -> FileKind:
    """Kind of an episode file from its path relative to the episode folder (core.schema): "depth"
    files (depth.mkv, depth_meta.json, rgb.mp4) go to the full repo only."""
    found = output_file(path)
    if found is None or found.name == MANIFEST_NAME:
        raise StagingError(f"{path}: not a file of the output contract (see docs/upload.md)")
    return found.kind


def publish_episode(work_dir: os.PathLike | str, output_root: os.PathLike | str, relative_path: str,
                    episode_id: str, pipeline: Pipeline, run_root: os.PathLike | str) -> Manifest:
    """Write the manifest, journal the episode and move its folder into ``output_root``.

    ``work_dir`` must be on the same file system as ``output_root`` for the move to be a rename;
    otherwise it is copied beside the destination first. An older published copy is replaced.
    """
    work_dir, output_root, run_root = Path(work_dir), Path(output_root), Path(run_root)
    if pipeline not in PIPELINES:
        raise StagingError(f"episode {episode_id}: pipeline must be one of {PIPELINES}, got {pipeline!r}")
    rel = _checked_relative_path(relative_path)
    manifest = Manifest(schema_version=SCHEMA_VERSION, episode_id=episode_id, relative_path=rel,
                        pipeline=pipeline, created=time.time(), files=_list_files(work_dir))
    if not manifest.files:
        raise StagingError(f"episode {episode_id}: {work_dir} holds no files to publish")
    if pipeline == "metadata" and manifest.files_of_kind("depth"):
        raise StagingError(f"episode {episode_id}: metadata pipeline published depth files "
                           f"{[f.path for f in manifest.files_of_kind('depth')]}")
    write_json_atomic(work_dir / MANIFEST_NAME, manifest.to_json())
    manifest_sha256 = sha256_file(work_dir / MANIFEST_NAME)
    dest = output_root / rel
    with episode_lock(dest):
        incoming = _stage_beside(work_dir, dest)
        try:
            entry = JournalEntry(episode_id=episode_id, relative_path=rel, pipeline=pipeline,
                                 episode_dir=dest.resolve(), manifest_sha256=manifest_sha256, published=time.time())
            append_record(run_root / JOURNAL_NAME, entry.to_json())
            replaced = _swap_into_place(incoming, dest)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)  # else removed by the next remove_leftovers
    return manifest


def read_manifest(episode_dir: os.PathLike | str) -> Manifest:
    with open(Path(episode_dir) / MANIFEST_NAME) as fh:
        return Manifest.from_json(json.load(fh))


def finished_state(episode_dir: os.PathLike | str) -> tuple[str, str]:
    """``(state, reason)``: ``finished``, ``stale-schema`` (rerun it), ``incomplete`` or ``missing``.

    Checks presence and sizes only; :func:`verify_episode` also checks checksums.
    """
    episode_dir = Path(episode_dir)
    if not episode_dir.is_dir():
        return "missing", f"{episode_dir} does not exist"
    if not (episode_dir / MANIFEST_NAME).is_file():
        return "incomplete", f"{episode_dir} has no {MANIFEST_NAME}"
    try:
        manifest = read_manifest(episode_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "incomplete", f"{episode_dir / MANIFEST_NAME} is unreadable: {exc}"
    if manifest.schema_version != SCHEMA_VERSION:
        return "stale-schema", (f"{episode_dir} has schema {manifest.schema_version}, "
                                f"current is {SCHEMA_VERSION}")
    for entry in manifest.files:
        try:
            size = (episode_dir / entry.path).stat().st_size
        except OSError:
            return "incomplete", f"{episode_dir / entry.path} is missing"
        if size != entry.size:
            return "incomplete", f"{episode_dir / entry.path} has {size} bytes, manifest says {entry.size}"
    return "finished", ""


def is_finished(episode_dir: os.PathLike | str) -> bool:
    return finished_state(episode_dir)[0] == "finished"


def verify_episode(episode_dir: os.PathLike | str) -> list[str]:
    """Problems found in a finished-looking folder, checksums included; empty when it is intact."""
    state, reason = finished_state(episode_dir)
    if state != "finished":
        return [reason]
    manifest = read_manifest(episode_dir)
    return [f"{Path(episode_dir) / f.path}: sha256 differs from the manifest"
            for f in manifest.files if sha256_file(Path(episode_dir) / f.path) != f.sha256]


def read_journal(run_root: os.PathLike | str, start_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Journal lines (as JSON objects) from byte ``start_offset`` on, and the offset to continue from."""
    return read_records(Path(run_root) / JOURNAL_NAME, start_offset)


def read_journal_entries(run_root: os.PathLike | str, start_offset: int = 0) -> tuple[list[JournalEntry], int]:
    """:func:`read_journal` as typed entries; a line that holds no entry is skipped with a warning."""
    records, offset = read_journal(run_root, start_offset)
    entries = []
    for record in records:
        try:
            entries.append(JournalEntry.from_json(record))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: skipping a line that is no publish entry (%s: %s): %s", Path(run_root) / JOURNAL_NAME,
                        type(exc).__name__, exc, json.dumps(record)[:200])
    return entries, offset


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (locked, fsynced, safe against a torn line: atomic.append_locked)."""
    append_locked(path, json.dumps(record, separators=(",", ":")) + "\n")


def read_records(path: Path, start_offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines from ``start_offset``; an unterminated last line is left for later."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start_offset)
            data = fh.read()
    except FileNotFoundError:
        return [], start_offset
    end = data.rfind(b"\n") + 1
    records = []
    for number, raw in enumerate(data[:end].splitlines()):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            log.warning("%s: skipping torn or corrupt line %d after byte %d", path, number + 1, start_offset)
    return records, start_offset + end


def _checked_relative_path(relative_path: str) -> str:
    rel = Path(relative_path)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts:
        raise StagingError(f"relative_path must be a relative path inside output_root, got {relative_path!r}")
    return rel.as_posix()


def _list_files(work_dir: Path) -> tuple[ManifestFile, ...]:
    if not work_dir.is_dir():
        raise StagingError(f"work folder {work_dir} does not exist")
    files = []
    for path in sorted(p for p in work_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(work_dir).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files.append(ManifestFile(path=rel, size=path.stat().st_size, sha256=sha256_file(path),
                                  kind=file_kind(rel)))
    return tuple(files)


@contextlib.contextmanager
def episode_lock(episode_dir: os.PathLike | str) -> Iterator[None]:
    """Exclusive lock over swapping published folders in ``episode_dir``'s parent folder: held by
    :func:`publish_episode` from bringing a folder in to moving it into place, by the uploader
    while it deletes one and by :func:`remove_leftovers`, so a folder being re-published is never
    deleted."""
    with _folder_lock(Path(episode_dir).parent):
        yield


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stage_beside(work_dir: Path, dest: Path) -> Path:
    """Bring ``work_dir`` next to ``dest`` under a hidden name (a rename, or a copy across file
    systems), so that the final move is a rename. A copy that fails is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    incoming = dest.parent / f".{dest.name}.incoming-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(work_dir, incoming)
    except OSError:
        try:
            shutil.copytree(work_dir, incoming)
            _fsync_tree(incoming)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(incoming, ignore_errors=True)
            raise StagingError(f"cannot copy {work_dir} to {incoming}: {exc}") from exc
        shutil.rmtree(work_dir)
    return incoming


def _swap_into_place(incoming: Path, dest: Path) -> Path | None:
    """Rename ``incoming`` onto ``dest``; an existing ``dest`` is renamed aside and returned (and
    put back if the rename fails)."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:12]}"
        os.rename(dest, old)
    try:
        os.rename(incoming, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise
    _fsync_dir(dest.parent)
    return old


def remove_leftovers(output_root: os.PathLike | str) -> list[Path]:
    """Remove the incoming and replaced copies killed publishes left beside episode folders
    (``<output_root>/<lab>/<outcome>/<date>/``), each folder's under its publish lock; return them."""
    removed: list[Path] = []
    for date_dir in _visible_dirs(Path(output_root), depth=3):
        if not any(LEFTOVER_PATTERN.match(name) for name in _names(date_dir)):
            continue
        with _folder_lock(date_dir):
            for name in _names(date_dir):
                if LEFTOVER_PATTERN.match(name):
                    shutil.rmtree(date_dir / name, ignore_errors=True)
                    removed.append(date_dir / name)
    return removed


def _visible_dirs(root: Path, depth: int) -> list[Path]:
    """Folders ``depth`` levels below ``root`` reached through non-hidden folders."""
    level = [root]
    for _ in range(depth):
        level = [Path(e.path) for folder in level for e in _entries(folder)
                 if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    return level


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _names(folder: Path) -> list[str]:
    return [e.name for e in _entries(folder)]


def remove_dead_work_roots(output_root: os.PathLike | str) -> list[Path]:
    """Remove the work folders of every run no process is left of (killed runs'); return them."""
    work = Path(output_root) / WORK_DIR_NAME
    removed = remove_unheld_folders(work, WORK_LOCK_NAME)
    try:
        work.rmdir()
    except OSError:
        pass
    return removed


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
