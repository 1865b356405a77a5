"""Check converted episodes against the output contract (docs/outputs.md); ``python -m droid_pipeline.verify PATH``.

PATH is an episode folder, an output root or a downloaded repo; every folder under it holding
an episode file (tracks.npz, extrinsics.npz, quality.json or manifest.json) is checked:

- ``files``: tracks.npz, extrinsics.npz, quality.json and each 2D camera's intrinsics.json are
  there; the folder sits at the relative path quality.json names; every file manifest.json lists
  has its size and SHA-256 (a copy without any of the depth files, as the metadata repo holds,
  is fine);
- ``contract``: every key of both npz files with its dtype and shape (T steps, N points, M
  normalized samples), and the schema version;
- ``values``: all floats finite, poses and frames rigid, centroids the mean of their points,
  ``frame_to_normalized_idx`` non-decreasing from 0 to M-1, ``cumulative_distance_mm`` from 0
  and never decreasing, intrinsics equal to intrinsics.json, and quality.json agreeing with the
  arrays; occlusion labels within 0..3, 3 wherever visibility is False, only 1 and 3 for a camera
  without depth, all 3 when occlusion was off, their fractions those quality.json reports;
- ``2d``: each camera's tracks_3d reprojected with ``cv2.projectPoints`` (an implementation
  independent of the pipeline's) and the saved intrinsics and extrinsics match tracks_2d at every
  visible point, and no visible point is behind the camera or off the image; every visible point
  whose pad faces away from the camera (its normal, ``contact_normals_local`` turned by its
  finger's contact frame, against the camera centre) is labelled 1, hidden by the robot;
- ``depth``: each depth.mkv has its depth_meta.json, decodes, holds T frames and matches the
  checksum of the raw frames (``--no-depth-decode`` checks the metadata only).

Prints one row per episode and the failures below; exits 1 when any check failed or no episode
was found.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from droid_pipeline.core.atomic import sha256_file
from droid_pipeline.core.schema import (
    CAMERA_ROLES,
    DEPTH,
    DEPTH_META,
    EXTRINSICS,
    HIDDEN_BY_ROBOT,
    HIDDEN_BY_SCENE,
    INTRINSICS,
    MANIFEST,
    OCCLUSION_LABELS,
    QUALITY,
    READABLE_NPZ,
    RECORDINGS,
    SCHEMA_VERSION,
    TRACKS,
    TRACKS_OK,
    UNKNOWN,
    VISIBLE,
    cameras_with_2d_tracks,
    int_scalar,
    npz_schemas,
    output_file,
    shape_sizes,
)
from droid_pipeline.formats.depth_codec import DepthMeta, DepthReader
from droid_pipeline.formats.intrinsics import IntrinsicsRecord
from droid_pipeline.geometry.poses import invert
from droid_pipeline.outputs.loader import EpisodeData, read_episode_dir
from droid_pipeline.outputs.sharded import ShardSource, check_sharded

CHECKS = ("files", "contract", "values", "2d", "depth")
EPISODE_FILES = tuple(f.path for f in (TRACKS, EXTRINSICS, QUALITY, MANIFEST))
DEFAULT_TOLERANCE_PX = 0.05
RIGID_TOLERANCE = 1e-4      # rotation orthonormality, float32 storage
CENTROID_TOLERANCE_M = 1e-5
# A pad faces away from a camera when the cosine between its normal and the direction to the camera
# is below minus this: far beyond the float32 storage's error, far below any angle that matters.
BACK_FACE_TOLERANCE = 1e-4
FRACTION_TOLERANCE = 1e-9
ROLES = CAMERA_ROLES
FRAME_KEYS = ("gripper_poses", "contact_frames", "left_contact_frames", "right_contact_frames",
              "normalized_frames", "normalized_left_frames", "normalized_right_frames")


class CheckFailed(Exception):
    """One check found problems; ``problems`` lists them."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class EpisodeReport:
    """Outcome of each check for one episode folder: ``ok``, ``FAIL`` or ``-`` (not run)."""

    folder: str
    status: dict[str, str] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(self.status.get(c) == "ok" for c in CHECKS if self.status.get(c) != "n/a")


