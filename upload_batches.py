#!/usr/bin/env python3
"""Upload published episodes to the metadata and full repos in timed batches, with a ledger.

Usage: upload_batches.py --once | --daemon | --dry-run | status [--config FILE] [--set KEY=VALUE];
exit codes and options: --help. See docs/upload.md.
"""

from droid_pipeline.cli.common import run_main
from droid_pipeline.cli.upload import main

if __name__ == "__main__":
    run_main(main)
