"""What the synthetic renderer says each demo camera sees of the contact points: the robot
re-rendered (z-buffer rasterization, synthetic.raster) around the pads at a fine resolution, read
along each point's own ray. Computed once per session per dataset, read-only; the occlusion
labels of the engine (tests/robot) and of the tracks step (tests/steps) are checked against it.
Everything here comes from the episode's trajectory.h5 and ground truth, never from the outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from droid_pipeline.geometry.poses import invert, pose6_to_matrix, transform_points
from droid_pipeline.geometry.projection import points_in_camera, project, visible
from droid_pipeline.robot.gripper import GripperModel
from droid_pipeline.robot.occlusion import RobotOcclusion, RobotPose
from droid_pipeline.synthetic.generator import DatasetInfo, SyntheticEpisode
from droid_pipeline.synthetic.raster import rasterize

NUM_POINTS = 480
MARGIN_M = 0.001             # the default surface margin; also the truth's depth tolerance
MIN_DEPTH_M = 0.01
TRUTH_PIXEL_M = 0.00025      # the re-rendered truth's pixel footprint at the pads, at most
MAX_TRUTH_SCALE = 32

_views: dict[Path, list[RenderedView]] = {}


@dataclass
class Camera:
    serial: str
    role: str
    K: np.ndarray
    width: int
    height: int
    poses: np.ndarray         # (T, 4, 4) T_base_cam
    depth_path: Path          # the ground-truth depth, (T, H, W) uint16 millimetres (.npy)


@dataclass
class EpisodeGeometry:
    pose: RobotPose
    points: np.ndarray         # (T, N, 3) base frame
    normals: np.ndarray        # (T, N, 3)
    cameras: list[Camera]


@dataclass
class Truth:
    """Per tested point, from the renderer at a fine resolution around the pads."""

    distance: np.ndarray        # along the point's ray, of the surface rendered at its pixel (inf: none)
    link: np.ndarray            # index of the link rendered at its pixel (-1: none)
    behind: np.ndarray          # all four pixel centres around it see a surface nearer by > MARGIN_M


@dataclass
class RenderedView:
    """One demo camera of one episode: its points in view and the rendered truth at each."""

    episode: SyntheticEpisode
    camera: Camera
    geometry: EpisodeGeometry
    local: np.ndarray           # (T, N, 3) points in the camera frame
    pixels: np.ndarray          # (T, N, 2)
    seen: np.ndarray            # (T, N) in front (beyond MIN_DEPTH_M) and in the image
    steps: np.ndarray           # (P,) step of each tested point (np.nonzero(seen))
    columns: np.ndarray         # (P,) its point index
    truth: Truth                # (P,) each

    @property
    def truly_visible(self) -> np.ndarray:
        """(P,) the rendered surface at the point's pixel is not nearer along its ray by more than MARGIN_M."""
        length = np.linalg.norm(self.local[self.steps, self.columns], axis=1)
        return self.truth.distance >= length - MARGIN_M


def episode_geometry(dataset: DatasetInfo, episode: SyntheticEpisode, occlusion: RobotOcclusion,
                     gripper: GripperModel) -> EpisodeGeometry:
    """Everything the labels need, read from the episode's trajectory.h5 and its ground truth."""
    with h5py.File(dataset.episode_dir(episode) / "trajectory.h5", "r") as h5:
        joints = h5["observation/robot_state/joint_positions"][()]
        flange = pose6_to_matrix(h5["observation/robot_state/cartesian_position"][()])
        opening = h5["observation/robot_state/gripper_position"][()]
    truth = json.loads((dataset.ground_truth_path(episode) / "cameras.json").read_text())
    cameras = []
    for serial, record in truth.items():
        poses = (flange @ np.array(record["T_flange_cam"]) if record["role"] == "wrist"
                 else np.broadcast_to(np.array(record["T_base_cam"]), flange.shape))
        cameras.append(Camera(serial, record["role"], np.array(record["K"]), record["width"], record["height"],
                              poses, dataset.ground_truth_path(episode) / record["depth_file"]))
    points = transform_points(flange, gripper.contact_points(opening, NUM_POINTS))
    normals = gripper.contact_normals(opening, NUM_POINTS) @ np.swapaxes(flange[:, :3, :3], -1, -2)
    return EpisodeGeometry(occlusion.pose(joints, flange, opening), points, normals, cameras)


