"""The per-episode output contract, declared once: the files of an episode folder, the repo kind
of each, and every array key of tracks.npz and extrinsics.npz with its dtype, shape and units.

The tracks step builds its arrays through :meth:`NpzSchema.build`, the loader and the verifier
read names, dtypes and shapes from here, and the tracks command's ``--help`` and the key tables
of docs/outputs.md are generated from it (a test keeps the doc in step). An episode finished
under an older schema is not finished for the current one.

Schema 5 names every per-camera key by the camera's role (``tracks_2d_ext1``), never by its
serial, and writes the keys of all three roles in every episode (a camera the episode lacks, or
one without intrinsics, has its keys filled as documented and a status saying why): columnar and
batched readers (``datasets``, Arrow, ``default_collate``) infer one set of keys from the first
episodes and drop any other. Schema 4 (keys by serial) is still read and verified
(:data:`READABLE_NPZ`).

Layout of an output root: ``<LAB>/<success|failure>/<date>/<folder>/`` (the raw episode's
relative path), per-camera files under ``recordings/<serial>/`` (in a shard, members named by
role: :mod:`droid_pipeline.publish.shards`).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 5
LEGACY_SCHEMA_VERSION = 4
"""The older schema the loader and the verifier still read (keys by serial)."""

# The values of ``occlusion_<serial>`` (docs/occlusion.md): what hides a point from a camera.
VISIBLE, HIDDEN_BY_ROBOT, HIDDEN_BY_SCENE, UNKNOWN = 0, 1, 2, 3
OCCLUSION_LABELS = {VISIBLE: "visible", HIDDEN_BY_ROBOT: "hidden_by_robot", HIDDEN_BY_SCENE: "hidden_by_scene",
                    UNKNOWN: "unknown"}

EPISODE_LAYOUT = "<LAB>/<success|failure>/<date>/<folder>"
RECORDINGS = "recordings"
SERIAL = "<serial>"
"""Stands for a camera serial in per-camera file paths (and in schema-4 array keys)."""
ROLE = "<role>"
"""Stands for a camera role in schema-5 array keys."""
CAMERA_ROLES = ("wrist", "ext1", "ext2")
"""The roles every schema-5 episode has keys for, in this order (DROID's metadata names)."""
# tracks.npz ``tracks_2d_status`` values: why a role has (or lacks) 2D tracks.
TRACKS_OK, NO_INTRINSICS, NO_CAMERA = "ok", "no_intrinsics", "no_camera"

FileKind = Literal["metadata", "depth"]
KIND_REPOS: dict[str, str] = {"metadata": "metadata and full repos", "depth": "full repo only"}


class SchemaError(ValueError):
    """Arrays written do not match the schema: a bug in the writer, never bad input."""


@dataclass(frozen=True)
class OutputFile:
    """One file of an episode folder, its path relative to the folder (``<serial>`` for a camera)."""

    path: str
    kind: FileKind
    meaning: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def per_camera(self) -> bool:
        return SERIAL in self.path

    def for_camera(self, serial: str) -> str:
        """The relative path for one camera."""
        return self.path.replace(SERIAL, serial)

    def matches(self, relative_path: str) -> bool:
        pattern = re.escape(self.path).replace(re.escape(SERIAL), "[^/]+")
        return re.fullmatch(pattern, relative_path) is not None


TRACKS = OutputFile("tracks.npz", "metadata",
                    "contact tracks in 3D and in every camera, the 1 mm normalized flow")
EXTRINSICS = OutputFile("extrinsics.npz", "metadata", "the camera poses the 2D tracks were computed with")
QUALITY = OutputFile("quality.json", "metadata", "provenance of every input and the measured checks")
INTRINSICS = OutputFile(f"{RECORDINGS}/{SERIAL}/intrinsics.json", "metadata",
                        "rectified left-image intrinsics of the camera and their source")
DEPTH = OutputFile(f"{RECORDINGS}/{SERIAL}/depth.mkv", "depth",
                   "FFV1 gray16le depth in millimetres, 0 = invalid, one frame per control step")
DEPTH_META = OutputFile(f"{RECORDINGS}/{SERIAL}/depth_meta.json", "depth",
                        "how to decode depth.mkv, its frame count and the checksum of its raw frames")
RGB = OutputFile(f"{RECORDINGS}/{SERIAL}/rgb.mp4", "depth", "optional RGB export of the depth step's left images")
MANIFEST = OutputFile("manifest.json", "metadata",
                      "every other file with size, SHA-256 and kind; written last, so it marks the episode finished")
OUTPUT_FILES = (TRACKS, EXTRINSICS, QUALITY, INTRINSICS, DEPTH, DEPTH_META, RGB, MANIFEST)
MANIFEST_NAME = MANIFEST.name


def output_file(relative_path: str) -> OutputFile | None:
    """The contract's file at ``relative_path`` (relative to the episode folder), None if none."""
    return next((f for f in OUTPUT_FILES if f.matches(relative_path)), None)


Dim = int | str   # a length, or a symbol bound by the episode (see SHAPE_SYMBOLS)
Spec = tuple[str, tuple[Dim, ...]]   # (dtype, shape) of one key
SHAPE_SYMBOLS = {"T": "control steps", "N": "track points (both pads)", "M": "normalized samples",
                 "C": "cameras with 2D tracks", "K": "cameras of the episode"}


@dataclass(frozen=True)
class ArrayKey:
    """One array of an npz file. Per-camera keys carry ``<role>`` (schema 4: ``<serial>``) in their name."""

    name: str
    dtype: str                      # a NumPy dtype name; "str" is a unicode array of any width
    shape: tuple[Dim, ...]
    units: str
    frame: str
    meaning: str
    wrist_shape: tuple[Dim, ...] | None = None   # the wrist camera's shape where it differs

    @property
    def per_camera(self) -> bool:
        return SERIAL in self.name or ROLE in self.name

    def key(self, camera: str) -> str:
        """The key for one camera (its role; in schema 4 its serial)."""
        return self.name.replace(SERIAL, camera).replace(ROLE, camera)

    def shape_text(self) -> str:
        text = _shape_text(self.shape)
        return text if self.wrist_shape is None else f"{text} exterior, {_shape_text(self.wrist_shape)} wrist"

    def dtype_text(self) -> str:
        return "unicode" if self.dtype == "str" else self.dtype

    def where(self) -> str:
        """Units and frame, e.g. ``m, base``."""
        return ", ".join(part for part in (self.units, self.frame) if part)


@dataclass(frozen=True)
class KeyTable:
    """Keys documented together: one table of docs/outputs.md, marked ``<!-- schema:<id> -->``."""

    id: str
    keys: tuple[ArrayKey, ...]


@dataclass(frozen=True)
class NpzSchema:
    """The keys of one npz file. Schema 5 (``serials_key`` None) has per-camera keys for every
    role of :data:`CAMERA_ROLES`, the wrist's taking ``wrist_shape``. Schema 4 has them for the
    serials listed in ``serials_key``, and ``wrist_key`` (if any) names the one taking ``wrist_shape``."""

    file: OutputFile
    tables: tuple[KeyTable, ...]
    version: int = SCHEMA_VERSION
    serials_key: str | None = None
    wrist_key: str | None = None

    @property
    def keys(self) -> tuple[ArrayKey, ...]:
        return tuple(key for table in self.tables for key in table.keys)

    def expected(self, serials: Iterable[str] = CAMERA_ROLES, wrist_serial: str | None = "wrist") -> dict[str, Spec]:
        """``{key: (dtype, shape)}`` of a file holding per-camera keys for ``serials`` (schema 5:
        the roles, the default)."""
        out = {key.name: (key.dtype, key.shape) for key in self.keys if not key.per_camera}
        for serial in serials:
            for key in self.keys:
                if key.per_camera:
                    wrist = key.wrist_shape if serial == wrist_serial else None
                    out[key.key(serial)] = (key.dtype, key.shape if wrist is None else wrist)
        return out

    def _expected_for(self, values: Mapping[str, Any]) -> dict[str, Spec]:
        if self.serials_key is None:
            return self.expected()
        wrist = str(values[self.wrist_key]) if self.wrist_key and self.wrist_key in values else None
        return self.expected([str(s) for s in values.get(self.serials_key, [])], wrist)

    def problems(self, arrays: Mapping[str, Any], sizes: Mapping[str, int | None]) -> list[str]:
        """Every key missing, of another dtype or shape, or not in the schema. ``sizes`` binds shape
        symbols (T, M, N; None = unknown); other symbols bind to the first length seen."""
        import numpy as np

        expected = self._expected_for(arrays)
        name = self.file.name
        problems = []
        symbols: dict[str, int] = {k: v for k, v in sizes.items() if v is not None}
        for key, (dtype, shape) in expected.items():
            if key not in arrays:
                problems.append(f"{name}: key {key!r} missing")
                continue
            array = arrays[key]
            kind_ok = array.dtype.kind == "U" if dtype == "str" else array.dtype == np.dtype(dtype)
            if not kind_ok:
                problems.append(f"{name}: {key} has dtype {array.dtype}, expected {dtype}")
            if len(array.shape) != len(shape):
                problems.append(f"{name}: {key} has shape {array.shape}, expected {_shape_text(shape)}")
                continue
            for got, want in zip(array.shape, shape):
                if isinstance(want, str):
                    want = symbols.setdefault(want, got)
                if got != want:
                    problems.append(f"{name}: {key} has shape {array.shape}, expected {_shape_text(shape)} "
                                    f"with {', '.join(f'{k}={v}' for k, v in symbols.items())}")
                    break
        problems += [f"{name}: unexpected key {key!r}" for key in sorted(set(arrays) - set(expected))]
        return problems

    def build(self, values: Mapping[str, Any], sizes: Mapping[str, int | None]) -> dict[str, Any]:
        """The arrays to write, in the order given, each as its schema dtype. A value the schema
        lacks, a schema key without a value, or a shape that disagrees raises SchemaError. A streamed
        value (``formats.npz.StreamedArray``: dtype, shape and its bytes produced while it is written)
        is passed through, its declared dtype and shape checked like an array's."""
        import numpy as np

        if self.serials_key is not None and self.serials_key not in values:
            raise SchemaError(f"{self.file.name}: schema key {self.serials_key!r} not written")
        expected = self._expected_for(values)
        unknown = [key for key in values if key not in expected]
        missing = [key for key in expected if key not in values]
        if unknown or missing:
            raise SchemaError(f"{self.file.name}: written keys not in the schema {unknown}, "
                              f"schema keys not written {missing}")
        arrays = {key: value if _is_streamed(value) else
                  np.asarray(value, dtype=str if expected[key][0] == "str" else expected[key][0])
                  for key, value in values.items()}
        problems = self.problems(arrays, sizes)
        if problems:
            raise SchemaError("; ".join(problems))
        return arrays


def _is_streamed(value: Any) -> bool:
    return hasattr(value, "pieces") and hasattr(value, "dtype") and hasattr(value, "shape")


def _shape_text(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


_POSE = (4, 4)


def _tracks_npz(version: int) -> NpzSchema:
    """tracks.npz of schema ``version`` (5: keys by role, with the idle-step mask; 4: keys by serial)."""
    C = ROLE if version >= 5 else SERIAL
    cameras: tuple[ArrayKey, ...] = (
        ArrayKey("camera_serials", "str", (len(CAMERA_ROLES),), "", "",
                 "serial of each role, in the order wrist, ext1, ext2; `\"\"` where the episode has no such camera"),
        ArrayKey("tracks_2d_status", "str", (len(CAMERA_ROLES),), "", "",
                 f"per role: `{TRACKS_OK}` (2D tracks computed), `{NO_INTRINSICS}` (the camera has no intrinsics, "
                 f"config `allow_missing_intrinsics`) or `{NO_CAMERA}` (the episode has no such camera). Where it is "
                 "not `ok` the role's keys are still there, filled: `tracks_2d` and `intrinsics` NaN, `distortion` "
                 f"NaN, `image_size` (0, 0), `visibility` all false, `occlusion` all {UNKNOWN}"),
    ) if version >= 5 else (
        ArrayKey("cameras_with_2d_tracks", "str", ("C",), "", "",
                 "serials with 2D tracks, in role order wrist, ext1, ext2"),
    )
    idle: tuple[KeyTable, ...] = (KeyTable("tracks-idle", (
        ArrayKey("keep", "bool", ("T",), "", "",
                 "DROID's idle-step filter on this episode's steps (docs/outputs.md, *Idle steps*): false for "
                 "steps of long idle runs, of short kept runs and the last steps of each kept run; all true "
                 "when `keep_computed` is false"),
        ArrayKey("keep_computed", "bool", (), "", "",
                 "false when the h5 has no `action/joint_velocity` (then `keep` is all true)"),
    )),) if version >= 5 else ()
    return NpzSchema(TRACKS, version=version, serials_key=None if version >= 5 else "cameras_with_2d_tracks",
                     tables=(
        KeyTable("tracks-steps", (
            ArrayKey("tracks_3d", "float32", ("T", "N", 3), "m", "base", "contact points on both pads"),
            ArrayKey("contact_points_local", "float64", ("N", 3), "m", "own finger frame",
                     "the tracked points in their finger link's frame (rows < N/2: left finger)"),
            ArrayKey("contact_normals_local", "float64", ("N", 3), "unit vector", "own finger frame",
                     "outward normal of the pad face at each point of `contact_points_local` (towards the other "
                     "finger); in the base frame, the rotation of `left_contact_frames` (rows < N/2) or "
                     "`right_contact_frames` times it. The occlusion labels' back-face rule uses it"),
            ArrayKey("gripper_poses", "float32", ("T", *_POSE), "m", "base", "gripper frame = flange pose x mount"),
            ArrayKey("cartesian_positions", "float64", ("T", 6), "m, rad", "base",
                     'DROID flange pose `[x, y, z, rx, ry, rz]`, `Rotation.from_euler("xyz", ...)`, as in '
                     'trajectory.h5'),
            ArrayKey("gripper_positions", "float64", ("T",), "0 open .. 1 closed", "",
                     "DROID `gripper_position` as in trajectory.h5 (the model clips to [0, 1])"),
            ArrayKey("contact_centroids", "float64", ("T", 3), "m", "base", "mean of the N points"),
            ArrayKey("contact_frames", "float32", ("T", *_POSE), "m", "base",
                     "origin: contact centroid; axes: gripper frame"),
            ArrayKey("left_contact_frames", "float32", ("T", *_POSE), "m", "base",
                     "origin: mean of the left pad's points; axes: left finger frame"),
            ArrayKey("right_contact_frames", "float32", ("T", *_POSE), "m", "base",
                     "origin: mean of the right pad's points; axes: right finger frame"),
            ArrayKey("cumulative_distance_mm", "float64", ("T",), "mm", "",
                     "arc length of the contact-centroid path up to each step (0 at step 0)"),
            ArrayKey("frame_to_normalized_idx", "int32", ("T",), "index", "",
                     "nearest normalized sample of each step (ties to the earlier); non-decreasing, 0 first, "
                     "M-1 last"),
        )),
        *idle,
        KeyTable("tracks-cameras", (
            *cameras,
            ArrayKey(f"tracks_2d_{C}", "float32", ("T", "N", 2), "px", "rectified left image",
                     f"`(u, v)` of every point, as `cv2.projectPoints` gives them with `intrinsics_{C}`, "
                     f"`distortion_{C}` and `T_base_cam_{C}` of extrinsics.npz. Values outside the image "
                     "are kept; points behind the camera keep their (finite) projection — use the visibility mask"),
            ArrayKey(f"visibility_{C}", "bool", ("T", "N"), "", "",
                     "depth along the optical axis > `min_depth` of the camera's role (config: exterior 0.10 m, "
                     "wrist 0.01 m) **and** pixel inside the image **and** the camera's MP4 has a frame for the "
                     f"step (`video_frame_mismatch`). It ignores occlusion: see `occlusion_{C}`"),
            ArrayKey(f"occlusion_{C}", "uint8", ("T", "N"), "label", "",
                     f"what hides the point from the camera: **{VISIBLE}** visible (in view, not hidden by the "
                     "robot, and the camera's depth at its pixel is valid and not nearer than the point by more than "
                     "`occlusion.scene_tolerance_mm` + `occlusion.scene_tolerance_per_m2` x depth²); "
                     f"**{HIDDEN_BY_ROBOT}** hidden by the robot (in view, and its pad faces away from the camera or "
                     "the ray to it meets another robot link first: the arm posed from `joint_positions`, the "
                     f"gripper from the flange pose); **{HIDDEN_BY_SCENE}** hidden by the scene (in view, not hidden "
                     f"by the robot, the depth at its pixel nearer by more than the tolerance); **{UNKNOWN}** unknown "
                     f"(`visibility_{C}` False, or not hidden by the robot but without valid depth at its "
                     f"pixel or without depth for the camera). Metadata-only episodes have only {HIDDEN_BY_ROBOT} "
                     f"and {UNKNOWN}; every value is {UNKNOWN} when `occlusion.enabled` is false (quality.json "
                     "`occlusion`)"),
            ArrayKey(f"intrinsics_{C}", "float64", (3, 3), "px", "",
                     "rectified camera matrix K (from `recordings/<serial>/intrinsics.json`)"),
            ArrayKey(f"distortion_{C}", "float64", (5,), "", "",
                     "`k1, k2, p1, p2, k3` (OpenCV order) applied; zero for rectified intrinsics"),
            ArrayKey(f"image_size_{C}", "int32", (2,), "px", "", "`(width, height)`"),
        )),
        KeyTable("tracks-normalized", (
            ArrayKey("normalized_centroids", "float64", ("M", 3), "m", "base",
                     "sample k lies exactly `k * step` along the centroid path (the last at its end)"),
            ArrayKey("normalized_frames", "float32", ("M", *_POSE), "m", "base",
                     "origin: sample centroid; axes: gripper orientation by Slerp"),
            ArrayKey("normalized_left_frames", "float32", ("M", *_POSE), "m", "base",
                     "left pad centroid and left finger axes at the sample"),
            ArrayKey("normalized_right_frames", "float32", ("M", *_POSE), "m", "base",
                     "right pad centroid and right finger axes at the sample"),
            ArrayKey("normalized_tracks_3d", "float32", ("M", "N", 3), "m", "base", "the N points at the sample"),
            ArrayKey("normalized_gripper_positions", "float64", ("M",), "0 .. 1", "",
                     "gripper opening at the sample"),
            ArrayKey("normalized_step_size_mm", "float64", (), "mm", "",
                     "the spacing (config `normalized_step_size_mm`, default 1.0)"),
            ArrayKey("num_normalized_steps", "int32", (), "", "", "M"),
        )),
        KeyTable("tracks-scalars", (
            ArrayKey("num_frames", "int32", (), "", "", "T"),
            ArrayKey("num_points_per_finger", "int32", (), "", "", "N / 2"),
            ArrayKey("fps", "float64", (), "Hz", "",
                     "control rate: config `fps`, else measured from `observation/timestamp/control/step_start` "
                     "(ms): 1000 / mean of the steps within 25 % of the median step"),
            ArrayKey("schema_version", "int32", (), "", "",
                     "version of this contract (`droid_pipeline.SCHEMA_VERSION`)"),
        )),
    ))


def _extrinsics_npz(version: int) -> NpzSchema:
    """extrinsics.npz of schema ``version`` (5: every role, keys by role; 4: the episode's cameras by serial)."""
    C = ROLE if version >= 5 else SERIAL
    K: Dim = len(CAMERA_ROLES) if version >= 5 else "K"
    missing = "; `\"\"` for a role the episode lacks" if version >= 5 else ""
    return NpzSchema(EXTRINSICS, version=version, serials_key=None if version >= 5 else "serials",
                     wrist_key=None if version >= 5 else "wrist_serial", tables=(
        KeyTable("extrinsics", (
            ArrayKey(f"T_base_cam_{C}", "float64", _POSE, "m", "base",
                     "left-lens pose, camera axes in the OpenCV optical frame"
                     + ("; NaN for a role the episode lacks" if version >= 5 else ""), wrist_shape=("T", *_POSE)),
            ArrayKey("serials", "str", (K,), "", "", "the episode's cameras, role order wrist, ext1, ext2" + missing),
            ArrayKey("roles", "str", (K,), "", "", "`wrist`, `ext1`, `ext2`, aligned with `serials`"),
            ArrayKey("sources", "str", (K,), "", "",
                     "where each pose came from (`cam2base:<file>`, `metadata:<key>` or `h5:<dataset>`), "
                     "aligned with `serials`" + missing),
            ArrayKey("calibration_fallback", "bool", (K,), "", "",
                     "true for an exterior camera that kept the metadata's pose because no configured cam2base "
                     "file has it"),
            ArrayKey("calibration_quality", "float64", (K,), "as published", "",
                     "the `<serial>_quality_metric` published beside the pose; 0 where "
                     "`calibration_metric_types` is empty (no metric)"),
            ArrayKey("calibration_metric_types", "str", (K,), "", "",
                     "its `<serial>_metric_type` (`unspecified` when published without one); `\"\"` where the "
                     "pose has no metric (metadata, h5, a file without metrics)"),
            ArrayKey("wrist_serial", "str", (), "", "", "the wrist camera's serial (`\"\"` if the episode has none)"),
            ArrayKey("schema_version", "int32", (), "", "", "as in tracks.npz"),
        )),
    ))


TRACKS_NPZ = _tracks_npz(SCHEMA_VERSION)
EXTRINSICS_NPZ = _extrinsics_npz(SCHEMA_VERSION)
NPZ_FILES = (TRACKS_NPZ, EXTRINSICS_NPZ)
READABLE_NPZ: dict[int, tuple[NpzSchema, NpzSchema]] = {
    SCHEMA_VERSION: NPZ_FILES,
    LEGACY_SCHEMA_VERSION: (_tracks_npz(LEGACY_SCHEMA_VERSION), _extrinsics_npz(LEGACY_SCHEMA_VERSION)),
}
"""(tracks.npz, extrinsics.npz) schemas of every output schema version the loader and verifier read."""


def int_scalar(arrays: Mapping[str, np.ndarray], key: str) -> int | None:
    """The integer scalar ``arrays[key]``; None when it is absent or not an integer scalar."""
    value = arrays.get(key)
    return int(value) if value is not None and value.shape == () and value.dtype.kind in "iu" else None


def cameras_with_2d_tracks(tracks: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    """``(key suffix, serial)`` of every camera with 2D tracks in a tracks.npz of any readable schema,
    in role order: the role in schema 5 (``tracks_2d_status`` ok), the serial in schema 4."""
    if int_scalar(tracks, "schema_version") == LEGACY_SCHEMA_VERSION:
        return [(str(s), str(s)) for s in tracks.get("cameras_with_2d_tracks", [])]
    serials, status = tracks.get("camera_serials"), tracks.get("tracks_2d_status")
    if serials is None or status is None or len(serials) != len(CAMERA_ROLES) or len(status) != len(CAMERA_ROLES):
        return []
    return [(role, str(serial)) for role, serial, state in zip(CAMERA_ROLES, serials, status) if state == TRACKS_OK]


def npz_schemas(version: int | None) -> tuple[NpzSchema, NpzSchema] | None:
    """(tracks.npz, extrinsics.npz) schemas of output schema ``version``; None when it is not readable."""
    return READABLE_NPZ.get(version) if version is not None else None


def shape_sizes(tracks: Mapping[str, np.ndarray]) -> dict[str, int | None]:
    """Shape symbols T, M and N from the scalars of tracks.npz (None where one is unknown)."""
    per_finger = int_scalar(tracks, "num_points_per_finger")
    return {"T": int_scalar(tracks, "num_frames"), "M": int_scalar(tracks, "num_normalized_steps"),
            "N": None if per_finger is None else 2 * per_finger}


# ------------------------------------------------------------------ generated text


def markdown_table(table: KeyTable) -> str:
    """One key table of docs/outputs.md."""
    rows = [("key", "shape", "dtype", "units / frame", "meaning"), ("---",) * 5]
    rows += [(f"`{key.name}`", key.shape_text(), key.dtype_text(), key.where(), key.meaning) for key in table.keys]
    return "\n".join("|" + "|".join(f" {cell} " if cell else " " for cell in row) + "|" for row in rows)


_DOC_BLOCK = re.compile(r"(<!-- schema:(?P<id>[\w-]+) -->\n).*?(<!-- /schema -->)", re.S)


def render_doc(text: str) -> str:
    """``text`` with each ``<!-- schema:<id> -->`` ... ``<!-- /schema -->`` block replaced by that
    key table. Every table must appear exactly once; an unknown id is an error."""
    tables = {table.id: table for schema in NPZ_FILES for table in schema.tables}
    seen: list[str] = []

    def replace(match: re.Match[str]) -> str:
        table_id = match.group("id")
        if table_id not in tables:
            raise SchemaError(f"unknown schema table {table_id!r} (known: {', '.join(tables)})")
        seen.append(table_id)
        return f"{match.group(1)}{markdown_table(tables[table_id])}\n{match.group(3)}"

    rendered = _DOC_BLOCK.sub(replace, text)
    absent = [t for t in tables if seen.count(t) != 1]
    if absent:
        raise SchemaError(f"schema tables not marked exactly once: {', '.join(absent)}")
    return rendered


def help_text(files: Sequence[OutputFile], width: int = 100) -> str:
    """Plain-text description of ``files`` and their keys, for a command's ``--help``."""
    npz = {schema.file.path: schema for schema in NPZ_FILES}
    lines = []
    for file in files:
        lines += _wrapped(f"  {file.path}", _plain(file.meaning), width, 4)
        for key in npz[file.path].keys if file.path in npz else ():
            head = f"{key.name} {key.shape_text()} {key.dtype_text()}" + (f" [{key.where()}]" if key.where() else "")
            lines += _wrapped(f"    {head}", _plain(key.meaning), width, 8)
    return "\n".join(lines)


def _wrapped(head: str, text: str, width: int, indent: int) -> list[str]:
    return textwrap.wrap(f"{head}: {text}", width, subsequent_indent=" " * indent, break_on_hyphens=False)


def _plain(text: str) -> str:
    return text.replace("**", "").replace("`", "")
