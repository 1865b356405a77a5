"""The episode index of a sharded repo: one Parquet table, one row per published episode.

``index/<repo kind>.parquet`` holds, per episode, what it is (id, lab, outcome, date, relative
path of the raw episode, pipeline, schema version, T, M, cameras and their serials in role
order), its task text (``current_task``, DROID's ``language_instruction_1..3`` when configured),
the strings that join it to DROID's RLDS release (``file_path``, ``recording_folderpath``), the
fraction of steps DROID's idle filter keeps, quality flags from its quality.json (visible
fraction per camera role, wrist-pose deviation, warnings, calibration sources) and where its
files are: the shard and, for each member, its name, contract path, byte
offset of its data in the shard, size and SHA-256. Reading one episode is then one ranged read
per member.

Rows are sorted by episode id and written in row groups of :data:`ROW_GROUP_ROWS`, so a reader
looking for one id reads the footer and one row group (row-group statistics); the file's
key-value metadata holds the next free shard number (``droid_pipeline.next_shard``), which only
grows, so a shard whose episodes were all re-published is never overwritten, and
``droid_pipeline.shard_types``: the Arrow types of the shards' members, merged over every episode
published (:func:`droid_pipeline.publish.shards.merge_types`; an Arrow IPC schema), from which
readers declare the features of ``datasets``' webdataset builder. It is absent when the index has
rows published before the types were kept (their types are unknown). Re-publishing an
episode replaces its row (the newer schema version, then the newer manifest, wins); the old
shard stays as it was. The whole file is rewritten by each shard commit, in the same commit as
the shard, so the index never names a shard the repo lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from droid_pipeline.core.atomic import atomic_path
from droid_pipeline.core.schema import LEGACY_SCHEMA_VERSION
from droid_pipeline.publish.shards import ROLES, ShardMember, episode_key

if TYPE_CHECKING:
    import pyarrow as pa

ROW_GROUP_ROWS = 1024
NEXT_SHARD_KEY = b"droid_pipeline.next_shard"
KIND_KEY = b"droid_pipeline.repo_kind"
TYPES_KEY = b"droid_pipeline.shard_types"


class EpisodeIndexError(ValueError):
    """An index file or row is unreadable or does not describe an episode."""


def schema() -> pa.Schema:
    """The index's columns (documented in docs/upload.md)."""
    import pyarrow as pa

    member = pa.struct([("name", pa.string()), ("path", pa.string()), ("shard", pa.string()),
                        ("offset", pa.int64()), ("size", pa.int64()), ("sha256", pa.string())])
    camera = pa.struct([("role", pa.string()), ("serial", pa.string())])
    return pa.schema([
        ("episode_id", pa.string()), ("key", pa.string()), ("lab", pa.string()), ("outcome", pa.string()),
        ("date", pa.string()), ("relative_path", pa.string()), ("pipeline", pa.string()),
        ("schema_version", pa.int32()), ("manifest_sha256", pa.string()), ("published", pa.float64()),
        ("num_frames", pa.int32()), ("num_normalized_steps", pa.int32()), ("fps", pa.float64()),
        ("cameras", pa.list_(camera)), ("camera_serials", pa.list_(pa.string())),
        ("cameras_with_2d_tracks", pa.list_(pa.string())),
        ("current_task", pa.string()),
        *[(f"language_instruction_{i}", pa.string()) for i in (1, 2, 3)],
        ("file_path", pa.string()), ("recording_folderpath", pa.string()),
        ("kept_fraction", pa.float64()), ("keep_computed", pa.bool_()),
        *[(f"visible_fraction_{role}", pa.float64()) for role in ROLES],
        ("path_length_mm", pa.float64()), ("wrist_pose_deviation_mm", pa.float64()),
        ("wrist_pose_within_tolerance", pa.bool_()), ("warnings", pa.list_(pa.string())),
        ("calibration_sources", pa.list_(pa.string())),
        ("shard", pa.string()), ("bytes", pa.int64()), ("members", pa.list_(member)),
    ])


