"""``render_tracks.py``: draw an episode's tracks onto its camera videos."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from droid_pipeline.cli.common import add_config_args, config_from_args
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.formats.depth_codec import DepthCodecError
from droid_pipeline.outputs.loader import LoadError, read_episode_dir
from droid_pipeline.outputs.overlay import (
    DEFAULT_SHEET_FRAMES,
    DEFAULT_TRAIL,
    MODES,
    STEP,
    RenderError,
    render_episode,
)
from droid_pipeline.raw.discovery import DiscoveryError, build_index
from droid_pipeline.raw.video import VideoError
from droid_pipeline.robot.kinematics import GripperMount


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of render_tracks.py."""
    parser = argparse.ArgumentParser(
        prog="render_tracks.py",
        description="Draw one episode's 2D tracks, contact frames, normalized tracks, depth or gripper model "
                    "onto its camera videos: an MP4 per camera and a PNG contact sheet (frame i = step i).")
    add_config_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--episode_id", "--episode-id", metavar="ID",
                        help="episode id: outputs from output_root, MP4s from droid_root (config)")
    source.add_argument("--episode-dir", "--episode_dir", type=Path, metavar="DIR",
                        help="an episode output folder (MP4s from --droid-root or the config's droid_root)")
    parser.add_argument("--droid-root", "--droid_root", type=Path, metavar="DIR",
                        help="raw DROID root holding the episode's MP4s (with --episode-dir)")
    parser.add_argument("--camera", action="append", metavar="SERIAL|ROLE|all",
                        help="camera to render: serial, role (wrist, ext1, ext2) or all (repeatable; default all)")
    parser.add_argument("--out", type=Path, default=Path("renders"), metavar="DIR",
                        help="where to write the videos and the contact sheet (default: ./renders)")
    parser.add_argument("--trail", type=int, default=DEFAULT_TRAIL, metavar="K",
                        help=f"trail length in steps for tracks and normalized (default {DEFAULT_TRAIL})")
    parser.add_argument("--what", choices=MODES, default="tracks",
                        help="tracks: 2D tracks, points the occlusion labels hide (occlusion_<serial> 1 robot, "
                             "2 scene) as hollow rings, visible (0) and unknown (3: no depth to decide, as in "
                             "metadata-only episodes) as filled dots; frames: contact frame "
                             "axes; normalized: nearest normalized tracks; depth: tracks beside the colour-mapped "
                             "depth; model: the gripper model's "
                             "pad outlines on the config's gripper mount (gripper.mount_xyz_m, gripper.mount_rpy), "
                             "on the wrist camera unless --camera says otherwise (default tracks)")
    parser.add_argument("--sheet-frames", type=int, default=DEFAULT_SHEET_FRAMES, metavar="N",
                        help=f"steps shown in the contact sheet (default {DEFAULT_SHEET_FRAMES})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    label = args.episode_id or str(args.episode_dir)
    try:
        if args.episode_id:
            episode = build_index(config.droid_root, config.index_path).get(args.episode_id)
            data = read_episode_dir(config.output_root / episode.relative_path)
            mp4_dir = episode.path(config.droid_root) / "recordings" / "MP4"
        else:
            data = read_episode_dir(args.episode_dir)
            mp4_dir = Path(args.droid_root or config.droid_root) / data.relative_path / "recordings" / "MP4"
        label = data.episode_id
        cameras = [c for item in args.camera or [] for c in item.split(",") if c]
        if "all" in cameras:
            cameras = list(data.cameras)
        result = render_episode(data, mp4_dir, args.out, cameras=cameras or None,
                                what=args.what, trail=args.trail, sheet_frames=args.sheet_frames,
                                progress=not args.no_progress,
                                mount=GripperMount.of(config.gripper.mount_xyz_m, config.gripper.mount_rpy))
    except (DiscoveryError, LoadError, RenderError, VideoError, DepthCodecError) as exc:
        raise EpisodeError(label, STEP, str(exc)) from exc
    for message in result.messages:
        print(f"warning: {message}", file=sys.stderr)
    for serial, path in result.videos.items():
        print(f"{serial}: {path}")
    print(f"contact sheet: {result.contact_sheet}")
    return ExitCode.DONE
