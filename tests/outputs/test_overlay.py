"""render_tracks.py / droid_pipeline.outputs.overlay: marks read back from the written videos with PyAV
where tracks_2d says, filled or hollow as the occlusion labels say, nothing drawn for invisible
points, axes and normalized points where cv2.projectPoints puts them, and the checks on inputs the
data does not guarantee."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from synthetic_fixtures import SMALL_FRAMES, SMALL_SIZE, small_dataset

from droid_pipeline.core.config import load_config
from droid_pipeline.geometry.poses import invert
from droid_pipeline.outputs.loader import read_episode_dir
from droid_pipeline.outputs.overlay import (
    AXIS_COLORS,
    CONTACT_AXIS_M,
    LEFT_COLOR,
    RIGHT_COLOR,
    RenderError,
    draw_axes,
    draw_pads,
    draw_step,
    draw_tracks,
    pad_outlines,
    render_episode,
)
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import GripperMount
from droid_pipeline.steps.depth import extract_depth
from droid_pipeline.steps.intrinsics import extract_intrinsics
from droid_pipeline.steps.tracks import generate_tracks

REPO_ROOT = Path(__file__).resolve().parents[2]
CODEC_TOLERANCE = 64        # per channel, H.264 yuv420p at the renderer's quality (dot edges)
RADIUS = 2                  # dot radius at 180 px image height; hollow rings have RADIUS + 1
HIDDEN_LABELS = (1, 2)      # occlusion_<serial>: hidden by the robot, by the scene


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """Episode 0 of the small dataset through intrinsics, tracks and stereo depth of ext1."""
    info = small_dataset(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("converted")
    overrides = [f"output_root={tmp / 'output'}", f"episode_index_path={tmp / 'index.json'}"]
    config = load_config([info.config_path], overrides)
    episode = build_index(config.droid_root, config.index_path).get(info.episodes[0].episode_id)
    output = config.output_root / episode.relative_path
    extract_intrinsics(config, episode, output)
    generate_tracks(config, episode, output)
    extract_depth(config, episode, output, backend="stereo", cameras=["ext1"])
    return {"info": info, "overrides": overrides, "output": output,
            "mp4_dir": episode.path(config.droid_root) / "recordings" / "MP4"}


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def rewrite_tracks(folder: Path, change) -> None:
    with np.load(folder / "tracks.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    np.savez_compressed(folder / "tracks.npz", **arrays)


def copy_outputs(converted: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted["output"], tmp_path / "episode"))


def isolated(uv: np.ndarray, seen: np.ndarray, others: np.ndarray, others_seen: np.ndarray,
             size: tuple[int, int], gap: float) -> np.ndarray:
    """Points of ``uv`` (N, 2) seen, inside the image by the dot radius, and farther than ``gap`` px
    from every seen point of ``others``."""
    width, height = size
    inside = ((uv[:, 0] >= RADIUS) & (uv[:, 0] <= width - 1 - RADIUS)
              & (uv[:, 1] >= RADIUS) & (uv[:, 1] <= height - 1 - RADIUS))
    far = np.ones(len(uv), bool)
    if others_seen.any():
        distance = np.linalg.norm(uv[:, None] - others[others_seen][None], axis=-1).min(axis=1)
        far = distance > gap
    return seen & inside & far


def pixel(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    u, v = np.round(uv).astype(int).T
    return image[v, u].astype(int)


def test_marks_are_where_tracks_2d_says_in_the_written_videos(converted, tmp_path):
    data = read_episode_dir(converted["output"])
    result = render_episode(data, converted["mp4_dir"], tmp_path, trail=0, progress=False)
    assert set(result.videos) == set(data.cameras) and not result.messages
    half = data.num_points_per_finger
    checked = 0
    for serial, path in result.videos.items():
        camera = data.cameras[serial]
        frames = decode(path)
        assert len(frames) == SMALL_FRAMES and frames[0].shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3)
        for step, image in enumerate(frames):
            uv, seen = camera.tracks_2d[step], camera.visibility[step]
            filled = seen & ~np.isin(camera.occlusion[step], HIDDEN_LABELS)
            for mine, theirs, color, other in ((slice(0, half), slice(half, None), LEFT_COLOR, RIGHT_COLOR),
                                               (slice(half, None), slice(0, half), RIGHT_COLOR, LEFT_COLOR)):
                keep = isolated(uv[mine], filled[mine], uv[theirs], seen[theirs], SMALL_SIZE, 2 * RADIUS + 2)
                colors = pixel(image, uv[mine][keep])
                assert (np.abs(colors - color).max(axis=1) <= CODEC_TOLERANCE).all(), (serial, step)
                assert (np.abs(colors - color).sum(axis=1) < np.abs(colors - other).sum(axis=1)).all()
                checked += int(keep.sum())
    assert checked > 1000


def spread_out(uv: np.ndarray, seen: np.ndarray, gap: float) -> np.ndarray:
    """Indices of seen points, greedily chosen at least ``gap`` px from each other."""
    chosen: list[int] = []
    for index in np.flatnonzero(seen):
        if all(np.linalg.norm(uv[index] - uv[other]) >= gap for other in chosen):
            chosen.append(int(index))
    return np.array(chosen, int)


def test_hidden_points_are_hollow_rings_in_the_written_videos(converted, tmp_path):
    """The wrist camera's points thinned out to marks far apart and labelled in turn 1, 0, 2, 3:
    read back from the written video, a hidden point (1, 2) shows the camera's own image at its
    centre and its finger's colour on the ring around it, the others (0, 3) their colour at the
    centre."""
    folder = copy_outputs(converted, tmp_path)
    data = read_episode_dir(folder)
    camera, half, ring = data.camera("wrist"), data.num_points_per_finger, RADIUS + 1
    width, height = SMALL_SIZE
    inside = ((camera.tracks_2d[..., 0] > 2 * ring) & (camera.tracks_2d[..., 0] < width - 1 - 2 * ring)
              & (camera.tracks_2d[..., 1] > 2 * ring) & (camera.tracks_2d[..., 1] < height - 1 - 2 * ring))
    chosen = [spread_out(camera.tracks_2d[step], camera.visibility[step] & inside[step], 2 * ring + 4)
              for step in range(data.num_frames)]
    labels = np.full(camera.visibility.shape, 3, np.uint8)
    for step, points in enumerate(chosen):
        labels[step, points] = np.resize(np.array([1, 0, 2, 3], np.uint8), len(points))
    shown = np.zeros_like(camera.visibility)
    for step, points in enumerate(chosen):
        shown[step, points] = True

    def thin(arrays):
        arrays[f"visibility_{camera.role}"] = shown
        arrays[f"occlusion_{camera.role}"] = labels
    rewrite_tracks(folder, thin)
    result = render_episode(read_episode_dir(folder), converted["mp4_dir"], tmp_path / "out", cameras=["wrist"],
                            trail=0, progress=False)
    source = decode(converted["mp4_dir"] / f"{camera.serial}.mp4")
    counts = {"hollow": 0, "filled": 0}
    for step, (image, original) in enumerate(zip(decode(result.videos[camera.serial]), source)):
        for index in chosen[step]:
            color = np.array(LEFT_COLOR if index < half else RIGHT_COLOR)
            uv = camera.tracks_2d[step, index: index + 1]
            centre = pixel(image, uv)[0]
            if labels[step, index] in HIDDEN_LABELS:
                assert np.abs(centre - pixel(original, uv)[0]).max() <= CODEC_TOLERANCE, (step, index)
                around = np.array([pixel(image, uv + offset)[0]
                                   for offset in ((ring, 0), (-ring, 0), (0, ring), (0, -ring))])
                assert (np.abs(around - color).sum(axis=1) < np.abs(centre - color).sum()).all(), (step, index)
                counts["hollow"] += 1
            else:
                assert np.abs(centre - color).max() <= CODEC_TOLERANCE, (step, index)
                counts["filled"] += 1
    assert min(counts.values()) > 100, counts


def test_occlusion_labels_choose_filled_dots_or_hollow_rings(converted):
    """On a black image: visible (0) and unknown (3) points are filled dots, points hidden by the
    robot (1) or the scene (2) rings with an empty centre; out of view nothing."""
    data = read_episode_dir(converted["output"])
    camera = data.camera("wrist")
    pixels = np.array([[20.0, 20.0], [60.0, 20.0], [100.0, 20.0], [140.0, 20.0], [180.0, 20.0]])
    labels = np.array([0, 1, 2, 3, 3], np.uint8)
    seen = np.array([True, True, True, True, False])
    count = len(pixels)
    marked = dataclasses.replace(camera, tracks_2d=pixels[None], visibility=seen[None], occlusion=labels[None])
    image = np.zeros((SMALL_SIZE[1], SMALL_SIZE[0], 3), np.uint8)
    draw_step(dataclasses.replace(data, num_points_per_finger=count), marked, image, 0, "tracks", trail=0)
    ring = RADIUS + 1
    for (u, v), label, shown in zip(pixels.astype(int), labels, seen):
        centre, edge = image[v, u], image[v, u + ring]
        if not shown:
            assert not image[v - 2 * ring: v + 2 * ring, u - 2 * ring: u + 2 * ring].any()
        elif label in HIDDEN_LABELS:
            assert not centre.any() and not image[v - 1: v + 2, u - 1: u + 2].any(), label
            assert np.abs(edge.astype(int) - LEFT_COLOR).max() < 60, label
        else:
            assert tuple(centre) == LEFT_COLOR, label


def test_invisible_points_are_not_drawn(converted, tmp_path):
    folder = copy_outputs(converted, tmp_path)
    data = read_episode_dir(converted["output"])
    half = data.num_points_per_finger
    serial = data.camera("wrist").serial
    rng = np.random.default_rng(0)
    hidden = rng.random(data.tracks_3d.shape[:2]) < 0.5
    hidden[:, half:] = True      # all of the right finger, half of the left one at random

    def hide(arrays):
        arrays["visibility_wrist"] = arrays["visibility_wrist"] & ~hidden
    rewrite_tracks(folder, hide)
    result = render_episode(read_episode_dir(folder), converted["mp4_dir"], tmp_path / "out",
                            cameras=["wrist"], trail=3, progress=False)
    rendered, source = decode(result.videos[serial]), decode(converted["mp4_dir"] / f"{serial}.mp4")
    camera = data.cameras[serial]
    checked = 0
    for step, (image, original) in enumerate(zip(rendered, source)):
        uv = camera.tracks_2d[step]
        drawn = np.zeros(len(uv), bool)
        for back in range(max(0, step - 3), step + 1):   # dots and trail ends of the last 3 steps
            drawn |= camera.visibility[back] & ~hidden[back]
        trail_points = np.concatenate([camera.tracks_2d[b] for b in range(max(0, step - 3), step + 1)])
        trail_seen = np.concatenate([camera.visibility[b] & ~hidden[b] for b in range(max(0, step - 3), step + 1)])
        keep = isolated(uv, hidden[step], trail_points, trail_seen, SMALL_SIZE, 2 * RADIUS + 2)
        got, expected = pixel(image, uv[keep]), pixel(original, uv[keep])
        assert (np.abs(got - expected).max(axis=1) <= CODEC_TOLERANCE).all(), step
        assert (np.abs(got - RIGHT_COLOR).max(axis=1) > 100).all()
        checked += int(keep.sum())
    assert checked > 500


def test_trails_fade_and_need_both_ends_visible():
    image = np.zeros((60, 100, 3), np.uint8)
    pixels = np.array([[[10.0, 10.0], [10.0, 40.0]],
                       [[50.0, 10.0], [50.0, 40.0]],
                       [[90.0, 10.0], [90.0, 40.0]]])           # (K+1=3 steps, N=2 points, 2)
    visible = np.array([[True, True], [True, False], [True, True]])
    draw_tracks(image, pixels, visible, num_left=1)
    assert tuple(image[10, 90]) == LEFT_COLOR and tuple(image[40, 90]) == RIGHT_COLOR   # dots
    older, newer = image[10, 30].astype(int), image[10, 70].astype(int)    # left point's segments
    assert 0 < older.max() < newer.max() < max(LEFT_COLOR)
    assert not image[40, 30].any() and not image[40, 70].any()   # right point hidden at the middle step
    hidden = np.zeros_like(image)
    draw_tracks(hidden, pixels, np.zeros_like(visible), num_left=1)
    assert not hidden.any()


def project(points: np.ndarray, pose: np.ndarray, camera) -> tuple[np.ndarray, np.ndarray]:
    """cv2.projectPoints with the saved calibration, and the points' depths."""
    camera_from_base = invert(pose)
    rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
    uv, _ = cv2.projectPoints(points.astype(np.float64), rvec, camera_from_base[:3, 3],
                              camera.intrinsics, camera.distortion)
    return uv.reshape(-1, 2), (points @ camera_from_base[:3, :3].T + camera_from_base[:3, 3])[:, 2]


