"""Depth extraction of whole episodes, checked against independent references.

The references: the synthetic episodes' ray-cast ground-truth depth (droid_pipeline.synthetic.generator),
Debian's ffmpeg to decode every depth.mkv and rgb.mp4 written here, and hand-written values for
the millimetre conversion. Frame alignment (frame i = step i) is checked by shortening and
lengthening an episode's trajectory against an unchanged video.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.depth_codec import DepthCodecError, DepthMeta, DepthReader, DepthWriter
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.raw.trajectory import CARTESIAN_KEY
from droid_pipeline.steps import depth as depth_step
from droid_pipeline.steps.depth import depth_to_uint16_mm, extract_depth
from droid_pipeline.steps.tracks import generate_tracks
from droid_pipeline.synthetic.generator import CONTROL_HZ, generate_dataset

REPO = Path(__file__).resolve().parents[2]
FRAMES = 12
# The tests of how frames are filled and cut run within a tolerance that admits their mismatch.
WIDE_TOLERANCE = "video_frame_mismatch.tolerance_frames=100"
SIZE = (320, 180)
# Median absolute error of stereo depth on pixels valid in both, per role, on the synthetic
# 320x180 episode (measured: wrist ~3 mm at 0.1-0.55 m, exterior ~35-41 mm at 0.8-4.6 m, i.e.
# about 0.15 pixel of disparity). Bounds leave headroom; docs/depth.md states the figures.
MEDIAN_ABS_ERROR_MM = {"wrist": 8.0, "ext1": 70.0, "ext2": 70.0}
MEDIAN_REL_ERROR = 0.03


def ffmpeg_frames(path: Path, pix_fmt: str, width: int, height: int, channels: int = 1) -> np.ndarray:
    """Every frame of a video decoded by Debian's ffmpeg, as (N, H, W[, C])."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt",
                          pix_fmt, "-"], check=True, capture_output=True).stdout
    dtype = "<u2" if pix_fmt == "gray16le" else np.uint8
    shape = (-1, height, width) if channels == 1 else (-1, height, width, channels)
    return np.frombuffer(raw, dtype).reshape(shape)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=1, frames=FRAMES,
                            size=SIZE, seed=3)


@pytest.fixture(scope="module")
def episode(dataset):
    config = load_config([dataset.config_path])
    return build_index(config.droid_root, None).get(dataset.episodes[0].episode_id)


def config_for(dataset, tmp: Path, *overrides: str):
    return load_config([dataset.config_path], [f"output_root={tmp / 'output'}",
                                               f"episode_index_path={tmp / 'index.json'}", *overrides])


@pytest.fixture(scope="module")
def full_run(dataset, episode, tmp_path_factory):
    """Stereo depth of every camera of the unchanged episode."""
    tmp = tmp_path_factory.mktemp("full")
    config = config_for(dataset, tmp)
    output = tmp / "episode"
    summary = extract_depth(config, episode, output, backend="stereo")
    return {"summary": summary, "output": output, "config": config}


def decoded_depth(output: Path, serial: str) -> np.ndarray:
    return ffmpeg_frames(output / "recordings" / serial / "depth.mkv", "gray16le", *SIZE)


def copy_episode(dataset, episode, tmp: Path, num_steps: int, *overrides: str):
    """A copy of the raw episode whose trajectory has ``num_steps`` steps; same videos."""
    root = tmp / "droid_raw"
    shutil.copytree(dataset.droid_root / episode.relative_path, root / episode.relative_path)
    with h5py.File(root / episode.relative_path / "trajectory.h5", "r+") as h5:
        poses = h5[CARTESIAN_KEY][()]
        del h5[CARTESIAN_KEY]
        h5[CARTESIAN_KEY] = np.resize(poses, (num_steps, poses.shape[1]))
    return config_for(dataset, tmp, f"droid_root={root}", *overrides)


# ---------------------------------------------------------------- millimetre conversion

def test_conversion_rounds_and_zeroes_nan_inf_and_out_of_range():
    depth = np.array([np.nan, np.inf, -np.inf, -5.0, 0.0, 299.6, 300.0, 300.4, 1234.6, 1235.5,
                      19999.6, 20000.0, 20000.4, 70000.0], np.float32)
    expected = [0, 0, 0, 0, 0, 0, 300, 300, 1235, 1236, 20000, 20000, 0, 0]
    out = depth_to_uint16_mm(depth, 300, 20000)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, expected)


