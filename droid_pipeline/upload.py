"""``python -m droid_pipeline.upload``: timed batch uploads of published episodes, with a ledger.

What the drivers run (also ``upload_batches.py`` in a checkout, ``droid-upload`` when installed);
the code is :mod:`droid_pipeline.cli.upload`.
"""

from droid_pipeline.cli.upload import main

if __name__ == "__main__":
    from droid_pipeline.cli.common import run_main

    run_main(main)
