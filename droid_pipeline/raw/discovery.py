"""Episode discovery: scan a DROID root, map episode ids to folders, cache the index, select.

Layout: ``<droid_root>/<LAB>/<success|failure>/<YYYY-MM-DD>/<episode folder>/``. The id comes from
``metadata_<uuid>.json`` (its ``uuid`` field, else the file name), never from reformatting the
folder's date, which is ambiguous (folders are ``time.asctime()`` with ``_`` for spaces, some
labs also used ``_`` for ``:``). The index is cached as JSON and refreshed per date folder whose
modification time changed, so a rescan of ~92k episodes only reads what is new.

Ids and folder names become paths of the output, work and staging trees, so both are validated
first: an id must follow DROID's grammar (:data:`EPISODE_ID_PATTERN`), a lab, date or episode
folder name must be a plain name (:data:`SAFE_NAME`). Whatever cannot be read or is not valid (an
unreadable folder, a symbolic link loop, a dangling link, missing, invalid, duplicated or
disagreeing metadata, an id or folder name that fails validation) is a problem of the index,
recorded with its cause; the scan goes on.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import write_json_atomic
from droid_pipeline.core.config import Config
from droid_pipeline.core.files import (
    MAX_METADATA_BYTES,
    MAX_TEXT_BYTES,
    check_input_file,
    file_kind,
    read_text_capped,
)

OUTCOMES = ("success", "failure")
CAMERA_ROLES = ("wrist", "ext1", "ext2")
# 2: ids and folder names validated, problems carry the episode id; 3: cameras missing from the
# metadata recovered from trajectory.h5 (with warnings), special files refused.
INDEX_VERSION = 3
# time.asctime() with "_" for spaces (double "_" before one-digit days), ":" or "_" in the time.
FOLDER_PATTERN = re.compile(r"^[A-Z][a-z]{2}_[A-Z][a-z]{2}_{1,2}\d{1,2}_\d{2}[:_]\d{2}[:_]\d{2}_\d{4}$")
# Any metadata_<uuid>.json, whatever its uuid holds (checked later).
METADATA_PATTERN = re.compile(r"metadata_(.+)\.json", re.DOTALL)
# DROID's episode id: <LAB>+<user id, 8 hex digits>+<YYYY-MM-DD>-<H>h-<M>m-<S>s, hours, minutes
# and seconds with one or two digits (AUTOLab+84bd5053+2023-08-18-12h-01m-10s).
EPISODE_ID_PATTERN = re.compile(
    r"[A-Za-z0-9_-]+\+[0-9a-fA-F]{8}\+(\d{4}-\d{2}-\d{2})-(\d{1,2})h-(\d{1,2})m-(\d{1,2})s")
EPISODE_ID_GRAMMAR = "<LAB>+<8 hex digits>+<YYYY-MM-DD>-<H>h-<M>m-<S>s"
# A lab, date or episode folder name that may become a path component of the output tree:
# letters, digits and _ . : + - (DROID's asctime folders hold ":"), not hidden, one component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,254}")


class DiscoveryError(ValueError):
    """An episode cannot be found or selected; the message says why and what would match."""


def episode_id_problem(episode_id: str) -> str | None:
    """Why ``episode_id`` is not a DROID episode id, None when it is one."""
    match = EPISODE_ID_PATTERN.fullmatch(episode_id)
    if match is None:
        return f"episode id {printable(episode_id)!r} does not follow DROID's grammar {EPISODE_ID_GRAMMAR}"
    date, hours, minutes, seconds = match.groups()
    try:
        datetime.date.fromisoformat(date)
    except ValueError:
        return f"episode id {episode_id!r} holds no valid date ({date})"
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 59:
        return f"episode id {episode_id!r} holds no valid time of day ({hours}h-{minutes}m-{seconds}s)"
    return None


def name_problem(name: str) -> str | None:
    """Why a folder name may not become a path component of the output tree, None when it may."""
    if SAFE_NAME.fullmatch(name):
        return None
    return (f"folder name {printable(name)!r} is not a plain name (letters, digits and _ . : + -, "
            "not starting with a dot)")


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes escaped, so it stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


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
    # What discovery corrected about the episode (a camera recovered from trajectory.h5), for quality.json.
    warnings: tuple[str, ...] = ()

    def path(self, droid_root: os.PathLike | str) -> Path:
        return Path(droid_root) / self.relative_path

    @property
    def folder_spelling_ok(self) -> bool:
        return bool(FOLDER_PATTERN.match(self.folder))

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("svo", "mp4", "stereo_mp4", "warnings"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Episode:
        """The record, validated again (it comes from a file): DiscoveryError when its id or path
        could not have come from discovery."""
        data = dict(data)
        for key in ("svo", "mp4", "stereo_mp4", "warnings"):
            data[key] = tuple(data.get(key, ()))
        episode = cls(**data)
        parts = (episode.lab, episode.outcome, episode.date, episode.folder)
        problem = episode_id_problem(episode.episode_id) or next(
            (p for p in map(name_problem, (episode.lab, episode.date, episode.folder)) if p), None)
        if problem is None and (episode.outcome not in OUTCOMES or episode.relative_path != "/".join(parts)):
            problem = f"relative path {printable(episode.relative_path)!r} is not {'/'.join(parts)!r}"
        if problem is not None:
            raise DiscoveryError(f"invalid episode record: {problem}")
        return episode


@dataclass
class EpisodeIndex:
    """Every episode found under a root, plus the problems met while scanning: ``path`` (the
    folder or file relative to the root), ``problem`` (the cause, naming the path) and
    ``episode_id`` (where known, else empty)."""

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
        lines = read_text_capped(path, MAX_TEXT_BYTES).splitlines()
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
    problems: list[dict[str, str]] = []   # above the date folders: not cached, found again each scan
    scanned: list[dict[str, str]] = []    # in the date folders: cached with them
    for date_dir in _date_dirs(root, problems):
        rel = date_dir.relative_to(root).as_posix()
        try:
            mtime = date_dir.stat().st_mtime_ns
        except OSError as exc:
            problems.append(_problem(rel, f"cannot read folder: {_os_cause(exc)}"))
            continue
        date_dirs[rel] = mtime
        entry = cached.get(rel)
        if entry is not None and entry["mtime_ns"] == mtime:
            episodes.extend(Episode.from_json(e) for e in entry["episodes"])
            scanned.extend(entry["problems"])
            continue
        found, trouble = _scan_date_dir(root, date_dir)
        episodes.extend(found)
        scanned.extend(trouble)
    index = EpisodeIndex(str(root), sorted(episodes, key=lambda e: e.relative_path), problems + scanned)
    if cache_path is not None:
        _save_cache(Path(cache_path), index.droid_root, index.episodes, scanned, date_dirs)
    index.problems.extend(_duplicates(index.episodes))
    return index


def _problem(path: str, problem: str, episode_id: str = "") -> dict[str, str]:
    """A problem record of the index: the folder or file (relative to droid_root) and the cause."""
    return {"path": printable(path), "problem": problem, "episode_id": episode_id}


def _duplicates(episodes: Sequence[Episode]) -> list[dict[str, str]]:
    """One problem per folder of an id found in several folders."""
    by_id: dict[str, list[str]] = {}
    for episode in episodes:
        by_id.setdefault(episode.episode_id, []).append(episode.relative_path)
    return [_problem(path, f"{path}: duplicate episode id {episode_id} in {len(paths)} folders: {', '.join(paths)}",
                     episode_id)
            for episode_id, paths in sorted(by_id.items()) if len(paths) > 1 for path in paths]


def _os_cause(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)


def _date_dirs(root: Path, problems: list[dict[str, str]]) -> Iterable[Path]:
    for lab in _subdirs(root, problems):
        for outcome in OUTCOMES:
            outcome_dir = lab / outcome
            rel = outcome_dir.relative_to(root).as_posix()
            try:
                if not stat.S_ISDIR(os.stat(outcome_dir).st_mode):
                    continue
            except FileNotFoundError:
                if os.path.islink(outcome_dir):
                    problems.append(_problem(rel, f"{rel}: dangling symbolic link to {os.readlink(outcome_dir)}"))
                continue
            except OSError as exc:
                problems.append(_problem(rel, f"{rel}: cannot be read: {_os_cause(exc)}"))
                continue
            yield from _subdirs(outcome_dir, problems, root)


def _subdirs(path: Path, problems: list[dict[str, str]], root: Path | None = None) -> list[Path]:
    """The folders in ``path`` with plain names, sorted; anything that cannot be listed or
    followed (symbolic link loops, dangling links) or has no plain name is a problem. Hidden
    entries and plain files are not episodes and are passed over."""
    root = root or path
    rel = path.relative_to(root).as_posix() if path != root else ""
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        problems.append(_problem(rel or ".", f"{rel or path}: cannot list folder: {_os_cause(exc)}"))
        return []
    folders = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        try:
            is_dir = entry.is_dir()
            if not is_dir and entry.is_symlink() and not os.path.exists(entry.path):
                problems.append(_problem(child, f"{printable(child)}: dangling symbolic link to "
                                                f"{printable(os.readlink(entry.path))}"))
                continue
        except OSError as exc:
            problems.append(_problem(child, f"{printable(child)}: cannot be read: {_os_cause(exc)}"))
            continue
        if not is_dir:
            continue
        unsafe = name_problem(entry.name)
        if unsafe is not None:
            problems.append(_problem(child, f"{printable(child)}: {unsafe}"))
            continue
        folders.append(Path(entry.path))
    return folders


def _scan_date_dir(root: Path, date_dir: Path) -> tuple[list[Episode], list[dict[str, str]]]:
    episodes: list[Episode] = []
    problems: list[dict[str, str]] = []
    for folder in _subdirs(date_dir, problems, root):
        rel = folder.relative_to(root).as_posix()
        try:
            episodes.append(_read_episode(root, folder))
        except _EpisodeProblem as exc:
            problems.append(_problem(rel, str(exc), exc.episode_id))
        except DiscoveryError as exc:
            problems.append(_problem(rel, str(exc)))
        except OSError as exc:
            problems.append(_problem(rel, f"{rel}: cannot be read: {_os_cause(exc)}"))
    return episodes, problems


class _EpisodeProblem(DiscoveryError):
    """A folder whose episode id is known but that cannot be run."""

    def __init__(self, message: str, episode_id: str):
        super().__init__(message)
        self.episode_id = episode_id


def _read_episode(root: Path, folder: Path) -> Episode:
    rel = folder.relative_to(root)
    names = set(os.listdir(folder))
    meta_name = _metadata_name(rel.as_posix(), names)
    try:
        meta = json.loads(read_text_capped(folder / meta_name, MAX_METADATA_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiscoveryError(f"{rel}/{printable(meta_name)}: unreadable metadata file: {exc}") from exc
    episode_id = _metadata_id(rel.as_posix(), meta_name, meta)
    broken = _unusable_entries(folder)
    if broken:
        raise _EpisodeProblem(f"{rel}: {'; '.join(broken)}", episode_id)
    mp4_dir = folder / "recordings" / "MP4"
    svo_dir = folder / "recordings" / "SVO"
    mp4_names = set(os.listdir(mp4_dir)) if mp4_dir.is_dir() else set()
    svo_names = set(os.listdir(svo_dir)) if svo_dir.is_dir() else set()
    return _episode(rel.as_posix(), episode_id, meta_name, meta, names, mp4_names, svo_names,
                    folder / "trajectory.h5")


def _metadata_name(rel: str, names: set[str]) -> str:
    """The episode folder's one metadata_<uuid>.json."""
    metadata = sorted(n for n in names if METADATA_PATTERN.fullmatch(n))
    if not metadata:
        raise DiscoveryError(f"{rel}: no metadata_<uuid>.json in episode folder")
    if len(metadata) > 1:
        raise DiscoveryError(f"{rel}: several metadata files: {', '.join(map(printable, metadata))}")
    return metadata[0]


