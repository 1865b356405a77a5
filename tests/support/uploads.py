"""Running the real uploader in tests: its config, environment and command, its ledger, polling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_TestTokenNeverLogged0123456789"


def write_config(root: Path, **keys: object) -> Path:
    """The uploader's config for these tests: the per-episode files layout unless ``hub_layout`` says
    otherwise (hf:// repos default to shards, tested in test_upload_shards.py)."""
    data = {"run_root": str(root / "run"), "output_root": str(root / "output"), "upload_interval_s": 0.2,
            "private": True, "hub_layout": "files", **keys}
    path = root / "upload.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def uploader_env(hub_endpoint: str | None, root: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(root / "hf_home"), "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"})
    if hub_endpoint:
        env["HF_ENDPOINT"] = hub_endpoint
    if token:
        env["HF_TOKEN"] = token
    return env


def uploader_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "upload_batches.py"), "--config", str(config), *args]


def run_uploader(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(uploader_cmd(config, *args), env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


def ledger_lines(root: Path) -> list[dict]:
    path = root / "run" / "upload_ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def wait_for(predicate: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Poll until ``predicate`` holds; the limit only guards against a hang."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def repo_id(url: str) -> str:
    return url.removeprefix("hf://datasets/")
