"""Timed batch uploads of published episodes to the metadata and full repos, with a ledger.

A batch reads the publish journal's new lines, then, for each repo under that repo's lock
(one committer per repo, across processes):

1. reconciles a commit a killed or failed run left in flight: if the repo holds the commit
   carrying its marker, the ledger gets its lines; otherwise the files are committed again;
2. packs the episodes whose files this repo still lacks into commits of at most
   ``max_files_per_commit`` files (an episode is split only when it alone is larger);
3. before each commit, checks the rolling-hour budget (``max_commits_per_hour``, persisted) and
   any Retry-After from a 429, waiting out a short one and carrying the rest over otherwise;
4. verifies each file's checksum against the manifest, records the commit as in flight,
   commits, and appends one ledger line per episode once the commit is confirmed.

In the shards layout (``hub_layout``, :mod:`droid_pipeline.publish.shards`) step 2 packs the
episodes into tar shards instead (``shard_max_episodes``, ``shard_max_bytes``; the last shard of
a batch closes with the batch) and each commit adds one shard, built and verified in
``<run_root>/upload_shards/<repo>/`` first, with the rewritten episode index and dataset card;
the shard's number is recorded with the commit in flight before it is made.

Then, with ``delete_after_upload``, an episode folder is removed once the ledger holds it in
every repo it belongs to. State (in-flight commit, commit times, Retry-After, failures) lives in
``<run_root>/upload_state/<repo>.json`` (:class:`~droid_pipeline.publish.records.RepoState`);
locks in ``<run_root>/locks/<repo>.lock``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from droid_pipeline.core.atomic import remove_temporaries, sha256_file, write_json_atomic
from droid_pipeline.core.config import Config
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.publish import index as episode_index
from droid_pipeline.publish.card import render_card
from droid_pipeline.publish.ledger import Ledger, repos_for
from droid_pipeline.publish.records import (
    HOUR_S,
    CommitOutcome,
    PendingCommit,
    PendingEpisode,
    ReconcileOutcome,
    RepoState,
    UploadFile,
)
from droid_pipeline.publish.shards import (
    CARD_NAME,
    HUB_MAX_FILE_BYTES,
    ShardEpisode,
    ShardError,
    SourceFile,
    index_path,
    member_bytes,
    plan_shards,
    shard_path,
    verify_shard,
    write_shard,
)
from droid_pipeline.publish.staging import (
    MANIFEST_NAME,
    JournalEntry,
    Manifest,
    episode_lock,
    finished_state,
    is_finished,
    read_journal_entries,
    read_manifest,
)
from droid_pipeline.publish.targets import (
    HeadMoved,
    RateLimited,
    RepoTarget,
    commit_message,
    open_target,
    repo_slug,
    shard_commit_message,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

STATE_DIR = "upload_state"
LOCK_DIR = "locks"
# Shards, index and card of the commits being made, per repo, under the run root.
SHARD_BUILD_DIR = "upload_shards"
# Shard commits built again when another uploader moved the repo's head first, per chunk.
MAX_HEAD_MOVES = 3
# Hub downloads of the repos' episode indexes, under the run root.
HUB_CACHE_DIR = "upload_state/hub_cache"
SHARD_COMMIT_FILES = 3  # the shard, the card, the index
# A Retry-After up to this long is waited out within the batch (once per repo); longer ones
# carry the work over to a later batch.
RETRY_AFTER_WAIT_LIMIT_S = 60.0
# Retry-After values are capped to this, then checked again by the next batch.
MAX_BLOCK_S = 3600.0
# huggingface_hub's HTTP client has no timeout by default; one request may not stall longer.
DEFAULT_REQUEST_TIMEOUT_S = 300.0

BUDGET_REASON = "commit budget of max_commits_per_hour used up"


class UploadError(RuntimeError):
    """The uploader cannot start: no repo configured, a bad repo URL, or no token."""


def repo_urls(config: Config) -> list[str]:
    """The configured repos, metadata first; at least one is required."""
    urls = list(dict.fromkeys(u for u in (config.metadata_repo, config.full_repo) if u))
    if not urls:
        raise UploadError("no repo to upload to: set metadata_repo and/or full_repo")
    return urls


def repo_layout(config: Config, url: str) -> str:
    """``files`` or ``shards`` for a repo URL (``hub_layout: auto``: shards for hf://, files otherwise)."""
    if config.hub_layout != "auto":
        return config.hub_layout
    return "shards" if url.startswith("hf://") else "files"


def repo_kind(config: Config, url: str) -> str:
    """``full`` for the full repo, ``metadata`` for the metadata repo."""
    return "full" if url == config.full_repo else "metadata"


def resolve_token(urls: list[str]) -> str | None:
    """The Hub token (``HF_TOKEN`` or the token file) when a repo is on the Hub, else None."""
    if not any(url.startswith("hf://") for url in urls):
        return None
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UploadError("no Hugging Face token: set HF_TOKEN or log in once with `hf auth login` "
                          "(token file under $HF_HOME)")
    return token


class Redactor(logging.Filter):
    """Replaces the token with ``***`` in log records and in texts kept in state files."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret and self.secret in message:
            record.msg, record.args = self.redact(message), ()
        return True


@dataclass
class BatchReport:
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


@dataclass
class _Work:
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


class Uploader:
    """Uploads what is published under ``run_root`` to the configured repos."""

    def __init__(self, config: Config, run_root: os.PathLike | str, *, token: str | None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
        self.config = config
        self.run_root = Path(run_root)
        self.redactor = Redactor(token)
        self.targets: dict[str, RepoTarget] = {url: open_target(url, token, request_timeout_s)
                                               for url in repo_urls(config)}
        if config.max_files_per_commit < SHARD_COMMIT_FILES and \
                any(repo_layout(config, url) == "shards" for url in self.targets):
            raise UploadError(f"hub_layout shards commits {SHARD_COMMIT_FILES} files at once (shard, card, index): "
                              f"max_files_per_commit must be at least {SHARD_COMMIT_FILES}")
        # Per sharded repo: its episode index and next shard number as of its last commit seen.
        self._index: dict[str, tuple[pa.Table, int]] = {}
        self._staged_index: dict[str, tuple[pa.Table, int]] = {}
        # The repo commit each cached index was read at: a shard commit lands only on it, so two
        # uploaders (two run roots) never write the same shard number or lose each other's rows.
        self._parent: dict[str, str | None] = {}
        self.ledger = Ledger(self.run_root)
        self._queue: dict[str, JournalEntry] = {}
        self._journal_offset = 0
        self._ensured: set[str] = set()
        self._stop = False
        self._batch_id = ""
        self._sequence = 0

    def stop(self) -> None:
        """Finish the commit in flight, then stop (safe to call from a signal handler)."""
        self._stop = True

    # -- modes ------------------------------------------------------------------------------
    def run_daemon(self) -> BatchReport:
        """Run a batch every ``upload_interval_s`` until :meth:`stop`."""
        report = BatchReport()
        while not self._stop:
            started = time.monotonic()
            report = self.run_batch()
            log.info("batch done: %s", report.summary())
            self._sleep(started + self.config.upload_interval_s - time.monotonic())
        return report

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when :meth:`stop` is called."""
        deadline = time.monotonic() + seconds
        while not self._stop and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.2, left))

    def run_batch(self) -> BatchReport:
        """One batch over every repo (see the module docstring)."""
        report = BatchReport()
        self._batch_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._refresh_queue()
        for url, target in self.targets.items():
            report.commits[url] = report.episodes[url] = report.carried[url] = 0
            with self._repo_lock(target):
                self._upload_repo(target, report)
        self._finish_uploaded(report)
        return report

    def plan(self) -> dict[str, list[list[str]]]:
        """Dry run: per repo, the episode ids of each commit a batch would make now."""
        self._refresh_queue()
        plan = {}
        for url in self.targets:
            work = self._to_upload(url, BatchReport())
            plan[url] = [[w.episode_id for w in chunk] for chunk in self.plan_commits(url, work)]
        return plan

    def plan_commits(self, url: str, work: list[_Work]) -> list[list[_Work]]:
        """The commits of ``work``: files packed up to ``max_files_per_commit``, or one per shard."""
        if repo_layout(self.config, url) == "files":
            return _pack(work, self.config.max_files_per_commit)
        limit = self.config.shard_max_bytes.for_kind(repo_kind(self.config, url))
        groups = plan_shards([member_bytes([f.size for f in w.files]) for w in work],
                             self.config.shard_max_episodes, limit)
        return [[work[i] for i in group] for group in groups]

    # -- one repo ---------------------------------------------------------------------------
    def _upload_repo(self, target: RepoTarget, report: BatchReport) -> None:
        url = target.url
        for leftover in remove_temporaries(self.run_root / SHARD_BUILD_DIR / target.slug):  # under the repo lock
            log.info("%s: removed %s, left by a killed uploader", url, leftover)
        self.ledger.refresh()
        state = self._load_state(target)
        if (state.pending is not None and self._reconcile(target, state) is ReconcileOutcome.UNKNOWN) \
                or not self._ensure_exists(target, state):
            report.errors[url] = state.last_error
            report.carried[url] = len(self._to_upload(url, report))
            return
        self._forget_index(url)  # read again: another staging area may have committed meanwhile
        chunks = self.plan_commits(url, self._to_upload(url, report))
        waited_for_429 = False
        for index, chunk in enumerate(chunks):
            outcome: CommitOutcome | None = None  # not tried yet
            while outcome in (None, CommitOutcome.RATE_LIMITED) and not self._stop:
                wait, reason = self._blocked_for(state)
                if wait > 0:
                    if wait > RETRY_AFTER_WAIT_LIMIT_S or waited_for_429 or reason == BUDGET_REASON:
                        log.info("%s: %s; carrying %d commit(s) over (%.0f s to wait)", url, reason,
                                 len(chunks) - index, wait)
                        break
                    log.info("%s: waiting %.1f s (%s)", url, wait, reason)
                    self._sleep(wait)
                    state.blocked_until, waited_for_429 = 0.0, True
                    continue
                checked = self._verified(chunk, state) if repo_layout(self.config, url) == "files" else chunk
                outcome = self._commit(target, state, checked, report)
            if outcome is not CommitOutcome.COMMITTED:
                report.carried[url] += sum(len(c) for c in chunks[index:])
                return

    def _blocked_for(self, state: RepoState) -> tuple[float, str]:
        """Seconds to wait before the next commit, and why."""
        now = time.time()
        budget = state.budget_wait(self.config.max_commits_per_hour, now)
        if budget > 0:
            return budget, BUDGET_REASON
        return max(0.0, state.blocked_until - now), state.blocked_reason

    def _commit(self, target: RepoTarget, state: RepoState, chunk: list[_Work],
                report: BatchReport, moves_left: int = MAX_HEAD_MOVES) -> CommitOutcome:
        if not chunk:
            self._save_state(target, state)
            return CommitOutcome.COMMITTED
        url = target.url
        self._sequence += 1
        marker = f"{self._batch_id}-{self._sequence:04d}"
        if repo_layout(self.config, url) == "files":
            pending = PendingCommit(marker, tuple(work.as_pending_episode() for work in chunk))
            message = commit_message(marker, len(chunk), len(pending.files))
        else:
            built = self._build_shard(target, state, chunk, marker)
            if built is None:
                self._save_state(target, state)
                return CommitOutcome.COMMITTED  # nothing left to commit: every episode failed (reasons kept)
            pending, message = built
            chunk = [work for work in chunk if any(e.episode_id == work.episode_id for e in pending.episodes)]
        files = pending.files
        state.pending = pending
        state.commit_times.append(time.time())
        self._save_state(target, state)
        try:
            parent = self._parent.get(url) if pending.shard is not None else None
            commit_id = target.commit(files, message, parent=parent)
        except HeadMoved as exc:
            state.pending = None
            _discard_uploads(pending)
            self._forget_index(url)
            self._save_state(target, state)
            log.warning("%s: another uploader committed first; the shard of commit %s is built again (%d tries "
                        "left): %s", url, marker, moves_left, exc)
            if moves_left > 0:
                return self._commit(target, state, chunk, report, moves_left - 1)
            for work in chunk:
                state.failures[work.episode_id] = f"commit failed: {exc}"
            state.last_error = str(exc)
            self._save_state(target, state)
            return CommitOutcome.FAILED
        except RateLimited as exc:
            state.pending = None
            _discard_uploads(pending)
            state.blocked_until = time.time() + min(exc.retry_after_s, MAX_BLOCK_S)
            state.blocked_reason = f"rate limited (HTTP 429, Retry-After {exc.retry_after_s:.0f} s)"
            self._save_state(target, state)
            log.warning("%s: %s", url, state.blocked_reason)
            return CommitOutcome.RATE_LIMITED
        except Exception as exc:  # noqa: BLE001 - any failure: check the repo before retrying
            reason = self.redactor.redact(f"{type(exc).__name__}: {exc}")
            log.warning("%s: commit %s failed (%s); checking whether it landed", url, marker, reason)
            if self._reconcile(target, state) is not ReconcileOutcome.LANDED:
                for work in chunk:
                    state.failures[work.episode_id] = f"commit failed: {reason}"
                state.last_error = reason
                self._save_state(target, state)
                return CommitOutcome.FAILED
        else:
            self._record(target, state, commit_id)
        report.commits[url] += 1
        report.episodes[url] += sum(1 for w in chunk if self.ledger.holds(url, w.episode_id))
        log.info("%s: committed %d episode(s), %d file(s) [%s]", url, len(chunk), len(files), marker)
        return CommitOutcome.COMMITTED

    def _reconcile(self, target: RepoTarget, state: RepoState) -> ReconcileOutcome:
        """Settle the in-flight commit (see :class:`~droid_pipeline.publish.records.ReconcileOutcome`)."""
        pending = state.pending
        assert pending is not None
        try:
            commit_id = target.find_commit(pending.marker, pending.files)
        except Exception as exc:  # noqa: BLE001 - unknown outcome: keep it pending
            state.last_error = self.redactor.redact(f"cannot check commit {pending.marker}: {exc}")
            self._save_state(target, state)
            log.warning("%s: %s", target.url, state.last_error)
            return ReconcileOutcome.UNKNOWN
        if commit_id is None:
            log.info("%s: commit %s did not land; its files will be committed again", target.url,
                     pending.marker)
            state.pending = None
            _discard_uploads(pending)
            self._forget_index(target.url)
            self._save_state(target, state)
            return ReconcileOutcome.NOT_LANDED
        log.info("%s: commit %s landed as %s", target.url, pending.marker, commit_id)
        self._record(target, state, commit_id)
        return ReconcileOutcome.LANDED

    def _record(self, target: RepoTarget, state: RepoState, commit_id: str) -> None:
        pending = state.pending
        assert pending is not None
        for episode in pending.episodes:
            already = self.ledger.uploaded_paths(target.url, episode.episode_id, episode.manifest_sha256)
            if self.ledger.holds(target.url, episode.episode_id, episode.manifest_sha256) or \
                    {f.path_in_repo for f in episode.files} <= already:
                continue
            self.ledger.record(
                episode_id=episode.episode_id, relative_path=episode.relative_path, repo=target.url,
                manifest_sha256=episode.manifest_sha256, commit=commit_id, batch=pending.marker,
                episode_files=episode.episode_files, files=[f.ledger_json() for f in episode.files])
            state.failures.pop(episode.episode_id, None)
        state.pending = None
        state.last_error = ""
        self._save_state(target, state)
        if pending.shard is not None:
            staged = self._staged_index.pop(target.url, None)
            if staged is not None and staged[1] == pending.shard + 1:
                self._index[target.url] = staged
                if self._parent.get(target.url) is not None:
                    self._parent[target.url] = commit_id  # the head the staged index is at
            else:  # settled from an earlier run: read the index the repo now holds
                self._forget_index(target.url)
            _discard_uploads(pending)

    def _forget_index(self, url: str) -> None:
        """Read the repo's index (and its head) again before the next shard; an index staged for
        a commit that did not land goes too."""
        self._index.pop(url, None)
        self._parent.pop(url, None)
        self._staged_index.pop(url, None)

    def _ensure_exists(self, target: RepoTarget, state: RepoState) -> bool:
        if target.url in self._ensured:
            return True
        try:
            target.ensure_exists(self.config.private)
        except Exception as exc:  # noqa: BLE001 - reported, retried next batch
            state.last_error = self.redactor.redact(f"cannot create or reach the repo: {exc}")
            self._save_state(target, state)
            log.error("%s: %s", target.url, state.last_error)
            return False
        self._ensured.add(target.url)
        return True

    # -- episodes ---------------------------------------------------------------------------
    def _refresh_queue(self) -> None:
        entries, self._journal_offset = read_journal_entries(self.run_root, self._journal_offset)
        for entry in entries:
            self._queue.pop(entry.episode_id, None)  # re-inserted last: the queue keeps publish order
            self._queue[entry.episode_id] = entry

    def _to_upload(self, url: str, report: BatchReport) -> list[_Work]:
        """Episodes of the queue whose files ``url`` still lacks and whose folder is ready."""
        work = []
        for episode_id in list(self._queue):
            entry = self._queue[episode_id]
            if url not in self._repos_of(entry) or self.ledger.holds(url, episode_id, entry.manifest_sha256):
                continue
            episode_dir = entry.episode_dir
            ready, reason = _ready(episode_dir, entry.manifest_sha256)
            if not ready and is_finished(episode_dir):
                entry = self._settle(entry)
                if url not in self._repos_of(entry) or self.ledger.holds(url, episode_id, entry.manifest_sha256):
                    continue
                ready, reason = _ready(episode_dir, entry.manifest_sha256)
            try:
                files = self._repo_files(url, entry, read_manifest(episode_dir)) if ready else []
            except OSError as exc:  # deleted or replaced meanwhile
                ready, reason = False, str(exc)
            if not ready:
                report.waiting[episode_id] = reason
                continue
            done = self.ledger.uploaded_paths(url, episode_id, entry.manifest_sha256) \
                if repo_layout(self.config, url) == "files" else set()
            work.append(_Work(entry, [f for f in files if f.path_in_repo not in done], len(files)))
        return work

    def _settle(self, entry: JournalEntry) -> JournalEntry:
        """The entry for what a finished folder that does not hold the journaled version really holds.

        Under the folder's publish lock (a publisher holds it from its journal line to its move)
        either a newer line has been journaled meanwhile, or the publish of this line was killed
        before its move and the folder holds an earlier published version, which then stands.
        """
        episode_id, episode_dir = entry.episode_id, entry.episode_dir
        with episode_lock(episode_dir):
            self._refresh_queue()
            entry = self._queue[episode_id]
            if not is_finished(episode_dir) or _ready(episode_dir, entry.manifest_sha256)[0]:
                return entry
            manifest = read_manifest(episode_dir)
            log.warning("episode %s: the publish journaled last never reached %s; taking the version "
                        "it holds", episode_id, episode_dir)
            entry = dataclasses.replace(entry, pipeline=manifest.pipeline,
                                        manifest_sha256=sha256_file(episode_dir / MANIFEST_NAME))
            self._queue[episode_id] = entry
            return entry

    def _repo_files(self, url: str, entry: JournalEntry, manifest: Manifest) -> list[UploadFile]:
        episode_dir, rel = entry.episode_dir, entry.relative_path
        kinds = ("metadata", "depth") if url == self.config.full_repo else ("metadata",)
        files = [UploadFile(f"{rel}/{f.path}", episode_dir / f.path, f.size, f.sha256)
                 for f in manifest.files_of_kind(*kinds)]
        manifest_path = episode_dir / MANIFEST_NAME
        files.append(UploadFile(f"{rel}/{MANIFEST_NAME}", manifest_path, manifest_path.stat().st_size,
                                entry.manifest_sha256))
        return files

    def _verified(self, chunk: list[_Work], state: RepoState) -> list[_Work]:
        """The episodes of ``chunk`` whose files still match their manifest checksums."""
        good = []
        for work in chunk:
            bad = [f.local_path.name for f in work.files if not _intact(f)]
            if bad:
                reason = f"checksum or file differs from the manifest: {', '.join(bad)}"
                state.failures[work.episode_id] = reason
                log.error("episode %s: %s", work.episode_id, reason)
            else:
                good.append(work)
        return good

    # -- shards -----------------------------------------------------------------------------
    def _repo_index(self, target: RepoTarget) -> tuple[pa.Table, int]:
        """The repo's episode index (a pyarrow Table) and next free shard number, as last committed."""
        if target.url not in self._index:
            self._parent[target.url] = target.head()  # before the index: a commit between moves the head on
            local = target.fetch(index_path(repo_kind(self.config, target.url)), self.run_root / HUB_CACHE_DIR)
            self._index[target.url] = episode_index.read_index(local) if local is not None else \
                (episode_index.empty_table(), 0)
        return self._index[target.url]

    def _build_shard(self, target: RepoTarget, state: RepoState, chunk: list[_Work],
                     marker: str) -> tuple[PendingCommit, str] | None:
        """Write and verify the shard of ``chunk``, the index and the card that go with it; the
        commit to make and its message, or None when no episode of the chunk can go in (each
        failure recorded with its reason)."""
        url = target.url
        kind = repo_kind(self.config, url)
        table, number = self._repo_index(target)
        path = shard_path(kind, number)
        folder = self.run_root / SHARD_BUILD_DIR / target.slug
        episodes = {}
        for work in chunk:
            try:
                episodes[work.episode_id] = (work, *self._shard_episode(work))
            except (ShardError, episode_index.EpisodeIndexError, OSError, ValueError) as exc:
                self._fail(state, work.episode_id, f"cannot go into a shard: {exc}")
        while episodes:
            local = folder / f"{number:06d}.tar"
            try:
                members = write_shard(local, [shard_episode for _, shard_episode, _ in episodes.values()])
            except ShardError as exc:
                if exc.episode_id not in episodes:
                    raise
                self._fail(state, exc.episode_id, f"checksum or file differs from the manifest: {exc}")
                del episodes[exc.episode_id]
                continue
            problems = verify_shard(local, members)
            if problems:
                for episode_id in episodes:
                    self._fail(state, episode_id, f"shard {path} did not verify: {'; '.join(problems[:3])}")
                local.unlink(missing_ok=True)
                return None
            break
        else:
            return None
        if local.stat().st_size >= HUB_MAX_FILE_BYTES:
            for episode_id in episodes:
                self._fail(state, episode_id, f"shard {path} would be {local.stat().st_size} bytes, over the Hub's "
                                              f"{HUB_MAX_FILE_BYTES}")
            local.unlink(missing_ok=True)
            return None
        rows = [episode_index.index_row(
            episode_id=work.episode_id, relative_path=work.entry.relative_path, pipeline=work.entry.pipeline,
            schema_version=manifest.schema_version, manifest_sha256=work.entry.manifest_sha256,
            published=manifest.created, info=info, shard=path, members=members[work.episode_id])
            for work, _, (manifest, info) in episodes.values()]
        new_table = episode_index.merge(table, rows)
        index_file = folder / f"{number:06d}.index.parquet"
        episode_index.write_index(index_file, new_table, next_shard=number + 1, kind=kind)
        card_file = folder / f"{number:06d}.{CARD_NAME}"
        card_file.write_text(render_card(kind, _repo_name(url), new_table, shards=number + 1))
        self._staged_index[url] = (new_table, number + 1)
        uploads = tuple(UploadFile(in_repo, file, file.stat().st_size, sha256_file(file))
                        for in_repo, file in ((path, local), (CARD_NAME, card_file),
                                              (index_path(kind), index_file)))
        pending_episodes = tuple(
            PendingEpisode(episode_id=work.episode_id, relative_path=work.entry.relative_path,
                           manifest_sha256=work.entry.manifest_sha256, episode_files=len(members[work.episode_id]),
                           files=tuple(UploadFile(f"{path}/{m.name}", work.entry.episode_dir / m.path, m.size,
                                                  m.sha256) for m in members[work.episode_id]))
            for work, _, _ in episodes.values())
        return (PendingCommit(marker, pending_episodes, uploads, shard=number),
                shard_commit_message(marker, path, len(pending_episodes)))

    def _shard_episode(self, work: _Work) -> tuple[ShardEpisode, tuple[Manifest, episode_index.EpisodeInfo]]:
        """The episode as it goes into a shard, with its manifest and what the index says of it."""
        entry = work.entry
        manifest = read_manifest(entry.episode_dir)
        quality = json.loads((entry.episode_dir / "quality.json").read_text())
        info = episode_index.episode_info(quality, entry.episode_id)
        prefix = f"{entry.relative_path}/"
        files = tuple(SourceFile(f.path_in_repo.removeprefix(prefix), f.local_path, f.size, f.sha256)
                      for f in work.files)
        return ShardEpisode(entry.episode_id, info.roles, files, int(manifest.created)), (manifest, info)

    def _fail(self, state: RepoState, episode_id: str, reason: str) -> None:
        state.failures[episode_id] = reason
        log.error("episode %s: %s", episode_id, reason)

    def _repos_of(self, entry: JournalEntry) -> list[str]:
        return list(dict.fromkeys(repos_for(entry.pipeline, self.config.metadata_repo, self.config.full_repo)))

    def _finish_uploaded(self, report: BatchReport) -> None:
        """Forget episodes uploaded everywhere (deleting their folders when configured to) and
        report the failures of those still pending."""
        self.ledger.refresh()
        for episode_id, entry in list(self._queue.items()):
            sha = entry.manifest_sha256
            if not self.ledger.has(episode_id, self._repos_of(entry), sha):
                continue
            if self.config.delete_after_upload and _delete_episode(entry.episode_dir, sha):
                report.deleted += 1
            del self._queue[episode_id]
            report.waiting.pop(episode_id, None)
        for url, target in self.targets.items():
            report.failed[url] = {e: reason for e, reason in self._load_state(target).failures.items()
                                  if e in self._queue
                                  and not self.ledger.holds(url, e, self._queue[e].manifest_sha256)}

    # -- state and locks --------------------------------------------------------------------
    def _state_path(self, target: RepoTarget) -> Path:
        return self.run_root / STATE_DIR / f"{target.slug}.json"

    def _load_state(self, target: RepoTarget) -> RepoState:
        return load_state(self._state_path(target))

    def _save_state(self, target: RepoTarget, state: RepoState) -> None:
        write_json_atomic(self._state_path(target), state.to_json())

    @contextmanager
    def _repo_lock(self, target: RepoTarget) -> Iterator[None]:
        path = self.run_root / LOCK_DIR / f"{target.slug}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def load_state(path: Path) -> RepoState:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return RepoState()
    return RepoState.from_json(data)


