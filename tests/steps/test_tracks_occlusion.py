"""Occlusion labels through the tracks step, on the rendered demo episodes: against the renderer's
truth (the robot re-rendered finely around the pads, tests/support/occlusion_truth.py), against
depth maps built here and decoded independently, for metadata-only and full-pipeline episodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from occlusion_truth import rendered_views
from synthetic_fixtures import converted_small_dataset, small_dataset

from droid_pipeline.core.config import load_config
from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.formats.depth_codec import DepthReader, DepthWriter
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks

VISIBLE, HIDDEN_BY_ROBOT, HIDDEN_BY_SCENE, UNKNOWN = 0, 1, 2, 3   # docs/outputs.md
NAMES = {VISIBLE: "visible", HIDDEN_BY_ROBOT: "hidden_by_robot", HIDDEN_BY_SCENE: "hidden_by_scene",
         UNKNOWN: "unknown"}
NEAR_SURFACE_MM = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return small_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def metadata_only(dataset, tmp_path_factory) -> dict:
    """Every demo episode through the intrinsics and tracks steps (no depth)."""
    tmp = tmp_path_factory.mktemp("occlusion_tracks")
    overrides = [f"output_root={tmp / 'output'}", f"episode_index_path={tmp / 'index.json'}"]
    config = load_config([dataset.config_path], overrides)
    index = build_index(config.droid_root, config.index_path)
    outputs = {}
    for synthetic in dataset.episodes:
        episode = index.get(synthetic.episode_id)
        folder = config.output_root / episode.relative_path
        extract_intrinsics(config, episode, folder)
        generate_tracks(config, episode, folder)
        outputs[synthetic.episode_id] = {"episode": episode, "folder": folder, **read_outputs(folder)}
    return {"config": config, "overrides": overrides, "outputs": outputs}


def read_outputs(folder: Path) -> dict:
    with np.load(folder / "tracks.npz", allow_pickle=False) as tracks:
        return {"tracks": dict(tracks), "quality": json.loads((folder / "quality.json").read_text())}


def fractions(labels: np.ndarray) -> dict[str, float]:
    return {name: float(np.mean(labels == value)) for value, name in NAMES.items()}


def labelled(view, tracks: dict) -> tuple[np.ndarray, np.ndarray]:
    """(P,) labels of the view's tested points and where the tracks step has them in view too."""
    role = view.camera.role
    labels = tracks[f"occlusion_{role}"][view.steps, view.columns]
    return labels, tracks[f"visibility_{role}"][view.steps, view.columns]


def cameras_2d(tracks) -> list[tuple[str, str]]:
    """(serial, role) of each camera with 2D tracks in a tracks.npz."""
    return [(str(serial), role) for serial, role, status in
            zip(tracks["camera_serials"], ("wrist", "ext1", "ext2"), tracks["tracks_2d_status"]) if status == "ok"]


def test_metadata_only_labels_agree_with_the_rendered_truth(dataset, metadata_only):
    """Without depth the labels are 1 (hidden by the robot) or 3: 3 wherever visibility is False,
    and in view 1 exactly where the renderer shows a robot surface in front of the point, for at
    least 98 % of in-image points; no point left unhidden lies behind the rendered surface."""
    agree = total = 0
    for view in rendered_views(dataset):
        tracks = metadata_only["outputs"][view.episode.episode_id]["tracks"]
        role = view.camera.role
        labels, visibility = tracks[f"occlusion_{role}"], tracks[f"visibility_{role}"]
        assert labels.dtype == np.uint8 and labels.shape == visibility.shape
        assert set(np.unique(labels)) <= {HIDDEN_BY_ROBOT, UNKNOWN}
        assert (labels[~visibility] == UNKNOWN).all()
        tested, in_view = labelled(view, tracks)
        hidden = tested[in_view] == HIDDEN_BY_ROBOT
        matches = hidden == ~view.truly_visible[in_view]
        where = (view.episode.episode_id, view.camera.role)
        assert in_view.mean() > 0.9, where
        assert matches.mean() > 0.95, (where, matches.mean())
        assert not (~hidden & view.truth.behind[in_view]).any(), where
        agree, total = agree + int(matches.sum()), total + int(matches.size)
    assert total > 100_000
    assert agree / total >= 0.98, agree / total


