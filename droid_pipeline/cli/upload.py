"""``upload_batches.py``: timed batch uploads of published episodes to the Hub repos, with a ledger."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from droid_pipeline.cli.common import add_config_args, config_from_args
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.publish.episode_queue import status_report
from droid_pipeline.publish.repos import Redactor, UploadError, repo_urls, resolve_token
from droid_pipeline.publish.targets import RepoUrlError
from droid_pipeline.publish.uploader import Uploader

USAGE = """\
Upload published episodes to the metadata and full repos in timed batches, with a ledger.

  upload_batches.py --once      one batch now (the drivers' final flush)
  upload_batches.py --daemon    a batch every upload_interval_s until SIGTERM/SIGINT
  upload_batches.py --dry-run   print the commits a batch would make; touches nothing
  upload_batches.py status      published, uploaded, pending and failed episodes per repo

Exit codes of --once: 0 all uploaded, 1 episodes failed or a repo error, 2 usage/config/token error,
3 work carried over to a later batch (rate limit, commit budget, files not ready).
See docs/upload.md.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upload_batches.py", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=["upload", "status"], default="upload")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one batch now")
    mode.add_argument("--daemon", action="store_true", help="run a batch every upload_interval_s")
    mode.add_argument("--dry-run", action="store_true", help="print what a batch would commit")
    parser.add_argument("--run-root", type=Path, help="staging area (default: run_root of the config)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    run_root = args.run_root or config.run_root
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "status":
            print(status_report(config, run_root))
            return ExitCode.DONE
        if not (args.once or args.daemon or args.dry_run):
            parser.error("choose --once, --daemon or --dry-run (or the status command)")
        urls = repo_urls(config)
        token = None if args.dry_run else resolve_token(urls)
        redactor = Redactor(token)
        for handler in logging.getLogger().handlers:
            handler.addFilter(redactor)
        uploader = Uploader(config, run_root, token=token)
    except (UploadError, RepoUrlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    if args.dry_run:
        for url, commits in uploader.plan().items():
            print(f"{url}: {len(commits)} commit(s), {sum(len(c) for c in commits)} episode(s)")
            for number, episodes in enumerate(commits, 1):
                print(f"  commit {number}: {', '.join(episodes)}")
        return ExitCode.DONE
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: uploader.stop())
    report = uploader.run_daemon() if args.daemon else uploader.run_batch()
    print(redactor.redact(report.summary()))
    for url, error in report.errors.items():
        print(redactor.redact(f"error {url}: {error}"))
    for url, failures in report.failed.items():
        for episode_id, reason in sorted(failures.items()):
            print(redactor.redact(f"failed {url} {episode_id}: {reason}"))
    for target in uploader.targets.values():
        print(f"repo {target.url}: {target.location}")
    return ExitCode.DONE if args.daemon else report.exit_code