def _pack(work: list[_Work], max_files: int) -> list[list[_Work]]:
    """Group episodes into commits of at most ``max_files`` files; split only oversized episodes."""
    chunks: list[list[_Work]] = []
    current: list[_Work] = []
    count = 0
    for item in work:
        if current and count + len(item.files) > max_files:
            chunks.append(current)
            current, count = [], 0
        if len(item.files) > max_files:
            for start in range(0, len(item.files), max_files):
                chunks.append([dataclasses.replace(item, files=item.files[start:start + max_files])])
            continue
        current.append(item)
        count += len(item.files)
    if current:
        chunks.append(current)
    return chunks


def _repo_name(url: str) -> str:
    """``user/name`` of a Hub URL for the card's examples (a folder stands for a repo yet unnamed)."""
    return url.removeprefix("hf://datasets/") if url.startswith("hf://") else "<user>/<name>"


def _discard_uploads(pending: PendingCommit) -> None:
    """Remove the shard, card and index built for a commit (they are in the repo, or will be rebuilt)."""
    for upload in pending.uploads:
        upload.local_path.unlink(missing_ok=True)


def _published_version(entry: JournalEntry) -> str:
    """Manifest checksum of what the entry's folder holds when finished, else the journaled one
    (see :meth:`Uploader._settle`)."""
    if is_finished(entry.episode_dir):
        try:
            return sha256_file(entry.episode_dir / MANIFEST_NAME)
        except OSError:
            pass
    return entry.manifest_sha256