def test_quality_reports_the_label_fractions_and_the_flange_agreement(metadata_only):
    for outputs in metadata_only["outputs"].values():
        tracks, report = outputs["tracks"], outputs["quality"]["occlusion"]
        assert report["enabled"] is True and report["scene_tolerance_per_m2"] == 80.0
        # The synthetic h5's cartesian_position is the forward kinematics of its joint_positions.
        assert report["flange_mismatch_mm"] < 1e-6 and report["flange_mismatch_deg"] < 1e-6
        pooled = []
        for _, role in cameras_2d(tracks):
            labels, visibility = tracks[f"occlusion_{role}"], tracks[f"visibility_{role}"]
            camera = report["cameras"][role]
            assert camera["scene_from_depth"] is False and camera["in_view_points"] == visibility.sum()
            assert camera["in_view"] == pytest.approx(fractions(labels[visibility]))
            assert camera["all_points"] == pytest.approx(fractions(labels))
            pooled.append(labels[visibility])
        assert report["in_view"] == pytest.approx(fractions(np.concatenate(pooled)))


def test_contact_normals_face_the_other_pad(metadata_only):
    """contact_normals_local are unit normals that, posed by each finger's contact frame, point from
    each pad towards the other one."""
    tracks = next(iter(metadata_only["outputs"].values()))["tracks"]
    normals, half = tracks["contact_normals_local"], int(tracks["num_points_per_finger"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    left = np.einsum("tij,nj->tni", tracks["left_contact_frames"][:, :3, :3].astype(float), normals[:half])
    right = np.einsum("tij,nj->tni", tracks["right_contact_frames"][:, :3, :3].astype(float), normals[half:])
    across = (tracks["right_contact_frames"][:, :3, 3] - tracks["left_contact_frames"][:, :3, 3]).astype(float)
    across /= np.linalg.norm(across, axis=1, keepdims=True)
    assert (np.einsum("ti,tni->tn", across, left) > 0.99).all()
    assert (np.einsum("ti,tni->tn", across, right) < -0.99).all()


def test_occlusion_off_writes_every_label_unknown_without_reading_joint_positions(dataset, metadata_only, tmp_path):
    episode_id = dataset.episodes[0].episode_id
    outputs = metadata_only["outputs"][episode_id]
    folder = Path(shutil.copytree(outputs["folder"], tmp_path / "episode"))
    config = load_config([dataset.config_path], [*metadata_only["overrides"], "occlusion.enabled=false"])
    generate_tracks(config, outputs["episode"], folder)
    written = read_outputs(folder)
    for _, role in cameras_2d(written["tracks"]):
        assert (written["tracks"][f"occlusion_{role}"] == UNKNOWN).all()
        assert written["quality"]["occlusion"]["cameras"][role]["scene_from_depth"] is False
    report = written["quality"]["occlusion"]
    assert report["enabled"] is False and report["flange_mismatch_mm"] is None
    np.testing.assert_array_equal(written["tracks"]["tracks_3d"], outputs["tracks"]["tracks_3d"])


def test_missing_joint_positions_fail_the_episode_unless_occlusion_is_off(dataset, metadata_only, tmp_path):
    import h5py

    root = Path(shutil.copytree(dataset.root, tmp_path / "dataset",
                                ignore=shutil.ignore_patterns("ground_truth", "output", "runs")))
    synthetic = dataset.episodes[0]
    with h5py.File(root / "droid_raw" / synthetic.relative_path / "trajectory.h5", "r+") as h5:
        del h5["observation/robot_state/joint_positions"]
    overrides = [f"output_root={tmp_path / 'output'}", f"episode_index_path={tmp_path / 'index.json'}"]
    config = load_config([root / "config.yaml"], overrides)
    episode = build_index(config.droid_root, config.index_path).get(synthetic.episode_id)
    folder = tmp_path / "output" / episode.relative_path
    extract_intrinsics(config, episode, folder)
    with pytest.raises(EpisodeError) as failure:
        generate_tracks(config, episode, folder)
    assert failure.value.step == "tracks" and failure.value.episode_id == synthetic.episode_id
    assert "missing dataset observation/robot_state/joint_positions" in failure.value.cause
    assert not (folder / "tracks.npz").exists()
    generate_tracks(load_config([root / "config.yaml"], [*overrides, "occlusion.enabled=false"]), episode, folder)
    assert (folder / "tracks.npz").is_file()


def write_depth(path: Path, frames: np.ndarray, fps: float) -> None:
    """``frames`` (T, H, W) uint16 mm as the depth step writes them: depth.mkv + depth_meta.json."""
    with DepthWriter(path, frames.shape[2], frames.shape[1], fps, load_config().ffv1,
                     source={"backend": "ground_truth"}) as writer:
        for frame in frames:
            writer.write(frame)


def clear_of(coordinate: np.ndarray, edge: float) -> np.ndarray:
    """Pixel coordinates whose nearest pixel is unambiguous and more than a pixel from ``edge``."""
    return (np.abs(coordinate - edge) > 1.0) & (np.abs(np.abs(coordinate % 1.0) - 0.5) > 1e-3)


def test_scene_labels_from_ground_truth_depth_with_a_near_surface_and_a_hole(dataset, metadata_only, tmp_path):
    """An existing depth.mkv of the wrist camera (the true depth, with a surface 40 mm from the lens
    over the left half of the image in steps 10-29, nearer than every point, and the right half
    invalid over steps 30-39) gives
    the wrist points not hidden by the robot 2 in the near half, 3 in the hole and 0 elsewhere
    where the renderer shows them; the robot's labels stay; the other cameras keep 1 and 3."""
    synthetic = dataset.episodes[0]
    outputs = metadata_only["outputs"][synthetic.episode_id]
    view = next(v for v in rendered_views(dataset) if v.episode == synthetic and v.camera.role == "wrist")
    camera = view.camera
    folder = Path(shutil.copytree(outputs["folder"], tmp_path / "episode"))
    middle = camera.width // 2
    depth = np.load(camera.depth_path)
    depth[10:30, :, :middle] = NEAR_SURFACE_MM
    depth[30:, :, middle:] = 0
    write_depth(folder / "recordings" / camera.serial / "depth.mkv", depth, float(outputs["tracks"]["fps"]))
    generate_tracks(metadata_only["config"], outputs["episode"], folder)
    written = read_outputs(folder)
    tracks, report = written["tracks"], written["quality"]["occlusion"]

    before = outputs["tracks"][f"occlusion_{camera.role}"]
    labels = tracks[f"occlusion_{camera.role}"]
    np.testing.assert_array_equal(labels == HIDDEN_BY_ROBOT, before == HIDDEN_BY_ROBOT)
    np.testing.assert_array_equal(labels[~tracks[f"visibility_{camera.role}"]], UNKNOWN)
    tested, in_view = labelled(view, tracks)
    free = in_view & (tested != HIDDEN_BY_ROBOT)
    u = view.pixels[view.steps, view.columns, 0]
    left = (u < middle - 0.5) & clear_of(u, middle - 0.5)
    right = (u > middle - 0.5) & clear_of(u, middle - 0.5)
    steps = view.steps
    in_near = (steps >= 10) & (steps < 30) & left
    in_hole = (steps >= 30) & right
    elsewhere = (steps < 10) | ((steps < 30) & right) | ((steps >= 30) & left)
    for region, count in ((in_near, 500), (in_hole, 500), (elsewhere & view.truly_visible, 1000)):
        assert (free & region).sum() > count
    assert (view.local[..., 2][view.seen] > 2 * NEAR_SURFACE_MM / 1000).all()
    assert (tested[free & in_near] == HIDDEN_BY_SCENE).all()
    assert (tested[free & in_hole] == UNKNOWN).all()
    assert (tested[free & elsewhere & view.truly_visible] == VISIBLE).mean() > 0.97
    assert report["cameras"][camera.role]["scene_from_depth"] is True
    for _, role in cameras_2d(tracks):
        if role != camera.role:
            assert report["cameras"][role]["scene_from_depth"] is False
            np.testing.assert_array_equal(tracks[f"occlusion_{role}"], outputs["tracks"][f"occlusion_{role}"])


def test_depth_that_does_not_fit_the_image_fails_the_episode(dataset, metadata_only, tmp_path):
    synthetic = dataset.episodes[0]
    outputs = metadata_only["outputs"][synthetic.episode_id]
    serial = synthetic.serials["ext2"]
    folder = Path(shutil.copytree(outputs["folder"], tmp_path / "episode"))
    write_depth(folder / "recordings" / serial / "depth.mkv",
                np.full((40, synthetic.height // 2, synthetic.width // 2), 1000, np.uint16), 15.0)
    with pytest.raises(EpisodeError) as failure:
        generate_tracks(metadata_only["config"], outputs["episode"], folder)
    assert failure.value.step == "tracks"
    assert failure.value.cause == (f"ext2 camera {serial}: recordings/{serial}/depth.mkv is "
                                   f"{synthetic.width // 2}x{synthetic.height // 2} but its intrinsics' image is "
                                   f"{synthetic.width}x{synthetic.height}: depth and tracks must share the image")


def test_depth_without_its_metadata_is_not_used_and_said_so(dataset, metadata_only, tmp_path):
    synthetic = dataset.episodes[0]
    outputs = metadata_only["outputs"][synthetic.episode_id]
    serial = synthetic.serials["wrist"]
    folder = Path(shutil.copytree(outputs["folder"], tmp_path / "episode"))
    write_depth(folder / "recordings" / serial / "depth.mkv",
                np.full((40, synthetic.height, synthetic.width), 1000, np.uint16), 15.0)
    (folder / "recordings" / serial / "depth_meta.json").unlink()
    summary = generate_tracks(metadata_only["config"], outputs["episode"], folder)
    assert f"camera {serial}: recordings/{serial}/depth.mkv without depth_meta.json: not used for the occlusion " \
           "labels" in summary["warnings"]
    written = read_outputs(folder)
    assert written["quality"]["occlusion"]["cameras"]["wrist"]["scene_from_depth"] is False
    np.testing.assert_array_equal(written["tracks"]["occlusion_wrist"], outputs["tracks"]["occlusion_wrist"])


def test_full_pipeline_episode_gets_scene_labels_from_its_stereo_depth(dataset, tmp_path_factory):
    """Episode 0 of the converted set had stereo depth of ext1 before its tracks: there, every point
    neither hidden by the robot nor out of view is 3 where that depth is invalid at its pixel, else 2
    exactly when the depth is nearer than the point by more than the configured tolerance, else 0;
    most points the renderer shows visible with valid depth are 0. Its other cameras, and the
    metadata-only episodes, have only 1 and 3."""
    converted = converted_small_dataset(tmp_path_factory)
    config = load_config([dataset.config_path])
    tolerance_mm, per_m2 = config.occlusion.scene_tolerance_mm, config.occlusion.scene_tolerance_per_m2
    for number, episode in enumerate(converted["episodes"]):
        written = read_outputs(converted["root"] / episode.relative_path)
        tracks, quality = written["tracks"], written["quality"]
        for serial, role in cameras_2d(tracks):
            labels = tracks[f"occlusion_{role}"]
            with_depth = number == 0 and serial == episode.serials["ext1"]
            assert quality["occlusion"]["cameras"][role]["scene_from_depth"] is with_depth
            if not with_depth:
                assert set(np.unique(labels)) <= {HIDDEN_BY_ROBOT, UNKNOWN}
    episode = converted["episodes"][0]
    serial = episode.serials["ext1"]
    view = next(v for v in rendered_views(dataset) if v.episode.episode_id == episode.episode_id
                and v.camera.serial == serial)
    tracks = read_outputs(converted["root"] / episode.relative_path)["tracks"]
    with DepthReader(converted["root"] / episode.relative_path / "recordings" / serial / "depth.mkv") as reader:
        depth = reader.read_all()
    tested, in_view = labelled(view, tracks)
    free = in_view & (tested != HIDDEN_BY_ROBOT)
    pixels = view.pixels[view.steps, view.columns]
    column, row = np.rint(pixels).astype(int).T
    at_pixel = depth[view.steps, row, column].astype(float)
    z_mm = 1000.0 * view.local[view.steps, view.columns, 2]
    limit_mm = z_mm - (tolerance_mm + per_m2 * (z_mm / 1000.0) ** 2)
    clear = clear_of(pixels[:, 0], -10.0) & clear_of(pixels[:, 1], -10.0) & (np.abs(at_pixel - limit_mm) > 1.0)
    expected = np.where(at_pixel == 0, UNKNOWN, np.where(at_pixel < limit_mm, HIDDEN_BY_SCENE, VISIBLE))
    checked = free & clear
    assert checked.sum() > 5000
    np.testing.assert_array_equal(tested[checked], expected[checked])
    assert (tested[free] == VISIBLE).sum() > 1000 and (tested[free] == UNKNOWN).sum() > 100
    assert (tested[checked] == HIDDEN_BY_SCENE).any()
    valid = free & (at_pixel > 0)
    assert (tested[valid & view.truly_visible] == VISIBLE).mean() > 0.6


def test_downscaled_depth_gives_scene_labels_at_the_scaled_pixels(dataset, metadata_only, tmp_path):
    """With depth_size at half the image, the tracks step samples each camera's stored depth at the
    pixel the downscale puts the point at ((u + 0.5) / 2 - 0.5): every in-view point the robot does
    not hide gets the documented rule's label on the stored frames, decoded here independently."""
    from droid_pipeline.steps.depth import extract_depth

    synthetic = dataset.episodes[0]
    config = load_config([dataset.config_path], [*metadata_only["overrides"], "depth_size=160x90",
                                                 f"output_root={tmp_path / 'output'}"])
    episode = build_index(config.droid_root, config.index_path).get(synthetic.episode_id)
    folder = tmp_path / "episode"
    extract_intrinsics(config, episode, folder)
    extract_depth(config, episode, folder, backend="stereo")
    generate_tracks(config, episode, folder)
    written = read_outputs(folder)
    tracks, quality = written["tracks"], written["quality"]
    with np.load(folder / "extrinsics.npz", allow_pickle=False) as extrinsics:
        poses = {str(s): extrinsics[f"T_base_cam_{r}"] for s, r in zip(extrinsics["serials"], extrinsics["roles"])}
    tolerance_mm, per_m2 = config.occlusion.scene_tolerance_mm, config.occlusion.scene_tolerance_per_m2
    checked_total = visible_total = 0
    for serial, role in cameras_2d(tracks):
        assert quality["occlusion"]["cameras"][role]["scene_from_depth"] is True
        with DepthReader(folder / "recordings" / serial / "depth.mkv") as reader:
            depth = reader.read_all()
        assert depth.shape[1:] == (90, 160)
        labels, seen = tracks[f"occlusion_{role}"], tracks[f"visibility_{role}"]
        pose = poses[serial] if poses[serial].ndim == 3 else np.broadcast_to(poses[serial], (len(labels), 4, 4))
        camera_from_base = np.linalg.inv(pose)
        points = tracks["tracks_3d"].astype(np.float64)
        z_mm = 1000.0 * (np.einsum("tij,tnj->tni", camera_from_base[:, :3, :3], points)
                         + camera_from_base[:, None, :3, 3])[..., 2]
        scaled = (tracks[f"tracks_2d_{role}"].astype(np.float64) + 0.5) / 2 - 0.5
        free = seen & (labels != HIDDEN_BY_ROBOT) & clear_of(scaled[..., 0], -10.0) & clear_of(scaled[..., 1], -10.0)
        steps, points_index = np.nonzero(free)
        column = np.rint(scaled[steps, points_index, 0]).astype(int)
        row = np.rint(scaled[steps, points_index, 1]).astype(int)
        at_pixel = depth[steps, row, column].astype(float)
        z = z_mm[steps, points_index]
        limit = z - (tolerance_mm + per_m2 * (z / 1000.0) ** 2)
        clear = np.abs(at_pixel - limit) > 1.0
        expected = np.where(at_pixel == 0, UNKNOWN, np.where(at_pixel < limit, HIDDEN_BY_SCENE, VISIBLE))
        np.testing.assert_array_equal(labels[steps, points_index][clear], expected[clear])
        checked_total += int(clear.sum())
        visible_total += int((expected[clear] == VISIBLE).sum())
    assert checked_total > 5000 and visible_total > 1000