def _metadata_id(rel: str, meta_name: str, meta: Any) -> str:
    """The episode id its metadata file holds, checked against the file name and DROID's grammar."""
    if not isinstance(meta, dict):
        raise DiscoveryError(f"{rel}/{printable(meta_name)}: metadata is not a JSON object")
    file_id = meta_name[len("metadata_"):-len(".json")]
    episode_id = str(meta.get("uuid") or file_id)
    if episode_id != file_id:
        raise DiscoveryError(f"{rel}/{printable(meta_name)}: uuid {printable(episode_id)!r} "
                             "disagrees with the file name")
    invalid = episode_id_problem(episode_id)
    if invalid is not None:
        raise DiscoveryError(f"{rel}/{printable(meta_name)}: {invalid}")
    return episode_id


def _episode(rel: str, episode_id: str, meta_name: str, meta: dict[str, Any], names: set[str],
             mp4_names: set[str], svo_names: set[str], trajectory: Path | None) -> Episode:
    """The record of an episode folder from its metadata and the names of its files; cameras the
    metadata lacks are recovered from ``trajectory`` (None: not at hand, a remote root)."""
    lab, outcome, date, name = rel.split("/")
    serials, warnings = _cameras(rel, meta_name, meta, trajectory, mp4_names, episode_id)
    cams = list(serials.values())
    return Episode(
        episode_id=episode_id, relative_path=rel, lab=lab, outcome=outcome, date=date,
        folder=name, metadata_file=meta_name, serials=serials,
        has_h5="trajectory.h5" in names,
        svo=tuple(s for s in cams if f"{s}.svo" in svo_names),
        mp4=tuple(s for s in cams if f"{s}.mp4" in mp4_names),
        stereo_mp4=tuple(s for s in cams if f"{s}-stereo.mp4" in mp4_names),
        warnings=tuple(warnings),
    )