def test_contact_frame_axes_are_drawn_where_the_calibration_projects_them(converted):
    data = read_episode_dir(converted["output"])
    camera = data.camera("wrist")
    checked = 0
    for step in range(0, SMALL_FRAMES, 5):
        frame = data.contact_frames[step].astype(np.float64)
        image = np.zeros((SMALL_SIZE[1], SMALL_SIZE[0], 3), np.uint8)
        draw_axes(image, frame, CONTACT_AXIS_M, camera, step)
        points = frame[:3, 3] + np.vstack([np.zeros(3), CONTACT_AXIS_M * frame[:3, :3].T])
        uv, depth = project(points, camera.pose(step), camera)
        assert (depth > 0).all()
        for axis, color in enumerate(AXIS_COLORS):
            middle = (uv[0] + uv[axis + 1]) / 2
            if np.linalg.norm(uv[axis + 1] - uv[0]) < 20 or not (0 <= middle[0] < SMALL_SIZE[0] - 1 and
                                                                   0 <= middle[1] < SMALL_SIZE[1] - 1):
                continue
            u, v = np.round(middle).astype(int)
            window = image[v - 1: v + 2, u - 1: u + 2].reshape(-1, 3).astype(int)
            channel = int(np.argmax(color))
            best = window[np.argmax(window[:, channel])]
            assert best[channel] >= 100 and (np.delete(best, channel) < best[channel] / 2).all(), (step, axis)
            checked += 1
    assert checked >= 6


