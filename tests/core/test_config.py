"""Configuration: defaults documented, layering, and errors that name the key and the file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from droid_pipeline.core.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    dump_config,
    load_config,
)


def test_every_key_of_default_yaml_is_documented_with_a_comment():
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([a-z_0-9]+):", line)
        if not match:
            continue
        # A key is documented by a comment on the line(s) right above it, or above its group.
        above = lines[number - 1].strip() if number else ""
        is_group_member = match.group(1) != "" and not above.startswith("#")
        assert above.startswith("#") or is_group_member, f"undocumented key at line {number + 1}: {line}"


def test_defaults_load_and_hold_the_seed_names():
    config = load_config()
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for name in ("droid_root", "output_root", "cam2base_extrinsics_path", "num_track_points", "fps",
                 "min_depth", "intrinsics_path", "zed_calibration_dir", "run_root"):
        assert name in raw
    assert config.num_track_points == raw["num_track_points"]
    assert config.min_depth.for_role("wrist") == raw["min_depth"]["wrist"]
    assert config.min_depth.for_role("ext2") == raw["min_depth"]["exterior"]
    assert config.outcomes == ["success"]


def test_layers_later_wins_and_paths_resolve_against_their_file(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text("droid_root: raw\nnum_track_points: 100\nslurm:\n  partition: cpu\n")
    second = tmp_path / "second.yaml"
    second.write_text("num_track_points: 200\n")
    config = load_config([site / "site.yaml", second], ["slurm.time=01:00:00", "labs=[AUTOLab]"])
    assert config.droid_root == (site / "raw").resolve()
    assert config.num_track_points == 200
    assert config.slurm.partition == "cpu"
    assert config.slurm.time == "01:00:00"
    assert config.slurm.cpus_per_task == yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())["slurm"]["cpus_per_task"]
    assert config.labs == ["AUTOLab"]


def test_site_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site.yaml"
    site.write_text("workers: 3\n")
    monkeypatch.setenv("DROID_PIPELINE_SITE_CONFIG", str(site))
    assert load_config().workers == 3


@pytest.mark.parametrize(("text", "key"), [
    ("num_track_ponts: 10\n", "num_track_ponts"),
    ("slurm:\n  partitoin: gpu\n", "slurm.partitoin"),
])
def test_unknown_key_names_key_and_file(tmp_path: Path, text: str, key: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config([path])
    assert f"'{key}'" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(("override", "key"), [
    ("num_track_points=abc", "num_track_points"),
    ("num_track_points=7", "num_track_points"),
    ("num_track_points=0", "num_track_points"),
    ("normalized_step_size_mm=-1", "normalized_step_size_mm"),
    ("depth_backend=lidar", "depth_backend"),
    ("stereo.lr_check=maybe", "stereo.lr_check"),
    ("outcomes=[success, unknown]", "outcomes[1]"),
    ("min_depth.wrist=-0.1", "min_depth.wrist"),
    ("ffv1=3", "ffv1"),
    ("delete_after_upload=1", "delete_after_upload"),
    ("npz.engine=brotli", "npz.engine"),
    ("npz.level=10", "npz.level"),
])
def test_wrong_types_and_ranges_name_the_key(override: str, key: str):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert f"'{key}'" in str(info.value) and "--set" in str(info.value)


def test_wrong_type_in_file_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("fps: fast\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r".*'fps'"):
        load_config([path])


def test_malformed_inputs(tmp_path: Path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad_yaml])
    with pytest.raises(ConfigError, match="cannot read"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["num_track_points"])


def test_effective_config_round_trips(tmp_path: Path):
    config = load_config(overrides=["num_track_points=64", "fps=15"])
    dump_config(config, tmp_path / "effective.yaml")
    assert load_config([tmp_path / "effective.yaml"]) == config


def test_cam2base_files_one_key_or_the_list_never_both(tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "old.yaml").write_text("cam2base_extrinsics_path: calib/cam2base_extrinsics.json\n")
    old = load_config([site / "old.yaml"])
    assert old.cam2base_paths == [(site / "calib" / "cam2base_extrinsics.json").resolve()]
    (site / "new.yaml").write_text("cam2base_extrinsics_paths:\n  - calib/superset.json\n  - calib/plain.json\n")
    new = load_config([site / "new.yaml"])
    assert new.cam2base_paths == [(site / "calib" / name).resolve() for name in ("superset.json", "plain.json")]
    assert load_config([site / "new.yaml"], ["cam2base_extrinsics_paths=one.json"]).cam2base_paths == \
        [(Path.cwd() / "one.json").resolve()]
    assert load_config().cam2base_paths == []
    with pytest.raises(ConfigError) as info:
        load_config([site / "old.yaml", site / "new.yaml"])
    message = str(info.value)
    assert f"cam2base_extrinsics_path (set by {site / 'old.yaml'})" in message
    assert f"cam2base_extrinsics_paths (set by {site / 'new.yaml'})" in message
    assert load_config([site / "old.yaml", site / "new.yaml"], ["cam2base_extrinsics_path="]).cam2base_paths == \
        new.cam2base_paths


def test_quality_bounds_are_mappings_of_metric_type_to_number(tmp_path: Path):
    config = load_config(overrides=["min_calibration_quality.at_most.Reprojection_error=2",
                                    "min_calibration_quality.at_least={iou: 0.8}"])
    quality = config.min_calibration_quality
    assert quality.at_most == {"Reprojection_error": 2.0} and quality.at_least == {"iou": 0.8}
    assert quality.enabled and not load_config().min_calibration_quality.enabled
    assert load_config(overrides=["min_calibration_quality.at_least="]).min_calibration_quality.at_least == {}
    for override, expected in (("min_calibration_quality.at_most.x=high", "a number"),
                               ("min_calibration_quality.at_least=[1]", "a mapping"),
                               ("min_calibration_quality.at_least={1: 2}", "non-empty string keys"),
                               ("min_calibration_quality.action=ignore", "one of 'warn', 'fail'")):
        with pytest.raises(ConfigError, match=expected):
            load_config(overrides=[override])


@pytest.mark.parametrize(("override", "key"), [
    ("gripper.mount_xyz_m=[0, 0]", "gripper.mount_xyz_m"),
    ("gripper.mount_rpy=[0, 0, x]", "gripper.mount_rpy[2]"),
    ("video_frame_mismatch.tolerance_frames=-1", "video_frame_mismatch.tolerance_frames"),
    ("video_frame_mismatch.action=skip", "video_frame_mismatch.action"),
])
def test_gripper_and_frame_policy_keys_are_checked(override: str, key: str):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert f"'{key}'" in str(info.value)


def test_new_groups_round_trip(tmp_path: Path):
    config = load_config(overrides=["min_calibration_quality.at_most.Reprojection_error=2",
                                    "gripper.mount_xyz_m=[0, 0, 0.0102]", "cam2base_extrinsics_paths=[a.json]"])
    dump_config(config, tmp_path / "effective.yaml")
    assert load_config([tmp_path / "effective.yaml"]) == config


def test_the_isal_engine_takes_levels_up_to_3():
    assert load_config(overrides=["npz.engine=isal", "npz.level=3"]).npz.level == 3
    with pytest.raises(ConfigError, match=r"--set npz.level: key 'npz.level' must be 0..3 with npz.engine isal"):
        load_config(overrides=["npz.engine=isal", "npz.level=6"])
    with pytest.raises(ConfigError, match=r"key 'npz.level_by_member.tracks_3d' must be 0..3 with npz.engine isal"):
        load_config(overrides=["npz.engine=isal", "npz.level_by_member.tracks_3d=4"])
    assert load_config(overrides=["npz.engine=zlib", "npz.level_by_member.tracks_3d=9"]).npz.level_by_member == {
        "normalized_tracks_3d": 1, "tracks_3d": 9}


def test_member_levels_name_members_of_the_npz_files():
    assert load_config(overrides=["npz.level_by_member.normalized_tracks_3d=3"]).npz.level_by_member == {
        "normalized_tracks_3d": 3}
    assert load_config(overrides=["npz.level_by_member={T_base_cam_ext1: 0}"]).npz.level_by_member == {
        "normalized_tracks_3d": 1, "T_base_cam_ext1": 0}
    with pytest.raises(ConfigError, match=r"'npz.level_by_member' names normalised_tracks_3d, not a member of "
                                          r"tracks.npz or extrinsics.npz"):
        load_config(overrides=["npz.level_by_member={normalised_tracks_3d: 1}"])


def test_the_isal_engine_without_its_package_fails_at_load(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "isal" else real(name, *a))
    with pytest.raises(ConfigError, match=r"npz.engine is isal but the package isal is not installed"):
        load_config()   # the default engine
    assert load_config(overrides=["npz.engine=zlib", "npz.level=1"]).npz.engine == "zlib"