def find_episode_dirs(path: os.PathLike | str) -> list[Path]:
    """Folders under ``path`` (itself included) that hold an episode file, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(Path(path)):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(name in filenames for name in EPISODE_FILES):
            found.append(Path(dirpath))
    return sorted(found)


def verify_sharded(source: ShardSource, *, decode_depth: bool, tolerance_px: float,
                   progress: Callable[[Iterator[Any]], Iterator[Any]] = iter) -> list[EpisodeReport]:
    """Check every episode a sharded repo's index names: its members against the index and its
    manifest (``outputs.sharded.check_sharded``), then the episode against the contract."""
    reports = []
    for check in check_sharded(source, progress):
        if check.folder is None:
            report = EpisodeReport(check.row["relative_path"])
            report.status["files"], report.problems["files"] = "FAIL", list(check.problems)
        else:
            report = verify_episode(check.folder, check.root, decode_depth=decode_depth, tolerance_px=tolerance_px)
            if check.problems:
                report.status["files"] = "FAIL"
                report.problems["files"] = check.problems + report.problems.get("files", [])
        reports.append(report)
    return reports


def verify_episode(episode_dir: os.PathLike | str, root: os.PathLike | str | None = None, *,
                   decode_depth: bool = True, tolerance_px: float = DEFAULT_TOLERANCE_PX) -> EpisodeReport:
    """Run every check on one episode folder; ``root`` is the folder the relative path starts from."""
    episode_dir = Path(episode_dir)
    root = Path(root) if root is not None else None
    report = EpisodeReport(episode_dir.relative_to(root).as_posix() if root and episode_dir != root
                           else str(episode_dir))
    state: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("files", lambda: _check_files(episode_dir, root, state, report)),
        ("contract", lambda: _check_contract(episode_dir, state)),
        ("values", lambda: _check_values(episode_dir, state)),
        ("2d", lambda: _check_2d(read_episode_dir(episode_dir), tolerance_px)),
        ("depth", lambda: _check_depth(episode_dir, state, decode_depth, report)),
    ]
    blocked = False
    for name, run in steps:
        if blocked and name != "depth":
            report.status[name] = "-"
            continue
        try:
            run()
            report.status.setdefault(name, "ok")
        except CheckFailed as exc:
            report.status[name], report.problems[name] = "FAIL", exc.problems
        except Exception as exc:  # noqa: BLE001 - a corrupt file must become a failed check, never a crash
            report.status[name], report.problems[name] = "FAIL", [f"{type(exc).__name__}: {exc}"]
        blocked = blocked or report.status[name] == "FAIL"
    return report


def _check_files(episode_dir: Path, root: Path | None, state: dict[str, Any], report: EpisodeReport) -> None:
    problems = [f"{name} missing" for name in (TRACKS.path, EXTRINSICS.path, QUALITY.path)
                if not (episode_dir / name).is_file()]
    if problems:
        raise CheckFailed(problems)
    state["tracks"] = _read_npz(episode_dir / TRACKS.path)
    state["extrinsics"] = _read_npz(episode_dir / EXTRINSICS.path)
    state["quality"] = quality = _read_json(episode_dir / QUALITY.path)
    for _, serial in cameras_with_2d_tracks(state["tracks"]):
        if not (episode_dir / INTRINSICS.for_camera(str(serial))).is_file():
            problems.append(f"{INTRINSICS.for_camera(str(serial))} missing (camera has 2D tracks)")
    relative_path = (quality.get("episode") or {}).get("relative_path")
    if not isinstance(relative_path, str):
        problems.append(f"{QUALITY.path} has no episode.relative_path")
    elif root is not None and episode_dir != root and episode_dir.relative_to(root).as_posix() != relative_path:
        problems.append(f"folder is {episode_dir.relative_to(root).as_posix()} but {QUALITY.path} names "
                        f"{relative_path}")
    if (episode_dir / MANIFEST.path).is_file():
        problems += _manifest_problems(episode_dir, _read_json(episode_dir / MANIFEST.path), report)
    if problems:
        raise CheckFailed(problems)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckFailed([f"{path.name}: not readable JSON: {exc}"]) from exc
    if not isinstance(data, dict):
        raise CheckFailed([f"{path.name}: not a JSON object"])
    return data


def _manifest_problems(episode_dir: Path, manifest: Any, report: EpisodeReport) -> list[str]:
    problems = []
    entries = manifest.get("files") or []
    if manifest.get("schema_version") not in READABLE_NPZ:
        problems.append(f"manifest schema_version {manifest.get('schema_version')} is not one of "
                        f"{sorted(READABLE_NPZ)}")
    absent = {e["path"] for e in entries if not (episode_dir / e["path"]).is_file()}
    files = {e["path"]: output_file(e["path"]) for e in entries}
    problems += [f"{path} listed in {MANIFEST.path} is not a file of the output contract"
                 for path, file in files.items() if file is None or file is MANIFEST]
    depth = {path for path, file in files.items() if file is not None and file.kind == "depth"}
    if absent and absent == depth:
        report.notes.append("depth files listed in the manifest are not in this copy (metadata repo)")
        absent = set()
    problems += [f"{path} listed in {MANIFEST.path} but missing" for path in sorted(absent)]
    for entry in entries:
        path = episode_dir / entry["path"]
        if entry["path"] in absent or not path.is_file():
            continue
        if path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']}: {path.stat().st_size} bytes, {MANIFEST.path} says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from {MANIFEST.path}")
    return problems


def _check_contract(episode_dir: Path, state: dict[str, Any]) -> None:
    """Every key against the schema the files name (the current one, or schema 4 written before it),
    both files of one version, the same as the manifest's."""
    tracks, extrinsics = state["tracks"], state["extrinsics"]
    version = int_scalar(tracks, "schema_version")
    schemas = npz_schemas(version)
    if schemas is None:
        raise CheckFailed([f"{TRACKS.path}: schema_version {version}, readable are {sorted(READABLE_NPZ)} "
                           f"(current {SCHEMA_VERSION})"])
    sizes = shape_sizes(tracks)
    problems = schemas[0].problems(tracks, sizes) + schemas[1].problems(extrinsics, sizes)
    other = int_scalar(extrinsics, "schema_version")
    if other is not None and other != version:
        problems.append(f"{EXTRINSICS.path}: schema_version {other}, {TRACKS.path} has {version}")
    state["version"] = version
    if problems:
        raise CheckFailed(problems)