def _intact(item: UploadFile) -> bool:
    try:
        return sha256_file(item.local_path) == item.sha256
    except OSError:
        return False


def _ready(episode_dir: Path, manifest_sha256: str) -> tuple[bool, str]:
    state, reason = finished_state(episode_dir)
    if state != "finished":
        return False, f"{state}: {reason}"
    try:
        same = sha256_file(episode_dir / MANIFEST_NAME) == manifest_sha256
    except OSError as exc:
        return False, str(exc)
    if not same:
        return False, f"{episode_dir} holds another version than the one published (being replaced)"
    return True, ""


def _delete_episode(episode_dir: Path, manifest_sha256: str) -> bool:
    """Remove a published folder if it still holds the uploaded version.

    Under the folder's publish lock it is renamed aside (so it is gone at once for everyone),
    then removed; asides left by a killed run hold uploaded data too and are removed with it.
    """
    with episode_lock(episode_dir):
        asides = list(episode_dir.parent.glob(f".{glob.escape(episode_dir.name)}.deleting-*"))
        try:
            uploaded = sha256_file(episode_dir / MANIFEST_NAME) == manifest_sha256
        except OSError:
            uploaded = False
        if uploaded:
            asides.append(episode_dir.parent / f".{episode_dir.name}.deleting-{uuid.uuid4().hex[:12]}")
            os.rename(episode_dir, asides[-1])
    for aside in asides:
        shutil.rmtree(aside)
    return uploaded