def _cameras(rel: str, meta_name: str, meta: dict[str, Any], trajectory: Path | None, mp4_names: set[str],
             episode_id: str) -> tuple[dict[str, str], list[str]]:
    """Role -> serial from the metadata's ``<role>_cam_serial`` fields, checked (a serial is text or
    a whole number, named for one role only), and the warnings of what was corrected. A role the
    metadata leaves out (or gives another role's serial) is recovered from trajectory.h5 when the
    file has exactly one camera of that kind (observation/camera_type) the metadata does not name
    and an MP4 of it; a camera the file and recordings have that cannot be given a role is a
    problem naming it. A camera is never dropped silently."""
    serials: dict[str, str] = {}
    missing: dict[str, str] = {}
    for role in CAMERA_ROLES:
        key = f"{role}_cam_serial"
        value = meta.get(key)
        if isinstance(value, bool) or not (value is None or isinstance(value, (str, int))):
            raise _EpisodeProblem(f"{rel}/{meta_name}: {key} is {type(value).__name__} {value!r}, not a camera "
                                  "serial (text or a whole number)", episode_id)
        serial = "" if value is None else str(value).strip()
        twin = next((other for other, named in serials.items() if named == serial), None)
        if not serial:
            missing[role] = f"the metadata names no {key}"
        elif twin is not None:
            missing[role] = f"the metadata's {key} repeats {twin}_cam_serial {serial}"
        else:
            serials[role] = serial
    if trajectory is None:  # a remote root: only the files' names are at hand before the fetch
        _refuse_unnamed_videos(rel, meta_name, serials, missing, mp4_names, episode_id)
    if not missing:
        return serials, []
    unnamed = {} if trajectory is None else _unnamed_h5_cameras(trajectory, set(serials.values()), mp4_names)
    warnings = []
    for role, why in missing.items():
        kind = "wrist" if role == "wrist" else "exterior"
        fitting = [serial for serial, type_name in unnamed.items() if type_name == kind]
        wanted = [r for r in missing if ("wrist" if r == "wrist" else "exterior") == kind]
        if len(fitting) == 1 and len(wanted) == 1:
            serial = fitting[0]
            del unnamed[serial]
            serials[role] = serial
            warnings.append(f"{why}: camera {serial} recovered as {role} from trajectory.h5 (camera_type "
                            f"{kind}, camera_extrinsics) and its MP4")
        elif why.startswith("the metadata's") and not fitting:
            raise _EpisodeProblem(f"{rel}/{meta_name}: {why}, and trajectory.h5 has no other {kind} camera to "
                                  "recover it from", episode_id)
    if unnamed:
        listed = ", ".join(f"{serial} ({type_name or 'no camera_type'})" for serial, type_name in unnamed.items())
        raise _EpisodeProblem(f"{rel}/{meta_name}: trajectory.h5 and recordings/MP4 have camera(s) {listed} that "
                              f"the metadata does not name ({'; '.join(missing.values())}), and which role each "
                              "has cannot be told", episode_id)
    for role, why in missing.items():
        if role not in serials:
            where = "recordings/MP4 has no other camera" if trajectory is None else \
                "trajectory.h5 has no camera of that role"
            warnings.append(f"{why}, and {where}: the episode has {len(serials)} camera(s)")
    return {role: serials[role] for role in CAMERA_ROLES if role in serials}, warnings


