"""The repo layouts (``hub_layout``), one class each, as :mod:`~droid_pipeline.publish.targets`
has one per target kind: each plans a batch's commits, prepares each commit and finishes it.

- :class:`FilesLayout`: one folder per episode; commits of at most ``max_files_per_commit`` files,
  an episode split only when it alone is larger (its files already in the repo are not sent again);
  each file's checksum is checked against the manifest just before its commit.
- :class:`ShardsLayout` (:mod:`droid_pipeline.publish.shards`): one commit per tar shard of whole
  episodes (``shard_max_episodes``, ``shard_max_bytes``), built and verified in
  ``<run_root>/upload_shards/<repo>/`` with the rewritten episode index and dataset card. It keeps
  one :class:`RepoIndex` per repo: the index, next shard number and shard member types as of the
  repo's head, and those staged for the commit in flight, adopted once that commit lands.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from droid_pipeline.core.atomic import sha256_file
from droid_pipeline.core.config import Config
from droid_pipeline.publish import index as episode_index
from droid_pipeline.publish.card import render_card
from droid_pipeline.publish.records import PendingCommit, PendingEpisode, RepoState, UploadFile, Work
from droid_pipeline.publish.repos import UploadError, repo_kind, repo_layout, repo_name
from droid_pipeline.publish.shards import (
    CARD_NAME,
    HUB_MAX_FILE_BYTES,
    STUB_PATH,
    ShardEpisode,
    ShardError,
    ShardMember,
    SourceFile,
    episode_types,
    index_path,
    member_bytes,
    merge_types,
    plan_shards,
    shard_path,
    stub_members,
    verify_shard,
    write_shard,
)
from droid_pipeline.publish.staging import Manifest, read_manifest
from droid_pipeline.publish.targets import RepoTarget, commit_message, shard_commit_message

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# Shards, index and card of the commits being made, per repo, under the run root.
SHARD_BUILD_DIR = "upload_shards"
# Hub downloads of the repos' episode indexes, under the run root.
HUB_CACHE_DIR = "upload_state/hub_cache"
SHARD_COMMIT_FILES = 3  # the shard, the card, the index


@dataclass(frozen=True)
class PreparedCommit:
    """A commit ready to be made but for its marker: the episodes of the chunk that go in, their
    part of it and, in the shards layout, the files built for it and the shard's number."""

    chunk: list[Work]
    episodes: tuple[PendingEpisode, ...]
    uploads: tuple[UploadFile, ...] = ()
    shard: int | None = None

    def pending(self, marker: str) -> PendingCommit:
        return PendingCommit(marker, self.episodes, self.uploads, self.shard)


class Layout(ABC):
    """How one repo's episodes become commits."""

    # Whether an episode's files the ledger already holds in the repo stay out of its next commit.
    resume_episodes: bool

    def __init__(self, config: Config, target: RepoTarget, run_root: Path):
        self.config = config
        self.target = target
        self.run_root = run_root

    @abstractmethod
    def plan(self, work: list[Work]) -> list[list[Work]]:
        """The commits that upload ``work``, in order."""

    @abstractmethod
    def prepare(self, chunk: list[Work], state: RepoState) -> PreparedCommit | None:
        """The commit of ``chunk``, or None when no episode of it can go in (each failure recorded
        in ``state`` with its reason)."""

    @abstractmethod
    def message(self, pending: PendingCommit) -> str:
        """The commit's message, carrying its marker."""

    def parent(self) -> str | None:
        """The repo head the prepared commit must land on (None: wherever the head is)."""
        return None

    def landed(self, pending: PendingCommit, commit_id: str) -> None:
        """The commit is in the repo (this run's, or one an earlier run left in flight)."""
        self.discard(pending)

    def discard(self, pending: PendingCommit) -> None:
        """Remove the files built for a commit: they are in the repo, or will be built again."""
        for upload in pending.uploads:
            upload.local_path.unlink(missing_ok=True)

    @abstractmethod
    def forget(self) -> None:
        """Read what the repo holds again before the next commit (another uploader may have committed)."""


class FilesLayout(Layout):
    """One folder per episode, its files committed as they are."""

    resume_episodes = True

    def plan(self, work: list[Work]) -> list[list[Work]]:
        return pack(work, self.config.max_files_per_commit)

    def prepare(self, chunk: list[Work], state: RepoState) -> PreparedCommit | None:
        good = []
        for work in chunk:
            bad = [f.local_path.name for f in work.files if not _intact(f)]
            if bad:
                _fail(state, work.episode_id, f"checksum or file differs from the manifest: {', '.join(bad)}")
            else:
                good.append(work)
        if not good:
            return None
        return PreparedCommit(good, tuple(work.as_pending_episode() for work in good))

    def message(self, pending: PendingCommit) -> str:
        return commit_message(pending.marker, len(pending.episodes), len(pending.files))

    def forget(self) -> None:
        """Nothing to read again: a files commit depends on nothing the repo holds."""


