"""Timed batch uploads of published episodes to the metadata and full repos, with a ledger.

A batch reads the publish journal's new lines (:mod:`~droid_pipeline.publish.episode_queue`),
then, for each repo under that repo's lock (one committer per repo, across processes):

1. reconciles a commit a killed or failed run left in flight: if the repo holds the commit
   carrying its marker, the ledger gets its lines; otherwise the files are committed again
   (:mod:`~droid_pipeline.publish.commits`);
2. plans the commits of the episodes whose files this repo still lacks, in the repo's layout
   (:mod:`~droid_pipeline.publish.layouts`): commits of at most ``max_files_per_commit`` files,
   or one tar shard per commit (the last shard of a batch closes with the batch);
3. before each commit, checks the rolling-hour budget (``max_commits_per_hour``, persisted) and
   any Retry-After from a 429, waiting out a short one and carrying the rest over otherwise;
4. prepares the commit (checks each file's checksum against the manifest, or builds and verifies
   the shard with the rewritten episode index and dataset card), records it as in flight,
   commits, and appends one ledger line per episode once the commit is confirmed.

Then, with ``delete_after_upload``, an episode folder is removed once the ledger holds it in
every repo it belongs to. State (in-flight commit, commit times, Retry-After, failures) lives in
``<run_root>/upload_state/<repo>.json`` (:class:`~droid_pipeline.publish.records.RepoState`);
locks in ``<run_root>/locks/<repo>.lock``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from droid_pipeline.core.atomic import remove_temporaries
from droid_pipeline.core.config import Config
from droid_pipeline.publish.commits import RepoCommitter
from droid_pipeline.publish.episode_queue import EpisodeQueue
from droid_pipeline.publish.layouts import SHARD_BUILD_DIR, open_layout
from droid_pipeline.publish.ledger import Ledger
from droid_pipeline.publish.records import BatchReport, CommitOutcome, ReconcileOutcome, RepoState, Work
from droid_pipeline.publish.repos import Redactor, repo_urls, state_path
from droid_pipeline.publish.targets import open_target

log = logging.getLogger(__name__)

LOCK_DIR = "locks"
# A Retry-After up to this long is waited out within the batch (once per repo); longer ones
# carry the work over to a later batch.
RETRY_AFTER_WAIT_LIMIT_S = 60.0
# huggingface_hub's HTTP client has no timeout by default; one request may not stall longer.
DEFAULT_REQUEST_TIMEOUT_S = 300.0

BUDGET_REASON = "commit budget of max_commits_per_hour used up"


class Uploader:
    """Uploads what is published under ``run_root`` to the configured repos."""

    def __init__(self, config: Config, run_root: os.PathLike | str, *, token: str | None,
                 request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S):
        self.config = config
        self.run_root = Path(run_root)
        self.targets = {url: open_target(url, token, request_timeout_s) for url in repo_urls(config)}
        self.ledger = Ledger(self.run_root)
        redactor = Redactor(token)
        self.repos = {url: RepoCommitter(target, open_layout(config, target, self.run_root), self.ledger,
                                         state_path(self.run_root, url), redactor, self._new_marker)
                      for url, target in self.targets.items()}
        self.queue = EpisodeQueue(config, self.run_root, self.ledger)
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
        self.queue.refresh()
        for url, repo in self.repos.items():
            report.commits[url] = report.episodes[url] = report.carried[url] = 0
            with self._repo_lock(repo):
                self._upload_repo(repo, report)
        self.queue.finish_uploaded(report)
        for url, repo in self.repos.items():
            report.failed[url] = self.queue.still_failed(url, repo.load_state().failures)
        return report

    def plan(self) -> dict[str, list[list[str]]]:
        """Dry run: per repo, the episode ids of each commit a batch would make now."""
        self.queue.refresh()
        return {url: [[w.episode_id for w in chunk] for chunk in repo.layout.plan(self._to_upload(repo, BatchReport()))]
                for url, repo in self.repos.items()}

    def _new_marker(self) -> str:
        """The next commit's marker: this batch's id and the commit's number in it."""
        self._sequence += 1
        return f"{self._batch_id}-{self._sequence:04d}"

    # -- one repo ---------------------------------------------------------------------------
    def _to_upload(self, repo: RepoCommitter, report: BatchReport) -> list[Work]:
        return self.queue.to_upload(repo.url, report, resume_episodes=repo.layout.resume_episodes)

    def _upload_repo(self, repo: RepoCommitter, report: BatchReport) -> None:
        url = repo.url
        for leftover in remove_temporaries(self.run_root / SHARD_BUILD_DIR / repo.target.slug):  # under the repo lock
            log.info("%s: removed %s, left by a killed uploader", url, leftover)
        self.ledger.refresh()
        state = repo.load_state()
        if (state.pending is not None and repo.reconcile(state) is ReconcileOutcome.UNKNOWN) \
                or not repo.ensure_exists(state, self.config.private):
            report.errors[url] = state.last_error
            report.carried[url] = len(self._to_upload(repo, report))
            return
        repo.layout.forget()  # read again: another staging area may have committed meanwhile
        chunks = repo.layout.plan(self._to_upload(repo, report))
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
                outcome = repo.commit(state, chunk, report)
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

    @contextmanager
    def _repo_lock(self, repo: RepoCommitter) -> Iterator[None]:
        path = self.run_root / LOCK_DIR / f"{repo.target.slug}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
