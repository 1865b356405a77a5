"""Draw an episode's outputs onto its camera videos: one MP4 per camera and a PNG contact sheet.

Frame i of a camera's MP4 is control step i. Modes (``what``):

- ``tracks``: the visible 2D track points of step i (left finger orange, right finger blue) with
  fading trails over the previous ``trail`` steps (segments whose both ends are visible). A point
  the occlusion labels hide (``occlusion_<serial>`` 1 by the robot, 2 by the scene) is a hollow
  ring, the others filled dots: visible (0) and unknown (3: in view, not hidden by the robot, no
  depth to decide, as everywhere in a metadata-only episode), since unknown is not hidden;
- ``frames``: the axes (x red, y green, z blue) of the contact frame and of each finger's
  contact frame, projected with the camera's intrinsics and pose from the outputs;
- ``normalized``: the normalized (1 mm) track sample nearest to step i
  (``frame_to_normalized_idx``), projected likewise, points in front of the camera and inside
  the image only, with trails;
- ``depth``: the image with its tracks (drawn as in ``tracks``) beside the decoded depth frame,
  colour-mapped (black where invalid);
- ``model``: the outlines of the gripper model's two pad boxes (:meth:`GripperModel.pad_box_local`)
  at step i, posed from the flange pose and gripper_position of the outputs on the given gripper
  mount (the config's), by default on the wrist camera, where the real fingers are always in
  sight: outlines off the real pads mean the mount or the finger model is wrong for the data.

Nothing is assumed that the data does not guarantee: a video whose frame count differs from T
renders the shorter of the two with a warning, a camera without 2D tracks (or without depth in
``depth`` mode, or without an MP4) is skipped with a message, and a video whose size differs from
the outputs' ``image_size`` is an error naming both. Videos are decoded and encoded one frame at
a time (libx264, yuv420p).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from tqdm import tqdm

from droid_pipeline.core.atomic import atomic_path
from droid_pipeline.core.schema import HIDDEN_BY_ROBOT, HIDDEN_BY_SCENE
from droid_pipeline.geometry.poses import pose6_to_matrix
from droid_pipeline.geometry.projection import points_in_camera, project
from droid_pipeline.outputs.loader import CameraData, EpisodeData
from droid_pipeline.raw.episode import find_camera_video
from droid_pipeline.raw.video import iter_frames
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.kinematics import GripperMount

STEP = "render"
MODES = ("tracks", "frames", "normalized", "depth", "model")
# Corners of a unit box (signs of the half extents) and its twelve edges as corner pairs.
BOX_CORNERS = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
BOX_EDGES = tuple((a, b) for a in range(8) for b in range(a + 1, 8)
                  if np.count_nonzero(BOX_CORNERS[a] != BOX_CORNERS[b]) == 1)
LEFT_COLOR = (255, 110, 0)          # RGB
RIGHT_COLOR = (0, 150, 255)
AXIS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))   # x, y, z
CONTACT_AXIS_M = 0.05               # axis length of the contact frame; finger frames get half
MIN_DEPTH_M = 1e-3                  # nearer points (or behind the camera) are not drawn
DEFAULT_TRAIL = 10
DEFAULT_SHEET_FRAMES = 4
SHEET_TILE_HEIGHT = 240
VIDEO_CRF = 18
_SHIFT = 4                          # cv2 sub-pixel drawing: coordinates in 1/16 px


class RenderError(ValueError):
    """The episode's videos and outputs disagree in a way that cannot be rendered."""


@dataclass(frozen=True)
class CameraJob:
    """One camera to render: its raw video (left half of a side-by-side file when ``crop_left``)."""

    camera: CameraData
    video: Path
    crop_left: bool
    num_frames: int                 # frames to render: the shorter of video (and depth) and T


@dataclass
class RenderResult:
    videos: dict[str, Path] = field(default_factory=dict)
    contact_sheet: Path | None = None
    messages: list[str] = field(default_factory=list)


