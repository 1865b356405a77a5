"""``python -m droid_pipeline.demo``: generate synthetic DROID episodes with ground truth.

Kept under this name for the documented command; the code is :mod:`droid_pipeline.cli.demo`.
"""

from droid_pipeline.cli.demo import main

if __name__ == "__main__":
    import sys

    sys.exit(main())
