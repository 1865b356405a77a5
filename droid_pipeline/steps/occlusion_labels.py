"""The tracks step's occlusion labels: ``occlusion_<serial>`` of every camera with 2D tracks and
their quality.json entry, from the robot's meshes and, where the episode has depth, from it.

The arm is posed by forward kinematics of trajectory.h5's ``joint_positions``, the gripper on
the configured mount from the flange pose the tracks use (``cartesian_position``) at each
``gripper_position``; the points, their pad normals and the cameras are exactly the tracks'.
A camera's ``recordings/<serial>/depth.mkv`` in the output folder (the depth step's, of this
run or an earlier one) adds the scene test, its frames decoded one at a time. Method, label
values and defaults: docs/occlusion.md; engine: :mod:`droid_pipeline.robot.occlusion`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from droid_pipeline.core.config import OcclusionConfig
from droid_pipeline.core.schema import DEPTH, OCCLUSION_LABELS, UNKNOWN
from droid_pipeline.formats.depth_codec import DepthCodecError, DepthMeta, DepthReader
from droid_pipeline.geometry.projection import points_in_camera
from droid_pipeline.raw.episode import RawEpisode
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.occlusion import RobotOcclusion, combine_labels, scene_occlusion


@dataclass(frozen=True)
class CameraSetup:
    """A camera with 2D tracks: its serial, role and image size (width, height)."""

    serial: str
    role: str
    size: tuple[int, int]


@dataclass(frozen=True, eq=False)
class CameraView:
    """A camera's projection of one block of B steps (the tracks step's)."""

    base_from_camera: np.ndarray    # (4, 4) or (B, 4, 4) T_base_cam
    pixels: np.ndarray              # (B, N, 2) float64
    visibility: np.ndarray          # (B, N) bool: in front, in the image, the MP4 has the frame


@dataclass(frozen=True, eq=False)
class CameraOcclusion:
    """One camera's labels (T, N) uint8 and whether the scene test had depth."""

    labels: np.ndarray
    scene_from_depth: bool

    def quality(self, visibility: np.ndarray) -> dict[str, Any]:
        in_view = self.labels[visibility]
        return {"scene_from_depth": self.scene_from_depth, "in_view_points": int(in_view.size),
                "in_view": label_fractions(in_view), "all_points": label_fractions(self.labels)}


