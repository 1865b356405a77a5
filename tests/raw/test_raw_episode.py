"""RawEpisode on DROID-layout folders built here: metadata checks, camera selection, which MP4 is
a camera's left view or its stereo file (real videos encoded by FFmpeg), and trajectory.h5 read
through the one reader with errors naming the step."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.raw.episode import RawEpisode, find_camera_video, find_stereo_video
from droid_pipeline.raw.video import VideoError

EPISODE_ID = "TESTLab+0badc0de+2023-07-07-09h-42m-23s"
RELATIVE = "TESTLab/success/2023-07-07/Fri_Jul__7_09:42:23_2023"
SERIALS = {"wrist": "13062452", "ext1": "24259877", "ext2": "26405488"}
FRAMES = 4


def encode(path: Path, width: int, height: int, frames: int = FRAMES) -> Path:
    """A real video of ``frames`` frames; odd sizes go into FFV1 (H.264 4:2:0 needs even ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = ["-c:v", "libx264", "-pix_fmt", "yuv420p"] if width % 2 == 0 else ["-c:v", "ffv1", "-f", "matroska"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate=15",
                    "-frames:v", str(frames), *codec, str(path)], check=True)
    return path


def make_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "droid_raw"
    folder = root / RELATIVE
    folder.mkdir(parents=True)
    meta = {"uuid": EPISODE_ID, **{f"{role}_cam_serial": s for role, s in SERIALS.items()}}
    (folder / f"metadata_{EPISODE_ID}.json").write_text(json.dumps(meta))
    steps = np.arange(FRAMES, dtype=np.float64)
    with h5py.File(folder / "trajectory.h5", "w") as h5:
        pose = np.zeros((FRAMES, 6))
        pose[:, 0] = steps
        h5["observation/robot_state/cartesian_position"] = pose
        h5["observation/timestamp/control/step_start"] = 1000.0 + steps * 1000.0 / 15.0
        h5["observation/timestamp/control/alpha"] = steps * 100.0
        bad = np.ones((FRAMES, 6))
        bad[2, 3] = np.nan
        h5["observation/robot_state/bad"] = bad
    return root, folder


def load(root: Path, step: str = "depth") -> RawEpisode:
    return RawEpisode.load(build_index(root).get(EPISODE_ID), root, step)


def test_metadata_cameras_and_roles(tmp_path):
    root, folder = make_root(tmp_path)
    raw = load(root)
    assert raw.folder == folder and raw.episode_id == EPISODE_ID
    assert raw.metadata == json.loads((folder / f"metadata_{EPISODE_ID}.json").read_text())
    assert raw.cameras == {serial: role for role, serial in SERIALS.items()}
    assert raw.role(SERIALS["ext2"]) == "ext2" and raw.role("999") == "unknown role"
    assert raw.svo_path(SERIALS["wrist"]) == folder / "recordings" / "SVO" / f"{SERIALS['wrist']}.svo"


@pytest.mark.parametrize("metadata, cause", [
    ({"uuid": "TESTLab+0badc0de+2023-07-07-09h-42m-24s"},
     r"belongs to episode 'TESTLab\+0badc0de\+2023-07-07-09h-42m-24s'"),
    ("[1, 2]", "is not a JSON object"),
    ("{", "cannot read metadata"),
])
def test_bad_metadata_fails_the_step(tmp_path, metadata, cause):
    root, folder = make_root(tmp_path)
    episode = build_index(root).get(EPISODE_ID)
    (folder / episode.metadata_file).write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))
    with pytest.raises(EpisodeError, match=f"episode {re.escape(EPISODE_ID)}: step tracks: .*{cause}"):
        RawEpisode.load(episode, root, "tracks")


def test_select_cameras_by_role_or_serial(tmp_path):
    raw = load(make_root(tmp_path)[0])
    assert raw.select_cameras(None) == list(SERIALS.values())
    assert raw.select_cameras(["ext2", SERIALS["wrist"], "wrist"]) == [SERIALS["ext2"], SERIALS["wrist"]]
    with pytest.raises(EpisodeError, match=r"step depth: unknown camera 'left'; this episode has wrist=13062452"):
        raw.select_cameras(["left"])


