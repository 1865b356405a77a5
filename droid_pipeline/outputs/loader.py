"""Load one converted episode, from an output folder or a Hugging Face repo, as typed arrays.

``load_episode`` returns an :class:`EpisodeData`: the contact tracks (3D and normalized), each
camera's pose, 2D tracks, visibility, occlusion labels and intrinsics, the quality report, and the depth videos as
lazy :class:`~droid_pipeline.formats.depth_codec.DepthReader` objects. Arrays are exactly those of the
files (``np.load(..., allow_pickle=False)``), made read-only. The file layout is the output
contract of docs/outputs.md.

Where the episode is:

- a local episode folder: ``load_episode("output/AUTOLab/success/2023-08-18/Fri_Aug_18_...")``;
- a local output root plus the episode's relative path or id: ``load_episode("output", ID)``;
- a Hub repo: ``load_episode("hf://datasets/<user>/<name>", ID or relative path)`` (or the
  relative path appended to the URL). Only that episode's files are downloaded, through
  ``huggingface_hub`` into its cache, all from one commit of ``revision``;
- a sharded repo (docs/upload.md), on the Hub or a local folder laid out like one
  (``index/<kind>.parquet`` + ``shards/``): the episode is found in the index and only its members
  are read, by HTTP range requests on the Hub (never the whole shard), then checked against the
  index's SHA-256 and laid out as an episode folder under ``cache_dir``
  (:mod:`droid_pipeline.outputs.sharded`). :func:`iter_episodes` streams whole shards instead.

An episode id is found by reading the episode records (``manifest.json``, else
``quality.json``) of the folders under the id's lab, those whose folder time equals the id's
time first: the folder name alone never decides, since it has been seen to disagree with the id.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np

from droid_pipeline.core.schema import (
    DEPTH,
    DEPTH_META,
    EXTRINSICS,
    INTRINSICS,
    MANIFEST,
    QUALITY,
    READABLE_NPZ,
    SCHEMA_VERSION,
    TRACKS,
    cameras_with_2d_tracks,
    int_scalar,
    npz_schemas,
    shape_sizes,
)
from droid_pipeline.formats.depth_codec import DepthMeta, DepthReader

HUB_PREFIX = "hf://"
# Files that tell which episode a folder holds, in the order they are read.
RECORD_FILES = (MANIFEST.path, QUALITY.path)
_HUB_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
_ID_TIME = re.compile(r"-(\d{1,2})h-(\d{1,2})m-(\d{1,2})s$")
_FOLDER_TIME = re.compile(r"_(\d{1,2})[:_](\d{2})[:_](\d{2})_\d{4}$")

log = logging.getLogger(__name__)


class LoadError(ValueError):
    """An episode cannot be found, or its files are missing or do not follow the output contract."""


@dataclass(frozen=True)
class CameraData:
    """One camera: its pose and, when it got 2D tracks, their pixels, visibility, occlusion labels
    and intrinsics.

    ``occlusion`` (T, N) uint8 says what hides each point (core.schema's labels, docs/occlusion.md):
    0 visible, 1 hidden by the robot, 2 hidden by the scene (from depth), 3 unknown (out of view,
    i.e. ``visibility`` False, or no valid depth to decide; a camera without depth has only 1 and 3).
    """

    serial: str
    role: str                                # wrist, ext1 or ext2
    T_base_cam: np.ndarray                   # (4, 4) exterior, (T, 4, 4) wrist; left lens, OpenCV frame
    extrinsics_source: str
    tracks_2d: np.ndarray | None = None      # (T, N, 2) pixels, off-image values kept
    visibility: np.ndarray | None = None     # (T, N) bool: in front and in the image (occlusion aside)
    occlusion: np.ndarray | None = None      # (T, N) uint8: 0 visible, 1 robot, 2 scene, 3 unknown
    intrinsics: np.ndarray | None = None     # (3, 3) K the 2D tracks were projected with
    distortion: np.ndarray | None = None     # (5,) k1 k2 p1 p2 k3
    image_size: tuple[int, int] | None = None  # (width, height)
    intrinsics_record: Mapping[str, Any] | None = None  # recordings/<serial>/intrinsics.json

    @property
    def has_2d_tracks(self) -> bool:
        return self.tracks_2d is not None

    def pose(self, step: int) -> np.ndarray:
        """T_base_cam (4, 4) at control step ``step`` (the same for every step of an exterior camera)."""
        return self.T_base_cam[step] if self.T_base_cam.ndim == 3 else self.T_base_cam


@dataclass(frozen=True)
class NormalizedFlow:
    """The gripper resampled every ``step_size_mm`` of contact-centroid travel (M samples)."""

    step_size_mm: float
    tracks_3d: np.ndarray               # (M, N, 3)
    centroids: np.ndarray               # (M, 3)
    frames: np.ndarray                  # (M, 4, 4)
    left_frames: np.ndarray             # (M, 4, 4)
    right_frames: np.ndarray            # (M, 4, 4)
    gripper_positions: np.ndarray       # (M,)
    cumulative_distance_mm: np.ndarray  # (T,) centroid arc length at each step
    frame_to_normalized_idx: np.ndarray  # (T,) nearest sample of each step

    @property
    def num_steps(self) -> int:
        return len(self.centroids)


@dataclass(frozen=True)
class EpisodeData:
    """One converted episode (metres, robot base frame; pixels for 2D; see docs/outputs.md)."""

    path: Path                          # the local episode folder the files were read from
    episode_id: str
    relative_path: str
    schema_version: int
    num_frames: int
    fps: float
    num_points_per_finger: int          # the left finger's points come first
    tracks_3d: np.ndarray               # (T, N, 3)
    contact_points_local: np.ndarray    # (N, 3) in each point's finger link frame
    contact_normals_local: np.ndarray   # (N, 3) outward pad normal at each point, same frames
    contact_centroids: np.ndarray       # (T, 3)
    contact_frames: np.ndarray          # (T, 4, 4)
    left_contact_frames: np.ndarray     # (T, 4, 4)
    right_contact_frames: np.ndarray    # (T, 4, 4)
    gripper_poses: np.ndarray           # (T, 4, 4)
    gripper_positions: np.ndarray       # (T,) 0 open .. 1 closed
    cartesian_positions: np.ndarray     # (T, 6) DROID flange pose
    normalized: NormalizedFlow
    cameras: Mapping[str, CameraData]   # by serial, in role order
    quality: Mapping[str, Any]
    manifest: Mapping[str, Any] | None
    tracks_npz: Mapping[str, np.ndarray]      # every array of tracks.npz, as written
    extrinsics_npz: Mapping[str, np.ndarray]  # every array of extrinsics.npz, as written

    @property
    def cameras_with_2d_tracks(self) -> tuple[str, ...]:
        return tuple(s for s, c in self.cameras.items() if c.has_2d_tracks)

    @property
    def depth_cameras(self) -> tuple[str, ...]:
        """Serials whose ``depth.mkv`` is present."""
        return tuple(s for s in self.cameras if (self.path / DEPTH.for_camera(s)).is_file())

    def camera(self, name: str) -> CameraData:
        """A camera by serial or role (wrist, ext1, ext2)."""
        if name in self.cameras:
            return self.cameras[name]
        for camera in self.cameras.values():
            if camera.role == name:
                return camera
        known = ", ".join(f"{c.role}={s}" for s, c in self.cameras.items())
        raise LoadError(f"episode {self.episode_id} has no camera {name!r} (cameras: {known})")

    def depth(self, name: str) -> DepthReader:
        """The camera's depth frames, decoded on access: ``len()``, ``[i]``, iteration, ``read_all()``
        (uint16 millimetres, 0 = invalid, frame i = step i). Use it in a ``with`` block."""
        path = self.path / DEPTH.for_camera(self.camera(name).serial)
        if not path.is_file():
            raise LoadError(f"episode {self.episode_id}: camera {name} has no depth ({path} missing; "
                            "depth is only in the full pipeline's outputs)")
        return DepthReader(path)

    def depth_meta(self, name: str) -> DepthMeta:
        """The camera's ``depth_meta.json`` (size, frame count, checksum of the raw frames, ...)."""
        return DepthMeta.load(self.path / DEPTH_META.for_camera(self.camera(name).serial))


def load_episode(path_or_repo: os.PathLike | str, episode: str | None = None, *,
                 repo_type: str = "dataset", revision: str | None = None,
                 cache_dir: os.PathLike | str | None = None, include_depth: bool = True) -> EpisodeData:
    """Load one episode (see module docstring for the forms of ``path_or_repo`` and ``episode``).

    ``repo_type``, ``revision`` and ``cache_dir`` apply to Hub repos (``revision``: branch, tag or
    commit; default main) and ``cache_dir`` to sharded folders too. ``include_depth=False`` skips
    downloading depth videos. Raises LoadError when the episode is not there or its files break the
    output contract.
    """
    from droid_pipeline.outputs import sharded

    text = os.fspath(path_or_repo)
    if text.startswith(HUB_PREFIX):
        return _load_from_hub(text, episode, repo_type, revision, cache_dir, include_depth)
    root = Path(text)
    index = sharded.folder_index(root) if episode is not None else None
    if episode is not None and index is not None:
        try:
            return read_episode_dir(sharded.fetch_episode(sharded.FolderSource(root, index), episode, cache_dir,
                                                          include_depth))
        except (sharded.ShardedReadError, OSError, ValueError) as exc:
            raise LoadError(f"{root}: episode {episode}: {exc}") from exc
    if episode is None:
        return read_episode_dir(root)
    if "/" in episode:
        return read_episode_dir(root / episode)
    folders = _episode_folders_local(root, _lab_of(episode))
    rel = _find_episode(episode, folders, lambda rel, name: (root / rel / name).read_text(),
                        str(root))
    return read_episode_dir(root / rel)


def iter_episodes(path_or_repo: os.PathLike | str, filter: Callable[[Mapping[str, Any]], bool] | None = None, *,
                  part: tuple[int, int] | None = None, repo_type: str = "dataset", revision: str | None = None,
                  include_depth: bool = True) -> Iterator[EpisodeData]:
    """The episodes of a sharded repo (``hf://datasets/<user>/<name>`` or a local folder laid out
    like one) whose index row ``filter`` accepts (all without one), for training: whole shards are
    streamed front to back in shard order, each member checked against the index. Each episode
    lives in a temporary folder until the next one is asked for: read its depth before that.

    ``filter`` gets the row as a dict of the index columns (docs/upload.md), e.g.
    ``lambda row: row["outcome"] == "success" and row["lab"] == "TRI"``.

    ``part=(i, n)`` yields only the i-th of n disjoint parts that together cover the repo once:
    whole shards when the repo has at least n shards (each reader then streams only its shards),
    else single episodes. From a PyTorch DataLoader pass
    ``(rank * num_workers + worker_id, world_size * num_workers)`` (docs/inspecting.md).
    """
    from droid_pipeline.outputs import sharded

    text = os.fspath(path_or_repo)
    try:
        sharded.part_rows([], part)
    except ValueError as exc:
        raise LoadError(str(exc)) from exc
    try:
        source = _sharded_source(text, repo_type, revision, "iter_episodes")
        for folder in sharded.iter_sharded_folders(source, filter, include_depth, part):
            yield read_episode_dir(folder)
    except (sharded.ShardedReadError, sharded.ShardError, OSError) as exc:
        raise LoadError(f"{text}: {exc}") from exc


def shard_features(path_or_repo: os.PathLike | str, *, repo_type: str = "dataset",
                   revision: str | None = None) -> Any:
    """The ``datasets.Features`` of a sharded repo's shards (``hf://datasets/<user>/<name>`` or a
    local folder laid out like one), for ``datasets.load_dataset("webdataset", data_files=<its shards>,
    features=...)``: ``__key__``, ``__url__`` and every member any of its episodes has, typed as the
    uploader found them in every episode it published (docs/inspecting.md). Declared, they replace
    what ``datasets`` would infer from the first five samples of the first shard, which fails the load
    when a field null in those is set in a later episode. A member an episode lacks reads as None."""
    import datasets
    import pyarrow as pa

    from droid_pipeline.outputs import sharded

    text = os.fspath(path_or_repo)
    try:
        types = sharded.read_shard_types(_sharded_source(text, repo_type, revision, "shard_features"))
    except (sharded.ShardedReadError, OSError) as exc:
        raise LoadError(f"{text}: {exc}") from exc
    return datasets.Features.from_arrow_schema(
        pa.schema([pa.field("__key__", pa.string()), *types, pa.field("__url__", pa.string())]))


def _sharded_source(text: str, repo_type: str, revision: str | None, caller: str) -> Any:
    """The sharded repo at ``text`` (a Hub URL or a folder) as a ``sharded.ShardSource``."""
    from droid_pipeline.outputs import sharded

    if text.startswith(HUB_PREFIX):
        repo_type, repo_id, _ = parse_hub_url(text, repo_type)
        source: sharded.ShardSource | None = sharded.hub_source(repo_type, repo_id, revision, text)
    else:
        index = sharded.folder_index(Path(text))
        source = None if index is None else sharded.FolderSource(Path(text), index)
    if source is None:
        raise LoadError(f"{text}: not a sharded repo (no index/<kind>.parquet); {caller} reads "
                        "the shards layout of docs/upload.md")
    return source


def read_episode_dir(episode_dir: os.PathLike | str) -> EpisodeData:
    """Read the output files in one local episode folder, checked against the output contract."""
    episode_dir = Path(episode_dir)
    if not (episode_dir / TRACKS.path).is_file():
        raise LoadError(f"{episode_dir}: no {TRACKS.path}; expected an episode output folder, or an "
                        "output root together with the episode's relative path or id")
    tracks = _read_npz(episode_dir / TRACKS.path)
    extrinsics = _read_npz(episode_dir / EXTRINSICS.path)
    quality = _read_json(episode_dir / QUALITY.path)
    manifest = _read_json(episode_dir / MANIFEST.path) if (episode_dir / MANIFEST.path).is_file() else None
    where = str(episode_dir)
    versions = [int_scalar(arrays, "schema_version") for arrays in (tracks, extrinsics)]
    schemas = npz_schemas(versions[0])
    if schemas is None or versions[1] != versions[0]:
        raise LoadError(f"{where}: written under output schema {versions[0]} ({TRACKS.path}) / {versions[1]} "
                        f"({EXTRINSICS.path}); this package reads schemas {sorted(READABLE_NPZ)} (re-convert "
                        "the episode)")
    info = quality.get("episode")
    if not isinstance(info, dict) or not isinstance(info.get("episode_id"), str) \
            or not isinstance(info.get("relative_path"), str):
        raise LoadError(f"{where}/{QUALITY.path}: no episode.episode_id / episode.relative_path")

    def get(key: str) -> np.ndarray:
        return _key(tracks, key, f"{where}/{TRACKS.path}")

    normalized = NormalizedFlow(
        step_size_mm=float(get("normalized_step_size_mm")), tracks_3d=get("normalized_tracks_3d"),
        centroids=get("normalized_centroids"), frames=get("normalized_frames"),
        left_frames=get("normalized_left_frames"), right_frames=get("normalized_right_frames"),
        gripper_positions=get("normalized_gripper_positions"),
        cumulative_distance_mm=get("cumulative_distance_mm"),
        frame_to_normalized_idx=get("frame_to_normalized_idx"))
    data = EpisodeData(
        path=episode_dir, episode_id=info["episode_id"], relative_path=info["relative_path"],
        schema_version=int(get("schema_version")), num_frames=int(get("num_frames")),
        fps=float(get("fps")), num_points_per_finger=int(get("num_points_per_finger")),
        tracks_3d=get("tracks_3d"), contact_points_local=get("contact_points_local"),
        contact_normals_local=get("contact_normals_local"),
        contact_centroids=get("contact_centroids"), contact_frames=get("contact_frames"),
        left_contact_frames=get("left_contact_frames"), right_contact_frames=get("right_contact_frames"),
        gripper_poses=get("gripper_poses"), gripper_positions=get("gripper_positions"),
        cartesian_positions=get("cartesian_positions"), normalized=normalized,
        cameras=MappingProxyType(_cameras(episode_dir, tracks, extrinsics)),
        quality=MappingProxyType(quality),
        manifest=None if manifest is None else MappingProxyType(manifest),
        tracks_npz=MappingProxyType(tracks), extrinsics_npz=MappingProxyType(extrinsics))
    sizes = shape_sizes(tracks)
    problems = schemas[0].problems(tracks, sizes) + schemas[1].problems(extrinsics, sizes)
    if problems:
        raise LoadError(f"{where}: does not follow the output contract: {'; '.join(problems)}")
    return data


def _cameras(episode_dir: Path, tracks: dict[str, np.ndarray],
             extrinsics: dict[str, np.ndarray]) -> dict[str, CameraData]:
    """The episode's cameras by serial, in role order. Keys name a camera by role (schema 5, where a
    role the episode lacks has an empty serial) or by serial (schema 4)."""
    where_x, where_t = f"{episode_dir}/{EXTRINSICS.path}", f"{episode_dir}/{TRACKS.path}"
    by_role = int_scalar(tracks, "schema_version") == SCHEMA_VERSION
    serials = [str(s) for s in _key(extrinsics, "serials", where_x)]
    roles = [str(r) for r in _key(extrinsics, "roles", where_x)]
    sources = [str(s) for s in _key(extrinsics, "sources", where_x)]
    if not len(serials) == len(roles) == len(sources):
        raise LoadError(f"{where_x}: serials, roles and sources differ in length")
    with_2d = {serial: key for key, serial in cameras_with_2d_tracks(tracks)}
    unknown = sorted(set(with_2d) - set(serials))
    if unknown:
        raise LoadError(f"{where_t}: cameras {unknown} have 2D tracks but no pose in {EXTRINSICS.path}")
    cameras = {}
    for serial, role, source in zip(serials, roles, sources):
        if not serial:
            continue   # schema 5: the episode has no camera of this role
        fields: dict[str, Any] = {}
        if serial in with_2d:
            key = with_2d[serial]
            size = _key(tracks, f"image_size_{key}", where_t)
            fields = {"tracks_2d": _key(tracks, f"tracks_2d_{key}", where_t),
                      "visibility": _key(tracks, f"visibility_{key}", where_t),
                      "occlusion": _key(tracks, f"occlusion_{key}", where_t),
                      "intrinsics": _key(tracks, f"intrinsics_{key}", where_t),
                      "distortion": _key(tracks, f"distortion_{key}", where_t),
                      "image_size": (int(size[0]), int(size[1])),
                      "intrinsics_record": MappingProxyType(_read_json(episode_dir / INTRINSICS.for_camera(serial)))}
        pose_key = f"T_base_cam_{role if by_role else serial}"
        cameras[serial] = CameraData(serial=serial, role=role, extrinsics_source=source,
                                     T_base_cam=_key(extrinsics, pose_key, where_x), **fields)
    return cameras


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError as exc:
        raise LoadError(f"{path}: missing") from exc
    except (OSError, ValueError) as exc:
        raise LoadError(f"{path}: not a readable npz file: {exc}") from exc
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LoadError(f"{path}: missing") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LoadError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object")
    return data


def _key(arrays: Mapping[str, np.ndarray], key: str, where: str) -> np.ndarray:
    if key not in arrays:
        raise LoadError(f"{where}: no key {key!r}")
    return arrays[key]


# ------------------------------------------------------------------ finding an episode by id


def _lab_of(episode_id: str) -> str:
    lab = episode_id.split("+", 1)[0]
    if "+" not in episode_id or not lab:
        raise LoadError(f"{episode_id!r} is neither an episode id (LAB+user+date-time) nor a "
                        "relative path (LAB/outcome/date/folder)")
    return lab


def _find_episode(episode_id: str, folders: Iterable[tuple[str, str]],
                  read: Callable[[str, str], str], where: str) -> str:
    """Relative folder of ``episode_id`` among ``(folder, record file)`` pairs, read by ``read``."""
    candidates = sorted(folders, key=lambda item: (not _same_time(episode_id, item[0]), item[0]))
    if not candidates:
        raise LoadError(f"{where}: no episode folders under {_lab_of(episode_id)}/ "
                        f"(looking for episode id {episode_id})")
    timed = sum(_same_time(episode_id, folder) for folder, _ in candidates)
    for checked, (folder, record) in enumerate(candidates):
        if checked == timed:
            log.info("episode %s: not in the %d folder(s) named with its time; reading the records "
                     "of the other %d under %s/", episode_id, timed, len(candidates) - timed,
                     _lab_of(episode_id))
        try:
            data = json.loads(read(folder, record))
        except ValueError as exc:
            log.warning("%s/%s/%s: unreadable (%s); skipped", where, folder, record, exc)
            continue
        found = data.get("episode_id") if record == MANIFEST.path else (data.get("episode") or {}).get("episode_id")
        if found == episode_id:
            return folder
    raise LoadError(f"{where}: episode id {episode_id} not found among the {len(candidates)} episode "
                    f"folders under {_lab_of(episode_id)}/")


def _same_time(episode_id: str, folder: str) -> bool:
    id_time, folder_time = _ID_TIME.search(episode_id), _FOLDER_TIME.search(PurePosixPath(folder).name)
    return (id_time is not None and folder_time is not None
            and tuple(map(int, id_time.groups())) == tuple(map(int, folder_time.groups())))


def _record_folders(files: Iterable[str]) -> list[tuple[str, str]]:
    """``(folder, record file)`` per episode folder among relative file paths (manifest preferred)."""
    records: dict[str, str] = {}
    for file in files:
        path = PurePosixPath(file)
        if path.name in RECORD_FILES:
            folder = str(path.parent)
            current = records.get(folder)
            if current is None or RECORD_FILES.index(path.name) < RECORD_FILES.index(current):
                records[folder] = path.name
    return sorted(records.items())


def _episode_folders_local(root: Path, lab: str) -> list[tuple[str, str]]:
    if not (root / lab).is_dir():
        raise LoadError(f"{root}: no folder {lab}/ for the episode's lab")
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root / lab):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).as_posix()
        files.extend(f"{rel}/{name}" for name in filenames if name in RECORD_FILES)
    return _record_folders(files)


