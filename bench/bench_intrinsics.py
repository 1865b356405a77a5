"""Per-camera time of the CPU intrinsics sources (published json, trajectory.h5, ZED .conf).

Builds one synthetic episode (three 1280x720 MP4s, trajectory.h5 with camera_intrinsics, a ZED
calibration file per camera) and a published intrinsics file the size of DROID's (~92k episodes),
then times extract_intrinsics per camera and source (video probe and atomic json write included),
the one-off parse and index of the published file, one lookup through the index, and a whole
extract_intrinsics_only.py process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from droid_pipeline.core.atomic import write_json_atomic  # noqa: E402
from droid_pipeline.core.config import load_config  # noqa: E402
from droid_pipeline.formats.calibration_files import INDEX_DIR_NAME, check_file, lookup  # noqa: E402
from droid_pipeline.raw.discovery import build_index  # noqa: E402
from droid_pipeline.raw.video import probe  # noqa: E402
from droid_pipeline.raw.zed_conf import (  # noqa: E402
    CameraCalibration,
    StereoExtras,
    ZedConf,
    format_conf,
    parse_conf,
    rectify,
)
from droid_pipeline.steps import intrinsics  # noqa: E402

EPISODE_ID = "BENCHLab+0badc0de+2023-07-07-09h-42m-23s"
SERIALS = {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
PUBLISHED_EPISODES = 92_000
REPEATS = 30


def build(root: Path) -> tuple[Path, Path, Path]:
    """Episode folder, published intrinsics file and ZED calibration folder under ``root``."""
    rng = np.random.default_rng(0)
    folder = root / "droid" / "BENCHLab" / "success" / "2023-07-07" / "Fri_Jul__7_09:42:23_2023"
    (folder / "recordings" / "MP4").mkdir(parents=True)
    (folder / f"metadata_{EPISODE_ID}.json").write_text(
        json.dumps({"uuid": EPISODE_ID, **{f"{r}_cam_serial": s for r, s in SERIALS.items()}}))
    K = np.array([[522.0, 0.0, 640.5], [0.0, 522.0, 360.5], [0.0, 0.0, 1.0]])
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        for serial in SERIALS.values():
            h5[f"observation/camera_intrinsics/{serial}_left"] = np.repeat(K[None], 300, axis=0)
    for serial in SERIALS.values():
        with av.open(str(folder / "recordings" / "MP4" / f"{serial}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            for _ in range(30):
                frame = av.VideoFrame.from_ndarray(np.zeros((720, 1280, 3), np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    table = {f"LAB{i % 50}+{i:08x}+2023-01-01-00h-00m-00s": {s: [522.0, 640.5, 522.0, 360.5] for s in SERIALS.values()}
             for i in range(PUBLISHED_EPISODES - 1)}
    table[EPISODE_ID] = {s: [522.0, 640.5, 522.0, 360.5] for s in SERIALS.values()}
    published = root / "intrinsics.json"
    published.write_text(json.dumps(table))
    calibration = root / "zed"
    calibration.mkdir()
    for serial in SERIALS.values():
        def lens() -> CameraCalibration:
            return CameraCalibration(rng.uniform(690, 710), rng.uniform(690, 710), rng.uniform(630, 650),
                                     rng.uniform(350, 370), -0.05, 0.02, 1e-4, -2e-4, -0.01)
        extras = {"HD": StereoExtras(0.2, -0.3, 0.004, 0.001, 0.0)}
        conf = ZedConf(serial, {"HD": lens()}, {"HD": lens()}, 120.0, extras)
        (calibration / f"SN{serial}.conf").write_text(format_conf(conf))
    return folder, published, calibration


def median_ms(function, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, published, calibration = build(root)
        config = load_config([], [f"droid_root={root / 'droid'}", f"output_root={root / 'out'}",
                                  f"episode_index_path={root / 'index.json'}", f"intrinsics_path={published}",
                                  f"zed_calibration_dir={calibration}"])
        episode = build_index(config.droid_root, config.index_path).get(EPISODE_ID)
        mp4 = folder / "recordings" / "MP4" / f"{SERIALS['ext1']}.mp4"
        conf_path = calibration / f"SN{SERIALS['ext1']}.conf"

        full_parse_ms = median_ms(lambda: json.loads(published.read_bytes()), repeats=3)
        index_dir = config.output_root / INDEX_DIR_NAME
        start = time.perf_counter()
        check_file(published, index_dir, "intrinsics")  # what a run does once, before any episode
        index_ms = 1000.0 * (time.perf_counter() - start)
        lookup_ms = median_ms(lambda: lookup(published, EPISODE_ID, index_dir, "intrinsics"))
        print(f"published intrinsics file: {PUBLISHED_EPISODES} episodes, {published.stat().st_size / 1e6:.1f} MB: "
              f"parsed and indexed once in {index_ms:.0f} ms, then one episode's entry in {lookup_ms:.1f} ms; "
              f"whole-file json.loads {full_parse_ms:.0f} ms ({full_parse_ms / lookup_ms:.0f}x a lookup)")
        print(f"video probe (1280x720 MP4):          {median_ms(lambda: probe(mp4)):7.2f} ms")
        print(f"parse SN<serial>.conf:               {median_ms(lambda: parse_conf(conf_path)):7.2f} ms")
        conf = parse_conf(conf_path)
        print(f"rectify (cv2.stereoRectify):         {median_ms(lambda: rectify(conf, 1280, 720)):7.2f} ms")
        record = {"fx": 522.0, "fy": 522.0, "cx": 640.5, "cy": 360.5, "K": np.eye(3), "width": 1280, "height": 720}
        print(f"atomic json write (fsync, rename):   "
              f"{median_ms(lambda: write_json_atomic(root / 'out' / 'probe.json', record)):7.2f} ms")
        print(f"per camera, end to end (probe, source, checks, atomic json write), median of {REPEATS} "
              f"episodes of {len(SERIALS)} cameras, the published file looked up through its index:")
        per_camera = {}
        for source in ("published", "h5", "zed_conf"):
            def episode_run(source: str = source) -> None:
                intrinsics.extract_intrinsics(config, episode, root / "out", sources=[source])
            per_camera[source] = median_ms(episode_run) / len(SERIALS)
            print(f"  {source:10s} {per_camera[source]:7.2f} ms")

        command = [sys.executable, str(REPO / "extract_intrinsics_only.py"), "--episode_id", EPISODE_ID,
                   "--set", f"droid_root={root / 'droid'}", "--set", f"output_root={root / 'out'}",
                   "--set", f"episode_index_path={root / 'index.json'}",
                   "--set", f"zed_calibration_dir={calibration}", "--source", "zed_conf"]
        process_ms = median_ms(lambda: subprocess.run(command, check=True, capture_output=True), repeats=3)
        print(f"whole extract_intrinsics_only.py process, 3 cameras, zed_conf (interpreter start and imports "
              f"included): {process_ms:.0f} ms, {process_ms / (per_camera['zed_conf'] * len(SERIALS)):.0f}x "
              "the in-process zed_conf episode above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