def _check_values(episode_dir: Path, state: dict[str, Any]) -> None:
    tracks, extrinsics, quality = state["tracks"], state["extrinsics"], state["quality"]
    current = state["version"] == SCHEMA_VERSION
    with_2d = cameras_with_2d_tracks(tracks)
    # Schema 5: roles without 2D tracks are filled with NaN (and a role without a camera has NaN poses).
    filled = {f"{key}_{role}" for role in ROLES if current and role not in dict(with_2d)
              for key in ("tracks_2d", "intrinsics", "distortion")}
    absent = {f"T_base_cam_{role}" for role, serial in zip(ROLES, extrinsics["serials"]) if current and not serial}
    problems = [f"{name}: {key} has NaN or inf values"
                for name, arrays in ((TRACKS.path, tracks), (EXTRINSICS.path, extrinsics))
                for key, array in arrays.items()
                if array.dtype.kind == "f" and key not in filled | absent and not np.isfinite(array).all()]
    if problems:
        raise CheckFailed(problems)
    if current:
        problems += _schema5_problems(tracks, extrinsics, quality, with_2d)
    frames = {key: tracks[key] for key in FRAME_KEYS}
    frames.update({key: extrinsics[key] for key in extrinsics if key.startswith("T_base_cam_") and key not in absent})
    for key, matrices in frames.items():
        worst = _rigid_error(matrices)
        if worst > RIGID_TOLERANCE:
            problems.append(f"{key} is not a rigid transform (error {worst:.2e})")
    half = int(tracks["num_points_per_finger"])
    pairs = [("contact_centroids", tracks["tracks_3d"]), ("normalized_centroids", tracks["normalized_tracks_3d"])]
    for key, points in pairs:
        error = np.abs(points.astype(np.float64).mean(axis=1) - tracks[key]).max()
        if error > CENTROID_TOLERANCE_M:
            problems.append(f"{key} differs from the mean of its points by {error * 1000:.4f} mm")
    for key, points in (("left_contact_frames", tracks["tracks_3d"][:, :half]),
                        ("right_contact_frames", tracks["tracks_3d"][:, half:])):
        error = np.abs(points.astype(np.float64).mean(axis=1) - tracks[key][:, :3, 3]).max()
        if error > CENTROID_TOLERANCE_M:
            problems.append(f"{key} origins differ from their finger's point centroid by {error * 1000:.4f} mm")
    index, distance = tracks["frame_to_normalized_idx"], tracks["cumulative_distance_mm"]
    if (np.diff(index) < 0).any() or index[0] != 0 or index[-1] != int(tracks["num_normalized_steps"]) - 1:
        problems.append("frame_to_normalized_idx is not non-decreasing from 0 to num_normalized_steps - 1")
    if (np.diff(distance) < 0).any() or distance[0] != 0:
        problems.append("cumulative_distance_mm does not start at 0 and never decrease")
    serials = [str(s) for s in extrinsics["serials"]]
    roles = [str(r) for r in extrinsics["roles"]]
    present = [s for s in serials if s]
    if any(role not in ROLES for role in roles) or len(set(present)) != len(present) \
            or (current and roles != list(ROLES)):
        problems.append(f"extrinsics serials {serials} / roles {roles} are not unique cameras of roles {ROLES}")
    wrist = str(extrinsics["wrist_serial"])
    if wrist and (wrist not in serials or roles[serials.index(wrist)] != "wrist"):
        problems.append(f"wrist_serial {wrist} is not the camera with role wrist")
    problems += [f"camera {s} has 2D tracks but no pose in {EXTRINSICS.path}" for _, s in with_2d if s not in serials]
    for key, serial in with_2d:
        record = IntrinsicsRecord.load(episode_dir / INTRINSICS.for_camera(serial))
        if not np.allclose(record.K, tracks[f"intrinsics_{key}"], rtol=0, atol=1e-9):
            problems.append(f"intrinsics_{key} differs from {INTRINSICS.for_camera(serial)}")
        if tuple(int(v) for v in tracks[f"image_size_{key}"]) != record.size:
            problems.append(f"image_size_{key} {tracks[f'image_size_{key}'].tolist()} differs from "
                            f"{INTRINSICS.name}'s {record.width}x{record.height}")
    if list(quality.get("cameras_with_2d_tracks", [])) != [key for key, _ in with_2d]:
        problems.append(f"quality.json cameras_with_2d_tracks {quality.get('cameras_with_2d_tracks')} "
                        f"differs from {TRACKS.path}'s {[key for key, _ in with_2d]}")
    if quality.get("num_frames") != int(tracks["num_frames"]):
        problems.append(f"quality.json num_frames {quality.get('num_frames')} differs from "
                        f"{TRACKS.path}'s {int(tracks['num_frames'])}")
    problems += _occlusion_problems(tracks, quality, [key for key, _ in with_2d])
    if problems:
        raise CheckFailed(problems)