def status_report(config: Config, run_root: os.PathLike | str) -> str:
    """Human-readable state of a staging area: published, uploaded and pending per repo, failures."""
    run_root = Path(run_root)
    latest: dict[str, JournalEntry] = {}
    for entry in read_journal_entries(run_root)[0]:
        latest.pop(entry.episode_id, None)
        latest[entry.episode_id] = entry
    ledger = Ledger(run_root)
    lines = [f"staging {run_root}: {len(latest)} episode(s) published"]
    now = time.time()
    for url in repo_urls(config):
        state = load_state(run_root / STATE_DIR / f"{repo_slug(url)}.json")
        members = {e: entry for e, entry in latest.items()
                   if url in repos_for(entry.pipeline, config.metadata_repo, config.full_repo)}
        pending = [e for e, entry in members.items() if not ledger.holds(url, e, _published_version(entry))]
        waiting = [e for e in pending if not _ready(members[e].episode_dir, _published_version(members[e]))[0]]
        recent = [t for t in state.commit_times if t > now - HOUR_S]
        lines.append(f"{url}:")
        lines.append(f"  uploaded: {len(members) - len(pending)} episode(s); pending: {len(pending)} "
                     f"({len(waiting)} waiting for their files)")
        lines.append(f"  commits in the last hour: {len(recent)}/{config.max_commits_per_hour}")
        if state.blocked_until > now:
            lines.append(f"  blocked until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.blocked_until))}"
                         f" ({state.blocked_reason})")
        if state.pending:
            lines.append(f"  commit in flight: {state.pending.marker} (checked at the next batch)")
        if state.last_error:
            lines.append(f"  last error: {state.last_error}")
        failures = {e: r for e, r in state.failures.items() if e in pending}
        lines.append(f"  failed: {len(failures)}")
        lines += [f"    {e}: {r}" for e, r in sorted(failures.items())]
    return "\n".join(lines)