@dataclass(frozen=True)
class RepoIndex:
    """A sharded repo's episode index, next free shard number and shard member types (None: unknown,
    the index has rows published before they were kept) as of its commit ``head``, and those staged
    for the commit in flight. A shard commit lands only on ``head``, so two uploaders
    (two run roots) never write the same shard number or lose each other's rows."""

    table: pa.Table
    next_shard: int
    head: str | None  # None: the target does not version its files
    types: pa.Schema | None
    staged: tuple[pa.Table, int, pa.Schema | None] | None = None


class ShardsLayout(Layout):
    """Tar shards of whole episodes, one per commit, with the episode index and the dataset card."""

    resume_episodes = False

    def __init__(self, config: Config, target: RepoTarget, run_root: Path):
        if config.max_files_per_commit < SHARD_COMMIT_FILES:
            raise UploadError(f"hub_layout shards commits {SHARD_COMMIT_FILES} files at once (shard, card, index): "
                              f"max_files_per_commit must be at least {SHARD_COMMIT_FILES}")
        super().__init__(config, target, run_root)
        self.kind = repo_kind(config, target.url)
        self.folder = run_root / SHARD_BUILD_DIR / target.slug
        self.index: RepoIndex | None = None  # None: read from the repo before the next shard

    def plan(self, work: list[Work]) -> list[list[Work]]:
        limit = self.config.shard_max_bytes.for_kind(self.kind)
        groups = plan_shards([member_bytes([f.size for f in w.files]) for w in work],
                             self.config.shard_max_episodes, limit)
        return [[work[i] for i in group] for group in groups]

    def parent(self) -> str | None:
        return None if self.index is None else self.index.head

    def forget(self) -> None:
        self.index = None

    def landed(self, pending: PendingCommit, commit_id: str) -> None:
        if pending.shard is None:
            return  # a files-layout commit an earlier run left in flight
        index = self.index
        if index is not None and index.staged is not None and index.staged[1] == pending.shard + 1:
            table, next_shard, types = index.staged
            self.index = RepoIndex(table, next_shard, None if index.head is None else commit_id, types)
        else:  # settled from an earlier run: read the index the repo now holds
            self.index = None
        self.discard(pending)

    def message(self, pending: PendingCommit) -> str:
        assert pending.shard is not None
        return shard_commit_message(pending.marker, shard_path(self.kind, pending.shard), len(pending.episodes))

    def _repo_index(self) -> RepoIndex:
        """The repo's index as last committed (read from the repo when forgotten)."""
        if self.index is None:
            import pyarrow as pa

            head = self.target.head()  # before the index: a commit between moves the head on
            local = self.target.fetch(index_path(self.kind), self.run_root / HUB_CACHE_DIR)
            table, next_shard, types = episode_index.read_index(local) if local is not None else \
                (episode_index.empty_table(), 0, None)
            if types is None and table.num_rows == 0:
                types = pa.schema([])  # nothing published yet: every type is known
            self.index = RepoIndex(table, next_shard, head, types)
        return self.index

    def prepare(self, chunk: list[Work], state: RepoState) -> PreparedCommit | None:
        """Write and verify the shard of ``chunk``, the index and the card that go with it."""
        repo_index = self._repo_index()
        number = repo_index.next_shard
        path = shard_path(self.kind, number)
        episodes = {}
        for work in chunk:
            try:
                episodes[work.episode_id] = (work, *_shard_episode(work, self.kind))
            except (ShardError, episode_index.EpisodeIndexError, OSError, ValueError) as exc:
                _fail(state, work.episode_id, f"cannot go into a shard: {exc}")
        while episodes:
            local = self.folder / f"{number:06d}.tar"
            shard_episodes = [shard_episode for _, shard_episode, _ in episodes.values()]
            cause = "checksum or file differs from the manifest"
            try:
                members = write_shard(local, shard_episodes)
                cause = "cannot go into a shard"  # typed once their checksums are checked
                types = _merged_types(repo_index.types, shard_episodes)
            except ShardError as exc:
                if exc.episode_id not in episodes:
                    raise
                _fail(state, exc.episode_id, f"{cause}: {exc}")
                del episodes[exc.episode_id]
                continue
            problems = verify_shard(local, members)
            if problems:
                for episode_id in episodes:
                    _fail(state, episode_id, f"shard {path} did not verify: {'; '.join(problems[:3])}")
                local.unlink(missing_ok=True)
                return None
            break
        else:
            return None
        if local.stat().st_size >= HUB_MAX_FILE_BYTES:
            for episode_id in episodes:
                _fail(state, episode_id, f"shard {path} would be {local.stat().st_size} bytes, over the Hub's "
                                         f"{HUB_MAX_FILE_BYTES}")
            local.unlink(missing_ok=True)
            return None
        rows = [episode_index.index_row(
            episode_id=work.episode_id, relative_path=work.entry.relative_path, pipeline=work.entry.pipeline,
            schema_version=manifest.schema_version, manifest_sha256=work.entry.manifest_sha256,
            published=manifest.created, info=info, shard=path, members=members[work.episode_id])
            for work, _, (manifest, info) in episodes.values()]
        new_table = episode_index.merge(repo_index.table, rows)
        index_file = self.folder / f"{number:06d}.index.parquet"
        episode_index.write_index(index_file, new_table, next_shard=number + 1, kind=self.kind, types=types)
        card_file = self.folder / f"{number:06d}.{CARD_NAME}"
        card_file.write_text(render_card(self.kind, repo_name(self.target.url), new_table, shards=number + 1))
        self.index = dataclasses.replace(repo_index, staged=(new_table, number + 1, types))
        uploads = tuple(UploadFile(in_repo, file, file.stat().st_size, sha256_file(file))
                        for in_repo, file in ((path, local), (CARD_NAME, card_file),
                                              (index_path(self.kind), index_file)))
        pending_episodes = tuple(
            PendingEpisode(episode_id=work.episode_id, relative_path=work.entry.relative_path,
                           manifest_sha256=work.entry.manifest_sha256, episode_files=len(files), files=files)
            for work, files in ((work, _episode_uploads(path, work, members[work.episode_id]))
                                for work, _, _ in episodes.values()))
        return PreparedCommit([work for work, _, _ in episodes.values()], pending_episodes, uploads, shard=number)


