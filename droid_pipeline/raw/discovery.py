"""Episode discovery: scan a DROID root, map episode ids to folders, cache the index, select.

Layout: ``<droid_root>/<LAB>/<success|failure>/<YYYY-MM-DD>/<episode folder>/``. The id comes from
``metadata_<uuid>.json`` (its ``uuid`` field, else the file name), never from reformatting the
folder's date, which is ambiguous (folders are ``time.asctime()`` with ``_`` for spaces, some
labs also used ``_`` for ``:``). The index is cached as JSON and refreshed per date folder whose
modification time changed, so a rescan of ~92k episodes only reads what is new.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import write_json_atomic

OUTCOMES = ("success", "failure")
CAMERA_ROLES = ("wrist", "ext1", "ext2")
INDEX_VERSION = 1
# time.asctime() with "_" for spaces (double "_" before one-digit days), ":" or "_" in the time.
FOLDER_PATTERN = re.compile(r"^[A-Z][a-z]{2}_[A-Z][a-z]{2}_{1,2}\d{1,2}_\d{2}[:_]\d{2}[:_]\d{2}_\d{4}$")
METADATA_PATTERN = re.compile(r"^metadata_(.+)\.json$")


class DiscoveryError(ValueError):
    """An episode cannot be found or selected; the message says why and what would match."""


@dataclass(frozen=True)
class Episode:
    """One raw episode: where it is and which of its files exist."""

    episode_id: str
    relative_path: str
    lab: str
    outcome: str
    date: str
    folder: str
    metadata_file: str
    serials: dict[str, str]
    has_h5: bool
    svo: tuple[str, ...] = ()
    mp4: tuple[str, ...] = ()
    stereo_mp4: tuple[str, ...] = ()

    def path(self, droid_root: os.PathLike | str) -> Path:
        return Path(droid_root) / self.relative_path

    @property
    def folder_spelling_ok(self) -> bool:
        return bool(FOLDER_PATTERN.match(self.folder))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("svo", "mp4", "stereo_mp4"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Episode:
        data = dict(data)
        for key in ("svo", "mp4", "stereo_mp4"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


@dataclass
class EpisodeIndex:
    """Every episode found under a root, plus the problems met while scanning."""

    droid_root: str
    episodes: list[Episode] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)

    def by_id(self) -> dict[str, list[Episode]]:
        table: dict[str, list[Episode]] = {}
        for episode in self.episodes:
            table.setdefault(episode.episode_id, []).append(episode)
        return table

    def get(self, episode_id: str) -> Episode:
        """The episode with exactly this id; unknown or duplicate ids raise DiscoveryError."""
        matches = self.by_id().get(episode_id, [])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            folders = ", ".join(e.relative_path for e in matches)
            raise DiscoveryError(f"episode id {episode_id} is duplicated in folders: {folders}")
        close = difflib.get_close_matches(episode_id, list(self.by_id()), n=3, cutoff=0.6)
        hint = f"; closest ids: {', '.join(close)}" if close else ""
        raise DiscoveryError(f"unknown episode id {episode_id} under {self.droid_root}{hint}")

    def select(self, *, episode_ids: Sequence[str] | None = None, labs: Sequence[str] = (),
               outcomes: Sequence[str] = ("success",), limit: int | None = None) -> list[Episode]:
        """Episodes to process, in a deterministic order.

        Explicit ids are taken as given (in order, each must exist once); otherwise every episode
        of the wanted outcomes and labs, sorted by relative path. ``limit`` keeps the first N.
        """
        if episode_ids is not None:
            chosen = [self.get(i) for i in episode_ids]
        else:
            for outcome in outcomes:
                if outcome not in OUTCOMES:
                    raise DiscoveryError(f"unknown outcome {outcome!r}; expected one of {OUTCOMES}")
            duplicated = {k for k, v in self.by_id().items() if len(v) > 1}
            chosen = sorted((e for e in self.episodes
                             if e.outcome in outcomes and (not labs or e.lab in labs)
                             and e.episode_id not in duplicated),
                            key=lambda e: e.relative_path)
        return chosen[:limit] if limit is not None else chosen


def read_id_file(path: os.PathLike | str) -> list[str]:
    """Episode ids from a file: one per line; blank lines and ``#`` comments ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DiscoveryError(f"cannot read episode list {path}: {exc.strerror}") from exc
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


def build_index(droid_root: os.PathLike | str, cache_path: os.PathLike | str | None = None,
                *, rescan: bool = False) -> EpisodeIndex:
    """Scan ``droid_root``, reusing the cache for date folders whose mtime did not change."""
    root = Path(droid_root)
    if not root.is_dir():
        raise DiscoveryError(f"droid_root {root} is not a folder")
    cached = {} if rescan or cache_path is None else _load_cache(Path(cache_path), root)
    date_dirs: dict[str, int] = {}
    episodes: list[Episode] = []
    problems: list[dict[str, str]] = []
    for date_dir in _date_dirs(root):
        rel = date_dir.relative_to(root).as_posix()
        mtime = date_dir.stat().st_mtime_ns
        date_dirs[rel] = mtime
        entry = cached.get(rel)
        if entry is not None and entry["mtime_ns"] == mtime:
            episodes.extend(Episode.from_json(e) for e in entry["episodes"])
            problems.extend(entry["problems"])
            continue
        found, trouble = _scan_date_dir(root, date_dir)
        episodes.extend(found)
        problems.extend(trouble)
    by_id: dict[str, list[str]] = {}
    for episode in episodes:
        by_id.setdefault(episode.episode_id, []).append(episode.relative_path)
    for episode_id, paths in sorted(by_id.items()):
        if len(paths) > 1:
            problems.append({"path": ", ".join(paths),
                             "problem": f"duplicate episode id {episode_id} in {len(paths)} folders"})
    index = EpisodeIndex(str(root), sorted(episodes, key=lambda e: e.relative_path), problems)
    if cache_path is not None:
        _save_cache(Path(cache_path), index, date_dirs)
    return index