def _schema5_problems(tracks: dict[str, np.ndarray], extrinsics: dict[str, np.ndarray], quality: dict[str, Any],
                      with_2d: list[tuple[str, str]]) -> list[str]:
    """Schema 5's own agreements: the serials in tracks.npz, extrinsics.npz and quality.json; every
    role without 2D tracks filled as documented; ``keep`` all true where it was not computed and its
    kept fraction the one quality.json reports."""
    problems = []
    serials = [str(s) for s in tracks["camera_serials"]]
    if serials != [str(s) for s in extrinsics["serials"]]:
        problems.append(f"camera_serials {serials} differ from {EXTRINSICS.path} serials")
    if quality.get("camera_serials") != serials:
        problems.append(f"{QUALITY.path} camera_serials {quality.get('camera_serials')} differ from {serials}")
    status = [str(s) for s in tracks["tracks_2d_status"]]
    if any((state == "no_camera") != (not serial) for state, serial in zip(status, serials)):
        problems.append(f"tracks_2d_status {status} disagrees with camera_serials {serials}")
    for role, state in zip(ROLES, status):
        if state == TRACKS_OK:
            continue
        if not (np.isnan(tracks[f"tracks_2d_{role}"]).all() and not tracks[f"visibility_{role}"].any()
                and (tracks[f"occlusion_{role}"] == UNKNOWN).all() and not tracks[f"image_size_{role}"].any()):
            problems.append(f"{role} has no 2D tracks ({state}) but its keys are not filled as documented")
    keep = tracks["keep"]
    if not bool(tracks["keep_computed"]) and not keep.all():
        problems.append("keep is not all true although keep_computed is false")
    fraction = quality.get("kept_fraction")
    if not isinstance(fraction, (int, float)) or abs(fraction - float(keep.mean())) > FRACTION_TOLERANCE:
        problems.append(f"{QUALITY.path} kept_fraction {fraction} differs from keep's {float(keep.mean())}")
    return problems