def _refuse_unnamed_videos(rel: str, meta_name: str, serials: dict[str, str], missing: dict[str, str],
                           mp4_names: set[str], episode_id: str) -> None:
    """On a remote root the fetch copies the named cameras' videos only, so a camera recorded but
    not named by the metadata would be dropped: a problem naming it (trajectory.h5, which could
    give it a role, is not at hand before the fetch)."""
    videos = {name.removesuffix(".mp4").removesuffix("-stereo") for name in mp4_names if name.endswith(".mp4")}
    unnamed = sorted(videos - set(serials.values()))
    if unnamed:
        why = f" ({'; '.join(missing.values())})" if missing else ""
        raise _EpisodeProblem(f"{rel}/{meta_name}: recordings/MP4 has camera(s) {', '.join(map(printable, unnamed))} "
                              f"that the metadata does not name{why}; on a remote root a camera cannot be "
                              "recovered from trajectory.h5 before the fetch", episode_id)


def _unnamed_h5_cameras(trajectory: Path, named: set[str], mp4_names: set[str]) -> dict[str, str | None]:
    """Cameras trajectory.h5 has data of and an MP4 exists for but that are not ``named``: serial ->
    "wrist", "exterior" or None (no usable camera_type). Empty when the file cannot be read (the
    steps then fail on it)."""
    import h5py

    from droid_pipeline.raw.trajectory import (
        CAMERA_TYPE_GROUP,
        CAMERA_TYPE_WRIST,
        distinct_values,
        h5_camera_serials,
    )

    found: dict[str, str | None] = {}
    try:
        check_input_file(trajectory)
        with h5py.File(trajectory, "r") as h5:
            for serial in sorted(h5_camera_serials(h5) - named):
                if not ({f"{serial}.mp4", f"{serial}-stereo.mp4"} & mp4_names):
                    continue
                values = distinct_values(h5[f"{CAMERA_TYPE_GROUP}/{serial}"][()]) \
                    if f"{CAMERA_TYPE_GROUP}/{serial}" in h5 else []
                found[serial] = None if len(values) != 1 else \
                    "wrist" if values[0] == CAMERA_TYPE_WRIST else "exterior"
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return found


