"""``python -m droid_pipeline.verify``: check converted episodes against the output contract.

Kept under this name for the documented command; the code is :mod:`droid_pipeline.cli.verify`.
"""

from droid_pipeline.cli.verify import main

if __name__ == "__main__":
    from droid_pipeline.cli.common import run_main

    run_main(main)
