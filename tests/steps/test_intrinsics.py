"""Intrinsics extraction: every source, their order, sanity checks and errors; and video probing.

Episode folders are built here in DROID's layout (metadata json, trajectory.h5 via h5py, small
MP4s written with PyAV). References are independent: ffprobe/ffmpeg for videos, a direct
cv2.stereoRectify run for the ZED calibration files, the recorded values for the SDK fake.
"""

from __future__ import annotations

import configparser
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pytest

from droid_pipeline.cli.intrinsics import main
from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.intrinsics import IntrinsicsError, IntrinsicsRecord
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.raw.video import VideoError, iter_frames, probe
from droid_pipeline.raw.zed_conf import (
    CameraCalibration,
    StereoExtras,
    ZedConf,
    format_conf,
)
from droid_pipeline.steps.intrinsics import extract_intrinsics

REPO = Path(__file__).resolve().parents[2]
FAKE_SDK = Path(__file__).resolve().parents[1] / "support" / "fake_pyzed"
EPISODE_ID = "TESTLab+0badc0de+2023-07-07-09h-42m-23s"
SERIALS = {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
DESIGN_FIELDS = {"fx", "fy", "cx", "cy", "K", "k1", "k2", "p1", "p2", "k3", "width", "height", "rectified",
                 "source"}


def write_video(path: Path, width: int, height: int, frames: int, codec: str = "libx264",
                pix_fmt: str = "yuv420p") -> Path:
    """A short video whose frames differ (a moving gradient), written with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=15)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        ramp = np.add.outer(np.arange(height), np.arange(width))
        for i in range(frames):
            image = np.stack([(ramp + 9 * i) % 256, (2 * ramp) % 256, np.full_like(ramp, 40 * i % 256)], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[tuple[int, int], Path]:
    """One small MP4 per size, copied into episodes as needed."""
    folder = tmp_path_factory.mktemp("videos")
    return {size: write_video(folder / f"{size[0]}x{size[1]}.mp4", *size, frames=3)
            for size in ((1280, 720), (320, 180), (672, 376), (2560, 720))}


def make_episode(root: Path, videos: dict, sizes: dict[str, tuple[int, int]] | None = None,
                 stereo_only: tuple[str, ...] = (), h5_intrinsics: dict[str, np.ndarray] | None = None) -> Path:
    """A DROID episode folder: metadata, trajectory.h5 and one MP4 per camera (or a stereo one)."""
    folder = root / "TESTLab" / "success" / "2023-07-07" / "Fri_Jul__7_09:42:23_2023"
    (folder / "recordings" / "MP4").mkdir(parents=True)
    metadata = {"uuid": EPISODE_ID, "trajectory_length": 3, **{f"{r}_cam_serial": s for r, s in SERIALS.items()}}
    (folder / f"metadata_{EPISODE_ID}.json").write_text(json.dumps(metadata))
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        h5["observation/robot_state/cartesian_position"] = np.zeros((3, 6))
        for serial, matrices in (h5_intrinsics or {}).items():
            h5[f"observation/camera_intrinsics/{serial}_left"] = matrices
    for serial in SERIALS.values():
        size = (sizes or {}).get(serial, (1280, 720))
        if serial in stereo_only:
            write_video(folder / "recordings" / "MP4" / f"{serial}-stereo.mp4", 2 * size[0], size[1], frames=1)
        else:
            shutil.copy(videos[size], folder / "recordings" / "MP4" / f"{serial}.mp4")
    return folder


def config_for(root: Path, tmp_path: Path, *overrides: str):
    return load_config([], [f"droid_root={root}", f"output_root={tmp_path / 'out'}",
                            f"episode_index_path={tmp_path / 'index.json'}", *overrides])


def episode_of(config):
    return build_index(config.droid_root, config.index_path).get(EPISODE_ID)


def pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def write_published(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps({EPISODE_ID: entries, "OTHERLab+00000000+2023-01-01-00h-00m-00s": {}}))
    return path


def zed_conf_for(serial: str, rng: np.random.Generator) -> ZedConf:
    def lens() -> CameraCalibration:
        return CameraCalibration(fx=rng.uniform(690, 710), fy=rng.uniform(690, 710), cx=rng.uniform(620, 660),
                                 cy=rng.uniform(340, 380), k1=-0.05, k2=0.02, p1=1e-4, p2=-2e-4, k3=-0.01)
    return ZedConf(serial, {"HD": lens()}, {"HD": lens()}, rng.uniform(118, 122),
                   {"HD": StereoExtras(0.2, -0.3, 0.004, 0.001, -0.002)})


def opencv_rectified(conf: ZedConf, scale: int, width: int, height: int):
    """Rectified K and baseline from a direct cv2.stereoRectify run on the HD section."""
    def matrix(lens: CameraCalibration) -> np.ndarray:
        return pinhole(lens.fx / scale, lens.fy / scale, (lens.cx + 0.5) / scale - 0.5, (lens.cy + 0.5) / scale - 0.5)
    left, right, extras = conf.left["HD"], conf.right["HD"], conf.stereo["HD"]
    R = cv2.Rodrigues(np.array([extras.rx_rad, extras.cv_rad, extras.rz_rad]))[0]
    T = np.array([[-conf.baseline_mm], [extras.ty_mm], [extras.tz_mm]]) / 1000
    R1, R2, P1, P2, *_ = cv2.stereoRectify(matrix(left), left.distortion, matrix(right), right.distortion,
                                           (width, height), R, T, flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    return P1[:3, :3], -P2[0, 3] / P2[0, 0], (R1, R2, P1, P2)


# ------------------------------------------------------------------ video


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height,nb_read_packets,avg_frame_rate", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["streams"][0]


@pytest.mark.parametrize("container, codec, pix_fmt, frames", [
    ("mp4", "libx264", "yuv420p", 7), ("mkv", "ffv1", "gray16le", 5)])
def test_probe_matches_ffprobe(tmp_path, container, codec, pix_fmt, frames):
    path = write_video(tmp_path / f"v.{container}", 96, 54, frames, codec, pix_fmt)
    info = probe(path)
    reference = ffprobe(path)
    num, den = (int(x) for x in reference["avg_frame_rate"].split("/"))
    assert (info.width, info.height, info.num_frames) == (reference["width"], reference["height"],
                                                          int(reference["nb_read_packets"]))
    assert info.fps == pytest.approx(num / den)


def test_iter_frames_matches_ffmpeg_decoder(tmp_path):
    path = write_video(tmp_path / "v.mp4", 96, 54, 4)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(-1, 54, 96, 3)
    indices, frames = zip(*iter_frames(path))
    assert indices == tuple(range(len(reference)))
    np.testing.assert_array_equal(np.stack(frames), reference)


def test_iter_frames_numbers_frames_by_timestamp_so_a_dropped_frame_leaves_a_gap(tmp_path):
    intra = tmp_path / "intra.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=15",
                    "-frames:v", "8", "-c:v", "libx264", "-g", "1", "-pix_fmt", "yuv420p", str(intra)],
                   check=True)
    dropped = tmp_path / "dropped.mp4"  # packet 3 removed by FFmpeg's own bitstream filter
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(intra), "-c", "copy", "-bsf:v", r"noise=drop=eq(n\,3)",
                    str(dropped)], check=True)
    whole = dict(iter_frames(intra))
    gapped = dict(iter_frames(dropped))
    assert sorted(gapped) == [0, 1, 2, 4, 5, 6, 7]
    for index, frame in gapped.items():
        np.testing.assert_array_equal(frame, whole[index])


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="not found"):
        probe(tmp_path / "missing.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 256)
    with pytest.raises(VideoError, match="broken.mp4"):
        probe(broken)
    with pytest.raises(VideoError, match="broken.mp4"):
        list(iter_frames(broken))


# ------------------------------------------------------------------ sources


def test_published_list_layout(tmp_path, videos):
    root = tmp_path / "droid"
    make_episode(root, videos)
    values = {serial: [500.0 + i, 640.5 + i, 501.0 + i, 360.25 - i] for i, serial in enumerate(SERIALS.values())}
    published = write_published(tmp_path / "intrinsics.json", values)
    config = config_for(root, tmp_path, f"intrinsics_path={published}")
    out = tmp_path / "work"
    records = extract_intrinsics(config, episode_of(config), out)
    assert list(records) == list(SERIALS.values())
    for serial, (fx, cx, fy, cy) in values.items():
        path = out / "recordings" / serial / "intrinsics.json"
        on_disk = json.loads(path.read_text())
        assert set(on_disk) >= DESIGN_FIELDS
        assert on_disk["source"] == "published" and on_disk["rectified"] is True
        assert (on_disk["fx"], on_disk["fy"], on_disk["cx"], on_disk["cy"]) == (fx, fy, cx, cy)
        assert (on_disk["width"], on_disk["height"]) == (1280, 720)
        assert on_disk["K"] == pinhole(fx, fy, cx, cy).tolist()
        assert [on_disk[k] for k in ("k1", "k2", "p1", "p2", "k3")] == [0.0] * 5
        loaded = IntrinsicsRecord.load(path)
        np.testing.assert_array_equal(loaded.K, records[serial].K)
    assert not list(out.rglob("*.tmp*"))


def test_published_object_layout_and_size_check(tmp_path, videos):
    root = tmp_path / "droid"
    wrist = SERIALS["wrist"]
    make_episode(root, videos, sizes={wrist: (672, 376)})
    published = write_published(tmp_path / "intrinsics.json", {
        wrist: {"cameraMatrix": [260.0, 335.5, 261.0, 187.5], "width": 672, "height": 376},
        SERIALS["ext1"]: {"cameraMatrix": [1560.0, 959.5, 1560.0, 539.5], "width": 1920, "height": 1080}})
    config = config_for(root, tmp_path, f"intrinsics_path={published}")
    records = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["wrist"])
    assert (records[wrist].fx, records[wrist].cx, records[wrist].width) == (260.0, 335.5, 672)
    assert records[wrist].warnings is None
    # For 1920x1080 with a 1280x720 video and no other source: scaled per axis by 2/3, pixel centres kept.
    ext1 = SERIALS["ext1"]
    record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["ext1"],
                                sources=["published"])[ext1]
    assert (record.width, record.height) == (1280, 720)
    np.testing.assert_allclose([record.fx, record.fy, record.cx, record.cy], [1040.0, 1040.0, 639.5, 359.5])
    assert "1920x1080 scaled per axis" in record.warnings[0] and "1280x720" in record.warnings[0]
    strict = config_for(root, tmp_path, f"intrinsics_path={published}", "plausibility.rescale_intrinsics=false")
    with pytest.raises(EpisodeError) as error:
        extract_intrinsics(strict, episode_of(strict), tmp_path / "w", cameras=["ext1"], sources=["published"])
    assert "intrinsics are for 1920x1080, the video" in str(error.value) and "is 1280x720" in str(error.value)


@pytest.mark.parametrize("entry, reason", [
    ([500.0, 640.0, 500.0], r"expected \[fx, cx, fy, cy\]"),
    ([500.0, "640", 500.0, 360.0], r"expected \[fx, cx, fy, cy\]"),
    ([500.0, 640.0, 500.0, float("nan")], "cy must be a finite number"),
    ([-500.0, 640.0, 500.0, 360.0], "focal lengths must be positive"),
    ([500.0, 1400.0, 500.0, 360.0], "principal point .* outside the 1280x720 image"),
    ({"cameraMatrix": [500.0, 640.0, 500.0, 360.0], "width": 1280}, "only one of width, height"),
    ({"matrix": [500.0, 640.0, 500.0, 360.0]}, "no cameraMatrix"),
    (None, "no entry for serial"),
])
def test_published_bad_values_fail_clearly(tmp_path, videos, entry, reason):
    root = tmp_path / "droid"
    make_episode(root, videos)
    serial = SERIALS["ext2"]
    published = write_published(tmp_path / "intrinsics.json", {} if entry is None else {serial: entry})
    config = config_for(root, tmp_path, f"intrinsics_path={published}")
    with pytest.raises(EpisodeError) as error:
        extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[serial], sources=["published"])
    message = str(error.value)
    assert EPISODE_ID in message and "step intrinsics" in message and f"camera {serial} (ext2)" in message
    assert re.search(reason, message), message
    assert not (tmp_path / "w").exists()


def test_published_lookup_is_by_exact_id(tmp_path, videos):
    root = tmp_path / "droid"
    make_episode(root, videos)
    ext1 = SERIALS["ext1"]
    right, wrong = [510.0, 641.0, 511.0, 359.0], [999.0, 600.0, 999.0, 300.0]
    cases = [  # the id also nested under another episode, and another id that extends this one
        ({"A+1+2023-01-01-00h-00m-00s": {EPISODE_ID: {ext1: wrong}}, EPISODE_ID: {ext1: right}}, right),
        ({EPISODE_ID + "0": {ext1: wrong}, EPISODE_ID: {ext1: right}}, right),
        ({EPISODE_ID + "0": {ext1: wrong}}, None),
    ]
    bad_files = ['{"' + EPISODE_ID + '": {"' + ext1 + '": [1, 2', "[1, 2]"]
    for index, (text, expected) in enumerate([(json.dumps(t, indent=1), e) for t, e in cases]
                                             + [(t, "bad") for t in bad_files]):
        path = tmp_path / f"published_{index}.json"
        path.write_text(text)
        config = config_for(root, tmp_path, f"intrinsics_path={path}")
        if expected is None:
            with pytest.raises(EpisodeError, match="published: episode not in"):
                extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1], sources=["published"])
        elif expected == "bad":
            with pytest.raises(EpisodeError, match="published: (cannot read|.*expected a JSON object)"):
                extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1], sources=["published"])
        else:
            record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1])[ext1]
            assert [getattr(record, k) for k in ("fx", "cx", "fy", "cy")] == expected


def test_h5_source(tmp_path, videos):
    root = tmp_path / "droid"
    ext1 = SERIALS["ext1"]
    K = pinhole(531.5, 531.25, 641.0, 355.5)
    make_episode(root, videos, h5_intrinsics={ext1: np.repeat(K[None], 3, axis=0)})
    config = config_for(root, tmp_path)
    record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1], sources=["h5"])[ext1]
    np.testing.assert_array_equal(record.K, K)
    assert record.source == "h5" and (record.width, record.height) == (1280, 720)


@pytest.mark.parametrize("matrices, reason", [
    (np.repeat(np.eye(3)[None], 2, 0)[:, :2], r"shape \(2, 2, 3\), expected \(T, 3, 3\)"),
    (np.stack([pinhole(500, 500, 640, 360), pinhole(505, 500, 640, 360)]), "changes during the episode"),
    (np.stack([pinhole(500, 500, 640, 360) + np.diag([0, 0, 1.0])]), "not a zero-skew pinhole"),
    (np.stack([pinhole(500, 500, np.nan, 360)]), "non-finite"),
])
def test_h5_bad_values_fail_clearly(tmp_path, videos, matrices, reason):
    root = tmp_path / "droid"
    ext1 = SERIALS["ext1"]
    make_episode(root, videos, h5_intrinsics={ext1: matrices})
    config = config_for(root, tmp_path)
    with pytest.raises(EpisodeError, match=reason):
        extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1], sources=["h5"])
    with pytest.raises(EpisodeError, match="trajectory.h5 has no observation/camera_intrinsics/"):
        extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["ext2"], sources=["h5"])


@pytest.mark.parametrize("size, scale", [((1280, 720), 1), ((320, 180), 4)])
def test_zed_conf_source_equals_opencv_rectification(tmp_path, videos, size, scale):
    root = tmp_path / "droid"
    make_episode(root, videos, sizes=dict.fromkeys(SERIALS.values(), size))
    calib = tmp_path / "zed"
    calib.mkdir()
    rng = np.random.default_rng(11)
    confs = {serial: zed_conf_for(serial, rng) for serial in SERIALS.values()}
    for serial, conf in confs.items():
        (calib / f"SN{serial}.conf").write_text(format_conf(conf))
    config = config_for(root, tmp_path, f"zed_calibration_dir={calib}")
    out = tmp_path / "w"
    extract_intrinsics(config, episode_of(config), out)
    for serial, conf in confs.items():
        record = IntrinsicsRecord.load(out / "recordings" / serial / "intrinsics.json")
        K, baseline, (R1, R2, P1, P2) = opencv_rectified(conf, scale, *size)
        assert record.source == "zed_conf" and (record.width, record.height) == size
        np.testing.assert_allclose(record.K, K, rtol=1e-12)
        assert record.baseline_m == pytest.approx(baseline, rel=1e-12)
        for key, reference in (("R1", R1), ("R2", R2), ("P1", P1), ("P2", P2)):
            np.testing.assert_allclose(getattr(record, key), reference, rtol=1e-12, atol=1e-12)
        assert (record.zed_resolution, record.zed_scale) == ("HD", scale)


def test_stereo_mp4_gives_half_width(tmp_path, videos):
    root = tmp_path / "droid"
    wrist = SERIALS["wrist"]
    make_episode(root, videos, stereo_only=(wrist,))
    # The same stereo file without its "-stereo" suffix, as some episodes have it.
    ext1_mp4 = root.glob(f"**/MP4/{SERIALS['ext1']}.mp4").__next__()
    shutil.copy(videos[(2560, 720)], ext1_mp4)
    published = write_published(tmp_path / "p.json", {s: [500.0, 640.0, 500.0, 360.0] for s in SERIALS.values()})
    config = config_for(root, tmp_path, f"intrinsics_path={published}")
    records = extract_intrinsics(config, episode_of(config), tmp_path / "w")
    assert {(r.width, r.height) for r in records.values()} == {(1280, 720)}


# ------------------------------------------------------------------ order, --source, failures


def all_sources_episode(tmp_path, videos):
    """Every CPU source available for every camera, each with different values."""
    root = tmp_path / "droid"
    make_episode(root, videos, h5_intrinsics={s: pinhole(600, 600, 600, 350)[None] for s in SERIALS.values()})
    published = write_published(tmp_path / "p.json", {s: [500.0, 640.0, 500.0, 360.0] for s in SERIALS.values()})
    calib = tmp_path / "zed"
    calib.mkdir()
    rng = np.random.default_rng(12)
    for serial in SERIALS.values():
        (calib / f"SN{serial}.conf").write_text(format_conf(zed_conf_for(serial, rng)))
    return root, [f"intrinsics_path={published}", f"zed_calibration_dir={calib}"]


@pytest.mark.parametrize("order", [["published", "h5", "zed_conf"], ["h5", "published"],
                                   ["zed_conf", "h5", "published"]])
def test_configured_order_decides_the_source(tmp_path, videos, order):
    root, settings = all_sources_episode(tmp_path, videos)
    config = config_for(root, tmp_path, *settings, f"intrinsics_sources={json.dumps(order)}")
    records = extract_intrinsics(config, episode_of(config), tmp_path / "w")
    assert {r.source for r in records.values()} == {order[0]}
    expected_fx = {"published": 500.0, "h5": 600.0}.get(order[0])
    if expected_fx is not None:
        assert {r.fx for r in records.values()} == {expected_fx}


def test_failed_sources_are_recorded_and_skipped(tmp_path, videos):
    root, settings = all_sources_episode(tmp_path, videos)
    ext2 = SERIALS["ext2"]
    published = write_published(tmp_path / "p2.json", {ext2: [500.0, 9999.0, 500.0, 360.0]})
    config = config_for(root, tmp_path, *settings, f"intrinsics_path={published}")
    record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext2])[ext2]
    assert record.source == "h5"
    assert [a.source for a in record.attempts] == ["published"]
    assert "outside" in record.attempts[0].error


def test_no_source_names_camera_and_every_reason(tmp_path, videos, monkeypatch):
    root = tmp_path / "droid"
    make_episode(root, videos)
    config = config_for(root, tmp_path, f"zed_calibration_dir={tmp_path}")
    monkeypatch.setitem(sys.modules, "pyzed", None)
    with pytest.raises(EpisodeError) as error:
        extract_intrinsics(config, episode_of(config), tmp_path / "w")
    message = str(error.value)
    assert f"camera {SERIALS['wrist']} (wrist): no intrinsics source worked" in message
    for reason in ("published: intrinsics_path is not set", "h5: trajectory.h5 has no",
                   f"zed_conf: no {tmp_path}/SN{SERIALS['wrist']}.conf", "zed_sdk: ZED SDK not installed"):
        assert reason in message
    assert not (tmp_path / "w").exists()


def test_allow_missing_intrinsics_leaves_camera_out(tmp_path, videos):
    root = tmp_path / "droid"
    make_episode(root, videos)
    published = write_published(tmp_path / "p.json", {SERIALS["ext1"]: [500.0, 640.0, 500.0, 360.0]})
    config = config_for(root, tmp_path, f"intrinsics_path={published}", "allow_missing_intrinsics=true")
    records = extract_intrinsics(config, episode_of(config), tmp_path / "w", sources=["published"])
    assert list(records) == [SERIALS["ext1"]]
    assert [p.parent.name for p in (tmp_path / "w").rglob("intrinsics.json")] == [SERIALS["ext1"]]


def test_unknown_camera_and_source_are_errors(tmp_path, videos):
    root = tmp_path / "droid"
    folder = make_episode(root, videos)
    config = config_for(root, tmp_path)
    with pytest.raises(EpisodeError, match="unknown camera 'ext3'; this episode has wrist=13062452"):
        extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["ext3"])
    with pytest.raises(EpisodeError, match="unknown or no intrinsics sources"):
        extract_intrinsics(config, episode_of(config), tmp_path / "w", sources=["magic"])
    (folder / f"metadata_{EPISODE_ID}.json").write_text(json.dumps({"uuid": EPISODE_ID}))
    config = config_for(root, tmp_path, f"episode_index_path={tmp_path / 'index2.json'}")
    with pytest.raises(EpisodeError, match="names no camera serial"):
        extract_intrinsics(config, episode_of(config), tmp_path / "w")


# ------------------------------------------------------------------ ZED SDK source through the fake


@pytest.fixture
def fake_sl(monkeypatch):
    for name in ("pyzed", "pyzed.sl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKE_SDK))
    yield importlib.import_module("pyzed.sl")
    for name in ("pyzed.sl", "pyzed"):
        sys.modules.pop(name, None)


def test_zed_sdk_source_reads_svo_size_without_mp4(tmp_path, videos, fake_sl):
    root = tmp_path / "droid"
    folder = make_episode(root, videos)
    wrist = SERIALS["wrist"]
    (folder / "recordings" / "MP4" / f"{wrist}.mp4").unlink()
    (folder / "recordings" / "SVO").mkdir()
    recording = {"resolution": [672, 376], "baseline_mm": 63.0,
                 "left_cam": {"fx": 262.5, "fy": 262.5, "cx": 333.0, "cy": 190.5, "disto": [0.0] * 12}}
    (folder / "recordings" / "SVO" / f"{wrist}.svo").write_text(json.dumps(recording))
    (tmp_path / f"SN{wrist}.conf").write_text(format_conf(zed_conf_for(wrist, np.random.default_rng(13))))
    config = config_for(root, tmp_path, f"zed_calibration_dir={tmp_path}")
    record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["wrist"])[wrist]
    assert record.source == "zed_sdk"
    assert (record.width, record.height, record.fx, record.cx) == (672, 376, 262.5, 333.0)
    assert record.baseline_m == pytest.approx(0.063)
    assert [a.source for a in record.attempts] == ["published", "h5", "zed_conf"]
    assert "no recordings/MP4" in record.attempts[2].error


def test_zed_sdk_size_must_match_video(tmp_path, videos, fake_sl):
    root = tmp_path / "droid"
    folder = make_episode(root, videos)
    ext1 = SERIALS["ext1"]
    (folder / "recordings" / "SVO").mkdir()
    recording = {"resolution": [672, 376], "baseline_mm": 120.0,
                 "left_cam": {"fx": 262.5, "fy": 262.5, "cx": 333.0, "cy": 190.5, "disto": [0.0] * 12}}
    (folder / "recordings" / "SVO" / f"{ext1}.svo").write_text(json.dumps(recording))
    strict = config_for(root, tmp_path, "plausibility.rescale_intrinsics=false")
    with pytest.raises(EpisodeError, match=r"intrinsics are for 672x376, the video .* is 1280x720"):
        extract_intrinsics(strict, episode_of(strict), tmp_path / "w", cameras=[ext1], sources=["zed_sdk"])
    # Rescaled per axis instead (1280/672 and 720/376), pixel centres kept, with a warning.
    config = config_for(root, tmp_path)
    record = extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=[ext1], sources=["zed_sdk"])[ext1]
    sx, sy = 1280 / 672, 720 / 376
    np.testing.assert_allclose([record.fx, record.fy, record.cx, record.cy],
                               [262.5 * sx, 262.5 * sy, 333.5 * sx - 0.5, 191.0 * sy - 0.5])
    assert record.size == (1280, 720) and "672x376 scaled per axis" in record.warnings[0]


# ------------------------------------------------------------------ reading back


def test_load_intrinsics_rejects_bad_files(tmp_path, videos):
    root = tmp_path / "droid"
    make_episode(root, videos)
    published = write_published(tmp_path / "p.json", {SERIALS["ext1"]: [500.0, 640.0, 500.0, 360.0]})
    config = config_for(root, tmp_path, f"intrinsics_path={published}")
    extract_intrinsics(config, episode_of(config), tmp_path / "w", cameras=["ext1"])
    path = tmp_path / "w" / "recordings" / SERIALS["ext1"] / "intrinsics.json"
    good = json.loads(path.read_text())
    for change, reason in (({"fx": "500"}, "fx must be a finite number"), ({"width": 0}, "width must be a positive"),
                           ({"K": [[1, 0], [0, 1]]}, "K must be a finite"), ({"cx": 641.0}, "disagrees with"),
                           ({"source": "guess"}, "source must be one of"), ({"cy": -1.0}, "outside")):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(IntrinsicsError, match=reason) as error:
            IntrinsicsRecord.load(path)
        assert str(path) in str(error.value)
    path.write_text("{")
    with pytest.raises(IntrinsicsError, match="cannot read"):
        IntrinsicsRecord.load(path)


# ------------------------------------------------------------------ command line


def test_cli_source_option_and_output_dir(tmp_path, videos, capsys):
    root, settings = all_sources_episode(tmp_path, videos)
    sets = [a for s in [f"droid_root={root}", f"output_root={tmp_path / 'out'}", *settings] for a in ("--set", s)]
    assert main(["--episode_id", EPISODE_ID, *sets, "--source", "zed_conf", "--cameras", "wrist,ext1"]) == 0
    out_dir = tmp_path / "out" / "TESTLab" / "success" / "2023-07-07" / "Fri_Jul__7_09:42:23_2023"
    written = sorted(p.parent.name for p in out_dir.rglob("intrinsics.json"))
    assert written == sorted([SERIALS["wrist"], SERIALS["ext1"]])
    assert all(IntrinsicsRecord.load(p).source == "zed_conf" for p in out_dir.rglob("intrinsics.json"))
    assert "zed_conf" in capsys.readouterr().out
    assert main(["--episode_id", EPISODE_ID, *sets, "--source", "h5", "--source", "published",
                 "--output-dir", str(tmp_path / "work")]) == 0
    assert {IntrinsicsRecord.load(p).source for p in (tmp_path / "work").rglob("intrinsics.json")} == {"h5"}


def test_entry_point_exit_codes(tmp_path, videos):
    root = tmp_path / "droid"
    make_episode(root, videos)
    base = [sys.executable, str(REPO / "extract_intrinsics_only.py"), "--set", f"droid_root={root}",
            "--set", f"output_root={tmp_path / 'out'}"]
    unknown = subprocess.run([*base, "--episode_id", "TESTLab+0badc0de+2023-07-07-09h-42m-24s"],
                             capture_output=True, text=True)
    assert unknown.returncode == 1
    assert "step intrinsics" in unknown.stderr and "unknown episode id" in unknown.stderr
    failed = subprocess.run([*base, "--episode_id", EPISODE_ID, "--source", "published"],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "intrinsics_path is not set" in failed.stderr
    assert "Traceback" not in failed.stderr + unknown.stderr


# ------------------------------------------------------------------ the synthetic episodes' ground truth


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Three generated episodes (the third also carries observation/camera_intrinsics)."""
    out = tmp_path_factory.mktemp("synthetic")
    subprocess.run([sys.executable, "-m", "droid_pipeline.demo", "--out", str(out), "--episodes", "3",
                    "--frames", "2"], check=True, capture_output=True, cwd=REPO)
    return out


RESOLUTION_WIDTHS = {"HD": 1280, "FHD": 1920, "2K": 2208, "VGA": 672}  # smallest downscale factor first


def conf_rectified_by_opencv(conf_path: Path, width: int, height: int) -> tuple[np.ndarray, float]:
    """Rectified K and baseline read straight from the INI with configparser and cv2.stereoRectify."""
    ini = configparser.ConfigParser()
    ini.read(conf_path)
    key, scale = next((k, RESOLUTION_WIDTHS[k] // width) for k in RESOLUTION_WIDTHS
                      if RESOLUTION_WIDTHS[k] % width == 0 and f"LEFT_CAM_{k}" in ini)
    def lens(side: str) -> tuple[np.ndarray, np.ndarray]:
        s = {name: float(ini[f"{side}_CAM_{key}"][name]) for name in ("fx", "fy", "cx", "cy", "k1", "k2", "p1",
                                                                      "p2", "k3")}
        return (pinhole(s["fx"] / scale, s["fy"] / scale, (s["cx"] + 0.5) / scale - 0.5, (s["cy"] + 0.5) / scale - 0.5),
                np.array([s["k1"], s["k2"], s["p1"], s["p2"], s["k3"]]))
    stereo = ini["STEREO"]
    R = cv2.Rodrigues(np.array([float(stereo[f"RX_{key}"]), float(stereo[f"CV_{key}"]), float(stereo[f"RZ_{key}"])]))[0]
    T = np.array([[-float(stereo["Baseline"])], [float(stereo[f"TY_{key}"])], [float(stereo[f"TZ_{key}"])]]) / 1000
    (K_l, d_l), (K_r, d_r) = lens("LEFT"), lens("RIGHT")
    _, _, P1, P2, *_ = cv2.stereoRectify(K_l, d_l, K_r, d_r, (width, height), R, T,
                                         flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    return P1[:3, :3], -P2[0, 3] / P2[0, 0]


@pytest.mark.parametrize("source", ["published", "h5", "zed_conf"])
def test_synthetic_episodes_match_ground_truth(synthetic, tmp_path, source):
    dataset = json.loads((synthetic / "ground_truth" / "dataset.json").read_text())
    checked = 0
    for episode in dataset["episodes"]:
        h5_path = synthetic / "droid_raw" / episode["relative_path"] / "trajectory.h5"
        with h5py.File(h5_path, "r") as h5:
            if source == "h5" and "observation/camera_intrinsics" not in h5:
                continue
        truth = json.loads((synthetic / "ground_truth" / episode["relative_path"] / "cameras.json").read_text())
        out = tmp_path / episode["episode_id"]
        assert main(["--episode_id", episode["episode_id"], "--config", str(synthetic / "config.yaml"),
                     "--set", f"episode_index_path={tmp_path / 'index.json'}", "--source", source,
                     "--output-dir", str(out)]) == 0
        for serial, expected in truth.items():
            record = IntrinsicsRecord.load(out / "recordings" / serial / "intrinsics.json")
            assert record.source == source
            assert (record.width, record.height) == (expected["width"], expected["height"])
            np.testing.assert_allclose(record.K, expected["K"], rtol=1e-6)
            if source == "zed_conf":
                assert record.baseline_m == pytest.approx(expected["baseline_m"], rel=1e-9)
                K, baseline = conf_rectified_by_opencv(synthetic / "calibration" / "zed" / f"SN{serial}.conf",
                                                       record.width, record.height)
                np.testing.assert_allclose(record.K, K, rtol=1e-12)
                assert record.baseline_m == pytest.approx(baseline, rel=1e-12)
            checked += 1
    assert checked >= 3