def in_view(geometry: EpisodeGeometry, camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    local = points_in_camera(geometry.points, camera.poses)
    pixels = project(local, camera.K)
    return local, pixels, visible(pixels, local[..., 2], camera.width, camera.height, MIN_DEPTH_M)


def robot_triangles(occlusion: RobotOcclusion, pose: RobotPose, step: int,
                    camera_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam_from_base = invert(camera_pose)
    parts = [transform_points(cam_from_base @ pose.poses[step, index], occlusion.link_triangles[link].reshape(-1, 3))
             for index, link in enumerate(pose.links)]
    owner = np.repeat(np.arange(len(parts)), [len(p) // 3 for p in parts])
    return np.concatenate(parts).reshape(-1, 3, 3), owner


def rendered_truth(occlusion: RobotOcclusion, pose: RobotPose, step: int, camera: Camera, local: np.ndarray,
                   pixels: np.ndarray) -> Truth:
    """Rasterize the robot (the synthetic renderer's z-buffer) over the points' bounding box at a
    resolution whose pixels are at most TRUTH_PIXEL_M wide there; read the surface at each
    point's nearest pixel along the point's own ray (the plane of the triangle seen there)."""
    triangles, owner = robot_triangles(occlusion, pose, step, camera.poses[step])
    metres_per_pixel = np.median(local[:, 2]) / camera.K[0, 0]
    scale = int(np.clip(np.ceil(metres_per_pixel / TRUTH_PIXEL_M), 1, MAX_TRUTH_SCALE))
    fine = (pixels + 0.5) * scale - 0.5
    origin = np.floor(fine.min(axis=0)).astype(int) - 2
    size = np.ceil(fine.max(axis=0)).astype(int) + 3 - origin
    K = camera.K.copy()
    K[:2, :2] *= scale
    K[:2, 2] = (camera.K[:2, 2] + 0.5) * scale - 0.5 - origin
    raster = rasterize(triangles, K, int(size[0]), int(size[1]), 1e-3)
    column, row = np.rint(fine - origin).astype(int).T
    seen = raster.triangle[row, column]
    corners = triangles[np.maximum(seen, 0)]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.einsum("pi,pi->p", normal, corners[:, 0]) / np.einsum("pi,pi->p", normal, local)
    length = np.linalg.norm(local, axis=1)
    distance = np.where(seen >= 0, fraction * length, np.inf)
    low = np.floor(fine - origin).astype(int)
    around = np.stack([raster.depth[low[:, 1] + dy, low[:, 0] + dx] for dy in (0, 1) for dx in (0, 1)])
    return Truth(distance, np.where(seen >= 0, owner[np.maximum(seen, 0)], -1),
                 np.all(around < local[:, 2] - MARGIN_M, axis=0))


def rendered_views(dataset: DatasetInfo) -> list[RenderedView]:
    """Every camera of every episode of ``dataset`` with the rendered truth of its points in view."""
    if dataset.root not in _views:
        occlusion, gripper = RobotOcclusion.load(), GripperModel.load()
        views = []
        for episode in dataset.episodes:
            geometry = episode_geometry(dataset, episode, occlusion, gripper)
            for camera in geometry.cameras:
                local, pixels, seen = in_view(geometry, camera)
                steps, columns = np.nonzero(seen)
                parts = [rendered_truth(occlusion, geometry.pose, t, camera, local[t, seen[t]], pixels[t, seen[t]])
                         for t in range(len(seen)) if seen[t].any()]
                truth = Truth(*(np.concatenate([getattr(part, name) for part in parts])
                                for name in ("distance", "link", "behind")))
                views.append(RenderedView(episode, camera, geometry, local, pixels, seen, steps, columns, truth))
        _views[dataset.root] = views
    return _views[dataset.root]
