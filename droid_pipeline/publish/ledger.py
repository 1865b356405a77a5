"""The upload ledger: an append-only record of which episode files landed in which repo.

``<run_root>/upload_ledger.jsonl`` holds one JSON line per (episode, repo, commit), written only
after the commit is confirmed::

    {"episode_id": ..., "relative_path": ..., "repo": "hf://datasets/u/n", "manifest_sha256": ...,
     "commit": "<commit id>", "batch": "<batch id>", "episode_files": 7,
     "files": [{"path": "<path in repo>", "size": 123, "sha256": "..."}], "time": 1700000000.0}

An episode whose files span several commits has several lines; it is complete in a repo once
the lines for its current manifest cover ``episode_files`` distinct paths. Drivers use
:meth:`Ledger.has` (or :func:`ledger_has` for a single question) to skip episodes that were
uploaded and deleted locally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from droid_pipeline.publish.staging import append_record, read_records

LEDGER_NAME = "upload_ledger.jsonl"


def repos_for(pipeline: str, metadata_repo: str | None, full_repo: str | None) -> list[str]:
    """The repos an episode of ``pipeline`` belongs to: metadata always, full for full episodes."""
    repos = [metadata_repo] if metadata_repo else []
    if pipeline == "full" and full_repo:
        repos.append(full_repo)
    return repos


@dataclass
class _Progress:
    manifest_sha256: str
    total: int
    paths: set[str] | None  # None once complete, to keep the index small
    commit: str


class Ledger:
    """In-memory index of the ledger file, refreshed incrementally with :meth:`refresh`."""

    def __init__(self, run_root: os.PathLike | str):
        self.path = Path(run_root) / LEDGER_NAME
        self._offset = 0
        self._index: dict[tuple[str, str], _Progress] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the lines appended since the last refresh (other processes may write too)."""
        records, self._offset = read_records(self.path, self._offset)
        for record in records:
            self._apply(record)

    def record(self, *, episode_id: str, relative_path: str, repo: str, manifest_sha256: str,
               commit: str, batch: str, episode_files: int, files: Iterable[dict[str, Any]]) -> None:
        """Append one confirmed (episode, repo, commit) line, fsynced, then index it."""
        append_record(self.path, {
            "episode_id": episode_id, "relative_path": relative_path, "repo": repo,
            "manifest_sha256": manifest_sha256, "commit": commit, "batch": batch,
            "episode_files": episode_files, "files": list(files), "time": time.time()})
        self.refresh()

    def holds(self, repo: str, episode_id: str, manifest_sha256: str | None = None) -> bool:
        """Whether every file of the episode (of that manifest, if given) is recorded in ``repo``."""
        progress = self._index.get((repo, episode_id))
        return (progress is not None and progress.paths is None
                and manifest_sha256 in (None, progress.manifest_sha256))

    def has(self, episode_id: str, repos: Iterable[str], manifest_sha256: str | None = None) -> bool:
        """Whether the episode (of that manifest, if given) is completely uploaded to every one of
        ``repos``; False when ``repos`` is empty (an episode no repo takes is never uploaded)."""
        repos = list(repos)
        return bool(repos) and all(self.holds(repo, episode_id, manifest_sha256) for repo in repos)

    def uploaded_paths(self, repo: str, episode_id: str, manifest_sha256: str) -> set[str]:
        """Paths in ``repo`` already recorded for this manifest of a partly uploaded episode."""
        progress = self._index.get((repo, episode_id))
        if progress is None or progress.manifest_sha256 != manifest_sha256 or progress.paths is None:
            return set()
        return set(progress.paths)

    def _apply(self, record: dict[str, Any]) -> None:
        try:
            key = (record["repo"], record["episode_id"])
            sha, total = record["manifest_sha256"], int(record["episode_files"])
            paths = {f["path"] for f in record["files"]}
            commit = record["commit"]
        except (KeyError, TypeError, ValueError):
            return
        progress = self._index.get(key)
        if progress is None or progress.manifest_sha256 != sha:
            progress = self._index[key] = _Progress(sha, total, set(), commit)
        if progress.paths is None:
            return
        progress.paths |= paths
        progress.commit = commit
        if len(progress.paths) >= progress.total:
            progress.paths = None


def ledger_has(run_root: os.PathLike | str, episode_id: str, repos: Iterable[str]) -> bool:
    """One-off check; load a :class:`Ledger` once instead when asking about many episodes."""
    return Ledger(run_root).has(episode_id, repos)
