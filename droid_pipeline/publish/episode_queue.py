"""The episodes waiting for upload: the publish journal's latest entry per episode, whether its
folder is ready, the files each repo still lacks, deletion once every repo holds it, and the
staging area's status report."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from droid_pipeline.core.atomic import sha256_file
from droid_pipeline.core.config import Config
from droid_pipeline.publish.ledger import Ledger, repos_for
from droid_pipeline.publish.records import HOUR_S, BatchReport, UploadFile, Work, load_state
from droid_pipeline.publish.repos import repo_urls, state_path
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

log = logging.getLogger(__name__)


class EpisodeQueue:
    """The latest journal entry of each published episode not yet uploaded everywhere, in the
    order of their latest publishes; read on from where the journal was last read."""

    def __init__(self, config: Config, run_root: Path, ledger: Ledger):
        self.config = config
        self.run_root = run_root
        self.ledger = ledger
        self.entries: dict[str, JournalEntry] = {}
        self._journal_offset = 0

    def refresh(self) -> None:
        """Take in the journal's new lines: a later entry of an episode replaces its earlier one."""
        entries, self._journal_offset = read_journal_entries(self.run_root, self._journal_offset)
        for entry in entries:
            self.entries.pop(entry.episode_id, None)  # re-inserted last: the queue keeps publish order
            self.entries[entry.episode_id] = entry

    def repos_of(self, entry: JournalEntry) -> list[str]:
        return list(dict.fromkeys(repos_for(entry.pipeline, self.config.metadata_repo, self.config.full_repo)))

    def to_upload(self, url: str, report: BatchReport, *, resume_episodes: bool) -> list[Work]:
        """Episodes whose files ``url`` still lacks and whose folder is ready (the others wait in
        ``report``); with ``resume_episodes``, an episode's files the ledger holds in ``url`` are left out."""
        work = []
        for episode_id in list(self.entries):
            entry = self.entries[episode_id]
            if url not in self.repos_of(entry) or self.ledger.holds(url, episode_id, entry.manifest_sha256):
                continue
            episode_dir = entry.episode_dir
            ready, reason = is_ready(episode_dir, entry.manifest_sha256)
            if not ready and is_finished(episode_dir):
                entry = self._settle(entry)
                if url not in self.repos_of(entry) or self.ledger.holds(url, episode_id, entry.manifest_sha256):
                    continue
                ready, reason = is_ready(episode_dir, entry.manifest_sha256)
            try:
                files = self._repo_files(url, entry, read_manifest(episode_dir)) if ready else []
            except OSError as exc:  # deleted or replaced meanwhile
                ready, reason = False, str(exc)
            if not ready:
                report.waiting[episode_id] = reason
                continue
            done = self.ledger.uploaded_paths(url, episode_id, entry.manifest_sha256) if resume_episodes else set()
            work.append(Work(entry, [f for f in files if f.path_in_repo not in done], len(files)))
        return work

    def _settle(self, entry: JournalEntry) -> JournalEntry:
        """The entry for what a finished folder that does not hold the journaled version really holds.

        Under the folder's publish lock (a publisher holds it from its journal line to its move)
        either a newer line has been journaled meanwhile, or the publish of this line was killed
        before its move and the folder holds an earlier published version, which then stands.
        """
        episode_id, episode_dir = entry.episode_id, entry.episode_dir
        with episode_lock(episode_dir):
            self.refresh()
            entry = self.entries[episode_id]
            if not is_finished(episode_dir) or is_ready(episode_dir, entry.manifest_sha256)[0]:
                return entry
            manifest = read_manifest(episode_dir)
            log.warning("episode %s: the publish journaled last never reached %s; taking the version "
                        "it holds", episode_id, episode_dir)
            entry = dataclasses.replace(entry, pipeline=manifest.pipeline,
                                        manifest_sha256=sha256_file(episode_dir / MANIFEST_NAME))
            self.entries[episode_id] = entry
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

    def finish_uploaded(self, report: BatchReport) -> None:
        """Forget episodes uploaded everywhere, deleting their folders when configured to."""
        self.ledger.refresh()
        for episode_id, entry in list(self.entries.items()):
            sha = entry.manifest_sha256
            if not self.ledger.has(episode_id, self.repos_of(entry), sha):
                continue
            if self.config.delete_after_upload and delete_episode(entry.episode_dir, sha):
                report.deleted += 1
            del self.entries[episode_id]
            report.waiting.pop(episode_id, None)

    def still_failed(self, url: str, failures: dict[str, str]) -> dict[str, str]:
        """The failures (episode id -> reason) of episodes still waiting for ``url``."""
        return {e: reason for e, reason in failures.items()
                if e in self.entries and not self.ledger.holds(url, e, self.entries[e].manifest_sha256)}


def published_version(entry: JournalEntry) -> str:
    """Manifest checksum of what the entry's folder holds when finished, else the journaled one
    (see :meth:`EpisodeQueue._settle`)."""
    if is_finished(entry.episode_dir):
        try:
            return sha256_file(entry.episode_dir / MANIFEST_NAME)
        except OSError:
            pass
    return entry.manifest_sha256


def is_ready(episode_dir: Path, manifest_sha256: str) -> tuple[bool, str]:
    """Whether the folder is finished and holds the version ``manifest_sha256``; else why not."""
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


def delete_episode(episode_dir: Path, manifest_sha256: str) -> bool:
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
    ledger = Ledger(run_root)
    queue = EpisodeQueue(config, run_root, ledger)
    queue.refresh()
    latest = queue.entries
    lines = [f"staging {run_root}: {len(latest)} episode(s) published"]
    now = time.time()
    for url in repo_urls(config):
        state = load_state(state_path(run_root, url))
        members = {e: entry for e, entry in latest.items() if url in queue.repos_of(entry)}
        pending = [e for e, entry in members.items() if not ledger.holds(url, e, published_version(entry))]
        waiting = [e for e in pending if not is_ready(members[e].episode_dir, published_version(members[e]))[0]]
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