def test_conversion_never_wraps_beyond_uint16():
    out = depth_to_uint16_mm(np.array([65535.0, 65535.6, 1e6, 0.4]), 0, 1e9)
    np.testing.assert_array_equal(out, [65535, 0, 0, 0])  # 0.4 mm rounds to the invalid value


def test_conversion_keeps_shape_of_frames():
    frame = np.full((4, 6), 1500.25, np.float64)
    frame[1, 2] = np.nan
    out = depth_to_uint16_mm(frame, 100, 15000)
    assert out.shape == (4, 6) and out[1, 2] == 0 and (np.delete(out.ravel(), 8) == 1500).all()


# ---------------------------------------------------------------- stereo backend vs ground truth

@pytest.mark.parametrize("role", ["wrist", "ext1", "ext2"])
def test_stereo_depth_recovers_ground_truth(dataset, episode, full_run, role):
    serial = episode.serials[role]
    truth = np.load(dataset.ground_truth_path(dataset.episodes[0]) / f"{serial}_depth_mm.npy")
    depth = decoded_depth(full_run["output"], serial)
    assert depth.shape == truth.shape == (FRAMES, SIZE[1], SIZE[0])
    both = (depth > 0) & (truth > 0)
    assert both.mean() > 0.75
    error = np.abs(depth.astype(np.float64) - truth)[both]
    assert np.median(error) < MEDIAN_ABS_ERROR_MM[role]
    assert np.median(error / truth[both]) < MEDIAN_REL_ERROR
    # frame i is step i: the wrist camera moves with the gripper, so each of its depth frames
    # fits its own step's truth best (exterior views change only where the gripper is)
    for index in range(FRAMES if role == "wrist" else 0):
        errors = [np.mean(np.abs(depth[index].astype(float) - truth[j])[(depth[index] > 0) & (truth[j] > 0)])
                  for j in range(FRAMES)]
        assert int(np.argmin(errors)) == index
    config = full_run["config"]
    valid = depth[depth > 0]
    assert valid.min() >= config.depth_min_mm.for_role(role)
    assert valid.max() <= config.depth_max_mm.for_role(role)


def test_summary_and_meta_report_counts(episode, full_run):
    summary = full_run["summary"]
    assert summary.num_steps == FRAMES and summary.backend == "stereo"
    assert list(summary.cameras) == list(episode.serials.values())
    for serial, camera in summary.cameras.items():
        folder = full_run["output"] / "recordings" / serial
        meta = DepthMeta.load(folder / "depth_meta.json")
        depth = decoded_depth(full_run["output"], serial)
        assert meta.num_frames == FRAMES and meta.missing_frames == [] and camera.num_missing == 0
        assert (meta.width, meta.height) == SIZE
        assert meta.source["valid_fraction"] == pytest.approx((depth > 0).mean())
        assert meta.source["valid_fraction"] == camera.valid_fraction
        assert meta.source["source_frames"] == FRAMES and meta.source["frame_count_mismatch"] == 0
        assert meta.source["role"] == camera.role and camera.role in episode.serials
        assert meta.source["baseline_source"].endswith(f"SN{serial}.conf")
        assert not (folder / "rgb.mp4").exists()


def test_video_shorter_than_trajectory_gets_invalid_tail_frames(dataset, episode, full_run, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES + 3, WIDE_TOLERANCE)
    summary = extract_depth(config, episode, tmp_path / "out", cameras=["wrist"])
    serial = episode.serials["wrist"]
    camera = summary.cameras[serial]
    assert camera.meta.missing_frames == [FRAMES, FRAMES + 1, FRAMES + 2]
    assert camera.num_missing == 3 and camera.meta.source["frame_count_mismatch"] == -3
    depth = decoded_depth(tmp_path / "out", serial)
    assert depth.shape[0] == FRAMES + 3 and not depth[FRAMES:].any()
    np.testing.assert_array_equal(depth[:FRAMES], decoded_depth(full_run["output"], serial))
    meta = DepthMeta.load(tmp_path / "out" / "recordings" / serial / "depth_meta.json")
    assert meta.missing_frames == camera.meta.missing_frames and meta.source["num_missing"] == 3