def open_layout(config: Config, target: RepoTarget, run_root: Path) -> Layout:
    """The layout of the target's repo (``hub_layout``)."""
    layout = FilesLayout if repo_layout(config, target.url) == "files" else ShardsLayout
    return layout(config, target, run_root)


def pack(work: list[Work], max_files: int) -> list[list[Work]]:
    """Group episodes into commits of at most ``max_files`` files; split only oversized episodes."""
    chunks: list[list[Work]] = []
    current: list[Work] = []
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


def _merged_types(known: pa.Schema | None, episodes: list[ShardEpisode]) -> pa.Schema | None:
    """``known`` merged with the member types of ``episodes`` (None stays None: unknown)."""
    for episode in episodes:
        if known is not None:
            known = merge_types(known, episode_types(episode), episode.episode_id)
    return known


def _shard_episode(work: Work, kind: str) -> tuple[ShardEpisode, tuple[Manifest, episode_index.EpisodeInfo]]:
    """The episode as it goes into a shard of a repo of ``kind`` (with the stubs that give it every
    member), with its manifest and what the index says of it."""
    entry = work.entry
    manifest = read_manifest(entry.episode_dir)
    quality = json.loads((entry.episode_dir / "quality.json").read_text())
    info = episode_index.episode_info(quality, entry.episode_id)
    prefix = f"{entry.relative_path}/"
    files = tuple(SourceFile(f.path_in_repo.removeprefix(prefix), f.local_path, f.size, f.sha256)
                  for f in work.files)
    stubs = stub_members(kind, info.roles, [f.path for f in files])
    return ShardEpisode(entry.episode_id, info.roles, files, int(manifest.created), stubs), (manifest, info)


def _episode_uploads(shard: str, work: Work, members: list[ShardMember]) -> tuple[UploadFile, ...]:
    """The episode's files as members of ``shard`` (its stubs are no files of the episode)."""
    return tuple(UploadFile(f"{shard}/{m.name}", work.entry.episode_dir / m.path, m.size, m.sha256)
                 for m in members if m.path != STUB_PATH)


def _intact(item: UploadFile) -> bool:
    try:
        return sha256_file(item.local_path) == item.sha256
    except OSError:
        return False


def _fail(state: RepoState, episode_id: str, reason: str) -> None:
    state.failures[episode_id] = reason
    log.error("episode %s: %s", episode_id, reason)
