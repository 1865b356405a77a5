"""Upload targets: a Hub dataset repo (``hf://datasets/<user>/<name>``) or a folder (``file://DIR``).

Both offer the operations the uploader needs: make sure the repo exists, commit a set of files
in one step, tell whether a commit whose outcome is unknown (error, timeout, kill) actually
landed, found by the marker its message carries, and fetch one file (the sharded layout's
episode index). A folder target is laid out like the repo; each file is copied to a temporary
name, fsynced and renamed in the order given, so a killed copy never leaves a partial file
under its real name (a commit of the sharded layout lists its index last: a folder whose index
names a shard holds that shard).
"""

from __future__ import annotations

import hashlib
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from droid_pipeline.publish.records import UploadFile
from droid_pipeline.publish.staging import sha256_file

if TYPE_CHECKING:
    from huggingface_hub import HfApi

_HF_URL = re.compile(r"^hf://datasets/(?P<repo_id>[^/\s]+/[^/\s]+)$")
_COPY_CHUNK = 1 << 20


class RepoUrlError(ValueError):
    """A repo URL is neither ``hf://datasets/<user>/<name>`` nor ``file://DIR``."""


class RateLimited(RuntimeError):
    """The Hub answered 429; nothing was committed. ``retry_after_s`` is its Retry-After."""

    def __init__(self, retry_after_s: float, message: str):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HeadMoved(RuntimeError):
    """The repo's head is no longer the commit a change was built on (HTTP 412): another
    uploader committed meanwhile; nothing was committed."""


class RepoTarget(ABC):
    """Where one repo's files go."""

    url: str

    @property
    def slug(self) -> str:
        return repo_slug(self.url)

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the files can be seen: the repo's web address or the folder's absolute path."""

    @abstractmethod
    def ensure_exists(self, private: bool) -> None:
        """Create the repo when it is missing."""

    @abstractmethod
    def commit(self, files: list[UploadFile], message: str, parent: str | None = None) -> str:
        """Add ``files`` in one commit and return its id; with ``parent``, only if the repo's head
        is still that commit (else :class:`HeadMoved`)."""

    def head(self) -> str | None:
        """The repo's current commit, for :meth:`commit`'s ``parent`` (None: the target does not
        version its files and ``parent`` is ignored)."""
        return None

    @abstractmethod
    def find_commit(self, marker: str, files: list[UploadFile]) -> str | None:
        """Id of the commit carrying ``marker`` if it landed (all of ``files`` present), else None."""

    @abstractmethod
    def fetch(self, path_in_repo: str, cache_dir: Path) -> Path | None:
        """A local copy of the file at ``path_in_repo`` (Hub downloads go to ``cache_dir`` and are
        fetched again only when the file changed), or None when the repo has no such file."""


def repo_slug(url: str) -> str:
    """File-system-safe name of a repo URL, for its lock and state files."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")


def open_target(url: str, token: str | None, request_timeout_s: float) -> RepoTarget:
    """The target for a repo URL; Hub requests give up after ``request_timeout_s`` of silence."""
    if url.startswith("file://"):
        return FolderTarget(url)
    match = _HF_URL.match(url)
    if match is None:
        raise RepoUrlError(f"repo {url!r}: expected hf://datasets/<user>/<name> or file://DIR")
    return HubTarget(url, match["repo_id"], token, request_timeout_s)


class HubTarget(RepoTarget):
    """A dataset repo on the Hub at huggingface_hub's endpoint (``HF_ENDPOINT``)."""

    def __init__(self, url: str, repo_id: str, token: str | None, request_timeout_s: float):
        from huggingface_hub import HfApi
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # batch logs, not terminals
        self.url = url
        self.repo_id = repo_id
        self.request_timeout_s = request_timeout_s
        self._api = HfApi(token=token)

    @property
    def location(self) -> str:
        return f"{self._api.endpoint}/datasets/{self.repo_id}"

    def _client(self) -> HfApi:
        """The API client, its shared HTTP session bounded by the timeout (the default waits forever)."""
        from huggingface_hub import get_session

        get_session().timeout = self.request_timeout_s
        return self._api

    def ensure_exists(self, private: bool) -> None:
        self._client().create_repo(self.repo_id, repo_type="dataset", private=private, exist_ok=True)

    def commit(self, files: list[UploadFile], message: str, parent: str | None = None) -> str:
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local_path))
                      for f in files]
        try:
            info = self._client().create_commit(self.repo_id, operations, commit_message=message,
                                                repo_type="dataset", parent_commit=parent)
        except HfHubHTTPError as exc:
            response = getattr(exc, "response", None)
            if response is not None and response.status_code == 429:
                raise RateLimited(_retry_after(response.headers.get("Retry-After")), str(exc)) from exc
            if response is not None and response.status_code == 412:
                raise HeadMoved(f"{self.url}: the repo moved past {parent}: {exc}") from exc
            raise
        return info.oid

    def head(self) -> str | None:
        return self._client().repo_info(self.repo_id, repo_type="dataset").sha

    def find_commit(self, marker: str, files: list[UploadFile]) -> str | None:
        for commit in self._client().list_repo_commits(self.repo_id, repo_type="dataset"):
            if marker in commit.title or marker in (commit.message or ""):
                return commit.commit_id
        return None

    def fetch(self, path_in_repo: str, cache_dir: Path) -> Path | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        self._client()
        try:
            return Path(hf_hub_download(self.repo_id, path_in_repo, repo_type="dataset", token=self._api.token,
                                        cache_dir=cache_dir))
        except RemoteEntryNotFoundError:  # not LocalEntryNotFoundError: no answer is no proof of absence
            return None


class FolderTarget(RepoTarget):
    """A local folder laid out like the repo; the commit id is the commit's marker."""

    def __init__(self, url: str):
        self.url = url
        folder = url[len("file://"):]
        if not folder:
            raise RepoUrlError(f"repo {url!r}: file:// needs a folder")
        self.root = Path(folder).expanduser().absolute()  # a relative folder: from the working directory

    @property
    def location(self) -> str:
        return str(self.root)

    def ensure_exists(self, private: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def commit(self, files: list[UploadFile], message: str, parent: str | None = None) -> str:
        for item in files:
            _copy_verified(item, self.root / item.path_in_repo)
        return _marker_of(message)

    def find_commit(self, marker: str, files: list[UploadFile]) -> str | None:
        for item in files:
            dest = self.root / item.path_in_repo
            if not dest.is_file() or dest.stat().st_size != item.size or sha256_file(dest) != item.sha256:
                return None
        return marker

    def fetch(self, path_in_repo: str, cache_dir: Path) -> Path | None:
        path = self.root / path_in_repo
        return path if path.is_file() else None


def commit_message(marker: str, episodes: int, files: int) -> str:
    return f"Add {episodes} episode(s), {files} file(s) [upload {marker}]"


def shard_commit_message(marker: str, shard: str, episodes: int) -> str:
    return f"Add {shard} ({episodes} episode(s)), the episode index and the dataset card [upload {marker}]"


def _marker_of(message: str) -> str:
    match = re.search(r"\[upload ([^\]]+)\]", message)
    if match is None:
        raise ValueError(f"commit message without a marker: {message!r}")
    return match[1]


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 60.0
    except ValueError:
        return 60.0


def _copy_verified(item: UploadFile, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.upload-tmp"
    digest = hashlib.sha256()
    with open(item.local_path, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != item.sha256:
        tmp.unlink()
        raise OSError(f"{item.local_path} changed while it was copied (sha256 differs)")
    os.replace(tmp, dest)
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