# ------------------------------------------------------------------ Hub


def parse_hub_url(url: str, repo_type: str = "dataset") -> tuple[str, str, str | None]:
    """``hf://[datasets/]<user>/<name>[/<relative path>]`` -> (repo type, repo id, relative path)."""
    parts = [p for p in url[len(HUB_PREFIX):].split("/") if p]
    if parts and parts[0] in _HUB_TYPES:
        repo_type = _HUB_TYPES[parts.pop(0)]
    if len(parts) < 2:
        raise LoadError(f"{url!r}: expected hf://datasets/<user>/<name>")
    return repo_type, "/".join(parts[:2]), "/".join(parts[2:]) or None


def _load_from_hub(url: str, episode: str | None, repo_type: str, revision: str | None,
                   cache_dir: os.PathLike | str | None, include_depth: bool) -> EpisodeData:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    from droid_pipeline.outputs import sharded

    repo_type, repo_id, rel = parse_hub_url(url, repo_type)
    if rel is not None and episode is not None:
        raise LoadError(f"{url}: the URL already names an episode; do not pass episode={episode!r}")
    rel = rel or episode
    if rel is None:
        raise LoadError(f"{url}: name the episode (its id or relative path)")
    api = HfApi()
    try:
        source = sharded.hub_source(repo_type, repo_id, revision, url)
        if source is not None:
            return read_episode_dir(sharded.fetch_episode(source, rel, cache_dir, include_depth))
        commit = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha

        def download(filename: str) -> str:
            return hf_hub_download(repo_id, filename, repo_type=repo_type, revision=commit,
                                   cache_dir=None if cache_dir is None else Path(cache_dir))

        def listing(folder: str) -> list[str]:
            return [f.path for f in api.list_repo_tree(repo_id, path_in_repo=folder, recursive=True,
                                                       revision=commit, repo_type=repo_type)
                    if isinstance(f, RepoFile)]

        if "/" not in rel:
            lab = _lab_of(rel)
            rel = _find_episode(rel, _record_folders(listing(lab)),
                                lambda folder, name: Path(download(f"{folder}/{name}")).read_text(),
                                url)
        files = [f for f in listing(rel) if include_depth or not _is_depth(PurePosixPath(f).relative_to(rel))]
        if f"{rel}/{TRACKS.path}" not in files:
            raise LoadError(f"{url}: no episode at {rel} (no {TRACKS.path} there)")
        local = {f: download(f) for f in files}
    except (HfHubHTTPError, OSError, sharded.ShardedReadError) as exc:   # HTTP errors, no connection to the Hub
        raise LoadError(f"{url}: {exc}") from exc
    return read_episode_dir(Path(local[f"{rel}/{TRACKS.path}"]).parent)


def _is_depth(relative_path: PurePosixPath) -> bool:
    """depth.mkv or depth_meta.json: the files ``include_depth=False`` leaves out."""
    return any(f.matches(relative_path.as_posix()) for f in (DEPTH, DEPTH_META))
