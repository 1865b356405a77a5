"""The configured repos and the Hub token: which repos, the layout and kind of each, where its
state file lives, and the token kept out of logs and state files."""

from __future__ import annotations

import logging
from pathlib import Path

from droid_pipeline.core.config import Config
from droid_pipeline.publish.targets import repo_slug

STATE_DIR = "upload_state"


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


def repo_name(url: str) -> str:
    """``user/name`` of a Hub URL for the card's examples (a folder stands for a repo yet unnamed)."""
    return url.removeprefix("hf://datasets/") if url.startswith("hf://") else "<user>/<name>"


def state_path(run_root: Path, url: str) -> Path:
    """The repo's :class:`~droid_pipeline.publish.records.RepoState` file under the run root."""
    return run_root / STATE_DIR / f"{repo_slug(url)}.json"


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