@dataclass(frozen=True, eq=False)
class EpisodeOcclusion:
    """Every camera's labels, and how far the arm's kinematics put the flange from the tracks' flange
    (None when occlusion is off)."""

    settings: OcclusionConfig
    cameras: dict[str, CameraOcclusion]
    flange_mismatch_mm: float | None
    flange_mismatch_deg: float | None
    # Why labels that were to be computed are all unknown (an impossible arm), None when they were not withheld.
    withheld: str | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``occlusion_<serial>`` values of tracks.npz."""
        return {f"occlusion_{serial}": camera.labels for serial, camera in self.cameras.items()}

    def quality(self, visibility: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """quality.json ``occlusion``: settings, flange mismatch, per camera and pooled label fractions."""
        settings = self.settings
        pooled = [camera.labels[visibility[serial]] for serial, camera in self.cameras.items()]
        return {"enabled": settings.enabled and self.withheld is None, "withheld": self.withheld,
                "surface_margin_mm": settings.surface_margin_mm,
                "scene_tolerance_mm": settings.scene_tolerance_mm,
                "scene_tolerance_per_m2": settings.scene_tolerance_per_m2,
                "flange_mismatch_mm": self.flange_mismatch_mm, "flange_mismatch_deg": self.flange_mismatch_deg,
                "flange_tolerance_mm": settings.flange_tolerance_mm,
                "cameras": {serial: camera.quality(visibility[serial]) for serial, camera in self.cameras.items()},
                "in_view": label_fractions(np.concatenate(pooled) if pooled else np.zeros(0, np.uint8))}


def label_fractions(labels: np.ndarray) -> dict[str, float | None]:
    """Label name -> fraction of ``labels`` carrying it (None for no labels)."""
    counts = np.bincount(np.ravel(labels), minlength=len(OCCLUSION_LABELS))
    total = int(counts.sum())
    return {name: float(counts[value]) / total if total else None for value, name in OCCLUSION_LABELS.items()}

# quality.json occlusion.withheld when the arm's joint positions failed their gate.
WITHHELD = ("observation/robot_state/joint_positions beyond the Panda's joint limits "
            "(plausibility.joint_limit_tolerance_rad): labels unknown, not computed from an impossible arm")


class OcclusionLabeller:
    """Occlusion labels of every camera with 2D tracks, computed block of steps by block of steps
    (in order, so memory stays bounded whatever T is); each camera's depth.mkv is streamed across
    the blocks, one frame at a time. Use it in a ``with`` block; :meth:`result` after the last
    block.

    ``joint_positions`` (T, 7) from trajectory.h5 (None when ``settings.enabled`` is false, or
    when the joints failed their plausibility gate: withheld; either way every label is UNKNOWN),
    ``gripper`` the tracks' gripper model (its mount), ``depth`` the depth_meta.json of each
    camera with depth. Depth that does not fit the camera's image (at its ``depth_size``
    downscale), or that cannot be decoded, fails the episode.
    """

    def __init__(self, settings: OcclusionConfig, raw: RawEpisode, output_dir: Path,
                 joint_positions: np.ndarray | None, gripper: GripperModel, cameras: Mapping[str, CameraSetup],
                 depth: Mapping[str, DepthMeta], num_steps: int, num_points: int):
        self.settings, self.raw, self.output_dir = settings, raw, output_dir
        self.enabled = settings.enabled and joint_positions is not None
        self.joint_positions = joint_positions
        self.gripper = gripper
        self.cameras = dict(cameras)
        self.depth = {serial: meta for serial, meta in depth.items() if serial in self.cameras}
        self.labels = {serial: np.full((num_steps, num_points), UNKNOWN, np.uint8) for serial in self.cameras}
        self._robot = RobotOcclusion.load() if self.enabled else None
        self._frames: dict[str, Iterator[np.ndarray]] = {}
        self._scale: dict[str, int] = {}
        self._stack = contextlib.ExitStack()
        self._mismatch_mm = self._mismatch_deg = 0.0

    def __enter__(self) -> OcclusionLabeller:
        if self.enabled:
            for serial, meta in self.depth.items():
                camera = self.cameras[serial]
                self._scale[serial] = _depth_scale(self.raw, camera, meta)
                reader = self._stack.enter_context(self._open_depth(camera, meta))
                self._frames[serial] = iter(reader)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open_depth(self, camera: CameraSetup, meta: DepthMeta) -> DepthReader:
        relative = DEPTH.for_camera(camera.serial)
        try:
            return DepthReader(self.output_dir / relative, meta=meta)
        except DepthCodecError as exc:
            raise self.raw.fail(f"{camera.role} camera {camera.serial}: scene occlusion from {relative}: {exc}") \
                from exc

    def label(self, steps: slice, flange: np.ndarray, gripper_positions: np.ndarray, points: np.ndarray,
              views: Mapping[str, CameraView]) -> None:
        """Label the block ``steps`` of every camera: ``flange`` (B, 4, 4) the tracks' flange poses,
        ``gripper_positions`` (B,), ``points`` (B, N, 3) the tracks in the base frame, ``views``
        each camera's projection of the block."""
        if not self.enabled:
            return
        assert self._robot is not None and self.joint_positions is not None
        pose = self._robot.pose(self.joint_positions[steps], flange, gripper_positions,
                                mount=self.gripper.gripper_frame_in_flange())
        self._mismatch_mm = max(self._mismatch_mm, pose.flange_mismatch_mm)
        self._mismatch_deg = max(self._mismatch_deg, pose.flange_mismatch_deg)
        normals = self.gripper.contact_normals(gripper_positions, points.shape[1]) @ np.swapaxes(flange[:, :3, :3],
                                                                                                -1, -2)
        margin_m = self.settings.surface_margin_mm / 1000.0
        for serial, view in views.items():
            camera = self.cameras[serial]
            robot = self._robot.robot_occlusion(pose, points, normals, view.base_from_camera, margin_m=margin_m,
                                                in_view=view.visibility)
            scene = self._scene(camera, view, points, len(flange)) if serial in self._frames else None
            self.labels[serial][steps] = combine_labels(view.visibility, robot, scene)

    def _scene(self, camera: CameraSetup, view: CameraView, points: np.ndarray, count: int) -> np.ndarray:
        """The scene test of one block from the camera's next ``count`` depth frames."""
        scale = self._scale[camera.serial]
        pixels = view.pixels if scale == 1 else (view.pixels + 0.5) / scale - 0.5
        depth_m = points_in_camera(points, view.base_from_camera)[..., 2]
        try:
            return scene_occlusion(itertools.islice(self._frames[camera.serial], count), pixels, depth_m,
                                   view.visibility, tolerance_mm=self.settings.scene_tolerance_mm,
                                   tolerance_per_m2=self.settings.scene_tolerance_per_m2)
        except (DepthCodecError, ValueError) as exc:
            raise self.raw.fail(f"{camera.role} camera {camera.serial}: scene occlusion from "
                                f"{DEPTH.for_camera(camera.serial)}: {exc}") from exc

    def result(self, warnings: list[str]) -> EpisodeOcclusion:
        """Every camera's labels, once every block is labelled; a warning when the arm's kinematics
        and the tracks' flange disagree beyond ``occlusion.flange_tolerance_mm``."""
        settings = self.settings
        if not self.enabled:
            withheld = WITHHELD if settings.enabled else None
            return EpisodeOcclusion(settings, {s: CameraOcclusion(labels, False) for s, labels in self.labels.items()},
                                    None, None, withheld)
        if self._mismatch_mm > settings.flange_tolerance_mm:
            warnings.append(f"the arm's forward kinematics of joint_positions puts the flange up to "
                            f"{self._mismatch_mm:.1f} mm / {self._mismatch_deg:.2f} deg from "
                            f"cartesian_position (occlusion.flange_tolerance_mm = {settings.flange_tolerance_mm}): "
                            "the arm's occlusion of the pads may be off")
        return EpisodeOcclusion(settings, {s: CameraOcclusion(labels, s in self._frames)
                                           for s, labels in self.labels.items()},
                                self._mismatch_mm, self._mismatch_deg)


def _depth_scale(raw: RawEpisode, camera: CameraSetup, meta: DepthMeta) -> int:
    """The integer downscale of a camera's stored depth against its image (1: native size)."""
    size_record = meta.source.get("depth_size") if isinstance(meta.source, dict) else None
    factor = int(size_record["factor"]) if isinstance(size_record, dict) and "factor" in size_record else 1
    if (meta.width * factor, meta.height * factor) != camera.size:
        scaled = f" (stored at 1/{factor})" if factor != 1 else ""
        raise raw.fail(f"{camera.role} camera {camera.serial}: {DEPTH.for_camera(camera.serial)} is "
                       f"{meta.width}x{meta.height}{scaled} but its intrinsics' image is "
                       f"{camera.size[0]}x{camera.size[1]}: depth and tracks must share the image")
    return factor
