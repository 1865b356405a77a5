#!/usr/bin/env python3
"""Upload published episodes to the metadata and full repos in timed batches, with a ledger.

Usage: upload_batches.py --once | --daemon | --dry-run | status [--config FILE] [--set KEY=VALUE];
exit codes and options: --help. See docs/upload.md.
"""

from droid_pipeline.cli.drivers import run_command

if __name__ == "__main__":
    run_command("upload")
