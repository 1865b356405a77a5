"""load_episode against the files the pipeline wrote (read back with np.load / json / ffmpeg),
locally and from the loopback Hub server."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hub_server import HubServer
from synthetic_fixtures import SMALL_FRAMES, SMALL_SIZE, converted_small_dataset

from droid_pipeline.core.schema import SCHEMA_VERSION
from droid_pipeline.outputs.loader import LoadError, load_episode

REPO = "user/droid-full"


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    return converted_small_dataset(tmp_path_factory)


def npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def assert_same_arrays(got, expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def ffmpeg_depth(path: Path) -> np.ndarray:
    """Every frame of a depth.mkv decoded by the ffmpeg command line, (N, H, W) uint16."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray16le", "-"],
                         check=True, capture_output=True).stdout
    width, height = SMALL_SIZE
    return np.frombuffer(raw, "<u2").reshape(-1, height, width)


def test_returns_exactly_what_the_pipeline_wrote(converted):
    for episode in converted["episodes"]:
        folder = converted["root"] / episode.relative_path
        data = load_episode(converted["root"], episode.episode_id)
        tracks, extrinsics = npz(folder / "tracks.npz"), npz(folder / "extrinsics.npz")
        assert_same_arrays(data.tracks_npz, tracks)
        assert_same_arrays(data.extrinsics_npz, extrinsics)
        assert (data.path, data.episode_id, data.relative_path) == (folder, episode.episode_id, episode.relative_path)
        assert data.quality == json.loads((folder / "quality.json").read_text())
        assert data.manifest == json.loads((folder / "manifest.json").read_text())
        typed = {"tracks_3d": data.tracks_3d, "contact_points_local": data.contact_points_local,
                 "contact_normals_local": data.contact_normals_local,
                 "contact_centroids": data.contact_centroids, "contact_frames": data.contact_frames,
                 "left_contact_frames": data.left_contact_frames, "right_contact_frames": data.right_contact_frames,
                 "gripper_poses": data.gripper_poses, "gripper_positions": data.gripper_positions,
                 "cartesian_positions": data.cartesian_positions,
                 "normalized_tracks_3d": data.normalized.tracks_3d,
                 "normalized_centroids": data.normalized.centroids,
                 "normalized_frames": data.normalized.frames,
                 "normalized_left_frames": data.normalized.left_frames,
                 "normalized_right_frames": data.normalized.right_frames,
                 "normalized_gripper_positions": data.normalized.gripper_positions,
                 "cumulative_distance_mm": data.normalized.cumulative_distance_mm,
                 "frame_to_normalized_idx": data.normalized.frame_to_normalized_idx}
        for key, value in typed.items():
            np.testing.assert_array_equal(value, tracks[key], err_msg=key)
        assert data.num_frames == int(tracks["num_frames"]) == SMALL_FRAMES
        assert data.fps == float(tracks["fps"])
        assert data.num_points_per_finger == int(tracks["num_points_per_finger"])
        assert data.normalized.step_size_mm == float(tracks["normalized_step_size_mm"])
        assert data.normalized.num_steps == int(tracks["num_normalized_steps"])
        assert list(data.cameras) == extrinsics["serials"].tolist()
        with_2d = zip(tracks["camera_serials"].tolist(), tracks["tracks_2d_status"])
        assert data.cameras_with_2d_tracks == tuple(s for s, status in with_2d if status == "ok")
        for serial, role, source in zip(extrinsics["serials"], extrinsics["roles"], extrinsics["sources"]):
            camera = data.cameras[str(serial)]
            assert (camera.role, camera.extrinsics_source) == (role, source)
            assert data.camera(str(role)) is camera
            np.testing.assert_array_equal(camera.T_base_cam, extrinsics[f"T_base_cam_{role}"])
            for key in ("tracks_2d", "visibility", "occlusion", "intrinsics", "distortion"):
                np.testing.assert_array_equal(getattr(camera, key), tracks[f"{key}_{role}"])
            assert camera.image_size == tuple(tracks[f"image_size_{role}"].tolist())
            record = json.loads((folder / "recordings" / str(serial) / "intrinsics.json").read_text())
            assert camera.intrinsics_record == record
            step = SMALL_FRAMES - 1
            expected_pose = extrinsics[f"T_base_cam_{role}"]
            np.testing.assert_array_equal(camera.pose(step), expected_pose[step] if role == "wrist" else expected_pose)


