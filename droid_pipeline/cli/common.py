"""Shared command-line plumbing: --config/--set/--episode_id and clean error exits."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from droid_pipeline.core.config import Config, ConfigError, load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.raw.discovery import DiscoveryError, Episode, build_index


def add_config_args(parser: argparse.ArgumentParser, *, episode: bool = False) -> None:
    """Add ``--config`` and ``--set`` (and ``--episode_id`` for per-episode entry points)."""
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file overriding configs/default.yaml (repeatable, later wins)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one key, e.g. --set num_track_points=240 (repeatable)")
    if episode:
        parser.add_argument("--episode_id", "--episode-id", required=True, metavar="ID",
                            help="DROID episode id, e.g. AUTOLab+84bd5053+2023-08-18-12h-01m-10s")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def add_step_args(parser: argparse.ArgumentParser, *, cameras: bool = False) -> None:
    """``--output-dir`` (and ``--cameras``) shared by the per-episode step entry points."""
    if cameras:
        parser.add_argument("--cameras", nargs="+", metavar="CAMERA",
                            help="serials or roles (wrist ext1 ext2; commas also separate); default: all")
    parser.add_argument("--output-dir", "--output_dir", type=Path, metavar="DIR",
                        help="episode output folder, also read by later steps "
                             "(default: output_root/<episode's relative path>)")


@dataclass(frozen=True)
class StepRequest:
    """What a per-episode step entry point was asked to do."""

    config: Config
    episode: Episode
    output_dir: Path
    cameras: list[str] | None


def step_request(args: argparse.Namespace, step: str) -> StepRequest:
    """Load the config, find the episode (an unknown id fails as this step) and the output folder."""
    config = config_from_args(args)
    try:
        episode = build_index(config.droid_root, config.index_path).get(args.episode_id)
    except DiscoveryError as exc:
        raise EpisodeError(args.episode_id, step, str(exc)) from exc
    names = getattr(args, "cameras", None)
    cameras = [c for item in names for c in item.split(",") if c] if names else None
    output_dir = args.output_dir or config.output_root / episode.relative_path
    return StepRequest(config, episode, output_dir, cameras)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run an entry point: bad config exits 2, a failed episode exits 1, each with one clear line."""
    logging.basicConfig(level=logging.DEBUG if "-v" in sys.argv or "--verbose" in sys.argv
                        else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code = main()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    except EpisodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.FAILED)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(ExitCode.INTERRUPTED)
    sys.exit(code or ExitCode.DONE)