def _unusable_entries(folder: Path) -> list[str]:
    """Entries of the episode folder and its recordings that cannot be used as files: symbolic
    links that lead nowhere (dangling or looping) and special files (FIFOs, devices, sockets),
    which would block or never end when a step opens them. Only stat, never opened."""
    unusable = []
    for sub in ("", "recordings", "recordings/MP4", "recordings/SVO"):
        where = folder / sub
        if not where.is_dir():
            continue
        for entry in sorted(os.scandir(where), key=lambda e: e.name):
            name = printable(f"{sub}/{entry.name}" if sub else entry.name)
            try:
                mode = os.stat(entry.path).st_mode
            except OSError as exc:
                if entry.is_symlink():
                    unusable.append(f"{name} is a broken symbolic link ({_os_cause(exc)})")
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                unusable.append(f"{name} is {file_kind(mode)}, not a regular file")
    return unusable


def _load_cache(path: Path, root: Path) -> dict[str, Any]:
    """The cached date folders; an unreadable cache, or one holding a record that does not
    validate, is ignored (everything is scanned again)."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != INDEX_VERSION or data.get("droid_root") != str(root):
            return {}
        date_dirs = data.get("date_dirs", {})
        for entry in date_dirs.values():
            for record in entry["episodes"]:
                Episode.from_json(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return date_dirs


def _save_cache(path: Path, droid_root: str, episodes: Sequence[Episode], problems: Sequence[dict[str, str]],
                date_dirs: dict[str, int]) -> None:
    per_dir: dict[str, dict[str, Any]] = {
        rel: {"mtime_ns": mtime, "episodes": [], "problems": []} for rel, mtime in date_dirs.items()}
    for episode in episodes:
        per_dir[str(Path(episode.relative_path).parent.as_posix())]["episodes"].append(episode.to_json())
    for problem in problems:
        parent = Path(problem["path"]).parent.as_posix()
        if parent in per_dir:
            per_dir[parent]["problems"].append(problem)
    write_json_atomic(path, {"version": INDEX_VERSION, "droid_root": droid_root, "date_dirs": per_dir})


def discover(config: Config, *, ids: Sequence[str] | None = None, labs: Sequence[str] = (),
             outcomes: Sequence[str] = OUTCOMES, limit: int | None = None, rescan: bool = False) -> EpisodeIndex:
    """The index of config's droid_root: scanned (a local folder) or listed or mapped (a remote
    root, see :func:`build_remote_index`, which the selection arguments narrow)."""
    if isinstance(config.droid_root, str):
        return build_remote_index(config.droid_root, config.index_path, token=config.storage_token,
                                  paths_file=config.episode_paths_file, rescan=rescan, ids=ids, labs=labs,
                                  outcomes=outcomes, limit=limit)
    return build_index(config.droid_root, config.index_path, rescan=rescan)


# A remote root's cached listing: 1: date folder listings and episode records by folder.
REMOTE_INDEX_VERSION = 1
# Listings and metadata reads in flight at once against a remote root.
REMOTE_THREADS = 16


def build_remote_index(url: str, cache_path: os.PathLike | str | None = None, *, token: str | None = None,
                       paths_file: os.PathLike | str | None = None, rescan: bool = False,
                       ids: Sequence[str] | None = None, labs: Sequence[str] = (),
                       outcomes: Sequence[str] = OUTCOMES, limit: int | None = None) -> EpisodeIndex:
    """The index of a remote root (``gs://...``), holding at least the episodes of the selection.

    With ``paths_file`` (DROID's ``episode_id_to_path.json``) the selected ids map to folders
    without any listing; otherwise the lab, outcome and date folders are listed in parallel
    (listings cached in ``cache_path``). Each folder is then listed and its metadata file read,
    which confirms the id (a map entry whose metadata names another id is a problem). Folder
    names are never rebuilt from ids, so episodes under another date folder and folders with
    ``_`` for ``:`` are found like any other.
    """
    from droid_pipeline.raw.store import FetchError, RemoteRoot

    remote = RemoteRoot(url, token)
    cache = {} if rescan or cache_path is None else _load_remote_cache(Path(cache_path), remote.url)
    listings: dict[str, list[str]] = cache.get("listings", {})
    records: dict[str, dict[str, Any]] = cache.get("folders", {})
    problems: list[dict[str, str]] = []
    expected: dict[str, str] = {}  # folder -> the id the map gives it
    if paths_file is not None:
        folders = _mapped_folders(_read_paths_file(paths_file, token), ids, labs, outcomes, limit, expected, problems)
    else:
        folders = _listed_folders(remote, listings, labs if ids is None else (),
                                  outcomes if ids is None else OUTCOMES, problems)
        if ids is None and limit is not None:
            folders = folders[:limit]

    def probe(rel: str) -> Episode | dict[str, str]:
        if rel in records:
            return Episode.from_json(records[rel])
        try:
            objects = remote.objects(rel)
            names = {n for n in objects if "/" not in n}
            meta_name = _metadata_name(rel, names)
            meta = json.loads(remote.read_bytes(f"{rel}/{meta_name}"))
            episode_id = _metadata_id(rel, meta_name, meta)
            return _episode(rel, episode_id, meta_name, meta, names,
                            {n.split("/", 2)[2] for n in objects if n.startswith("recordings/MP4/")},
                            {n.split("/", 2)[2] for n in objects if n.startswith("recordings/SVO/")}, None)
        except (DiscoveryError, FetchError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _problem(rel, f"{rel}: {exc}" if not str(exc).startswith(rel) else str(exc), expected.get(rel, ""))

    from concurrent.futures import ThreadPoolExecutor

    episodes = []
    with ThreadPoolExecutor(REMOTE_THREADS) as pool:
        for rel, found in zip(folders, pool.map(probe, folders)):
            if isinstance(found, dict):
                problems.append(found)
            elif expected.get(rel, found.episode_id) != found.episode_id:
                problems.append(_problem(rel, f"{rel}: episode_paths_file maps episode {expected[rel]} here, but "
                                              f"its metadata names {found.episode_id}", expected[rel]))
            else:
                records[rel] = found.to_json()
                episodes.append(found)
    if cache_path is not None:
        write_json_atomic(Path(cache_path), {"version": REMOTE_INDEX_VERSION, "droid_root": remote.url,
                                             "listings": listings, "folders": records})
    index = EpisodeIndex(remote.url, sorted(episodes, key=lambda e: e.relative_path), problems)
    index.problems.extend(_duplicates(index.episodes))
    return index


def _read_paths_file(paths_file: os.PathLike | str, token: str | None) -> dict[str, Any]:
    """DROID's episode_id_to_path.json, local or remote, as a mapping."""
    from droid_pipeline.raw.store import FetchError, RemoteRoot, is_remote

    try:
        if is_remote(paths_file):
            parent, _, name = str(paths_file).rpartition("/")
            text = RemoteRoot(parent, token).read_bytes(name).decode()
        else:
            text = Path(paths_file).read_text()
        data = json.loads(text)
    except (OSError, FetchError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiscoveryError(f"episode_paths_file {paths_file}: cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise DiscoveryError(f"episode_paths_file {paths_file}: not a JSON object of id -> folder")
    return data


def _mapped_folders(mapping: dict[str, Any], ids: Sequence[str] | None, labs: Sequence[str],
                    outcomes: Sequence[str], limit: int | None, expected: dict[str, str],
                    problems: list[dict[str, str]]) -> list[str]:
    """The folders of the selection by the map; entries that are no valid folder are problems."""
    chosen = []
    for episode_id in (ids if ids is not None else sorted(mapping, key=lambda i: str(mapping[i]))):
        rel = mapping.get(episode_id)
        if rel is None:
            continue  # unknown: the selection names it
        parts = str(rel).strip("/").split("/")
        problem = episode_id_problem(episode_id) or (
            f"maps to {printable(str(rel))!r}, not <LAB>/<outcome>/<date>/<folder>"
            if len(parts) != 4 or parts[1] not in OUTCOMES else
            next((p for p in map(name_problem, parts) if p), None))
        if problem is not None:
            problems.append(_problem(str(rel), f"episode_paths_file: {episode_id}: {problem}", ""))
            continue
        if ids is None and ((labs and parts[0] not in labs) or parts[1] not in outcomes):
            continue
        expected["/".join(parts)] = episode_id
        chosen.append("/".join(parts))
    return chosen[:limit] if ids is None and limit is not None else chosen


def _listed_folders(remote: Any, listings: dict[str, list[str]], labs: Sequence[str], outcomes: Sequence[str],
                    problems: list[dict[str, str]]) -> list[str]:
    """Every episode folder under the wanted labs and outcomes, by parallel prefix listings."""
    from concurrent.futures import ThreadPoolExecutor

    from droid_pipeline.raw.store import FetchError

    def listing(rel: str) -> list[str] | None:
        if rel in listings:
            return listings[rel]
        try:
            names = remote.subfolders(rel)
        except FetchError as exc:
            problems.append(_problem(rel or ".", f"{rel or remote.url}: cannot list folder: {exc}"))
            return None
        unsafe = [n for n in names if name_problem(n)]
        for name in unsafe:
            child = f"{rel}/{name}".lstrip("/")
            problems.append(_problem(child, f"{printable(child)}: {name_problem(name)}"))
        return [n for n in names if n not in unsafe]

    top = listing("")
    if top is None:
        raise DiscoveryError(f"droid_root {remote.url}: cannot list it ({problems[-1]['problem']})")
    level = [f"{lab}/{outcome}" for lab in top if not labs or lab in labs for outcome in outcomes]
    with ThreadPoolExecutor(REMOTE_THREADS) as pool:
        for _ in range(2):  # outcome -> date folders, date -> episode folders
            found = list(pool.map(listing, level))
            next_level: list[str] = []
            for rel, names in zip(level, found):
                if names is not None:
                    if rel.count("/") == 2:
                        listings[rel] = names  # date folders' listings: the cache
                    next_level.extend(f"{rel}/{n}" for n in names)
            level = next_level
    return sorted(level)


def _load_remote_cache(path: Path, url: str) -> dict[str, Any]:
    """The cached listings and records of this root; anything unreadable or invalid is ignored."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != REMOTE_INDEX_VERSION or data.get("droid_root") != url:
            return {}
        for record in data["folders"].values():
            Episode.from_json(record)
        return {"listings": dict(data["listings"]), "folders": dict(data["folders"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


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