def test_occlusion_labels_per_camera_read_only(converted):
    """Each camera's labels are the (T, N) uint8 of tracks.npz, read-only; the full-pipeline episode's
    camera with depth has visible points (0), the cameras without depth only 1 (robot) and 3."""
    for number, episode in enumerate(converted["episodes"]):
        data = load_episode(converted["root"], episode.episode_id)
        assert data.contact_normals_local.shape == (2 * data.num_points_per_finger, 3)
        for serial, camera in data.cameras.items():
            assert camera.occlusion.dtype == np.uint8 and camera.occlusion.shape == camera.visibility.shape
            assert not camera.occlusion.flags.writeable
            assert (camera.occlusion[~camera.visibility] == 3).all()
            labels = set(np.unique(camera.occlusion).tolist())
            if number == 0 and camera.role == "ext1":
                assert serial in data.depth_cameras and {0, 1, 3} <= labels
            else:
                assert labels <= {1, 3}


def test_episode_folder_relative_path_and_id_give_the_same_episode(converted):
    episode = converted["episodes"][1]
    folder = converted["root"] / episode.relative_path
    paths = {load_episode(folder).path, load_episode(converted["root"], episode.relative_path).path,
             load_episode(converted["root"], episode.episode_id).path}
    assert paths == {folder}


def test_id_is_found_when_the_folder_name_disagrees_with_it(converted, tmp_path):
    episode = converted["episodes"][0]
    src = converted["root"] / episode.relative_path
    lab, outcome, date, _ = episode.relative_path.split("/")
    for number, folder in enumerate(["Mon_Jan__1_00:00:00_2024", "Mon_Jan__1_00:00:01_2024"]):
        dest = tmp_path / lab / outcome / date / folder
        shutil.copytree(src, dest)
        if number == 0:   # another episode's record in the first folder searched
            quality = json.loads((dest / "quality.json").read_text())
            quality["episode"]["episode_id"] = "someone+else"
            (dest / "quality.json").write_text(json.dumps(quality))
            (dest / "manifest.json").unlink()
    data = load_episode(tmp_path, episode.episode_id)
    assert data.path == tmp_path / lab / outcome / date / "Mon_Jan__1_00:00:01_2024"
    with pytest.raises(LoadError, match="not found among the 2 episode folders"):
        load_episode(tmp_path, f"{lab}+00000000+2024-01-01-00h-00m-00s")