def _date_dirs(root: Path) -> Iterable[Path]:
    for lab in sorted(_subdirs(root)):
        for outcome in OUTCOMES:
            outcome_dir = lab / outcome
            if outcome_dir.is_dir():
                yield from sorted(_subdirs(outcome_dir))


def _subdirs(path: Path) -> Iterable[Path]:
    with os.scandir(path) as it:
        return [Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")]


def _scan_date_dir(root: Path, date_dir: Path) -> tuple[list[Episode], list[dict[str, str]]]:
    episodes, problems = [], []
    for folder in sorted(_subdirs(date_dir)):
        rel = folder.relative_to(root).as_posix()
        try:
            episodes.append(_read_episode(root, folder))
        except DiscoveryError as exc:
            problems.append({"path": rel, "problem": str(exc)})
    return episodes, problems


def _read_episode(root: Path, folder: Path) -> Episode:
    rel = folder.relative_to(root)
    lab, outcome, date, name = rel.parts
    names = set(os.listdir(folder))
    metadata = sorted(n for n in names if METADATA_PATTERN.match(n))
    if not metadata:
        raise DiscoveryError(f"{rel}: no metadata_<uuid>.json in episode folder")
    if len(metadata) > 1:
        raise DiscoveryError(f"{rel}: several metadata files: {', '.join(metadata)}")
    meta_path = folder / metadata[0]
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiscoveryError(f"{rel}/{metadata[0]}: unreadable metadata file: {exc}") from exc
    if not isinstance(meta, dict):
        raise DiscoveryError(f"{rel}/{metadata[0]}: metadata is not a JSON object")
    file_id = metadata[0][len("metadata_"):-len(".json")]
    episode_id = str(meta.get("uuid") or file_id)
    if episode_id != file_id:
        raise DiscoveryError(f"{rel}/{metadata[0]}: uuid {episode_id!r} disagrees with the file name")
    serials = {}
    for role in CAMERA_ROLES:
        value = meta.get(f"{role}_cam_serial")
        if value is not None and str(value).strip():
            serials[role] = str(value).strip()
    mp4_dir = folder / "recordings" / "MP4"
    svo_dir = folder / "recordings" / "SVO"
    mp4_names = set(os.listdir(mp4_dir)) if mp4_dir.is_dir() else set()
    svo_names = set(os.listdir(svo_dir)) if svo_dir.is_dir() else set()
    cams = list(serials.values())
    return Episode(
        episode_id=episode_id, relative_path=rel.as_posix(), lab=lab, outcome=outcome, date=date,
        folder=name, metadata_file=metadata[0], serials=serials,
        has_h5="trajectory.h5" in names,
        svo=tuple(s for s in cams if f"{s}.svo" in svo_names),
        mp4=tuple(s for s in cams if f"{s}.mp4" in mp4_names),
        stereo_mp4=tuple(s for s in cams if f"{s}-stereo.mp4" in mp4_names),
    )


def _load_cache(path: Path, root: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if data.get("version") != INDEX_VERSION or data.get("droid_root") != str(root):
        return {}
    return data.get("date_dirs", {})


def _save_cache(path: Path, index: EpisodeIndex, date_dirs: dict[str, int]) -> None:
    per_dir: dict[str, dict[str, Any]] = {
        rel: {"mtime_ns": mtime, "episodes": [], "problems": []} for rel, mtime in date_dirs.items()}
    for episode in index.episodes:
        per_dir[str(Path(episode.relative_path).parent.as_posix())]["episodes"].append(episode.to_json())
    for problem in index.problems:
        parent = Path(problem["path"]).parent.as_posix()
        if parent in per_dir:
            per_dir[parent]["problems"].append(problem)
    write_json_atomic(path, {"version": INDEX_VERSION, "droid_root": index.droid_root,
                             "date_dirs": per_dir})


def format_table(episodes: Sequence[Episode]) -> str:
    """Human-readable index: one line per episode."""
    rows = [("episode_id", "outcome", "cameras (wrist/ext1/ext2)", "h5", "mp4", "stereo", "svo",
             "relative_path")]
    for e in episodes:
        rows.append((e.episode_id, e.outcome,
                     "/".join(e.serials.get(r, "-") for r in CAMERA_ROLES),
                     "yes" if e.has_h5 else "no", str(len(e.mp4)), str(len(e.stereo_mp4)),
                     str(len(e.svo)), e.relative_path))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