def test_normalized_mode_draws_the_nearest_normalized_sample(converted):
    data = read_episode_dir(converted["output"])
    half = data.num_points_per_finger
    checked = 0
    for name in ("ext1", "wrist"):
        camera = data.camera(name)
        for step in range(0, SMALL_FRAMES, 3):
            image = np.zeros((SMALL_SIZE[1], SMALL_SIZE[0], 3), np.uint8)
            draw_step(data, camera, image, step, "normalized", trail=0)
            sample = data.normalized.frame_to_normalized_idx[step]
            uv, depth = project(data.normalized.tracks_3d[sample], camera.pose(step), camera)
            seen = depth > 0
            for mine, theirs, color in ((slice(0, half), slice(half, None), LEFT_COLOR),
                                        (slice(half, None), slice(0, half), RIGHT_COLOR)):
                keep = isolated(uv[mine], seen[mine], uv[theirs], seen[theirs], SMALL_SIZE, 2 * RADIUS + 2)
                assert (np.abs(pixel(image, uv[mine][keep]) - color).max(axis=1) <= 2).all()
                checked += int(keep.sum())
            width, height = SMALL_SIZE
            inside = seen & (uv[:, 0] > -0.5) & (uv[:, 0] < width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < height - 0.5)
            near = np.zeros(image.shape[:2], np.uint8)
            u, v = np.round(uv[inside]).astype(int).T
            near[np.clip(v, 0, height - 1), np.clip(u, 0, width - 1)] = 1
            near = cv2.dilate(near, np.ones((2 * RADIUS + 7, 2 * RADIUS + 7), np.uint8)).astype(bool)
            assert not image[~near].any()      # nothing drawn away from the points
    assert checked > 200