def _occlusion_problems(tracks: dict[str, np.ndarray], quality: dict[str, Any], serials: list[str]) -> list[str]:
    """Each camera's occlusion labels against the contract and against quality.json ``occlusion``."""
    report = quality.get("occlusion")
    if not isinstance(report, dict) or not isinstance(report.get("cameras"), dict):
        return [f"{QUALITY.path} has no occlusion report"]
    problems = []
    pooled = []
    for serial in serials:   # key suffixes: roles (schema 5) or serials (schema 4), as quality.json keys them
        key = f"occlusion_{serial}"
        labels, seen = tracks[key], tracks[f"visibility_{serial}"]
        camera = report["cameras"].get(serial)
        if not isinstance(camera, dict):
            problems.append(f"{QUALITY.path} occlusion has no entry for camera {serial}")
            continue
        outside = labels > max(OCCLUSION_LABELS)
        if outside.any():
            problems.append(f"{key} holds {int(outside.sum())} values outside {min(OCCLUSION_LABELS)}.."
                            f"{max(OCCLUSION_LABELS)} (first: {_first(outside)})")
        unseen = ~seen & (labels != UNKNOWN)
        if unseen.any():
            problems.append(f"{key} is not {UNKNOWN} (unknown) at {int(unseen.sum())} points whose visibility is "
                            f"False (first: {_first(unseen)})")
        if not report.get("enabled"):
            known = labels != UNKNOWN
            if known.any():
                problems.append(f"{key} is not {UNKNOWN} everywhere although {QUALITY.path} says occlusion was off "
                                f"(first: {_first(known)})")
        elif not camera.get("scene_from_depth"):
            scene = (labels == VISIBLE) | (labels == HIDDEN_BY_SCENE)
            if scene.any():
                problems.append(f"{key} has {int(scene.sum())} points labelled {VISIBLE} (visible) or "
                                f"{HIDDEN_BY_SCENE} (hidden by the scene), which need depth, but {QUALITY.path} says "
                                f"the camera had none (first: {_first(scene)})")
        for name, chosen in (("in_view", labels[seen]), ("all_points", labels)):
            if not _fractions_match(camera.get(name), chosen):
                problems.append(f"{QUALITY.path} occlusion {name} fractions of camera {serial} differ from {key}")
        if camera.get("in_view_points") != int(seen.sum()):
            problems.append(f"{QUALITY.path} occlusion in_view_points of camera {serial} is "
                            f"{camera.get('in_view_points')}, visibility_{serial} has {int(seen.sum())}")
        pooled.append(labels[seen])
    if serials and not problems and not _fractions_match(report.get("in_view"), np.concatenate(pooled)):
        problems.append(f"{QUALITY.path} occlusion in_view fractions differ from the cameras' labels")
    return problems