def test_video_longer_than_trajectory_is_cut_to_steps(dataset, episode, full_run, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES - 4, WIDE_TOLERANCE)
    summary = extract_depth(config, episode, tmp_path / "out", cameras=["ext1"])
    serial = episode.serials["ext1"]
    camera = summary.cameras[serial]
    assert camera.meta.source["frame_count_mismatch"] == 4 and camera.meta.missing_frames == []
    depth = decoded_depth(tmp_path / "out", serial)
    np.testing.assert_array_equal(depth, decoded_depth(full_run["output"], serial)[:FRAMES - 4])


def test_video_cut_off_mid_file_gets_invalid_frames_from_the_break(dataset, episode, full_run, tmp_path):
    """A partly copied file (index at the front, frame data cut off after a whole packet)."""
    import av

    config = copy_episode(dataset, episode, tmp_path, FRAMES, WIDE_TOLERANCE)
    serial = episode.serials["ext2"]
    video = config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4"
    front = tmp_path / "front.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-c", "copy", "-movflags", "+faststart",
                    str(front)], check=True)
    with av.open(str(front)) as container:  # packets in file order, frames numbered by timestamp
        packets = [(p.pts, p.pos + p.size) for p in container.demux(video=0) if p.size]
    rank = {pts: index for index, pts in enumerate(sorted(pts for pts, _ in packets))}
    seen: set[int] = set()
    # Cut after the first whole packet that completes frames 0..k-1, k >= 5 (end: that packet's end).
    for pts, end in packets:  # noqa: B007
        seen.add(rank[pts])
        if len(seen) >= 5 and seen == set(range(len(seen))):
            break
    kept = len(seen)
    video.write_bytes(front.read_bytes()[:end])
    summary = extract_depth(config, episode, tmp_path / "out", cameras=["ext2"])
    camera = summary.cameras[serial]
    assert camera.meta.missing_frames == list(range(kept, FRAMES))
    assert camera.meta.source["source_frames"] == FRAMES  # the container still lists every frame
    depth = decoded_depth(tmp_path / "out", serial)
    np.testing.assert_array_equal(depth[:kept], decoded_depth(full_run["output"], serial)[:kept])
    assert not depth[kept:].any()


def test_depth_frame_rate_is_the_control_rate_the_tracks_step_writes(full_run, episode, tmp_path):
    output = Path(shutil.copytree(full_run["output"], tmp_path / "episode"))
    generate_tracks(full_run["config"], episode, output)
    with np.load(output / "tracks.npz", allow_pickle=False) as tracks:
        control_fps = float(tracks["fps"])
    assert control_fps == pytest.approx(CONTROL_HZ, abs=0.1)
    for serial in episode.serials.values():
        meta = DepthMeta.load(output / "recordings" / serial / "depth_meta.json")
        assert meta.fps == control_fps
        assert av_stream_rate(output / "recordings" / serial / "depth.mkv") == pytest.approx(control_fps, rel=1e-3)


def av_stream_rate(path: Path) -> float:
    """Frame rate of the MKV as FFmpeg's ffprobe reads it."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=r_frame_rate", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True).stdout.strip()
    num, den = out.split("/")
    return int(num) / int(den)


def test_frame_dropped_mid_stream_leaves_that_step_missing_and_the_rest_aligned(dataset, episode, tmp_path):
    """A stereo MP4 missing one frame's packet: that step is invalid, no later frame shifts."""
    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    serial = episode.serials["ext1"]
    video = config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4"
    intra = tmp_path / "intra.mp4"  # every frame a keyframe, so the rest decodes without the lost one
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-c:v", "libx264", "-g", "1", "-crf", "0",
                    "-pix_fmt", "yuv444p", str(intra)], check=True)
    shutil.copy(intra, video)
    whole = extract_depth(config, episode, tmp_path / "whole", cameras=["ext1"])
    assert whole.cameras[serial].meta.missing_frames == []
    dropped = 5
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(intra), "-c", "copy", "-bsf:v",
                    rf"noise=drop=eq(n\,{dropped})", str(video)], check=True)
    summary = extract_depth(config, episode, tmp_path / "gapped", cameras=["ext1"])
    assert summary.cameras[serial].meta.missing_frames == [dropped]
    depth, reference = decoded_depth(tmp_path / "gapped", serial), decoded_depth(tmp_path / "whole", serial)
    assert len(depth) == FRAMES and not depth[dropped].any()
    kept = [i for i in range(FRAMES) if i != dropped]
    np.testing.assert_array_equal(depth[kept], reference[kept])


