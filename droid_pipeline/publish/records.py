"""The uploader's records: an episode's work for a repo, a file to commit, the commit in flight, a
repo's state, commit outcomes and a batch's report.

``<run_root>/upload_state/<repo>.json`` holds one :class:`RepoState`; its ``pending`` is the
:class:`PendingCommit` in flight, kept until the commit is confirmed or found not to have
landed. The JSON layout is that of earlier versions, so older state files still read.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droid_pipeline.core.atomic import write_json_atomic
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.publish.staging import JournalEntry

HOUR_S = 3600.0


@dataclass(frozen=True)
class UploadFile:
    """One episode file as it goes into a repo: its path there, the local file and its checksum."""

    path_in_repo: str
    local_path: Path
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path_in_repo, "size": self.size, "sha256": self.sha256, "local": str(self.local_path)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UploadFile:
        return cls(path_in_repo=data["path"], local_path=Path(data["local"]), size=int(data["size"]),
                   sha256=data["sha256"])

    def ledger_json(self) -> dict[str, Any]:
        """The file as the ledger records it (no local path)."""
        return {"path": self.path_in_repo, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class PendingEpisode:
    """One episode's part of a commit: ``files`` of its ``episode_files`` files in the repo
    (an episode larger than a commit spans several)."""

    episode_id: str
    relative_path: str
    manifest_sha256: str
    episode_files: int
    files: tuple[UploadFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {"episode_id": self.episode_id, "relative_path": self.relative_path,
                "manifest_sha256": self.manifest_sha256, "episode_files": self.episode_files,
                "files": [f.to_json() for f in self.files]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingEpisode:
        return cls(episode_id=data["episode_id"], relative_path=data["relative_path"],
                   manifest_sha256=data["manifest_sha256"], episode_files=int(data["episode_files"]),
                   files=tuple(UploadFile.from_json(f) for f in data["files"]))


@dataclass(frozen=True)
class PendingCommit:
    """A commit recorded before it is made; ``marker`` (in its message) finds it in the repo.

    In the files layout the commit adds the episodes' files. In the shards layout ``uploads`` are
    the files it adds (the shard, the dataset card, then the index) and ``shard`` the shard's
    number, fixed before the commit; the episodes' files are then the shard's members
    (``<shard path>/<member name>``), as the ledger records them.
    """

    marker: str
    episodes: tuple[PendingEpisode, ...]
    uploads: tuple[UploadFile, ...] = ()
    shard: int | None = None

    @property
    def files(self) -> list[UploadFile]:
        """The files the commit adds to the repo."""
        return list(self.uploads) if self.uploads else [f for episode in self.episodes for f in episode.files]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"marker": self.marker, "episodes": [e.to_json() for e in self.episodes]}
        if self.shard is not None:
            data.update(uploads=[f.to_json() for f in self.uploads], shard=self.shard)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PendingCommit:
        return cls(marker=data["marker"], episodes=tuple(PendingEpisode.from_json(e) for e in data["episodes"]),
                   uploads=tuple(UploadFile.from_json(f) for f in data.get("uploads", [])),
                   shard=None if data.get("shard") is None else int(data["shard"]))


@dataclass
class Work:
    """One episode's files still missing in one repo (``total``: all its files in that repo)."""

    entry: JournalEntry
    files: list[UploadFile]
    total: int

    @property
    def episode_id(self) -> str:
        return self.entry.episode_id

    def as_pending_episode(self) -> PendingEpisode:
        entry = self.entry
        return PendingEpisode(episode_id=entry.episode_id, relative_path=entry.relative_path,
                              manifest_sha256=entry.manifest_sha256, episode_files=self.total,
                              files=tuple(self.files))


class CommitOutcome(enum.Enum):
    """How an attempt to commit a chunk of episodes ended."""

    COMMITTED = "committed"  # confirmed (or found landed after an error): in the ledger
    RATE_LIMITED = "rate-limited"  # HTTP 429: nothing committed, wait for Retry-After
    FAILED = "failed"  # an error, and the commit did not land (or could not be checked)


class ReconcileOutcome(enum.Enum):
    """What checking the repo for the commit in flight found."""

    LANDED = "landed"  # the repo holds it: now in the ledger
    NOT_LANDED = "not landed"  # its files go into a later commit
    UNKNOWN = "unknown"  # the repo could not be asked: kept in flight for the next batch


@dataclass
class RepoState:
    """What one repo's committer remembers between batches and restarts."""

    commit_times: list[float] = field(default_factory=list)
    blocked_until: float = 0.0
    blocked_reason: str = ""
    pending: PendingCommit | None = None
    failures: dict[str, str] = field(default_factory=dict)  # episode id -> why its upload failed
    last_error: str = ""

    def budget_wait(self, max_per_hour: int, now: float) -> float:
        """Seconds until the rolling-hour budget allows another commit (forgets older commits)."""
        self.commit_times = [t for t in self.commit_times if t > now - HOUR_S]
        if len(self.commit_times) < max_per_hour:
            return 0.0
        return sorted(self.commit_times)[-max_per_hour] + HOUR_S - now

    def to_json(self) -> dict[str, Any]:
        return {"commit_times": list(self.commit_times), "blocked_until": self.blocked_until,
                "blocked_reason": self.blocked_reason,
                "pending": None if self.pending is None else self.pending.to_json(),
                "failures": dict(self.failures), "last_error": self.last_error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RepoState:
        """The state a file holds; keys it lacks keep their defaults, keys it has beyond these are ignored."""
        pending = data.get("pending")
        return cls(commit_times=[float(t) for t in data.get("commit_times", [])],
                   blocked_until=float(data.get("blocked_until", 0.0)),
                   blocked_reason=data.get("blocked_reason", ""),
                   pending=None if pending is None else PendingCommit.from_json(pending),
                   failures=dict(data.get("failures", {})), last_error=data.get("last_error", ""))


def load_state(path: Path) -> RepoState:
    """The state a repo's state file holds; a fresh one when there is no file yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return RepoState()
    return RepoState.from_json(data)


def save_state(path: Path, state: RepoState) -> None:
    write_json_atomic(path, state.to_json())


@dataclass
class BatchReport:
    """What one batch did, per repo URL; its exit code is that of ``upload --once``."""

    commits: dict[str, int] = field(default_factory=dict)
    episodes: dict[str, int] = field(default_factory=dict)
    carried: dict[str, int] = field(default_factory=dict)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    deleted: int = 0

    @property
    def exit_code(self) -> int:
        if any(self.failed.values()) or self.errors:
            return ExitCode.FAILED
        return ExitCode.CARRIED_OVER if any(self.carried.values()) or self.waiting else ExitCode.DONE

    def summary(self) -> str:
        parts = [f"{url}: {self.commits.get(url, 0)} commit(s), {self.episodes.get(url, 0)} episode(s) "
                 f"uploaded, {self.carried.get(url, 0)} carried over, "
                 f"{len(self.failed.get(url, {}))} failed" for url in self.commits]
        parts.append(f"{len(self.waiting)} episode(s) waiting for their files, {self.deleted} deleted locally")
        return "; ".join(parts)