def _fractions_match(reported: Any, labels: np.ndarray) -> bool:
    """quality.json's label name -> fraction (None for no labels) against ``labels``."""
    if not isinstance(reported, dict) or set(reported) != set(OCCLUSION_LABELS.values()):
        return False
    for value, name in OCCLUSION_LABELS.items():
        got = reported[name]
        if labels.size == 0:
            if got is not None:
                return False
        elif not isinstance(got, (int, float)) or abs(got - np.mean(labels == value)) > FRACTION_TOLERANCE:
            return False
    return True


def _first(mask: np.ndarray) -> str:
    step, point = np.argwhere(mask)[0]
    return f"step {step}, point {point}"


def _rigid_error(matrices: np.ndarray) -> float:
    """Largest deviation of (..., 4, 4) matrices from rigid transforms (rotation and last row)."""
    m = matrices.astype(np.float64).reshape(-1, 4, 4)
    rotation = m[:, :3, :3]
    gram = np.swapaxes(rotation, 1, 2) @ rotation - np.eye(3)
    det = np.linalg.det(rotation) - 1.0
    last = m[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])
    return float(max(np.abs(gram).max(), np.abs(det).max(), np.abs(last).max()))


def _check_2d(episode: EpisodeData, tolerance_px: float) -> None:
    problems = []
    points = episode.tracks_3d.astype(np.float64)
    for serial in episode.cameras_with_2d_tracks:
        camera = episode.cameras[serial]
        key = camera.role if episode.schema_version == SCHEMA_VERSION else serial
        tracks_2d, seen, size = camera.tracks_2d, camera.visibility, camera.image_size
        if tracks_2d is None or seen is None or size is None or camera.intrinsics is None or camera.distortion is None:
            continue  # not a camera with 2D tracks
        stored = tracks_2d.astype(np.float64)
        poses = camera.T_base_cam if camera.T_base_cam.ndim == 3 else camera.T_base_cam[None]
        pixels = np.empty_like(stored)
        depth = np.empty(stored.shape[:2])
        groups = [(slice(None), poses[0])] if len(poses) == 1 else [(t, pose) for t, pose in enumerate(poses)]
        for index, pose in groups:
            camera_from_base = invert(pose)
            rvec, _ = cv2.Rodrigues(camera_from_base[:3, :3])
            tvec = camera_from_base[:3, 3]
            chunk = points[index].reshape(-1, 3)
            projected, _ = cv2.projectPoints(chunk, rvec, tvec, camera.intrinsics, camera.distortion)
            pixels[index] = projected.reshape(pixels[index].shape)
            depth[index] = (chunk @ camera_from_base[:3, :3].T + tvec)[:, 2].reshape(depth[index].shape)
        name = f"{camera.role} camera {serial}"
        width, height = size
        inside = ((stored[..., 0] >= -0.5) & (stored[..., 0] < width - 0.5)
                  & (stored[..., 1] >= -0.5) & (stored[..., 1] < height - 0.5))
        bad = seen & ~((depth > 0) & inside)
        if bad.any():
            step, point = np.argwhere(bad)[0]
            problems.append(f"{name}: {int(bad.sum())} visible points are behind the camera or off the "
                            f"{width}x{height} image (first: step {step}, point {point})")
        if seen.any():
            error = np.linalg.norm(pixels - stored, axis=-1)[seen]
            if error.max() > tolerance_px:
                problems.append(f"{name}: tracks_2d differs from tracks_3d reprojected with the saved "
                                f"calibration by up to {error.max():.3f} px (tolerance {tolerance_px} px)")
        if camera.occlusion is not None and (episode.quality.get("occlusion") or {}).get("enabled"):
            wrong = seen & _facing_away(episode, points, poses) & (camera.occlusion != HIDDEN_BY_ROBOT)
            if wrong.any():
                problems.append(f"{name}: {int(wrong.sum())} visible points whose pad faces away from the camera "
                                f"are not labelled {HIDDEN_BY_ROBOT} (hidden by the robot) in occlusion_{key} "
                                f"(first: {_first(wrong)})")
    if problems:
        raise CheckFailed(problems)