def render_episode(data: EpisodeData, mp4_dir: Path, out_dir: Path, *, cameras: Sequence[str] | None = None,
                   what: str = "tracks", trail: int = DEFAULT_TRAIL, sheet_frames: int = DEFAULT_SHEET_FRAMES,
                   progress: bool = True, mount: GripperMount | None = None) -> RenderResult:
    """Render ``cameras`` (serials or roles; default all, the wrist camera for ``model``) of one
    episode into ``out_dir``; ``mount`` is the gripper mount of ``model`` (None: the URDF's).

    Writes ``<episode id>_<serial>_<what>.mp4`` per camera and ``<episode id>_<what>_sheet.png``
    (``sheet_frames`` evenly spaced steps x the rendered cameras). Raises RenderError when a
    video's size differs from its outputs, or when no camera can be rendered.
    """
    if what not in MODES:
        raise RenderError(f"unknown mode {what!r}; expected one of {', '.join(MODES)}")
    if trail < 0 or sheet_frames < 1:
        raise RenderError(f"trail must be >= 0 and sheet_frames >= 1, got {trail} and {sheet_frames}")
    result = RenderResult()
    outlines = None
    if what == "model":
        gripper = GripperModel.load(mount)
        outlines = pad_outlines(data, gripper)
        result.messages += _mount_differences(data, mount, gripper)
        if not cameras:
            cameras = [c.serial for c in data.cameras.values() if c.role == "wrist"] or None
    chosen = [data.camera(c) for c in cameras] if cameras else list(data.cameras.values())
    jobs = [job for camera in {c.serial: c for c in chosen}.values()
            if (job := _plan(data, camera, Path(mp4_dir), what, result.messages)) is not None]
    if not jobs:
        raise RenderError("nothing to render: " + "; ".join(result.messages))
    num_steps = min(job.num_frames for job in jobs)
    sheet_steps = sorted({int(s) for s in np.linspace(0, num_steps - 1, sheet_frames).round()})
    tiles: dict[str, dict[int, np.ndarray]] = {}
    stem = data.episode_id
    for job in jobs:
        path = Path(out_dir) / f"{stem}_{job.camera.serial}_{what}.mp4"
        tiles[job.camera.serial] = _render_camera(data, job, path, what, trail, sheet_steps, progress, outlines)
        result.videos[job.camera.serial] = path
    result.contact_sheet = Path(out_dir) / f"{stem}_{what}_sheet.png"
    labels = {job.camera.serial: f"{job.camera.role} {job.camera.serial}" for job in jobs}
    _write_png(result.contact_sheet, contact_sheet(tiles, labels))
    return result


def pad_outlines(data: EpisodeData, gripper: GripperModel) -> np.ndarray:
    """(T, 2, 8, 3) base-frame corners of the left and right pad boxes of ``gripper`` at every step."""
    center, half = gripper.pad_box_local()
    local = center + BOX_CORNERS * half
    flange = pose6_to_matrix(data.cartesian_positions)
    fingers = np.stack(gripper.finger_poses(data.gripper_positions), axis=1)   # (T, 2, 4, 4) in the flange
    poses = flange[:, None] @ fingers
    return local @ np.swapaxes(poses[..., :3, :3], -1, -2) + poses[..., None, :3, 3]


def _mount_differences(data: EpisodeData, mount: GripperMount | None, gripper: GripperModel) -> list[str]:
    """A message when the outlines' mount is not the one the episode's tracks were computed on."""
    used = "the URDF's mount" if mount is None else f"gripper mount xyz {list(mount.xyz_m)}, rpy {list(mount.rpy)}"
    recorded = data.quality.get("gripper_mount")
    if recorded is None:
        return [f"quality.json records no gripper_mount; pad outlines on {used}"]
    tracks_mount = GripperMount.of(recorded["xyz_m"], recorded["rpy"])
    if not np.allclose(tracks_mount.transform(), gripper.gripper_frame_in_flange(), rtol=0, atol=1e-12):
        return [f"pad outlines on {used}; the tracks were computed on xyz {list(tracks_mount.xyz_m)}, "
                f"rpy {list(tracks_mount.rpy)} (quality.json gripper_mount)"]
    return []