def test_depth_is_lazy_and_decodes_to_the_frames_ffmpeg_reads(converted):
    data = load_episode(converted["root"], converted["episodes"][0].episode_id)
    assert data.depth_cameras == (data.camera("ext1").serial,)
    for serial in data.depth_cameras:
        path = data.path / "recordings" / serial / "depth.mkv"
        expected = ffmpeg_depth(path)
        with data.depth(serial) as reader:
            assert len(reader) == SMALL_FRAMES == len(expected)
            np.testing.assert_array_equal(reader[SMALL_FRAMES // 2], expected[SMALL_FRAMES // 2])
            np.testing.assert_array_equal(reader.read_all(), expected)
        assert data.depth_meta(serial).checksum["value"] == hashlib.sha256(expected.tobytes()).hexdigest()
    metadata_only = load_episode(converted["root"], converted["episodes"][1].episode_id)
    assert metadata_only.depth_cameras == ()
    with pytest.raises(LoadError, match="has no depth"):
        metadata_only.depth("ext1")


def test_arrays_are_read_only(converted):
    data = load_episode(converted["root"], converted["episodes"][1].relative_path)
    with pytest.raises(ValueError):
        data.tracks_3d[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        data.camera("ext1").tracks_2d[0, 0, 0] = 1.0


def test_broken_or_missing_episodes_are_clear_errors(converted, tmp_path):
    episode = converted["episodes"][1]
    folder = tmp_path / "episode"
    shutil.copytree(converted["root"] / episode.relative_path, folder)
    with pytest.raises(LoadError, match="no camera 'ext3'"):
        load_episode(folder).camera("ext3")
    tracks = npz(folder / "tracks.npz")
    np.savez_compressed(folder / "tracks.npz", **{**tracks, "schema_version": np.int32(1)})
    with pytest.raises(LoadError, match=rf"written under output schema 1 \(tracks.npz\) / {SCHEMA_VERSION} "
                                        rf"\(extrinsics.npz\); this package reads schemas \[4, {SCHEMA_VERSION}\]"):
        load_episode(folder)
    np.savez_compressed(folder / "tracks.npz", **{**tracks, "tracks_3d": tracks["tracks_3d"].astype(np.float64)})
    with pytest.raises(LoadError, match="does not follow the output contract: tracks.npz: tracks_3d has dtype "
                                        "float64, expected float32"):
        load_episode(folder)
    extra = {**npz(folder / "extrinsics.npz"), "T_base_cam_99": np.eye(4)}
    np.savez_compressed(folder / "tracks.npz", **tracks)
    np.savez_compressed(folder / "extrinsics.npz", **extra)
    with pytest.raises(LoadError, match="extrinsics.npz: unexpected key 'T_base_cam_99'"):
        load_episode(folder)
    del tracks["normalized_frames"]
    np.savez_compressed(folder / "tracks.npz", **tracks)
    with pytest.raises(LoadError, match="no key 'normalized_frames'"):
        load_episode(folder)
    with pytest.raises(LoadError, match="no tracks.npz"):
        load_episode(converted["root"])
    with pytest.raises(LoadError, match="neither an episode id"):
        load_episode(converted["root"], "not-an-id")
    with pytest.raises(LoadError, match="expected hf://datasets/<user>/<name>"):
        load_episode("hf://datasets/user", episode.episode_id)
    with pytest.raises(LoadError, match="already names an episode"):
        load_episode(f"hf://datasets/{REPO}/{episode.relative_path}", episode.episode_id)


@pytest.fixture()
def hub_repo(converted, tmp_path, monkeypatch):
    """The converted output root committed to a dataset repo on a loopback Hub server."""
    from huggingface_hub import HfApi, constants

    with HubServer(tmp_path / "hub") as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        api = HfApi(endpoint=hub.endpoint)
        api.create_repo(REPO, repo_type="dataset")
        api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=converted["root"])
        hub.requests.clear()
        yield hub


def downloaded_paths(hub: HubServer) -> set[str]:
    marker = f"/datasets/{REPO}/resolve/"
    return {path.split(marker, 1)[1].split("/", 1)[1] for method, path in hub.requests
            if method == "GET" and marker in path}


def test_loads_from_the_hub_downloading_only_that_episode(converted, hub_repo, tmp_path):
    from urllib.parse import unquote

    episode = converted["episodes"][0]
    data = load_episode(f"hf://datasets/{REPO}", episode.episode_id, cache_dir=tmp_path / "cache")
    local = load_episode(converted["root"], episode.episode_id)
    assert_same_arrays(data.tracks_npz, dict(local.tracks_npz))
    assert_same_arrays(data.extrinsics_npz, dict(local.extrinsics_npz))
    assert data.quality == local.quality and data.relative_path == episode.relative_path
    with data.depth("ext1") as got, local.depth("ext1") as expected:
        np.testing.assert_array_equal(got.read_all(), expected.read_all())
    downloaded = {unquote(p) for p in downloaded_paths(hub_repo)}
    expected_files = {f"{episode.relative_path}/{f.relative_to(local.path).as_posix()}"
                      for f in local.path.rglob("*") if f.is_file()}
    assert expected_files <= downloaded
    assert all(p.startswith(episode.relative_path + "/") or p.endswith(("manifest.json", "quality.json"))
               for p in downloaded)


def test_loads_by_relative_path_without_depth(converted, hub_repo, tmp_path):
    from urllib.parse import unquote

    episode = converted["episodes"][0]
    data = load_episode(f"hf://datasets/{REPO}/{episode.relative_path}", cache_dir=tmp_path / "cache",
                        include_depth=False)
    assert data.episode_id == episode.episode_id and data.depth_cameras == ()
    downloaded = {unquote(p) for p in downloaded_paths(hub_repo)}
    assert downloaded and all(p.startswith(episode.relative_path + "/") for p in downloaded)
    assert not any(p.endswith(("depth.mkv", "depth_meta.json")) for p in downloaded)
    with pytest.raises(LoadError, match="no episode at"):
        load_episode(f"hf://datasets/{REPO}", "AUTOLab/success/2020-01-01/nothing", cache_dir=tmp_path / "cache")