def test_depth_mode_shows_the_colour_mapped_depth_beside_the_image(converted, tmp_path):
    data = read_episode_dir(converted["output"])
    result = render_episode(data, converted["mp4_dir"], tmp_path, what="depth", progress=False)
    serial = data.camera("ext1").serial
    assert list(result.videos) == [serial]
    assert any("no depth.mkv" in m for m in result.messages)
    with av.open(str(converted["output"] / "recordings" / serial / "depth.mkv")) as container:
        depth = [frame.to_ndarray() for frame in container.decode(video=0)]
    frames = decode(result.videos[serial])
    width = SMALL_SIZE[0]
    assert len(frames) == SMALL_FRAMES and frames[0].shape == (SMALL_SIZE[1], 2 * width, 3)
    kernel = np.ones((9, 9), np.uint8)  # beyond the H.264 blocks that bleed across the edge
    for step in (0, SMALL_FRAMES - 1):
        panel = frames[step][:, width:].astype(int)
        invalid = cv2.erode((depth[step] == 0).astype(np.uint8), kernel).astype(bool)
        valid = cv2.erode((depth[step] > 0).astype(np.uint8), kernel).astype(bool)
        assert invalid.any() and valid.any()
        assert panel[invalid].max() <= 24
        assert (panel[valid].max(axis=1) >= 40).all()
        near, far = np.unravel_index(np.argmin(np.where(valid, depth[step], 65535)), valid.shape), \
            np.unravel_index(np.argmax(np.where(valid, depth[step], 0)), valid.shape)
        assert panel[near][2] > panel[near][0] and panel[far][0] > panel[far][2]   # turbo: blue near, red far


