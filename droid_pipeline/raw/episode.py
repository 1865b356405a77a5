"""One raw DROID episode as the steps read it: metadata, cameras, trajectory.h5 and recordings.

:class:`RawEpisode` is built from a discovery record and ``droid_root`` for one step, whose name
every error carries. It holds the validated metadata json and the cameras' roles, opens
trajectory.h5 once (:meth:`RawEpisode.trajectory`) and finds each camera's files:

- ``recordings/MP4/<serial>.mp4`` is the rectified left view, ``<serial>-stereo.mp4`` left|right
  side by side; the ``-stereo`` suffix is sometimes missing, so a ``<serial>.mp4`` twice as wide
  as a ZED mode (or an exact downscale of one) without being one is the stereo file
  (:func:`find_camera_video`, :func:`find_stereo_video`);
- ``recordings/SVO/<serial>.svo`` is the ZED SDK's recording.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from droid_pipeline.core.errors import EpisodeError
from droid_pipeline.core.files import MAX_METADATA_BYTES, read_text_capped
from droid_pipeline.raw.discovery import Episode
from droid_pipeline.raw.trajectory import TrajectoryFile, open_trajectory
from droid_pipeline.raw.video import VideoError, VideoInfo, probe
from droid_pipeline.raw.zed_conf import match_resolution

TRAJECTORY_FILE = "trajectory.h5"
MP4_DIR = "recordings/MP4"
SVO_DIR = "recordings/SVO"


@dataclass(frozen=True)
class CameraVideo:
    """A camera's MP4 and its layout: the left image alone, or left|right side by side."""

    path: Path
    info: VideoInfo
    side_by_side: bool

    @property
    def left_size(self) -> tuple[int, int]:
        """(width, height) of the left image in each frame."""
        width = self.info.width // 2 if self.side_by_side else self.info.width
        return width, self.info.height


def find_camera_video(mp4_dir: Path, serial: str, *, frames: bool = False) -> CameraVideo | None:
    """The MP4 to read a camera's left image from: ``<serial>.mp4`` (side by side when it is
    twice a ZED width, see module docstring), else ``<serial>-stereo.mp4``; None if neither
    exists. An unreadable file or an odd-width side-by-side one raises VideoError. ``frames``
    also scans its packets (``info.frame_indices``) in the same opening."""
    for path, side_by_side in ((mp4_dir / f"{serial}.mp4", False), (mp4_dir / f"{serial}-stereo.mp4", True)):
        if not path.exists():
            continue
        info = probe(path, frames=frames)  # a path that is not a regular file fails here, never skipped
        if not side_by_side and match_resolution(info.width, info.height) is None \
                and info.width % 2 == 0 and match_resolution(info.width // 2, info.height) is not None:
            side_by_side = True
        if side_by_side and info.width % 2:
            raise VideoError(f"stereo video {path} has odd width {info.width}")
        return CameraVideo(path, info, side_by_side)
    return None


def find_stereo_video(mp4_dir: Path, serial: str, width: int, height: int) -> CameraVideo:
    """The camera's side-by-side video for a ``width x height`` left image: ``<serial>-stereo.mp4``,
    or ``<serial>.mp4`` when that one is the ``2*width x height`` left|right file."""
    seen = []
    for path in (mp4_dir / f"{serial}-stereo.mp4", mp4_dir / f"{serial}.mp4"):
        if path.exists():
            info = probe(path)
            if (info.width, info.height) == (2 * width, height):
                return CameraVideo(path, info, side_by_side=True)
            seen.append(f"{path.name} is {info.width}x{info.height}")
    raise VideoError(f"no side-by-side stereo video {2 * width}x{height} (left|right for the "
                     f"{width}x{height} intrinsics) in {mp4_dir}" + (f": {'; '.join(seen)}" if seen else ""))


@dataclass(frozen=True)
class RawEpisode:
    """A raw episode opened by ``step``: its folder, validated metadata and cameras."""

    episode: Episode
    folder: Path
    metadata: dict[str, Any]
    step: str

    @classmethod
    def load(cls, episode: Episode, droid_root: os.PathLike | str, step: str) -> RawEpisode:
        """Read the episode's metadata json, checked to be a JSON object naming this episode."""
        folder = episode.path(droid_root)
        path = folder / episode.metadata_file
        try:
            metadata = json.loads(read_text_capped(path, MAX_METADATA_BYTES))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EpisodeError(episode.episode_id, step, f"cannot read metadata {path}: {exc}") from exc
        if not isinstance(metadata, dict):
            raise EpisodeError(episode.episode_id, step, f"metadata {path} is not a JSON object")
        uuid = metadata.get("uuid")
        if uuid is not None and uuid != episode.episode_id:
            raise EpisodeError(episode.episode_id, step, f"metadata {path} belongs to episode {uuid!r}")
        return cls(episode, folder, metadata, step)

    @property
    def episode_id(self) -> str:
        return self.episode.episode_id

    @property
    def cameras(self) -> dict[str, str]:
        """Serial -> role (wrist, ext1, ext2), in role order."""
        return {serial: role for role, serial in self.episode.serials.items()}

    def role(self, serial: str) -> str:
        return self.cameras.get(serial, "unknown role")

    def fail(self, cause: str) -> EpisodeError:
        return EpisodeError(self.episode_id, self.step, cause)

    def select_cameras(self, names: Sequence[str] | None) -> list[str]:
        """Serials of the wanted cameras, given as serials or roles (None = all), each once, in order."""
        serials = self.episode.serials
        if not serials:
            raise self.fail(f"metadata {self.episode.metadata_file} names no camera serial")
        if names is None:
            return list(serials.values())
        chosen = []
        for name in names:
            serial = serials.get(name, name)
            if serial not in serials.values():
                known = ", ".join(f"{role}={s}" for role, s in serials.items())
                raise self.fail(f"unknown camera {name!r}; this episode has {known}")
            if serial not in chosen:
                chosen.append(serial)
        return chosen

    @property
    def trajectory_path(self) -> Path:
        return self.folder / TRAJECTORY_FILE

    @contextlib.contextmanager
    def trajectory(self) -> Iterator[TrajectoryFile]:
        """trajectory.h5, open for the block; every problem reading it fails this step."""
        with open_trajectory(self.trajectory_path, self.episode_id, self.step) as h5:
            yield h5

    @property
    def mp4_dir(self) -> Path:
        return self.folder / MP4_DIR

    def mp4_names(self) -> list[str]:
        """Names of the files in recordings/MP4 (none when there is no such folder)."""
        return sorted(os.listdir(self.mp4_dir)) if self.mp4_dir.is_dir() else []

    def svo_path(self, serial: str) -> Path:
        return self.folder / SVO_DIR / f"{serial}.svo"

    def camera_video(self, serial: str, *, frames: bool = False) -> CameraVideo | None:
        """The camera's left-image MP4 (:func:`find_camera_video`; ``frames``: with its frames'
        positions, ``info.frame_indices``)."""
        return find_camera_video(self.mp4_dir, serial, frames=frames)

    def stereo_video(self, serial: str, width: int, height: int) -> CameraVideo:
        """The camera's side-by-side MP4 for a ``width x height`` left image (:func:`find_stereo_video`)."""
        return find_stereo_video(self.mp4_dir, serial, width, height)
