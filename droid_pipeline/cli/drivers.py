"""Console scripts of an installed package (``[project.scripts]``), so no checkout is needed.

``droid-run-metadata`` and ``droid-run-full`` exec the packaged bash driver with this interpreter
as ``DROID_PYTHON``; the step and tool commands run the same mains as the top-level scripts and
``python -m droid_pipeline.X``, through :func:`~droid_pipeline.cli.common.run_main` (one clear line
and exit 2 for bad config, 1 for a failed episode, 130 when interrupted). Each imports only its
own command's module.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from typing import NoReturn

from droid_pipeline.execution import DRIVER


def _exec_driver(pipeline: str) -> NoReturn:
    os.execvpe("bash", ["bash", str(DRIVER), pipeline, *sys.argv[1:]],
               {**os.environ, "DROID_PYTHON": sys.executable})


def run_command(command: str) -> NoReturn:
    """Run ``droid_pipeline.cli.<command>``'s main as this process's whole life, then exit.

    Imports build only objects that live as long as the process, so the cyclic garbage collector
    is off while they load, and ``gc.freeze`` then leaves them out of every later collection:
    a step command spends 2 ms in collections instead of 13.
    """
    gc.disable()
    try:
        main = importlib.import_module(f"droid_pipeline.cli.{command}").main
        from droid_pipeline.cli.common import run_main  # config and discovery: the drivers' exec needs neither
    finally:
        gc.freeze()
        gc.enable()
    run_main(main)


def run_metadata() -> None:
    """``droid-run-metadata``: intrinsics -> tracks over many episodes (``run_pipeline_metadata_only.sh``)."""
    _exec_driver("metadata")


def run_full() -> None:
    """``droid-run-full``: intrinsics -> depth + FFV1 -> tracks (``run_pipeline_compressed_depth.sh``)."""
    _exec_driver("full")


def intrinsics() -> None:
    """``droid-intrinsics``: ``extract_intrinsics_only.py``."""
    run_command("intrinsics")


def depth() -> None:
    """``droid-depth``: ``extract_rgb_depth.py``."""
    run_command("depth")


def tracks() -> None:
    """``droid-tracks``: ``generate_tracks_and_metadata.py``."""
    run_command("tracks")


def compress_depth() -> None:
    """``droid-compress-depth``: ``compress_depth_ffv1.py``."""
    run_command("compress_depth")


def upload() -> None:
    """``droid-upload``: ``upload_batches.py``, ``python -m droid_pipeline.upload``."""
    run_command("upload")


def render() -> None:
    """``droid-render``: ``render_tracks.py``."""
    run_command("render")


def episodes() -> None:
    """``droid-episodes``: ``python -m droid_pipeline.episodes``."""
    run_command("episodes")


def verify() -> None:
    """``droid-verify``: ``python -m droid_pipeline.verify``."""
    run_command("verify")


def timing() -> None:
    """``droid-timing``: ``python -m droid_pipeline.timing``."""
    run_command("timing")


def demo() -> None:
    """``droid-demo``: ``python -m droid_pipeline.demo``."""
    run_command("demo")