def truncated_copy(src: Path, dest: Path, frames: int) -> None:
    with av.open(str(src)) as source, av.open(str(dest), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(15))
        stream.width, stream.height, stream.pix_fmt = SMALL_SIZE[0], SMALL_SIZE[1], "yuv420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == frames:
                break
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode(None))


def test_short_video_renders_the_shorter_with_a_warning_and_stereo_only_is_cropped(converted, tmp_path):
    data = read_episode_dir(converted["output"])
    ext1, wrist = data.camera("ext1").serial, data.camera("wrist").serial
    mp4_dir = tmp_path / "MP4"
    mp4_dir.mkdir()
    truncated_copy(converted["mp4_dir"] / f"{ext1}.mp4", mp4_dir / f"{ext1}.mp4", 30)
    shutil.copy(converted["mp4_dir"] / f"{wrist}-stereo.mp4", mp4_dir)
    result = render_episode(data, mp4_dir, tmp_path / "out", trail=0, progress=False)
    assert set(result.videos) == {ext1, wrist}
    assert any(f"{ext1}.mp4 has 30 frames but the episode has {SMALL_FRAMES} steps; rendering 30" in m
               for m in result.messages)
    assert any("ext2" in m and "skipped" in m for m in result.messages)
    assert len(decode(result.videos[ext1])) == 30
    frames = decode(result.videos[wrist])
    assert len(frames) == SMALL_FRAMES and frames[0].shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3)
    camera, half = data.cameras[wrist], data.num_points_per_finger
    uv, seen = camera.tracks_2d[0], camera.visibility[0]
    filled = seen & ~np.isin(camera.occlusion[0], HIDDEN_LABELS)
    keep = isolated(uv[:half], filled[:half], uv[half:], seen[half:], SMALL_SIZE, 2 * RADIUS + 2)
    assert keep.any()
    assert (np.abs(pixel(frames[0], uv[:half][keep]) - LEFT_COLOR).max(axis=1) <= CODEC_TOLERANCE).all()


