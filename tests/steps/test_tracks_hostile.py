"""The tracks step on rendered synthetic episodes damaged as real ones are: a trajectory in the
wrong units fails before anything is computed, control timestamps out of order are counted in
quality.json, and an MP4 cut short behind an index at the front is a frame mismatch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic_fixtures import small_dataset
from video_damage import faststart_cut

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.raw.trajectory import CARTESIAN_KEY, GRIPPER_KEY
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks

STAMPS_KEY = "observation/timestamp/control/step_start"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_dataset(tmp_path_factory)


class Copy:
    """A private copy of episode 0 of the small dataset, with its intrinsics already extracted."""

    def __init__(self, dataset, tmp_path: Path, *overrides: str):
        self.episode = dataset.episodes[0]
        shutil.copytree(dataset.droid_root / self.episode.relative_path,
                        tmp_path / "droid_raw" / self.episode.relative_path)
        self.folder = tmp_path / "droid_raw" / self.episode.relative_path
        self.output = tmp_path / "work"
        self.config = load_config([dataset.config_path], [
            f"droid_root={tmp_path / 'droid_raw'}", f"output_root={tmp_path / 'out'}",
            f"episode_index_path={tmp_path / 'index.json'}", *overrides])

    def record(self):
        return build_index(self.config.droid_root, self.config.index_path, rescan=True).get(self.episode.episode_id)

    def change(self, key: str, change) -> None:
        with h5py.File(self.folder / "trajectory.h5", "r+") as h5:
            value = change(h5[key][()])
            del h5[key]
            h5[key] = value

    def run(self) -> dict:
        extract_intrinsics(self.config, self.record(), self.output)
        generate_tracks(self.config, self.record(), self.output)
        return json.loads((self.output / "quality.json").read_text())

    def fails(self) -> str:
        extract_intrinsics(self.config, self.record(), self.output)
        with pytest.raises(EpisodeError) as info:
            generate_tracks(self.config, self.record(), self.output)
        assert info.value.step == "tracks" and info.value.episode_id == self.episode.episode_id
        for name in ("tracks.npz", "extrinsics.npz", "quality.json"):
            assert not (self.output / name).exists()
        return info.value.cause


def test_plausibility_figures_go_into_quality_json(dataset, tmp_path):
    quality = Copy(dataset, tmp_path).run()
    figures = quality["plausibility"]
    assert 0.2 < figures["max_reach_m"] < 1.2 and figures["limits"]["max_step_m"] == 0.2
    assert quality["control_timestamps"]["repeated"] == quality["control_timestamps"]["backwards"] == 0


def test_positions_in_millimetres_fail_the_step_naming_the_mistake(dataset, tmp_path):
    copy = Copy(dataset, tmp_path)
    copy.change(CARTESIAN_KEY, lambda pose: np.concatenate([pose[:, :3] * 1000.0, pose[:, 3:]], axis=1))
    cause = copy.fails()
    assert "plausibility.max_reach_m" in cause and "looks like millimetres" in cause


def test_gripper_on_a_0_255_scale_fails_the_step(dataset, tmp_path):
    copy = Copy(dataset, tmp_path)
    copy.change(GRIPPER_KEY, lambda g: np.round(g * 255.0))
    assert "Robotiq's raw 0..255 register scale" in copy.fails()


def test_one_swap_and_one_repeat_are_counted_with_a_warning(dataset, tmp_path):
    copy = Copy(dataset, tmp_path, "plausibility.max_bad_timestamp_fraction=0.06")

    def swap_and_repeat(stamps):
        stamps = stamps.copy()
        stamps[[5, 6]] = stamps[[6, 5]]
        stamps[20] = stamps[19]
        return stamps
    copy.change(STAMPS_KEY, swap_and_repeat)
    quality = copy.run()
    counts = quality["control_timestamps"]
    assert (counts["repeated"], counts["backwards"], counts["bad_steps"]) == (1, 1, [6, 20])
    assert any("1 repeated and 1 backward" in w for w in quality["warnings"])


def test_faststart_mp4_cut_short_is_a_frame_mismatch_within_the_tolerance(dataset, tmp_path):
    copy = Copy(dataset, tmp_path)
    ext1 = copy.episode.serials["ext1"]
    mp4 = copy.folder / "recordings" / "MP4" / f"{ext1}.mp4"
    lost_pts = faststart_cut(mp4, keep=38)
    quality = copy.run()
    lost = [pts // 1024 for pts in lost_pts]  # 15 Hz in the 1/15360 time base the MP4s use
    alignment = quality["video_alignment"]["ext1"]
    assert alignment["frame_count"] == 38 and alignment["steps_without_frame"] == lost
    with np.load(copy.output / "tracks.npz") as tracks:
        assert not tracks["visibility_ext1"][lost].any()
    assert any(w.startswith(f"ext1 camera {ext1}: {ext1}.mp4 has 38 frames (its index lists 40: truncated or "
                            "damaged) but trajectory.h5 has 40 steps") for w in quality["warnings"])


def test_faststart_mp4_cut_short_beyond_the_tolerance_fails_naming_camera_and_counts(dataset, tmp_path):
    copy = Copy(dataset, tmp_path)
    wrist = copy.episode.serials["wrist"]
    faststart_cut(copy.folder / "recordings" / "MP4" / f"{wrist}.mp4", keep=30)
    cause = copy.fails()
    assert (f"wrist camera {wrist}: {wrist}.mp4 has 30 frames (its index lists 40: truncated or damaged) but "
            "trajectory.h5 has 40 steps, more than video_frame_mismatch.tolerance_frames = 2") in cause