@dataclass(frozen=True)
class EpisodeInfo:
    """What the index says about an episode besides where its files are (from quality.json)."""

    lab: str
    outcome: str
    date: str
    serials: dict[str, str]  # role -> serial
    fields: dict[str, Any]   # the quality columns

    @property
    def roles(self) -> dict[str, str]:
        return {serial: role for role, serial in self.serials.items()}


def episode_info(quality: Mapping[str, Any], episode_id: str) -> EpisodeInfo:
    """The index columns an episode's quality.json gives; EpisodeIndexError when it lacks what every
    episode has (its id, lab, outcome, date, cameras, T)."""
    try:
        episode = quality["episode"]
        if episode["episode_id"] != episode_id:
            raise EpisodeIndexError(f"quality.json is for episode {episode['episode_id']}, not {episode_id}")
        serials = {str(role): str(serial) for role, serial in episode["serials"].items() if serial is not None}
        lab, outcome, date = str(episode["lab"]), str(episode["outcome"]), str(episode["date"])
        num_frames = int(quality["num_frames"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EpisodeIndexError(f"quality.json lacks the episode's identity or length ({type(exc).__name__}: {exc})") \
            from exc
    by_role = _int_or_none(quality.get("schema_version")) not in (None, LEGACY_SCHEMA_VERSION)
    visible = quality.get("visible_fraction") or {}
    rlds = quality.get("rlds") or {}
    wrist = quality.get("wrist_pose_deviation") or {}
    cameras = (quality.get("calibration") or {}).get("cameras") or {}
    intrinsics = quality.get("intrinsics") or {}
    sources = sorted({str(c.get("source")) for c in cameras.values() if isinstance(c, dict) and c.get("source")}
                     | {f"intrinsics:{c.get('source')}" for c in intrinsics.values()
                        if isinstance(c, dict) and c.get("source")})
    fields: dict[str, Any] = {
        "num_frames": num_frames,
        "num_normalized_steps": _int_or_none(quality.get("num_normalized_steps")),
        "fps": _float_or_none(quality.get("fps")),
        "camera_serials": [serials.get(role, "") for role in ROLES],
        "cameras_with_2d_tracks": [str(s) for s in quality.get("cameras_with_2d_tracks") or []],
        "current_task": _str_or_none(quality.get("current_task")),
        **{f"language_instruction_{i}": _str_or_none(quality.get(f"language_instruction_{i}")) for i in (1, 2, 3)},
        "file_path": _str_or_none(rlds.get("file_path")),
        "recording_folderpath": _str_or_none(rlds.get("recording_folderpath")),
        "kept_fraction": _float_or_none(quality.get("kept_fraction")),
        "keep_computed": quality.get("keep_computed") if isinstance(quality.get("keep_computed"), bool) else None,
        **{f"visible_fraction_{role}": _float_or_none(visible.get(role if by_role else serials.get(role, "")))
           for role in ROLES},
        "path_length_mm": _float_or_none(quality.get("path_length_mm")),
        "wrist_pose_deviation_mm": _float_or_none(wrist.get("max_translation_mm")),
        "wrist_pose_within_tolerance": wrist.get("within_tolerance") if isinstance(
            wrist.get("within_tolerance"), bool) else None,
        "warnings": [str(w) for w in quality.get("warnings") or []],
        "calibration_sources": sources,
    }
    return EpisodeInfo(lab, outcome, date, serials, fields)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def index_row(*, episode_id: str, relative_path: str, pipeline: str, schema_version: int, manifest_sha256: str,
              published: float, info: EpisodeInfo, shard: str, members: Sequence[ShardMember]) -> dict[str, Any]:
    """One row of the index (a dict of the :func:`schema` columns)."""
    return {
        "episode_id": episode_id, "key": episode_key(episode_id), "lab": info.lab, "outcome": info.outcome,
        "date": info.date, "relative_path": relative_path, "pipeline": pipeline,
        "schema_version": schema_version, "manifest_sha256": manifest_sha256, "published": published,
        "cameras": [{"role": role, "serial": serial} for role, serial in info.serials.items()],
        **info.fields,
        "shard": shard, "bytes": sum(m.size for m in members),
        "members": [{"name": m.name, "path": m.path, "shard": shard, "offset": m.offset, "size": m.size,
                     "sha256": m.sha256} for m in members],
    }


def empty_table() -> pa.Table:
    return schema().empty_table()


def read_index(path: Path) -> tuple[pa.Table, int, pa.Schema | None]:
    """The index table at ``path``, its next free shard number and its shards' member types (None
    when unknown)."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
        table = file.read()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise EpisodeIndexError(f"{path}: not a readable episode index: {exc}") from exc
    metadata = file.schema_arrow.metadata or {}
    return table, int(metadata.get(NEXT_SHARD_KEY, b"0")), shard_types(metadata)


def shard_types(metadata: Mapping[bytes, bytes]) -> pa.Schema | None:
    """The shards' member types kept in an index file's key-value metadata, None when absent."""
    import pyarrow as pa

    data = metadata.get(TYPES_KEY)
    if data is None:
        return None
    try:
        return pa.ipc.read_schema(pa.py_buffer(data))
    except (OSError, ValueError) as exc:
        raise EpisodeIndexError(f"the index's {TYPES_KEY.decode()} is not an Arrow schema: {exc}") from exc


def merge(old: pa.Table, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``old`` with ``rows`` added, each replacing the row of its episode unless that one is newer
    (higher schema version, then later manifest); sorted by episode id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    new = pa.Table.from_pylist(list(rows), schema=schema())
    old = _with_columns(old)
    previous = {r["episode_id"]: (r["schema_version"], r["published"])
                for r in old.filter(pc.is_in(old["episode_id"], new["episode_id"])).select(
                    ["episode_id", "schema_version", "published"]).to_pylist()}
    keep_new = [(r["schema_version"], r["published"]) >= previous.get(r["episode_id"], (-1, -1.0)) for r in
                new.select(["episode_id", "schema_version", "published"]).to_pylist()]
    new = new.filter(pa.array(keep_new, pa.bool_()))
    kept_old = old.filter(pc.invert(pc.is_in(old["episode_id"], new["episode_id"])))
    return pa.concat_tables([kept_old, new]).sort_by("episode_id")


def _with_columns(table: pa.Table) -> pa.Table:
    """``table`` with the current columns, in order: a column an older index lacks is null."""
    import pyarrow as pa

    columns = [table[field.name] if field.name in table.column_names else pa.nulls(table.num_rows, field.type)
               for field in schema()]
    return pa.Table.from_arrays(columns, schema=schema()).cast(schema())


def write_index(path: Path, table: pa.Table, *, next_shard: int, kind: str, types: pa.Schema | None) -> None:
    """Write the index atomically (sorted rows, row groups of :data:`ROW_GROUP_ROWS`, zstd), with
    the shards' member ``types`` when they are known."""
    import pyarrow.parquet as pq

    metadata = {NEXT_SHARD_KEY: str(next_shard).encode(), KIND_KEY: kind.encode()}
    if types is not None:
        metadata[TYPES_KEY] = types.serialize().to_pybytes()
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd")


def find_row(parquet: Any, episode_id: str) -> dict[str, Any] | None:
    """The row of ``episode_id`` in an open ``pyarrow.parquet.ParquetFile``, reading only the row
    groups whose episode-id statistics can hold it (one, as the rows are sorted)."""
    import pyarrow.compute as pc

    column = parquet.schema_arrow.get_field_index("episode_id")
    for group in range(parquet.num_row_groups):
        stats = parquet.metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max and not stats.min <= episode_id <= stats.max:
            continue
        table = parquet.read_row_group(group)
        found = table.filter(pc.equal(table["episode_id"], episode_id))
        if found.num_rows:
            return found.to_pylist()[0]
    return None


def row_serials(row: Mapping[str, Any]) -> dict[str, str]:
    """role -> serial of an index row."""
    return {camera["role"]: camera["serial"] for camera in row["cameras"]}