def test_stereo_file_without_its_suffix_is_cropped_too(converted, tmp_path):
    data = read_episode_dir(converted["output"])
    wrist = data.camera("wrist").serial
    for name in ("suffixed", "unsuffixed"):
        (tmp_path / name).mkdir()
    shutil.copy(converted["mp4_dir"] / f"{wrist}-stereo.mp4", tmp_path / "suffixed")
    shutil.copy(converted["mp4_dir"] / f"{wrist}-stereo.mp4", tmp_path / "unsuffixed" / f"{wrist}.mp4")
    rendered = {name: decode(render_episode(data, tmp_path / name, tmp_path / f"out-{name}", cameras=["wrist"],
                                            trail=0, progress=False).videos[wrist])
                for name in ("suffixed", "unsuffixed")}
    assert len(rendered["unsuffixed"]) == SMALL_FRAMES
    assert rendered["unsuffixed"][0].shape == (SMALL_SIZE[1], SMALL_SIZE[0], 3)
    for got, expected in zip(rendered["unsuffixed"], rendered["suffixed"]):
        assert np.abs(got.astype(int) - expected).max() <= CODEC_TOLERANCE


def test_camera_without_2d_tracks_is_skipped_with_a_message(converted, tmp_path):
    folder = copy_outputs(converted, tmp_path)
    serial = read_episode_dir(folder).camera("wrist").serial

    def drop(arrays):   # as the tracks step writes a camera without intrinsics
        arrays["tracks_2d_status"] = np.array(["no_intrinsics", "ok", "ok"])
        arrays["tracks_2d_wrist"] = np.full_like(arrays["tracks_2d_wrist"], np.nan)
        arrays["visibility_wrist"] = np.zeros_like(arrays["visibility_wrist"])
        arrays["occlusion_wrist"] = np.full_like(arrays["occlusion_wrist"], 3)
        arrays["intrinsics_wrist"] = np.full((3, 3), np.nan)
        arrays["distortion_wrist"] = np.full(5, np.nan)
        arrays["image_size_wrist"] = np.zeros(2, np.int32)
    rewrite_tracks(folder, drop)
    result = render_episode(read_episode_dir(folder), converted["mp4_dir"], tmp_path / "out",
                            what="frames", progress=False)
    assert serial not in result.videos and len(result.videos) == 2
    assert any(serial in m and "no 2D tracks" in m for m in result.messages)


def test_video_size_differing_from_image_size_is_an_error_naming_both(converted, tmp_path):
    folder = copy_outputs(converted, tmp_path)
    serial = read_episode_dir(folder).camera("ext2").serial

    def resize(arrays):
        arrays["image_size_ext2"] = np.array([640, 360], np.int32)
    rewrite_tracks(folder, resize)
    with pytest.raises(RenderError, match=rf"{serial}.mp4 is 320x180 but the outputs' image_size is 640x360"):
        render_episode(read_episode_dir(folder), converted["mp4_dir"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "render_tracks.py"), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_command_line_writes_videos_and_a_contact_sheet(converted, tmp_path):
    info = converted["info"]
    sets = [arg for override in converted["overrides"] for arg in ("--set", override)]
    result = run_cli("--config", str(info.config_path), *sets, "--episode_id", info.episodes[0].episode_id,
                     "--out", str(tmp_path / "a"), "--camera", "ext1,wrist", "--sheet-frames", "3")
    assert result.returncode == 0, result.stderr
    sheet = Path(result.stdout.strip().splitlines()[-1].removeprefix("contact sheet: "))
    image = cv2.imread(str(sheet))
    assert sheet.parent == tmp_path / "a" and image.shape == (2 * 240, 3 * round(240 * 320 / 180), 3)
    assert len(list((tmp_path / "a").glob("*_tracks.mp4"))) == 2
    result = run_cli("--episode-dir", str(converted["output"]), "--droid-root", str(info.droid_root),
                     "--out", str(tmp_path / "b"), "--what", "normalized", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "b").glob("*_normalized.mp4"))) == 3
    result = run_cli("--episode-dir", str(converted["output"]), "--droid-root", str(tmp_path), "--no-progress")
    assert result.returncode == 1 and "nothing to render" in result.stderr