def _plan(data: EpisodeData, camera: CameraData, mp4_dir: Path, what: str, messages: list[str]) -> CameraJob | None:
    """Check one camera's inputs; None (with a message) when it is skipped."""
    name = f"{camera.role} camera {camera.serial}"
    if what != "depth" and not camera.has_2d_tracks:
        messages.append(f"{name}: no 2D tracks in the outputs (no intrinsics); skipped")
        return None
    if what == "depth" and camera.serial not in data.depth_cameras:
        messages.append(f"{name}: no depth.mkv in {data.path}; skipped")
        return None
    video = find_camera_video(mp4_dir, camera.serial)
    if video is None:
        messages.append(f"{name}: no {camera.serial}.mp4 or {camera.serial}-stereo.mp4 in {mp4_dir}; skipped")
        return None
    info, (width, height) = video.info, video.left_size
    if camera.image_size is not None and (width, height) != camera.image_size:
        raise RenderError(f"{name}: {video.path.name} is {width}x{height}"
                          f"{' (left half)' if video.side_by_side else ''} but the outputs' image_size is "
                          f"{camera.image_size[0]}x{camera.image_size[1]}")
    count = min(info.num_frames, data.num_frames)
    if info.num_frames != data.num_frames:
        messages.append(f"{name}: {video.path.name} has {info.num_frames} frames but the episode has "
                        f"{data.num_frames} steps; rendering {count}")
    if what == "depth":
        with data.depth(camera.serial) as depth:
            if len(depth) != data.num_frames:
                messages.append(f"{name}: depth.mkv has {len(depth)} frames but the episode has "
                                f"{data.num_frames} steps")
            count = min(count, len(depth))
    if count == 0:
        messages.append(f"{name}: nothing to render (0 frames); skipped")
        return None
    return CameraJob(camera, video.path, video.side_by_side, count)


