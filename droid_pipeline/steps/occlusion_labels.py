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

from collections.abc import Mapping
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


@dataclass(frozen=True, eq=False)
class CameraView:
    """What the labels need of one camera with 2D tracks (the tracks step's projection)."""

    serial: str
    role: str
    base_from_camera: np.ndarray    # (4, 4) or (T, 4, 4) T_base_cam
    pixels: np.ndarray              # (T, N, 2)
    visibility: np.ndarray          # (T, N) bool: in front, in the image, the MP4 has the frame
    size: tuple[int, int]           # (width, height) of the image


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

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``occlusion_<serial>`` values of tracks.npz."""
        return {f"occlusion_{serial}": camera.labels for serial, camera in self.cameras.items()}

    def quality(self, visibility: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """quality.json ``occlusion``: settings, flange mismatch, per camera and pooled label fractions."""
        settings = self.settings
        pooled = [camera.labels[visibility[serial]] for serial, camera in self.cameras.items()]
        return {"enabled": settings.enabled, "surface_margin_mm": settings.surface_margin_mm,
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


def label_occlusion(settings: OcclusionConfig, raw: RawEpisode, output_dir: Path, joint_positions: np.ndarray | None,
                    flange: np.ndarray, gripper: GripperModel, gripper_positions: np.ndarray, points: np.ndarray,
                    cameras: Mapping[str, CameraView], depth: Mapping[str, DepthMeta],
                    warnings: list[str]) -> EpisodeOcclusion:
    """Occlusion labels of every camera in ``cameras``.

    ``joint_positions`` (T, 7) from trajectory.h5 (None when ``settings.enabled`` is false: every
    label is UNKNOWN), ``flange`` (T, 4, 4) the tracks' flange poses, ``gripper`` the tracks'
    gripper model (its mount), ``points`` (T, N, 3) the tracks in the base frame, ``depth`` the
    depth_meta.json of each camera with depth. Depth that does not fit the camera's image, or
    that cannot be decoded, fails the episode.
    """
    if not settings.enabled or joint_positions is None:
        return EpisodeOcclusion(settings, {serial: CameraOcclusion(np.full(camera.visibility.shape, UNKNOWN, np.uint8),
                                                                   False) for serial, camera in cameras.items()},
                                None, None)
    occlusion = RobotOcclusion.load()
    pose = occlusion.pose(joint_positions, flange, gripper_positions, mount=gripper.gripper_frame_in_flange())
    if pose.flange_mismatch_mm > settings.flange_tolerance_mm:
        warnings.append(f"the arm's forward kinematics of joint_positions puts the flange up to "
                        f"{pose.flange_mismatch_mm:.1f} mm / {pose.flange_mismatch_deg:.2f} deg from "
                        f"cartesian_position (occlusion.flange_tolerance_mm = {settings.flange_tolerance_mm}): "
                        "the arm's occlusion of the pads may be off")
    normals = gripper.contact_normals(gripper_positions, points.shape[1]) @ np.swapaxes(flange[:, :3, :3], -1, -2)
    margin_m = settings.surface_margin_mm / 1000.0
    labelled = {}
    for serial, camera in cameras.items():
        robot = occlusion.robot_occlusion(pose, points, normals, camera.base_from_camera, margin_m=margin_m,
                                          in_view=camera.visibility)
        scene = None
        if serial in depth:
            scene = _scene_labels(settings, raw, output_dir, camera, depth[serial], points)
        labelled[serial] = CameraOcclusion(combine_labels(camera.visibility, robot, scene), scene is not None)
    return EpisodeOcclusion(settings, labelled, pose.flange_mismatch_mm, pose.flange_mismatch_deg)


def _scene_labels(settings: OcclusionConfig, raw: RawEpisode, output_dir: Path, camera: CameraView, meta: DepthMeta,
                  points: np.ndarray) -> np.ndarray:
    """The scene test of one camera from its depth.mkv, streamed."""
    name = f"{camera.role} camera {camera.serial}"
    relative = DEPTH.for_camera(camera.serial)
    if (meta.width, meta.height) != camera.size:
        raise raw.fail(f"{name}: {relative} is {meta.width}x{meta.height} but its intrinsics' image is "
                       f"{camera.size[0]}x{camera.size[1]}: depth and tracks must share the image")
    depth_m = points_in_camera(points, camera.base_from_camera)[..., 2]
    try:
        with DepthReader(output_dir / relative, meta=meta) as reader:
            return scene_occlusion(iter(reader), camera.pixels, depth_m, camera.visibility,
                                   tolerance_mm=settings.scene_tolerance_mm,
                                   tolerance_per_m2=settings.scene_tolerance_per_m2)
    except (DepthCodecError, ValueError) as exc:
        raise raw.fail(f"{name}: scene occlusion from {relative}: {exc}") from exc
