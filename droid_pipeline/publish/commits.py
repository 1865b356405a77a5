"""One repo's commits under the in-flight protocol, so a killed or failed commit is never lost
nor made twice.

Before a commit, its :class:`~droid_pipeline.publish.records.PendingCommit` (with the marker its
message carries) is saved in the repo's state file; once the commit is confirmed, the ledger gets
one line per episode and the pending commit is cleared. When the outcome is unknown (an error, a
timeout, a kill), the repo is asked for the marker (:meth:`RepoCommitter.reconcile`): landed, the
ledger gets its lines; not landed, its files go into a later commit. A 429 carries the commit
over; a shard commit overtaken by another uploader (HTTP 412) is built again on the new head.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from droid_pipeline.publish.layouts import Layout
from droid_pipeline.publish.ledger import Ledger
from droid_pipeline.publish.records import (
    BatchReport,
    CommitOutcome,
    ReconcileOutcome,
    RepoState,
    Work,
    load_state,
    save_state,
)
from droid_pipeline.publish.repos import Redactor
from droid_pipeline.publish.targets import HeadMoved, RateLimited, RepoTarget

log = logging.getLogger(__name__)

# Shard commits built again when another uploader moved the repo's head first, per chunk.
MAX_HEAD_MOVES = 3
# Retry-After values are capped to this, then checked again by the next batch.
MAX_BLOCK_S = 3600.0


class RepoCommitter:
    """Commits to one repo, in its layout, recording each in the ledger and the repo's state file.

    ``new_marker`` gives each commit its marker (unique across runs)."""

    def __init__(self, target: RepoTarget, layout: Layout, ledger: Ledger, state_file: Path,
                 redactor: Redactor, new_marker: Callable[[], str]):
        self.target = target
        self.layout = layout
        self.ledger = ledger
        self.state_file = state_file
        self.redactor = redactor
        self.new_marker = new_marker
        self._reached = False

    @property
    def url(self) -> str:
        return self.target.url

    def load_state(self) -> RepoState:
        return load_state(self.state_file)

    def save_state(self, state: RepoState) -> None:
        save_state(self.state_file, state)

    def ensure_exists(self, state: RepoState, private: bool) -> bool:
        """Create the repo when missing (once per uploader); False, the error kept, when it cannot."""
        if self._reached:
            return True
        try:
            self.target.ensure_exists(private)
        except Exception as exc:  # noqa: BLE001 - reported, retried next batch
            state.last_error = self.redactor.redact(f"cannot create or reach the repo: {exc}")
            self.save_state(state)
            log.error("%s: %s", self.url, state.last_error)
            return False
        self._reached = True
        return True

    def commit(self, state: RepoState, chunk: list[Work], report: BatchReport,
               moves_left: int = MAX_HEAD_MOVES) -> CommitOutcome:
        """Prepare, record in flight, make and confirm the commit of ``chunk``."""
        prepared = self.layout.prepare(chunk, state) if chunk else None
        if prepared is None:  # nothing left to commit: every episode failed (reasons kept)
            self.save_state(state)
            return CommitOutcome.COMMITTED
        url, chunk = self.url, prepared.chunk
        pending = prepared.pending(self.new_marker())
        files = pending.files
        state.pending = pending
        state.commit_times.append(time.time())
        self.save_state(state)
        try:
            commit_id = self.target.commit(files, self.layout.message(pending), parent=self.layout.parent())
        except HeadMoved as exc:
            state.pending = None
            self.layout.discard(pending)
            self.layout.forget()
            self.save_state(state)
            log.warning("%s: another uploader committed first; the shard of commit %s is built again (%d tries "
                        "left): %s", url, pending.marker, moves_left, exc)
            if moves_left > 0:
                return self.commit(state, chunk, report, moves_left - 1)
            for work in chunk:
                state.failures[work.episode_id] = f"commit failed: {exc}"
            state.last_error = str(exc)
            self.save_state(state)
            return CommitOutcome.FAILED
        except RateLimited as exc:
            state.pending = None
            self.layout.discard(pending)
            state.blocked_until = time.time() + min(exc.retry_after_s, MAX_BLOCK_S)
            state.blocked_reason = f"rate limited (HTTP 429, Retry-After {exc.retry_after_s:.0f} s)"
            self.save_state(state)
            log.warning("%s: %s", url, state.blocked_reason)
            return CommitOutcome.RATE_LIMITED
        except Exception as exc:  # noqa: BLE001 - any failure: check the repo before retrying
            reason = self.redactor.redact(f"{type(exc).__name__}: {exc}")
            log.warning("%s: commit %s failed (%s); checking whether it landed", url, pending.marker, reason)
            if self.reconcile(state) is not ReconcileOutcome.LANDED:
                for work in chunk:
                    state.failures[work.episode_id] = f"commit failed: {reason}"
                state.last_error = reason
                self.save_state(state)
                return CommitOutcome.FAILED
        else:
            self._record(state, commit_id)
        report.commits[url] += 1
        report.episodes[url] += sum(1 for w in chunk if self.ledger.holds(url, w.episode_id))
        log.info("%s: committed %d episode(s), %d file(s) [%s]", url, len(chunk), len(files), pending.marker)
        return CommitOutcome.COMMITTED

    def reconcile(self, state: RepoState) -> ReconcileOutcome:
        """Settle the in-flight commit (see :class:`~droid_pipeline.publish.records.ReconcileOutcome`)."""
        pending = state.pending
        assert pending is not None
        try:
            commit_id = self.target.find_commit(pending.marker, pending.files)
        except Exception as exc:  # noqa: BLE001 - unknown outcome: keep it pending
            state.last_error = self.redactor.redact(f"cannot check commit {pending.marker}: {exc}")
            self.save_state(state)
            log.warning("%s: %s", self.url, state.last_error)
            return ReconcileOutcome.UNKNOWN
        if commit_id is None:
            log.info("%s: commit %s did not land; its files will be committed again", self.url, pending.marker)
            state.pending = None
            self.layout.discard(pending)
            self.layout.forget()
            self.save_state(state)
            return ReconcileOutcome.NOT_LANDED
        log.info("%s: commit %s landed as %s", self.url, pending.marker, commit_id)
        self._record(state, commit_id)
        return ReconcileOutcome.LANDED

    def _record(self, state: RepoState, commit_id: str) -> None:
        """One ledger line per episode of the commit in flight (unless held already), then clear it."""
        pending = state.pending
        assert pending is not None
        for episode in pending.episodes:
            already = self.ledger.uploaded_paths(self.url, episode.episode_id, episode.manifest_sha256)
            if self.ledger.holds(self.url, episode.episode_id, episode.manifest_sha256) or \
                    {f.path_in_repo for f in episode.files} <= already:
                continue
            self.ledger.record(
                episode_id=episode.episode_id, relative_path=episode.relative_path, repo=self.url,
                manifest_sha256=episode.manifest_sha256, commit=commit_id, batch=pending.marker,
                episode_files=episode.episode_files, files=[f.ledger_json() for f in episode.files])
            state.failures.pop(episode.episode_id, None)
        state.pending = None
        state.last_error = ""
        self.save_state(state)
        self.layout.landed(pending, commit_id)