def test_export_rgb_writes_left_frames_aligned_with_steps(dataset, episode, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES + 2)
    config = config_for(dataset, tmp_path, f"droid_root={config.droid_root}", "export_rgb=true")
    summary = extract_depth(config, episode, tmp_path / "out", cameras=["ext2"])
    serial = episode.serials["ext2"]
    rgb = ffmpeg_frames(tmp_path / "out" / "recordings" / serial / "rgb.mp4", "rgb24", *SIZE, channels=3)
    left = ffmpeg_frames(dataset.droid_root / episode.relative_path / "recordings" / "MP4" /
                         f"{serial}-stereo.mp4", "rgb24", 2 * SIZE[0], SIZE[1], channels=3)[:, :, :SIZE[0]]
    assert rgb.shape[0] == FRAMES + 2 and summary.cameras[serial].meta.source["rgb_export"] == "rgb.mp4"
    difference = np.abs(rgb[:FRAMES].astype(int) - left)
    assert difference.mean() < 3.0  # one H.264 re-encode at CRF 18
    assert rgb[FRAMES:].max() < 20  # missing steps are black (limited-range YUV round trip)


def test_intrinsics_are_computed_when_absent_and_read_when_present(dataset, episode, tmp_path):
    config = config_for(dataset, tmp_path)
    serial = episode.serials["wrist"]
    intrinsics = tmp_path / "out" / "recordings" / serial / "intrinsics.json"
    extract_depth(config, episode, tmp_path / "out", backend="stereo", cameras=[serial])
    record = json.loads(intrinsics.read_text())
    truth = json.loads((dataset.ground_truth_path(dataset.episodes[0]) / "cameras.json").read_text())
    assert record["fx"] == pytest.approx(truth[serial]["K"][0][0])
    before = decoded_depth(tmp_path / "out", serial).astype(np.float64)
    # an existing intrinsics.json is what the step uses: doubling fx doubles every depth
    record["fx"] *= 2
    record["K"][0][0] *= 2
    intrinsics.write_text(json.dumps(record))
    summary = extract_depth(config, episode, tmp_path / "out", backend="stereo", cameras=[serial])
    assert summary.cameras[serial].meta.source["fx"] == pytest.approx(2 * truth[serial]["K"][0][0])
    after = decoded_depth(tmp_path / "out", serial).astype(np.float64)
    both = (before > 0) & (after > 0)
    assert np.median(after[both] / before[both]) == pytest.approx(2.0, abs=0.01)


def test_missing_baseline_fails_the_episode(dataset, episode, tmp_path):
    config = config_for(dataset, tmp_path, "zed_calibration_dir=null")
    with pytest.raises(EpisodeError, match=r"step depth: camera \d+ \(wrist\): .*baseline"):
        extract_depth(config, episode, tmp_path / "out", backend="stereo", cameras=["wrist"])
    assert not (tmp_path / "out" / "recordings" / episode.serials["wrist"] / "depth.mkv").exists()


