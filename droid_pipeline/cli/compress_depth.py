"""``compress_depth_ffv1.py``: convert legacy depth to a verified depth.mkv, or decode one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from droid_pipeline.cli.common import (
    add_config_args,
    config_from_args,
)
from droid_pipeline.core.exit_codes import ExitCode
from droid_pipeline.formats.depth_codec import (
    DepthCodecError,
    convert_to_mkv,
    decode_to_pngs,
)


def main(argv: list[str] | None = None) -> int:
    """Command line of compress_depth_ffv1.py: convert legacy depth to depth.mkv, or decode one."""
    parser = argparse.ArgumentParser(
        prog="compress_depth_ffv1.py",
        description="Convert a folder of 16-bit PNG depth frames, or an .npy/.npz stack, to a "
                    "verified lossless depth.mkv (FFV1, gray16le, mm) plus depth_meta.json; or "
                    "decode a depth.mkv back to 16-bit PNGs. Encoder settings: the ffv1 group "
                    "of the config (e.g. --set ffv1.threads=4).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--input", type=Path, metavar="DIR_OR_FILE",
                      help="folder of 16-bit PNGs (name order), or an .npy/.npz (N,H,W) "
                           "uint16 stack")
    mode.add_argument("--decode", type=Path, metavar="MKV", help="depth.mkv to write back as PNGs")
    parser.add_argument("--output", type=Path, required=True,
                        help="depth.mkv to write (with --input) or empty folder (with --decode)")
    parser.add_argument("--fps", type=float, default=15.0,
                        help="frame rate recorded in the file (default: DROID's 15 Hz "
                             "control rate)")
    parser.add_argument("--key", help="array inside an .npz holding the depth stack")
    parser.add_argument("--meta", type=Path, metavar="JSON",
                        help="metadata path (default: <output stem>_meta.json beside the .mkv)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    settings = config_from_args(args).ffv1
    try:
        if args.input is not None:
            meta = convert_to_mkv(args.input, args.output, args.fps, settings, key=args.key,
                                  meta_path=args.meta)
            print(f"{args.output}: {meta.num_frames} frames {meta.width}x{meta.height}, "
                  f"{args.output.stat().st_size} bytes, verified (sha256 {meta.checksum['value']})")
        else:
            count = decode_to_pngs(args.decode, args.output, meta_path=args.meta)
            print(f"{args.output}: {count} PNG frames")
    except DepthCodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.DONE