def _render_camera(data: EpisodeData, job: CameraJob, path: Path, what: str, trail: int,
                   sheet_steps: Sequence[int], progress: bool, outlines: np.ndarray | None) -> dict[int, np.ndarray]:
    """Stream one camera's frames through the drawing into ``path``; return the sheet's frames."""
    camera = job.camera
    tiles = {}
    with contextlib.ExitStack() as stack:
        depth = iter(stack.enter_context(data.depth(camera.serial))) if what == "depth" else None
        writer = stack.enter_context(Mp4Writer(path, data.fps))
        bar = stack.enter_context(tqdm(total=job.num_frames, unit="frame", disable=not progress,
                                       desc=f"{camera.role} {camera.serial} {what}"))
        frames = iter_frames(job.video)
        stack.callback(frames.close)
        for step, image in _frames_by_step(frames, job.num_frames):
            if job.crop_left:
                image = image[:, : image.shape[1] // 2]
            image = np.ascontiguousarray(image)
            if outlines is not None:
                frame = draw_pads(image, outlines[step], camera, step)
            else:
                frame = draw_step(data, camera, image, step, what, trail)
            if depth is not None:
                frame = np.hstack([frame, colorize_depth(next(depth), frame.shape[1::-1])])
            writer.write(frame)
            if step in sheet_steps:
                tiles[step] = frame
            bar.update()
    return tiles


def _frames_by_step(frames: Iterator[tuple[int, np.ndarray]], num_steps: int
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """One image per step: a frame the video lacks is drawn on black, never shifted."""
    blank = None
    next_step = 0
    for index, image in frames:
        blank = np.zeros_like(image)
        for step in range(next_step, min(index, num_steps)):
            yield step, blank.copy()
        if index >= num_steps:
            return
        yield index, image
        next_step = index + 1
    if blank is not None:
        for step in range(next_step, num_steps):
            yield step, blank.copy()


def draw_step(data: EpisodeData, camera: CameraData, image: np.ndarray, step: int, what: str,
              trail: int) -> np.ndarray:
    """Draw mode ``what`` of control step ``step`` onto the RGB ``image`` in place; return it."""
    half = data.num_points_per_finger
    if what == "frames":
        frames = (data.contact_frames[step], data.left_contact_frames[step], data.right_contact_frames[step])
        lengths = (CONTACT_AXIS_M, CONTACT_AXIS_M / 2, CONTACT_AXIS_M / 2)
        for frame, length in zip(frames, lengths):
            draw_axes(image, frame, length, camera, step)
        return image
    if not camera.has_2d_tracks:
        return image
    first = max(0, step - trail)
    hidden = None
    if what == "normalized":
        samples = data.normalized.frame_to_normalized_idx[first: step + 1]
        uvs, masks = [], []
        for offset, sample in enumerate(samples):
            uv, depth = project_base_points(data.normalized.tracks_3d[sample], camera, first + offset)
            uvs.append(uv)
            masks.append((depth > MIN_DEPTH_M) & in_image(uv, camera.image_size))
        pixels, seen = np.stack(uvs), np.stack(masks)
    elif camera.tracks_2d is not None and camera.visibility is not None:
        pixels, seen = camera.tracks_2d[first: step + 1], camera.visibility[first: step + 1]
        if camera.occlusion is not None:
            hidden = np.isin(camera.occlusion[step], (HIDDEN_BY_ROBOT, HIDDEN_BY_SCENE))
    else:
        return image
    draw_tracks(image, pixels, seen, half, hidden)
    return image


def draw_tracks(image: np.ndarray, pixels: np.ndarray, visible: np.ndarray, num_left: int,
                hidden: np.ndarray | None = None) -> np.ndarray:
    """Draw the last step of ``pixels`` (K+1, N, 2) as dots and the K earlier ones as fading trails.

    Only points with ``visible`` (K+1, N) are drawn, and a trail segment only when both its
    ends are visible. The first ``num_left`` points are the left finger's. Points of the last
    step with ``hidden`` (N,) are drawn as hollow rings one pixel wider than the dots.
    """
    radius = max(2, round(image.shape[0] / 240))
    hollow = np.zeros(pixels.shape[1], bool) if hidden is None else np.asarray(hidden, dtype=bool)
    # Invisible points may project far off the image; clip them into int32 range (never drawn).
    fixed = np.clip(np.round(pixels * (1 << _SHIFT)), -(1 << 28), 1 << 28).astype(np.int32)
    steps = len(pixels)
    for finger, color in ((slice(0, num_left), LEFT_COLOR), (slice(num_left, None), RIGHT_COLOR)):
        for k in range(steps - 1):
            both = visible[k, finger] & visible[k + 1, finger]
            if not both.any():
                continue
            fade = (k + 1) / steps
            segments = np.stack([fixed[k, finger][both], fixed[k + 1, finger][both]], axis=1)
            cv2.polylines(image, list(segments), False, tuple(int(c * fade) for c in color),
                          1, cv2.LINE_AA, _SHIFT)
        shown = visible[-1, finger]
        for point in fixed[-1, finger][shown & ~hollow[finger]]:
            cv2.circle(image, tuple(int(v) for v in point), radius << _SHIFT, color, -1, cv2.LINE_AA, _SHIFT)
        for point in fixed[-1, finger][shown & hollow[finger]]:
            cv2.circle(image, tuple(int(v) for v in point), (radius + 1) << _SHIFT, color, 1, cv2.LINE_AA, _SHIFT)
    return image


def draw_pads(image: np.ndarray, corners: np.ndarray, camera: CameraData, step: int) -> np.ndarray:
    """Draw the edges of the (2, 8, 3) base-frame pad box corners (left orange, right blue), each
    box only when all of it is in front of the camera."""
    thickness = max(1, round(image.shape[0] / 240))
    for box, color in zip(corners, (LEFT_COLOR, RIGHT_COLOR)):
        uv, depth = project_base_points(box, camera, step)
        if (depth <= MIN_DEPTH_M).any():
            continue
        fixed = np.round(uv * (1 << _SHIFT)).astype(np.int64)
        if np.abs(fixed).max() >= 1 << 28:
            continue
        for a, b in BOX_EDGES:
            cv2.line(image, tuple(int(v) for v in fixed[a]), tuple(int(v) for v in fixed[b]), color, thickness,
                     cv2.LINE_AA, _SHIFT)
    return image


def draw_axes(image: np.ndarray, frame: np.ndarray, length: float, camera: CameraData, step: int) -> np.ndarray:
    """Draw a (4, 4) base-frame pose's x, y, z axes (``length`` m) when all of it is in front."""
    points = frame[:3, 3] + length * np.vstack([np.zeros(3), frame[:3, :3].T])
    uv, depth = project_base_points(points, camera, step)
    if (depth <= MIN_DEPTH_M).any():
        return image
    fixed = np.round(uv * (1 << _SHIFT)).astype(np.int64)
    if np.abs(fixed).max() >= 1 << 28:
        return image
    origin = tuple(int(v) for v in fixed[0])
    thickness = max(1, round(image.shape[0] / 240))
    for tip, color in zip(fixed[1:], AXIS_COLORS):
        cv2.line(image, origin, tuple(int(v) for v in tip), color, thickness, cv2.LINE_AA, _SHIFT)
    return image


def project_base_points(points: np.ndarray, camera: CameraData, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) base-frame points -> (N, 2) pixels and (N,) depths in ``camera`` at ``step``."""
    if camera.intrinsics is None:
        raise RenderError(f"camera {camera.serial} has no intrinsics in the outputs")
    in_camera = points_in_camera(np.asarray(points, np.float64), camera.pose(step))
    return project(in_camera, camera.intrinsics, camera.distortion), in_camera[..., 2]


def in_image(pixels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Pixels inside a (width, height) image (pixel centres at integers); none without a size."""
    if size is None:
        return np.zeros(pixels.shape[:-1], dtype=bool)
    width, height = size
    u, v = pixels[..., 0], pixels[..., 1]
    return (u >= -0.5) & (u < width - 0.5) & (v >= -0.5) & (v < height - 0.5)


def colorize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint16 mm depth -> (height, width, 3) RGB, turbo from near to far over the frame's 2-98th
    percentile of valid values, black where invalid (0); resized (nearest) to ``size``."""
    valid = depth > 0
    out = np.zeros((*depth.shape, 3), np.uint8)
    if valid.any():
        lo, hi = np.percentile(depth[valid], (2, 98))
        scaled = np.clip((depth.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)
        mapped = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
        out[valid] = mapped[valid][:, ::-1]
    if out.shape[1::-1] != tuple(size):
        out = cv2.resize(out, tuple(size), interpolation=cv2.INTER_NEAREST)
    return out


def contact_sheet(tiles: dict[str, dict[int, np.ndarray]], labels: dict[str, str]) -> np.ndarray:
    """One row per camera, one column per step, each frame scaled to SHEET_TILE_HEIGHT and labelled."""
    rows = []
    for serial, frames in tiles.items():
        if not frames:
            continue
        row = []
        for step, frame in sorted(frames.items()):
            width = max(1, round(frame.shape[1] * SHEET_TILE_HEIGHT / frame.shape[0]))
            tile = cv2.resize(frame, (width, SHEET_TILE_HEIGHT), interpolation=cv2.INTER_AREA)
            text = f"{labels[serial]}  step {step}"
            cv2.putText(tile, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(tile)
        rows.append(np.hstack(row))
    width = max(row.shape[1] for row in rows)
    return np.vstack([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows])


class Mp4Writer:
    """Encode RGB frames one at a time to H.264 (yuv420p) in an MP4, renamed into place on success.

    Odd frame sizes are padded by one black row or column (yuv420p needs even sizes).
    """

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = Path(path), fps
        self._stream: Any = None

    def __enter__(self) -> Mp4Writer:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._container = av.open(str(tmp), "w", format="mp4")
        return self

    def write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if height % 2 or width % 2:
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(VIDEO_CRF), "preset": "veryfast"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None and self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._atomic.__exit__(exc_type, exc, tb)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise RenderError(f"{path}: cannot write PNG")