def test_help_lists_the_modes():
    result = run_cli("--help")
    assert result.returncode == 0
    assert all(mode in result.stdout for mode in ("tracks", "frames", "normalized", "depth", "--trail"))


def pad_corners_from_outputs(data, step: int) -> list[np.ndarray]:
    """(8, 3) base-frame corners of each pad box at ``step``, from tracks.npz alone: a finger's
    contact frame has the finger's axes and its points' mean as origin, and its points are
    ``contact_points_local`` in the finger frame, so the finger frame is known without the model."""
    centre, half = GripperModel.load().pad_box_local()
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    local = data.contact_points_local.astype(np.float64)
    count = data.num_points_per_finger
    corners = []
    for frames, points in ((data.left_contact_frames, local[:count]), (data.right_contact_frames, local[count:])):
        frame = frames[step].astype(np.float64)
        corners.append((centre + signs * half - points.mean(axis=0)) @ frame[:3, :3].T + frame[:3, 3])
    return corners


def edge_midpoints(uv: np.ndarray, min_length: float) -> np.ndarray:
    pairs = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]
    mids = [(uv[a] + uv[b]) / 2 for a, b in pairs if np.linalg.norm(uv[a] - uv[b]) >= min_length]
    return np.array(mids).reshape(-1, 2)


def test_model_pad_outlines_are_drawn_where_the_outputs_put_the_pads(converted):
    data = read_episode_dir(converted["output"])
    camera = data.camera("wrist")
    outlines = pad_outlines(data, GripperModel.load())
    checked = 0
    for step in range(0, SMALL_FRAMES, 3):
        image = np.zeros((SMALL_SIZE[1], SMALL_SIZE[0], 3), np.uint8)
        draw_pads(image, outlines[step], camera, step)
        for corners, color in zip(pad_corners_from_outputs(data, step), (LEFT_COLOR, RIGHT_COLOR)):
            uv, depth = project(corners, camera.pose(step), camera)
            assert (depth > 0).all()
            for u, v in np.round(edge_midpoints(uv, 6.0)).astype(int):
                if not (1 <= u < SMALL_SIZE[0] - 1 and 1 <= v < SMALL_SIZE[1] - 1):
                    continue
                window = image[v - 1: v + 2, u - 1: u + 2].reshape(-1, 3).astype(float)
                # anti-aliased on black: the strongest pixel is the line's colour scaled by its coverage
                coverage = window @ np.array(color) / np.dot(color, color)
                best = int(np.argmax(coverage))
                assert coverage[best] >= 0.5, (step, u, v, window[best])
                assert np.abs(window[best] - coverage[best] * np.array(color)).max() <= 3, (step, u, v, window[best])
                checked += 1
    assert checked >= 40


def test_model_mode_renders_the_wrist_camera_and_names_another_mount(converted, tmp_path):
    data = read_episode_dir(converted["output"])
    wrist = data.camera("wrist").serial
    result = render_episode(data, converted["mp4_dir"], tmp_path / "same", what="model", progress=False)
    assert list(result.videos) == [wrist] and result.messages == []
    assert len(decode(result.videos[wrist])) == SMALL_FRAMES
    moved = render_episode(data, converted["mp4_dir"], tmp_path / "moved", what="model", progress=False,
                           mount=GripperMount((0.0, 0.0, 0.02), (0.0, 0.0, 1.57)))
    assert moved.messages == ["pad outlines on gripper mount xyz [0.0, 0.0, 0.02], rpy [0.0, 0.0, 1.57]; the tracks "
                              "were computed on xyz [0.0, 0.0, 0.0], rpy [0.0, 0.0, 1.57] (quality.json gripper_mount)"]
    same, shifted = decode(result.videos[wrist]), decode(moved.videos[wrist])
    assert any(np.abs(a.astype(int) - b).max() > 100 for a, b in zip(same, shifted))
    both = render_episode(data, converted["mp4_dir"], tmp_path / "all", what="model", progress=False,
                          cameras=list(data.cameras))
    assert set(both.videos) == set(data.cameras)
