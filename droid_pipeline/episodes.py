"""``python -m droid_pipeline.episodes``: scan droid_root, refresh the episode index, print the selection.

Kept under this name for the documented command; the code is :mod:`droid_pipeline.cli.episodes`.
"""

from droid_pipeline.cli.episodes import main

if __name__ == "__main__":
    from droid_pipeline.cli.common import run_main

    run_main(main)