def test_corrupt_video_fails_the_episode_and_writes_nothing(dataset, episode, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    serial = episode.serials["ext1"]
    video = config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4"
    video.write_bytes(video.read_bytes()[:2000])
    with pytest.raises(EpisodeError, match=f"step depth: camera {serial} \\(ext1\\)"):
        extract_depth(config, episode, tmp_path / "out", cameras=["ext1"])
    folder = tmp_path / "out" / "recordings" / serial
    assert not (folder / "depth.mkv").exists() and not (folder / "depth_meta.json").exists()
    assert not list(folder.glob(".depth*"))  # no temporary leftovers


def test_missing_trajectory_and_unknown_names_fail_clearly(dataset, episode, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    with pytest.raises(EpisodeError, match="unknown camera 'left'"):
        extract_depth(config, episode, tmp_path / "out", cameras=["left"])
    with pytest.raises(EpisodeError, match="unknown depth backend 'lidar'"):
        extract_depth(config, episode, tmp_path / "out", backend="lidar")
    (config.droid_root / episode.relative_path / "trajectory.h5").unlink()
    with pytest.raises(EpisodeError, match="step depth: cannot open .*trajectory.h5"):
        extract_depth(config, episode, tmp_path / "out")


def test_a_stereo_video_off_by_more_than_the_tolerance_fails_as_a_camera_mp4_does(dataset, episode, tmp_path):
    """One frame-count policy for every video: video_frame_mismatch.tolerance_frames (2)."""
    config = copy_episode(dataset, episode, tmp_path, FRAMES - 5)
    serial = episode.serials["ext1"]
    with pytest.raises(EpisodeError, match=rf"step depth: camera {serial} \(ext1\): .*-stereo.mp4 lists {FRAMES} "
                       rf"frames .* of the {FRAMES - 5} steps .*more than video_frame_mismatch.tolerance_frames = 2"):
        extract_depth(config, episode, tmp_path / "out", cameras=["ext1"])
    within = copy_episode(dataset, episode, tmp_path / "within", FRAMES - 2)
    summary = extract_depth(within, episode, tmp_path / "within" / "out", cameras=["ext1"])
    assert "2 frame(s) beyond the last step ignored" in summary.cameras[serial].meta.source["warnings"][0]


def test_swapped_stereo_halves_are_named_by_their_near_empty_depth(dataset, episode, tmp_path):
    from video_damage import reencode, swap_halves

    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    serial = episode.serials["ext2"]
    reencode(config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4", swap_halves)
    summary = extract_depth(config, episode, tmp_path / "out", cameras=["ext2"])
    source = summary.cameras[serial].meta.source
    assert source["valid_fraction"] < 0.3 <= source["swapped_valid_fraction"]
    assert "the left and right views look swapped" in source["warnings"][0]
    strict = dataclasses.replace(config, plausibility=dataclasses.replace(config.plausibility,
                                                                          depth_check_action="fail"))
    with pytest.raises(EpisodeError, match=rf"camera {serial} \(ext2\): depth valid over .* look swapped"):
        extract_depth(strict, episode, tmp_path / "strict", cameras=["ext2"])
    # The good camera passes the check: no warning, and its left-right check keeps more of its matches.
    good = extract_depth(config, episode, tmp_path / "good", cameras=["ext1"])
    good_source = good.cameras[episode.serials["ext1"]].meta.source
    assert "warnings" not in good_source
    assert good_source["lr_consistent_fraction"] > source["lr_consistent_fraction"]
    assert "the left-right check kept" in source["warnings"][0]


# ---------------------------------------------------------------- verification beside the next camera

def instrument_sources(monkeypatch, before_frame) -> None:
    """Each camera's frame source calls ``before_frame(serial)`` before handing out a frame."""
    original = depth_step._open_source

    @contextlib.contextmanager
    def open_source(config, raw, output_dir, backend, serial):
        with original(config, raw, output_dir, backend, serial) as source:
            def frames():
                for item in source.frames:
                    before_frame(serial)
                    yield item

            yield dataclasses.replace(source, frames=frames())

    monkeypatch.setattr(depth_step, "_open_source", open_source)


def test_a_camera_is_verified_while_the_next_one_is_read_and_encoded(dataset, episode, full_run,
                                                                     tmp_path, monkeypatch):
    first, second = episode.serials["wrist"], episode.serials["ext1"]
    output = tmp_path / "out"
    second_started = threading.Event()
    seen = {}

    def before_frame(serial):
        if serial == second and not second_started.is_set():
            seen["first camera published"] = (output / "recordings" / first / "depth.mkv").exists()
            second_started.set()

    original_publish = DepthWriter.publish

    def publish(writer):
        if writer.path.parent.name == first:
            seen["thread"] = threading.current_thread().name
            # One after the other, the second camera could not start while this check waits.
            seen["second camera started during the check"] = second_started.wait(timeout=30)
        return original_publish(writer)

    instrument_sources(monkeypatch, before_frame)
    monkeypatch.setattr(DepthWriter, "publish", publish)
    summary = extract_depth(full_run["config"], episode, output, backend="stereo", cameras=["wrist", "ext1"])
    assert seen["second camera started during the check"] and not seen["first camera published"]
    assert seen["thread"].startswith("depth-verify")
    assert list(summary.cameras) == [first, second]
    for serial in (first, second):
        np.testing.assert_array_equal(decoded_depth(output, serial), decoded_depth(full_run["output"], serial))
        meta = DepthMeta.load(output / "recordings" / serial / "depth_meta.json")
        assert meta.missing_frames == summary.cameras[serial].meta.missing_frames == []


@pytest.mark.parametrize("second_camera_fails", [False, True])
def test_a_failed_verification_fails_the_episode_with_its_cause(dataset, episode, tmp_path, monkeypatch,
                                                                second_camera_fails):
    """Camera 1's check fails while camera 2 is encoded; camera 1 is the failure reported, also when
    camera 2 then fails on its own (its corrupt video)."""
    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    first, second = episode.serials["wrist"], episode.serials["ext1"]
    if second_camera_fails:
        video = config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{second}-stereo.mp4"
        video.write_bytes(video.read_bytes()[:2000])
    decode = DepthReader._to_array

    def one_value_off_for_the_first_camera(reader, frame, index):
        array = decode(reader, frame, index)
        if reader.path.parent.name == first:
            array = array.copy()
            array[0, 0] ^= 1
        return array

    monkeypatch.setattr(DepthReader, "_to_array", one_value_off_for_the_first_camera)
    with pytest.raises(EpisodeError, match=rf"step depth: camera {first} \(wrist\): .*decoded frames have "
                                           "sha256") as caught:
        extract_depth(config, episode, tmp_path / "out", backend="stereo", cameras=["wrist", "ext1"])
    assert isinstance(caught.value.__cause__, DepthCodecError)
    folder = tmp_path / "out" / "recordings" / first
    assert not (folder / "depth.mkv").exists() and not (folder / "depth_meta.json").exists()
    assert not list(folder.glob(".depth*"))
    assert not list((tmp_path / "out" / "recordings" / second).glob(".depth*"))


def test_remapped_depth_reads_back_as_the_default_millimetres(dataset, episode, full_run, tmp_path):
    config = config_for(dataset, tmp_path, "ffv1.remap_values=true")
    serial = episode.serials["ext1"]
    extract_depth(config, episode, tmp_path / "out", backend="stereo", cameras=["ext1"])
    folder = tmp_path / "out" / "recordings" / serial
    millimetres = decoded_depth(full_run["output"], serial)
    with DepthReader(folder / "depth.mkv") as reader:
        np.testing.assert_array_equal(reader.read_all(), millimetres)
    meta = DepthMeta.load(folder / "depth_meta.json")
    default_meta = DepthMeta.load(full_run["output"] / "recordings" / serial / "depth_meta.json")
    assert meta.checksum == default_meta.checksum and default_meta.value_table is None
    np.testing.assert_array_equal(meta.value_table, np.setdiff1d(np.unique(millimetres), [0]))
    codes = decoded_depth(tmp_path / "out", serial)  # what plain ffmpeg gives: codes
    assert codes.max() == len(meta.value_table)
    np.testing.assert_array_equal(np.array([0, *meta.value_table])[codes], millimetres)


def test_cli_writes_depth_and_prints_summary(dataset, episode, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, str(REPO / "extract_rgb_depth.py"), "--config", str(dataset.config_path),
         "--set", f"episode_index_path={tmp_path / 'index.json'}", "--episode_id", episode.episode_id,
         "--depth-backend", "stereo", "--cameras", "wrist,ext1", "--output-dir", str(out)],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(summary["cameras"]) == sorted([episode.serials["wrist"], episode.serials["ext1"]])
    assert decoded_depth(out, episode.serials["ext1"]).shape[0] == FRAMES
    assert not (out / "recordings" / episode.serials["ext2"] / "depth.mkv").exists()
    failed = subprocess.run(
        [sys.executable, str(REPO / "extract_rgb_depth.py"), "--config", str(dataset.config_path),
         "--set", f"episode_index_path={tmp_path / 'index.json'}", "--episode_id", episode.episode_id,
         "--cameras", "nope", "--output-dir", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1
    assert f"episode {episode.episode_id}: step depth: unknown camera 'nope'" in failed.stderr


# ---------------------------------------------------------------- memory

# Peak RSS of the probe process itself: VmHWM starts afresh with the new program image, while
# getrusage's ru_maxrss would carry over the forking test process's own peak.
MEMORY_PROBE = """
import json, sys
from droid_pipeline.core.config import load_config
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.raw.discovery import Episode
config = load_config([sys.argv[1]], sys.argv[4:])
episode = Episode.from_json(json.loads(sys.argv[2]))
extract_depth(config, episode, sys.argv[3], backend="stereo", cameras=["wrist"])
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(int(status[0]) * 1024)
"""


def peak_rss_bytes(dataset, episode, config, out: Path) -> int:
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(dataset.config_path),
                             json.dumps(episode.to_json()), str(out), f"droid_root={config.droid_root}",
                             f"episode_index_path={out / 'index.json'}", "stereo.num_disparities=32",
                             "video_frame_mismatch.tolerance_frames=1000"],
                            capture_output=True, text=True, check=True, cwd=REPO)
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_memory_stays_flat_as_the_episode_grows(dataset, episode, tmp_path):
    """Peak RSS of a 20-step and a 240-step episode (same video, looped) in fresh processes
    (a narrower disparity search keeps it quick; memory does not depend on it)."""
    import av

    short_steps, long_steps = 20, 240
    long_config = copy_episode(dataset, episode, tmp_path / "long", long_steps)
    serial = episode.serials["wrist"]
    video = long_config.droid_root / episode.relative_path / "recordings" / "MP4" / f"{serial}-stereo.mp4"
    frames = list(ffmpeg_frames(video, "rgb24", 2 * SIZE[0], SIZE[1], channels=3))
    with av.open(str(video), "w") as container:  # the same scene played back and forth
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 2 * SIZE[0], SIZE[1], "yuv420p"
        loop = frames + frames[-2:0:-1]
        for index in range(long_steps):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(loop[index % len(loop)], format="rgb24")))
        container.mux(stream.encode(None))
    short_config = copy_episode(dataset, episode, tmp_path / "short", short_steps)
    shutil.copy(video, short_config.droid_root / episode.relative_path / "recordings" / "MP4" / video.name)

    short = peak_rss_bytes(dataset, episode, short_config, tmp_path / "short" / "out")
    long = peak_rss_bytes(dataset, episode, long_config, tmp_path / "long" / "out")
    assert ffmpeg_frames(tmp_path / "long" / "out" / "recordings" / serial / "depth.mkv", "gray16le",
                         *SIZE).shape[0] == long_steps
    # The 220 extra steps hold 25 MB of uint16 depth (51 MB as float, 76 MB of decoded RGB);
    # streaming keeps the growth to noise, far below even the smallest of these.
    extra_depth_bytes = (long_steps - short_steps) * SIZE[0] * SIZE[1] * 2
    assert long - short < 0.15 * extra_depth_bytes, (short, long)


# ---------------------------------------------------------------- zed backend (through the fake SDK)

FAKE_SDK = Path(__file__).resolve().parents[1] / "support" / "fake_pyzed"
ZED_SIZE = (16, 12)


@pytest.fixture
def fake_sl(monkeypatch):
    """The recorded fake of pyzed.sl on sys.path for one test."""
    for name in ("pyzed", "pyzed.sl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKE_SDK))
    import pyzed.sl as sl

    sl.CALLS.clear()
    yield sl
    for name in ("pyzed.sl", "pyzed"):
        sys.modules.pop(name, None)


def write_fake_svo(episode_dir: Path, serial: str, depth: list, left: list | None = None) -> None:
    """A recording for the fake SDK: what the real one would report for this SVO."""
    width, height = ZED_SIZE
    recording = {"resolution": [width, height], "fps": 60.0, "baseline_mm": 120.0,
                 "left_cam": {"fx": 10.0, "fy": 10.0, "cx": 7.5, "cy": 5.5, "disto": [0.0] * 12},
                 "depth_frames": [None if d is None else d.tolist() for d in depth],
                 "left_frames": [None if image is None else image.tolist()
                                 for image in (left or [None] * len(depth))]}
    svo = episode_dir / "recordings" / "SVO" / f"{serial}.svo"
    svo.parent.mkdir(parents=True, exist_ok=True)
    svo.write_text(json.dumps(recording))


def sdk_depth_frames(count: int, seed: int) -> list[np.ndarray]:
    """Float millimetre frames as the SDK gives them, with every kind of invalid value."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        depth = rng.uniform(50.0, 25000.0, ZED_SIZE[::-1]).astype(np.float32)
        depth[0, :6] = [np.nan, -np.inf, np.inf, 99.4, 15000.4, 20000.6]
        depth[1, :3] = [100.0, 1234.5, 1235.5]
        frames.append(depth)
    return frames


def expected_uint16(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    """The output rule written out independently: round half to even, 0 outside [low, high]."""
    out = np.zeros(depth.shape, np.uint16)
    for index, value in np.ndenumerate(depth):
        if np.isfinite(value) and low <= value <= high:
            out[index] = int(round(float(value)))
    return out


def test_zed_backend_streams_sdk_depth_with_missing_frames_and_ranges(
        fake_sl, dataset, episode, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    config = copy_episode(dataset, episode, tmp_path, FRAMES, WIDE_TOLERANCE)
    episode_dir = config.droid_root / episode.relative_path
    wrist, ext1 = episode.serials["wrist"], episode.serials["ext1"]
    short = sdk_depth_frames(FRAMES - 2, seed=0)
    short[3] = None  # a failed grab
    write_fake_svo(episode_dir, wrist, short)
    long = sdk_depth_frames(FRAMES + 2, seed=1)
    write_fake_svo(episode_dir, ext1, long)

    summary = extract_depth(config, episode, tmp_path / "out", backend="zed", cameras=["wrist", "ext1"])

    opened = [call for call in fake_sl.CALLS if call[0] == "open"]
    assert [call[2:] for call in opened] == [(fake_sl.DEPTH_MODE.NEURAL, fake_sl.UNIT.MILLIMETER, False)] * 2
    width, height = ZED_SIZE
    depth = ffmpeg_frames(tmp_path / "out" / "recordings" / wrist / "depth.mkv", "gray16le", width, height)
    camera = summary.cameras[wrist]
    assert depth.shape[0] == FRAMES
    assert camera.meta.missing_frames == [3, FRAMES - 2, FRAMES - 1]
    assert camera.meta.source["frame_count_mismatch"] == -2
    for index, frame in enumerate(short):
        expected = (np.zeros((height, width), np.uint16) if frame is None
                    else expected_uint16(frame, 100, 15000))
        np.testing.assert_array_equal(depth[index], expected)
    assert not depth[FRAMES - 2:].any()
    meta = DepthMeta.load(tmp_path / "out" / "recordings" / wrist / "depth_meta.json")
    assert meta.source["backend"] == "zed" and meta.source["depth_mode"] == "NEURAL"
    assert meta.source["cuda_visible_devices"] == "1" and meta.missing_frames == camera.meta.missing_frames
    assert meta.source["valid_fraction"] == pytest.approx((depth > 0).mean())

    depth = ffmpeg_frames(tmp_path / "out" / "recordings" / ext1 / "depth.mkv", "gray16le", width, height)
    assert summary.cameras[ext1].meta.source["frame_count_mismatch"] == 2
    assert summary.cameras[ext1].meta.missing_frames == []
    np.testing.assert_array_equal(depth, [expected_uint16(f, 300, 20000) for f in long[:FRAMES]])


def test_zed_backend_exports_left_images(fake_sl, dataset, episode, tmp_path):
    config = copy_episode(dataset, episode, tmp_path, FRAMES)
    config = config_for(dataset, tmp_path, f"droid_root={config.droid_root}", "export_rgb=true")
    serial = episode.serials["ext2"]
    width, height = ZED_SIZE
    colours = np.linspace(40, 220, FRAMES).astype(np.uint8)
    left = [np.dstack([np.full((height, width), c, np.uint8)] * 3 + [np.full((height, width), 255, np.uint8)])
            for c in colours]  # BGRA grey levels, one per frame
    write_fake_svo(config.droid_root / episode.relative_path, serial, sdk_depth_frames(FRAMES, 2), left)
    extract_depth(config, episode, tmp_path / "out", backend="zed", cameras=["ext2"])
    rgb = ffmpeg_frames(tmp_path / "out" / "recordings" / serial / "rgb.mp4", "rgb24", width, height, 3)
    np.testing.assert_allclose(rgb.reshape(FRAMES, -1).mean(axis=1), colours, atol=3)


def test_zed_backend_without_sdk_names_the_alternative(dataset, episode, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyzed", None)  # import pyzed.sl fails as on a CPU node
    config = config_for(dataset, tmp_path)
    with pytest.raises(EpisodeError, match="step depth: .*ZED SDK not installed.*depth_backend: stereo"):
        extract_depth(config, episode, tmp_path / "out", backend="zed", cameras=["wrist"])