@pytest.mark.parametrize("files, expected", [
    ({"{s}.mp4": (320, 180), "{s}-stereo.mp4": (640, 180)}, ("{s}.mp4", False, (320, 180))),
    ({"{s}-stereo.mp4": (640, 180)}, ("{s}-stereo.mp4", True, (320, 180))),
    ({"{s}.mp4": (640, 180)}, ("{s}.mp4", True, (320, 180))),          # the "-stereo" suffix left out
    ({"{s}.mp4": (1280, 720)}, ("{s}.mp4", False, (1280, 720))),        # a ZED mode itself: left view
    ({}, None),
])
def test_camera_video_is_the_left_view(tmp_path, files, expected):
    serial = SERIALS["ext1"]
    for name, (width, height) in files.items():
        encode(tmp_path / name.format(s=serial), width, height)
    video = find_camera_video(tmp_path, serial)
    if expected is None:
        assert video is None
        return
    name, side_by_side, left_size = expected
    assert video.path == tmp_path / name.format(s=serial)
    assert (video.side_by_side, video.left_size, video.info.num_frames) == (side_by_side, left_size, FRAMES)


def test_odd_width_stereo_video_is_an_error(tmp_path):
    encode(tmp_path / "1-stereo.mp4", 641, 180)
    with pytest.raises(VideoError, match="1-stereo.mp4 has odd width 641"):
        find_camera_video(tmp_path, "1")


def test_stereo_video_matches_the_left_size(tmp_path):
    serial = SERIALS["wrist"]
    encode(tmp_path / f"{serial}.mp4", 640, 180)
    video = find_stereo_video(tmp_path, serial, 320, 180)     # the unsuffixed file is the stereo one
    assert video.path.name == f"{serial}.mp4" and video.side_by_side and video.info.num_frames == FRAMES
    encode(tmp_path / f"{serial}-stereo.mp4", 640, 180)
    assert find_stereo_video(tmp_path, serial, 320, 180).path.name == f"{serial}-stereo.mp4"
    with pytest.raises(VideoError, match=rf"no side-by-side stereo video 1280x360 .* {serial}-stereo.mp4 is "
                                         rf"640x180; {serial}.mp4 is 640x180"):
        find_stereo_video(tmp_path, serial, 640, 360)


def test_trajectory_is_read_through_one_reader(tmp_path):
    raw = load(make_root(tmp_path)[0], "intrinsics")
    with raw.trajectory() as h5:
        assert h5.num_steps() == FRAMES
        cartesian = h5.array("observation/robot_state/cartesian_position", (None, 6))
        np.testing.assert_array_equal(cartesian[:, 0], np.arange(FRAMES))
        rate, key = h5.control_rate(FRAMES, load_config().plausibility)
        assert key == "observation/timestamp/control/step_start" and rate == pytest.approx(15.0)
        assert h5.has("observation/robot_state/bad") and not h5.has("observation/nothing")
        with pytest.raises(EpisodeError, match=r"step intrinsics: trajectory.h5: missing dataset observation/no"):
            h5.numbers("observation/no")
        with pytest.raises(EpisodeError, match=r"trajectory.h5: NaN or inf in observation/robot_state/bad "
                                               r"at 1 of 4 steps: 2"):
            h5.array("observation/robot_state/bad", (None, 6))
        with pytest.raises(EpisodeError, match=r"bad has shape \(4, 6\), expected \(T, 7\)"):
            h5.array("observation/robot_state/bad", (None, 7))


def test_unreadable_trajectory_fails_the_step(tmp_path):
    root, folder = make_root(tmp_path)
    raw = load(root, "tracks")
    (folder / "trajectory.h5").write_bytes(b"not hdf5")
    with pytest.raises(EpisodeError, match=r"step tracks: cannot open .*trajectory.h5"), raw.trajectory():
        pass


@pytest.mark.parametrize("size", [1, 2, 3, 10, 301, 3000])
def test_median_and_distinct_values_equal_numpys(size: int) -> None:
    """The trajectory reader's own median and distinct values (NumPy's import masked arrays) hold
    to ``np.median`` and ``np.unique``: ties, negatives, NaN and strings included."""
    from droid_pipeline.raw.trajectory import _median, distinct_values

    rng = np.random.default_rng(size)
    for values in (rng.normal(66.7, 5, size), rng.integers(-3, 4, size).astype(np.float64),
                   np.round(rng.normal(0, 1e3, size), 1)):
        assert _median(values) == float(np.median(values))
        assert distinct_values(values) == np.unique(values).tolist()
        assert distinct_values(values.astype(np.int64)) == np.unique(values.astype(np.int64)).tolist()
        with_nan = values.copy()
        with_nan[size // 2] = np.nan
        assert np.isnan(_median(with_nan)) and np.isnan(np.median(with_nan))
        with_nan[:2] = np.nan
        assert str(distinct_values(with_nan)) == str(np.unique(with_nan).tolist())   # one nan, as NumPy's
    names = rng.choice(np.array([b"wrist", b"ext", b""]), (size, 1))
    assert distinct_values(names) == np.unique(names).tolist()
    assert distinct_values(np.empty((0, 2))) == np.unique(np.empty((0, 2))).tolist() == []