def _facing_away(episode: EpisodeData, points: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """(T, N) True where a point's pad normal turns away from the camera centre (beyond
    BACK_FACE_TOLERANCE): the normals are ``contact_normals_local`` turned by each finger's
    contact frame (whose axes are that finger's), the centres from ``poses`` (1 or T, 4, 4)."""
    half = episode.num_points_per_finger
    local = episode.contact_normals_local
    normals = np.concatenate(
        [local[:half] @ np.swapaxes(episode.left_contact_frames[:, :3, :3].astype(np.float64), -1, -2),
         local[half:] @ np.swapaxes(episode.right_contact_frames[:, :3, :3].astype(np.float64), -1, -2)], axis=1)
    toward = poses[:, None, :3, 3] - points
    cosine = np.einsum("tni,tni->tn", toward, normals) / np.linalg.norm(toward, axis=-1)
    return cosine < -BACK_FACE_TOLERANCE


def _check_depth(episode_dir: Path, state: dict[str, Any], decode: bool, report: EpisodeReport) -> None:
    folders = sorted(p for p in (episode_dir / RECORDINGS).glob("*")
                     if (p / DEPTH.name).exists() or (p / DEPTH_META.name).exists())
    if not folders:
        report.status["depth"] = "n/a"
        return
    num_frames = int_scalar(state["tracks"], "num_frames") if "tracks" in state else None
    problems = []
    for folder in folders:
        serial = folder.name
        if not (folder / DEPTH.name).is_file() or not (folder / DEPTH_META.name).is_file():
            problems.append(f"camera {serial}: {DEPTH.name} and {DEPTH_META.name} must come together")
            continue
        try:
            meta = DepthMeta.load(folder / DEPTH_META.name)
            if num_frames is not None and meta.num_frames != num_frames:
                problems.append(f"camera {serial}: {meta.num_frames} depth frames for {num_frames} steps")
            if decode:
                with DepthReader(folder / DEPTH.name) as reader:
                    reader.verify(meta, name=f"camera {serial} {DEPTH.name}")
        except Exception as exc:  # noqa: BLE001 - DepthCodecError, and FFmpeg's own errors on damaged files
            problems.append(f"camera {serial}: {exc}")
    if problems:
        raise CheckFailed(problems)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckFailed([f"{path.name}: not a readable npz file: {exc}"]) from exc


def format_table(reports: Sequence[EpisodeReport]) -> str:
    """One row per episode with each check's status, then every problem and note."""
    rows: list[tuple[str, ...]] = [("episode", *CHECKS, "result")]
    rows += [(r.folder, *(r.status.get(c, "-") for c in CHECKS), "ok" if r.ok else "FAILED") for r in reports]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for report in reports:
        for check, problems in report.problems.items():
            lines += [f"{report.folder}: {check}: {p}" for p in problems]
        lines += [f"{report.folder}: note: {n}" for n in report.notes]
    return "\n".join(lines)
