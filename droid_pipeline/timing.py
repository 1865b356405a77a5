"""``python -m droid_pipeline.timing``: review a run's timing.csv.

Kept under this name for the documented command; the code is :mod:`droid_pipeline.cli.timing`.
"""

from droid_pipeline.cli.timing import main

if __name__ == "__main__":
    import sys

    sys.exit(main())
