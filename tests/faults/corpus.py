"""A corpus of damaged DROID episodes: one named kind per function, each made from a good one.

:func:`build` copies a synthetic dataset's raw tree and calibration files and adds, for each kind
asked for, a clone of a good episode (its own id and folder, its calibration entries copied)
damaged by that kind's function. What the damage must lead to is declared beside it
(:class:`Kind`): a discovery failure, or a failure at a given step of each pipeline, with a
phrase its cause must hold; or, for damage the pipeline tolerates by design, completion with a
warning in quality.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from video_damage import faststart_cut, keep_first_packets, reencode, resized, swap_halves

from droid_pipeline.synthetic.generator import DatasetInfo

CARTESIAN = "observation/robot_state/cartesian_position"
GRIPPER = "observation/robot_state/gripper_position"
STAMPS = "observation/timestamp/control/step_start"
DISCOVERY = "discovery"
DONE = None  # the pipeline completes the episode


@dataclass
class Victim:
    """The clone a kind damages: its folder, id, cameras and, once damaged, where discovery is
    expected to report it (relative to droid_root)."""

    droid_root: Path
    folder: Path
    episode_id: str
    serials: dict[str, str]
    num_frames: int
    rng: random.Random
    discovery_paths: list[str] = field(default_factory=list)
    # The corpus's calibration tables (file name -> episode id -> entry), written after every kind ran.
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rel(self) -> str:
        return self.folder.relative_to(self.droid_root).as_posix()

    @property
    def metadata_path(self) -> Path:
        return self.folder / f"metadata_{self.episode_id}.json"

    def metadata(self) -> dict[str, Any]:
        return json.loads(self.metadata_path.read_text())

    def set_metadata(self, **changes: Any) -> None:
        self.metadata_path.write_text(json.dumps({**self.metadata(), **changes}))

    @property
    def trajectory(self) -> Path:
        return self.folder / "trajectory.h5"

    def change_h5(self, key: str, change: Callable[[np.ndarray], np.ndarray | None]) -> None:
        """Replace dataset ``key`` by ``change(value)``; None deletes it."""
        with h5py.File(self.trajectory, "r+") as h5:
            value = change(h5[key][()])
            del h5[key]
            if value is not None:
                h5[key] = value

    def mp4(self, role: str, stereo: bool = False) -> Path:
        return self.folder / "recordings" / "MP4" / f"{self.serials[role]}{'-stereo' if stereo else ''}.mp4"


@dataclass(frozen=True)
class Kind:
    """A kind of damage and what it must lead to: per pipeline the step it fails at
    (``discovery``, a step, or :data:`DONE`), a phrase of the cause, a warning when tolerated."""

    name: str
    damage: Callable[[Victim], None]
    steps: dict[str, str | None]
    phrase: str
    warnings: dict[str, str | None] = field(default_factory=dict)

    def step(self, pipeline: str) -> str | None:
        return self.steps[pipeline]

    def warning(self, pipeline: str) -> str | None:
        """The phrase of the warning quality.json must hold when the pipeline completes the episode."""
        return self.warnings.get(pipeline)


KINDS: dict[str, Kind] = {}


def kind(step: str | None, phrase: str = "", *, full: str | None | bool = True, warning: str | None = None,
         full_warning: str | None | bool = True) -> Callable[[Callable[[Victim], None]], Callable[[Victim], None]]:
    """Register the decorated function as a kind named after it; ``full`` is the full pipeline's
    step and ``full_warning`` its warning when they differ (True: the same)."""
    def register(function: Callable[[Victim], None]) -> Callable[[Victim], None]:
        steps = {"metadata": step, "full": step if full is True else full}  # type: ignore[dict-item]
        warnings = {"metadata": warning, "full": warning if full_warning is True else full_warning}
        KINDS[function.__name__] = Kind(function.__name__, function, steps, phrase, warnings)  # type: ignore[arg-type]
        return function
    return register


# ---------------------------------------------------------------- discovery

@kind(DISCOVERY, "no metadata_<uuid>.json")
def no_metadata(v: Victim) -> None:
    v.metadata_path.unlink()


@kind(DISCOVERY, "unreadable metadata file")
def metadata_not_json(v: Victim) -> None:
    v.metadata_path.write_bytes(b'{"uuid": "' + bytes(v.rng.randrange(256) for _ in range(64)))


@kind(DISCOVERY, "metadata is not a JSON object")
def metadata_not_an_object(v: Victim) -> None:
    v.metadata_path.write_text(json.dumps([v.metadata()]))


@kind(DISCOVERY, "disagrees with the file name")
def uuid_disagrees_with_file_name(v: Victim) -> None:
    v.set_metadata(uuid=v.episode_id.replace("+", "+0", 1)[:-1])


def _renamed_metadata(v: Victim, uuid: str) -> None:
    data = v.metadata()
    v.metadata_path.unlink()
    (v.folder / f"metadata_{uuid}.json").write_text(json.dumps({**data, "uuid": uuid}))


@kind(DISCOVERY, "does not follow DROID's grammar")
def uuid_dot_dot(v: Victim) -> None:
    _renamed_metadata(v, "..")


@kind(DISCOVERY, "does not follow DROID's grammar")
def uuid_dot(v: Victim) -> None:
    _renamed_metadata(v, ".")


@kind(DISCOVERY, "does not follow DROID's grammar")
def uuid_with_a_line_break(v: Victim) -> None:
    _renamed_metadata(v, v.episode_id + "\nx")


@kind(DISCOVERY, "does not follow DROID's grammar")
def uuid_of_another_grammar(v: Victim) -> None:
    _renamed_metadata(v, f"episode-{v.rng.randrange(10 ** 6)}")


@kind(DISCOVERY, "several metadata files")
def two_metadata_files(v: Victim) -> None:
    shutil.copy(v.metadata_path, v.folder / "metadata_copy.json")


@kind(DISCOVERY, "duplicate episode id")
def duplicate_uuid(v: Victim) -> None:
    twin = v.folder.with_name(v.folder.name.replace(":", "_"))
    shutil.copytree(v.folder, twin)
    v.discovery_paths = [v.rel, twin.relative_to(v.droid_root).as_posix()]


@kind(DISCOVERY, "Too many levels of symbolic links")
def folder_is_a_symlink_loop(v: Victim) -> None:
    shutil.rmtree(v.folder)
    v.folder.symlink_to(v.folder.name)


@kind(DISCOVERY, "dangling symbolic link")
def folder_is_a_dangling_link(v: Victim) -> None:
    shutil.rmtree(v.folder)
    v.folder.symlink_to("/nonexistent/episode")


@kind(DISCOVERY, "trajectory.h5 is a broken symbolic link")
def trajectory_is_a_dangling_link(v: Victim) -> None:
    v.trajectory.unlink()
    v.trajectory.symlink_to("/nonexistent/trajectory.h5")


@kind(DISCOVERY, "is a broken symbolic link (")
def mp4_is_a_symlink_loop(v: Victim) -> None:
    path = v.mp4("ext1")
    path.unlink()
    path.symlink_to(path.name)


@kind(DISCOVERY, "is not a plain name")
def folder_name_with_spaces(v: Victim) -> None:
    spaced = v.folder.with_name(v.folder.name.replace("_", " "))
    v.folder.rename(spaced)
    v.discovery_paths = [spaced.relative_to(v.droid_root).as_posix()]


# ---------------------------------------------------------------- intrinsics (the first step)

@kind("intrinsics", "cannot open video")
def mp4_of_random_bytes(v: Victim) -> None:
    v.mp4("ext1").write_bytes(bytes(v.rng.randrange(256) for _ in range(20_000)))


@kind("intrinsics", "cannot open video")
def mp4_empty(v: Victim) -> None:
    v.mp4("wrist").write_bytes(b"")


@kind("intrinsics", "cannot open video")
def mp4_cut_short_with_its_index_at_the_end(v: Victim) -> None:
    path = v.mp4("ext2")
    os.truncate(path, path.stat().st_size * 2 // 3)


@kind("intrinsics", "no intrinsics source worked")
def metadata_names_an_unknown_camera(v: Victim) -> None:
    v.set_metadata(ext1_cam_serial="99999999")


# ---------------------------------------------------------------- trajectory.h5 as a file

@kind("tracks", "cannot open", full="depth")
def trajectory_of_random_bytes(v: Victim) -> None:
    v.trajectory.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(v.rng.randrange(256) for _ in range(8192)))


@kind("tracks", "cannot open", full="depth")
def trajectory_empty(v: Victim) -> None:
    v.trajectory.write_bytes(b"")


@kind("tracks", "trajectory.h5", full="depth")
def trajectory_cut_in_half(v: Victim) -> None:
    os.truncate(v.trajectory, v.trajectory.stat().st_size // 2)


@kind("tracks", "missing dataset observation/robot_state/cartesian_position", full="depth")
def cartesian_position_missing(v: Victim) -> None:
    v.change_h5(CARTESIAN, lambda _: None)


@kind("tracks", "more than plausibility.max_steps = 10000", full="depth")
def too_many_steps(v: Victim) -> None:
    v.change_h5(CARTESIAN, lambda pose: np.resize(pose, (12_000, 6)))


# ---------------------------------------------------------------- the trajectory's values

@kind("tracks", "NaN or inf in observation/robot_state/cartesian_position")
def nan_in_a_pose(v: Victim) -> None:
    def poison(pose: np.ndarray) -> np.ndarray:
        pose = pose.copy()
        pose[v.rng.randrange(len(pose)), 2] = np.nan
        return pose
    v.change_h5(CARTESIAN, poison)


@kind("tracks", "looks like millimetres, not metres")
def positions_in_millimetres(v: Victim) -> None:
    v.change_h5(CARTESIAN, lambda pose: np.concatenate([pose[:, :3] * 1000.0, pose[:, 3:]], axis=1))


@kind("tracks", "look like degrees")
def rotations_in_degrees(v: Victim) -> None:
    v.change_h5(CARTESIAN, lambda pose: np.concatenate([pose[:, :3], np.degrees(pose[:, 3:])], axis=1))


@kind("tracks", "plausibility.max_step_m")
def pose_jumps_half_a_metre(v: Victim) -> None:
    def jump(pose: np.ndarray) -> np.ndarray:
        pose = pose.copy()
        pose[len(pose) // 2:, 0] -= 0.5
        return pose
    v.change_h5(CARTESIAN, jump)


@kind("tracks", "Robotiq's raw 0..255 register scale")
def gripper_on_a_0_255_scale(v: Victim) -> None:
    v.change_h5(GRIPPER, lambda g: np.round(g * 255.0))


@kind("tracks", "a 0..100 (percent) scale")
def gripper_in_percent(v: Victim) -> None:
    v.change_h5(GRIPPER, lambda g: g * 100.0)


@kind("tracks", "gripper_position has shape")
def gripper_rows_missing(v: Victim) -> None:
    v.change_h5(GRIPPER, lambda g: g[:-3])


@kind("tracks", "plausibility.max_bad_timestamp_fraction")
def control_timestamps_scrambled(v: Victim) -> None:
    def scramble(stamps: np.ndarray) -> np.ndarray:
        stamps = stamps.copy()
        for i in range(1, len(stamps) - 1, 4):
            stamps[[i, i + 1]] = stamps[[i + 1, i]]
        return stamps
    v.change_h5(STAMPS, scramble)


@kind("tracks", "trajectory_length")
def metadata_length_disagrees(v: Victim) -> None:
    v.set_metadata(trajectory_length=v.num_frames + 5)


@kind("tracks", "metadata names camera")
def camera_types_swapped(v: Victim) -> None:
    v.change_h5(f"observation/camera_type/{v.serials['wrist']}", lambda t: np.ones_like(t))


@kind("tracks", "missing dataset observation/camera_extrinsics/")
def wrist_camera_poses_missing(v: Victim) -> None:
    v.change_h5(f"observation/camera_extrinsics/{v.serials['wrist']}_left", lambda _: None)


# ---------------------------------------------------------------- videos against the trajectory

@kind("tracks", "(its index lists")
def mp4_cut_short_behind_its_index(v: Victim) -> None:
    faststart_cut(v.mp4("ext1"), keep=v.num_frames - 6)


@kind("tracks", "more than video_frame_mismatch.tolerance_frames")
def mp4_stops_early(v: Victim) -> None:
    keep_first_packets(v.mp4("wrist"), v.num_frames - 5)


@kind(DONE, warning="truncated or damaged")
def mp4_loses_its_last_frame_behind_its_index(v: Victim) -> None:
    faststart_cut(v.mp4("ext2"), keep=v.num_frames - 1)


@kind(DONE, "no side-by-side stereo video", full="depth")
def stereo_mp4_missing(v: Victim) -> None:
    v.mp4("ext1", stereo=True).unlink()


@kind(DONE, "cannot open video", full="depth")
def stereo_mp4_of_random_bytes(v: Victim) -> None:
    v.mp4("ext2", stereo=True).write_bytes(bytes(v.rng.randrange(256) for _ in range(20_000)))


# ---------------------------------------------------------------- input that is wrong about itself
# Readable files whose contents say something else than they are: each checked against the data
# it describes (docs/reliability.md, "Inputs checked against their data").

JOINTS = "observation/robot_state/joint_positions"


def _published_intrinsics(v: Victim, change: Callable[[list[float]], list[float]], role: str) -> None:
    """Change this episode's published intrinsics entry of ``role``'s camera (the corpus's
    calibration files are written from ``v.calibration`` once every kind has run)."""
    entry = v.calibration["intrinsics.json"][v.episode_id] = dict(v.calibration["intrinsics.json"][v.episode_id])
    entry[v.serials[role]] = change(list(entry[v.serials[role]]))


@kind(DONE, warning="gives them for the video's own size 160x90")
def wrist_mp4_at_half_size(v: Victim) -> None:
    # DROID's wrist MP4s at another size than the published intrinsics (HD/8 instead of HD/4):
    # the ZED factory file has intrinsics for this size.
    reencode(v.mp4("wrist"), resized(160, 90))
    reencode(v.mp4("wrist", stereo=True), lambda image: np.concatenate(
        [resized(160, 90)(half) for half in np.split(image, 2, axis=1)], axis=1))


@kind(DONE, warning="for 320x180 scaled per axis")
def ext1_mp4_at_a_size_no_source_has(v: Victim) -> None:
    # Re-encoded to 240x134 (mono and stereo), no ZED size: the published intrinsics are scaled
    # to it per axis; the stereo backend takes the baseline, a length, from the ZED file's HD section.
    reencode(v.mp4("ext1"), resized(240, 134))
    reencode(v.mp4("ext1", stereo=True), lambda image: np.concatenate(
        [resized(240, 134)(half) for half in np.split(image, 2, axis=1)], axis=1))


@kind(DONE, warning="looks like [fx, fy, cx, cy]")
def intrinsics_in_fx_fy_cx_cy_order(v: Victim) -> None:
    _published_intrinsics(v, lambda value: [value[0], value[2], value[1], value[3]], "ext2")


@kind("tracks", "look like seconds, not milliseconds")
def control_timestamps_in_seconds(v: Victim) -> None:
    v.change_h5(STAMPS, lambda stamps: stamps / 1000.0)


@kind("tracks", "look like nanoseconds, not milliseconds")
def control_timestamps_in_nanoseconds(v: Victim) -> None:
    v.change_h5(STAMPS, lambda stamps: stamps.astype(np.int64) * 1_000_000)


@kind(DONE, warning="recovered as ext2 from trajectory.h5")
def camera_missing_from_the_metadata(v: Victim) -> None:
    data = v.metadata()
    del data["ext2_cam_serial"]
    v.metadata_path.write_text(json.dumps(data))


@kind(DONE, warning="repeats ext1_cam_serial")
def metadata_ext2_serial_repeats_ext1(v: Victim) -> None:
    v.set_metadata(ext2_cam_serial=v.serials["ext1"])


@kind(DONE, warning="occlusion labels withheld (unknown)")
def joints_in_degrees(v: Victim) -> None:
    v.change_h5(JOINTS, np.degrees)


@kind(DONE, full_warning="the left and right views look swapped")
def stereo_halves_swapped(v: Victim) -> None:
    # The metadata pipeline reads no stereo video: nothing to warn of there.
    reencode(v.mp4("ext1", stereo=True), swap_halves)


@kind(DISCOVERY, "trajectory.h5 is a FIFO (named pipe), not a regular file")
def trajectory_is_a_fifo(v: Victim) -> None:
    v.trajectory.unlink()
    os.mkfifo(v.trajectory)


@kind(DISCOVERY, "is a FIFO (named pipe), not a regular file")
def metadata_is_a_fifo(v: Victim) -> None:
    v.metadata_path.unlink()
    os.mkfifo(v.metadata_path)


@kind(DISCOVERY, "is a character device, not a regular file")
def metadata_links_to_an_endless_device(v: Victim) -> None:
    v.metadata_path.unlink()
    v.metadata_path.symlink_to("/dev/zero")


@kind("tracks", "trajectory_length is text ('20'), not a whole number")
def trajectory_length_is_text(v: Victim) -> None:
    v.set_metadata(trajectory_length=str(v.num_frames))


@kind(DONE, "more than video_frame_mismatch.tolerance_frames", full="depth")
def stereo_mp4_five_frames_longer(v: Victim) -> None:
    reencode(v.mp4("ext2", stereo=True), lambda image: image, frames=v.num_frames + 5)


# ---- more of the same class

@kind(DISCOVERY, ".mp4 is a FIFO (named pipe), not a regular file")
def mp4_is_a_fifo(v: Victim) -> None:
    path = v.mp4("ext1")
    path.unlink()
    os.mkfifo(path)


@kind(DISCOVERY, "more than the 1048576 bytes")
def metadata_over_its_size_cap(v: Victim) -> None:
    v.set_metadata(notes=" " * (1 << 20))


@kind(DISCOVERY, "ext1_cam_serial is list")
def metadata_serial_is_a_list(v: Victim) -> None:
    v.set_metadata(ext1_cam_serial=[v.serials["ext1"]])


@kind("tracks", "trajectory_length is a float (20.0), not a whole number")
def trajectory_length_is_a_float(v: Victim) -> None:
    v.set_metadata(trajectory_length=float(v.num_frames))


@kind("tracks", "look like microseconds, not milliseconds")
def control_timestamps_in_microseconds(v: Victim) -> None:
    v.change_h5(STAMPS, lambda stamps: stamps.astype(np.int64) * 1000)


@kind(DONE, warning="from its centre (plausibility.max_principal_point_offset")
def published_principal_point_off_centre(v: Victim) -> None:
    _published_intrinsics(v, lambda value: [value[0], value[1] * 1.5, value[2], value[3]], "wrist")


@kind(DONE, warning="joint 4 is")
def one_joint_beyond_its_limit(v: Victim) -> None:
    def bend(joints: np.ndarray) -> np.ndarray:
        joints = joints.copy()
        joints[len(joints) // 2:, 3] = 0.8  # the Panda's elbow (joint 4) stays within [-3.07, -0.07]
        return joints
    v.change_h5(JOINTS, bend)


@kind("tracks", "is a directory, not a regular file", full="depth")
def trajectory_is_a_directory(v: Victim) -> None:
    v.trajectory.unlink()
    v.trajectory.mkdir()


@kind("intrinsics", "is a directory, not a regular file")
def mp4_is_a_directory(v: Victim) -> None:
    v.mp4("wrist").unlink()
    v.mp4("wrist").mkdir()


@kind("tracks", "but not in the metadata's *_cam_serial fields")
def a_fourth_camera_in_the_h5_and_recordings(v: Victim) -> None:
    extra = "39999999"
    with h5py.File(v.trajectory, "r+") as h5:
        h5[f"observation/camera_type/{extra}"] = h5[f"observation/camera_type/{v.serials['ext1']}"][()]
        h5[f"observation/camera_extrinsics/{extra}_left"] = \
            h5[f"observation/camera_extrinsics/{v.serials['ext1']}_left"][()]
    shutil.copy(v.mp4("ext1"), v.mp4("ext1").with_name(f"{extra}.mp4"))


@kind(DONE, "no side-by-side stereo video", full="depth")
def stereo_mp4_at_another_size_than_its_camera(v: Victim) -> None:
    reencode(v.mp4("wrist", stereo=True), resized(480, 134))


# ---------------------------------------------------------------- building a corpus

@dataclass
class Corpus:
    """A raw tree of good and damaged episodes with its calibration files and config."""

    root: Path
    droid_root: Path
    config_path: Path
    good: list[str]                                  # ids of the undamaged episodes
    victims: dict[str, Victim] = field(default_factory=dict)  # kind name -> its damaged clone
    long: Victim | None = None                       # a good clone stretched to many steps

    @property
    def output_root(self) -> Path:
        return self.root / "output"

    @property
    def run_root(self) -> Path:
        return self.root / "runs"


CALIBRATION_FILES = ("cam2base_extrinsic_superset.json", "cam2cam_extrinsics.json", "intrinsics.json")


def build(dataset: DatasetInfo, root: Path, kinds: Sequence[str], seed: int = 0,
          stretch_to: int | None = None) -> Corpus:
    """The dataset's episodes (good) plus one damaged clone of its first success per kind, and
    with ``stretch_to`` one more clone stretched to that many steps (:func:`stretch`)."""
    droid_root = root / "droid_raw"
    shutil.copytree(dataset.droid_root, droid_root, symlinks=True)
    calibration = {name: json.loads((dataset.cam2base_path.parent / name).read_text()) for name in CALIBRATION_FILES}
    template = next(e for e in dataset.episodes if e.outcome == "success")
    corpus = Corpus(root, droid_root, root / "config.yaml", [e.episode_id for e in dataset.episodes])
    rng = random.Random(seed)
    for number, name in enumerate(kinds):
        victim = _clone(dataset, template, droid_root, number, rng)
        for table in calibration.values():
            table[victim.episode_id] = table[template.episode_id]
        victim.calibration = calibration
        KINDS[name].damage(victim)
        victim.discovery_paths = victim.discovery_paths or [victim.rel]
        corpus.victims[name] = victim
    if stretch_to is not None:
        corpus.long = _clone(dataset, template, droid_root, len(kinds), rng)
        for table in calibration.values():
            table[corpus.long.episode_id] = table[template.episode_id]
        stretch(corpus.long, stretch_to)
    (root / "calibration").mkdir()
    for name, table in calibration.items():
        (root / "calibration" / name).write_text(json.dumps(table))
    corpus.config_path.write_text("\n".join([
        f"droid_root: {droid_root}", f"output_root: {corpus.output_root}", f"run_root: {corpus.run_root}",
        f"cam2base_extrinsics_path: {root / 'calibration' / CALIBRATION_FILES[0]}",
        f"cam2cam_extrinsics_path: {root / 'calibration' / CALIBRATION_FILES[1]}",
        f"intrinsics_path: {root / 'calibration' / CALIBRATION_FILES[2]}",
        f"zed_calibration_dir: {dataset.zed_calibration_dir}",
        "outcomes: [success, failure]", "intrinsics_sources: [published, h5, zed_conf]", "depth_backend: stereo",
        ""]))
    return corpus


def _clone(dataset: DatasetInfo, template: Any, droid_root: Path, number: int, rng: random.Random) -> Victim:
    """A copy of ``template`` recorded ``number`` minutes after 2024-01-01 10:00, with its own id."""
    recorded = dt.datetime(2024, 1, 1, 10, 0, 0) + dt.timedelta(minutes=number)
    lab = template.episode_id.split("+", 1)[0]
    episode_id = f"{lab}+{0xFA000000 + number:08x}+{recorded:%Y-%m-%d-%Hh-%Mm-%Ss}"
    folder = droid_root / lab / "success" / recorded.date().isoformat() / time.asctime(recorded.timetuple()).replace(
        " ", "_")
    shutil.copytree(dataset.droid_root / template.relative_path, folder)
    (old,) = folder.glob("metadata_*.json")
    metadata = json.loads(old.read_text())
    old.unlink()
    (folder / f"metadata_{episode_id}.json").write_text(json.dumps({**metadata, "uuid": episode_id}))
    return Victim(droid_root, folder, episode_id, dict(template.serials), template.num_frames, rng)


def stretch(v: Victim, steps: int) -> None:
    """Make the episode ``steps`` control steps long: its motion played back and forth (so every
    step is one of the recording's own), control timestamps 15 Hz apart with the recording's
    jitter, and each camera's MP4 re-encoded with the frame of each step (stereo MP4s are left:
    for the metadata pipeline)."""
    import av

    count = v.num_frames
    period = 2 * (count - 1)
    phase = np.arange(steps) % period
    index = np.where(phase < count, phase, period - phase)
    with h5py.File(v.trajectory, "r+") as h5:
        keys: list[str] = []
        h5.visit(lambda key: keys.append(key) if isinstance(h5[key], h5py.Dataset) else None)
        for key in keys:
            value = h5[key][()]
            if not value.shape or value.shape[0] != count:
                continue
            if key.startswith("observation/timestamp/") and value.dtype.kind in "iuf" and value.ndim == 1:
                nominal = np.rint(np.arange(count) * 1000.0 / 15.0)
                jitter = value - value[0] - nominal
                value = value[0] + np.rint(np.arange(steps) * 1000.0 / 15.0) + jitter[index]
            else:
                value = value[index]
            del h5[key]
            h5[key] = value
    v.set_metadata(trajectory_length=steps)
    for role in v.serials:
        path = v.mp4(role)
        with av.open(str(path)) as src:
            frames = [frame.to_ndarray(format="rgb24") for frame in src.decode(video=0)]
        tmp = path.with_name(path.stem + ".long.mp4")
        with av.open(str(tmp), "w") as dst:
            stream = dst.add_stream("libx264", rate=15)
            stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "30"}
            for i in index:
                dst.mux(stream.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")))
            dst.mux(stream.encode(None))
        os.replace(tmp, path)
    v.num_frames = steps
