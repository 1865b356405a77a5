"""Typed pipeline configuration, validated at load.

Layers, later ones winning: ``configs/default.yaml`` (the single source of defaults, every key
commented), the site file named by ``$DROID_PIPELINE_SITE_CONFIG``, each ``--config FILE`` in
order, then each ``--set key=value`` (dotted keys for nested groups, values parsed as YAML).
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key and
the file that set it. Relative paths in a config file resolve against that file's folder; those
of the defaults and of ``--set`` resolve against the working directory.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

# The defaults ship inside the package, installed as files beside its modules (checkouts also see
# them as configs/default.yaml). Not through importlib.resources: its import costs a command 5 ms.
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.yaml")
SITE_CONFIG_ENV = "DROID_PIPELINE_SITE_CONFIG"
# libyaml's parser where PyYAML was built with it (the wheels are): the same safe loading, about
# 15x as fast, which every process of a run pays for the defaults.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    """A configuration value is unknown, missing, mistyped or out of range."""


def _spec(*, min: float | None = None, max: float | None = None, path: bool = False, url: bool = False,
          even: bool = False, length: int | None = None) -> dict[str, Any]:
    return {"min": min, "max": max, "path": path, "url": url, "even": even, "length": length}


# An object-store URL (gs://bucket/prefix, s3://..., https://...), kept as text: never a local path.
URL_PATTERN = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def is_url(value: object) -> bool:
    """Whether a path-or-URL config value is a URL (``scheme://...``)."""
    return isinstance(value, str) and URL_PATTERN.fullmatch(value) is not None


def _field(**kwargs: Any) -> Any:
    return dataclasses.field(metadata=_spec(**kwargs))


@dataclass(frozen=True)
class PerRole:
    """One value for exterior cameras and one for the wrist camera."""

    exterior: float = _field(min=0)
    wrist: float = _field(min=0)

    def for_role(self, role: str) -> float:
        """Value for a camera role: ``wrist`` or any exterior role (``ext1``, ``ext2``)."""
        return self.wrist if role == "wrist" else self.exterior


@dataclass(frozen=True)
class PerRepo:
    """One value for the metadata repo and one for the full repo."""

    metadata: int = _field(min=1, max=20_000_000_000)
    full: int = _field(min=1, max=20_000_000_000)

    def for_kind(self, kind: str) -> int:
        """Value for a repo kind: ``metadata`` or ``full``."""
        return self.full if kind == "full" else self.metadata


@dataclass(frozen=True)
class StereoConfig:
    num_disparities: int = _field(min=16)
    block_size: int = _field(min=1, max=31)
    uniqueness_ratio: int = _field(min=0, max=100)
    speckle_window_size: int = _field(min=0)
    speckle_range: int = _field(min=0)
    lr_check: bool = _field()
    lr_max_diff_px: float = _field(min=0)


@dataclass(frozen=True)
class FFV1Config:
    level: Literal[3] = _field()
    gop: int = _field(min=1)
    slices: int = _field(min=1, max=1024)
    context: Literal[0, 1] = _field()
    coder: Literal["range_def", "range_tab"] = _field()
    threads: int = _field(min=0, max=256)
    remap_values: bool = _field()


@dataclass(frozen=True)
class OcclusionConfig:
    enabled: bool = _field()
    surface_margin_mm: float = _field(min=0)
    scene_tolerance_mm: float = _field(min=0)
    scene_tolerance_per_m2: float = _field(min=0)
    flange_tolerance_mm: float = _field(min=0)


# The deflate levels of each npz engine (0 stores); formats/npz checks its settings against them.
DEFLATE_LEVELS: dict[str, range] = {"zlib": range(10), "isal": range(4)}


@dataclass(frozen=True)
class NpzConfig:
    """How tracks.npz and extrinsics.npz are deflated (formats/npz.py)."""

    engine: Literal["zlib", "isal"] = _field()
    level: int = _field(min=0, max=9)
    level_by_member: dict[str, int] = _field()


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = _field()
    time: str = _field()
    cpus_per_task: int = _field(min=1)
    gpus_per_task: int = _field(min=0)
    mem: str | None = _field()
    num_tasks: int = _field(min=1)
    max_parallel_tasks: int = _field(min=1)
    extra_args: list[str] = _field()


@dataclass(frozen=True)
class CalibrationQualityConfig:
    """Bounds on the published ``<serial>_quality_metric`` per ``<serial>_metric_type``."""

    at_least: dict[str, float] = _field()
    at_most: dict[str, float] = _field()
    action: Literal["warn", "fail"] = _field()

    @property
    def enabled(self) -> bool:
        return bool(self.at_least or self.at_most)


@dataclass(frozen=True)
class VideoFrameMismatchConfig:
    """How far a camera's MP4 frame count may differ from the control steps, and what then."""

    tolerance_frames: int = _field(min=0)
    action: Literal["warn", "fail"] = _field()


@dataclass(frozen=True)
class PlausibilityConfig:
    """The envelope a trajectory must lie in before anything is computed from it (docs/reliability.md)."""

    max_steps: int = _field(min=1)
    max_reach_m: float = _field(min=0)
    max_step_m: float = _field(min=0)
    max_step_rotation_rad: float = _field(min=0)
    gripper_tolerance: float = _field(min=0)
    max_bad_timestamp_fraction: float = _field(min=0, max=1)
    min_control_hz: float = _field(min=0)
    max_control_hz: float = _field(min=0)
    max_principal_point_offset: float = _field(min=0, max=0.5)
    max_focal_spread: float = _field(min=0)
    rescale_intrinsics: bool = _field()
    joint_limit_tolerance_rad: float = _field(min=0)
    min_depth_valid_fraction: float = _field(min=0, max=1)
    depth_check_action: Literal["warn", "fail"] = _field()


@dataclass(frozen=True)
class IdleFilterConfig:
    """DROID's idle-step rule (openpi's compute_droid_nonidle_ranges.py) as tracks.npz ``keep``."""

    min_idle_steps: int = _field(min=1)
    min_kept_steps: int = _field(min=1)
    cut_last_steps: int = _field(min=0)


@dataclass(frozen=True)
class GripperConfig:
    """The fixed transform of the gripper base (robotiq_85_base_link) in the flange (panda_link8)."""

    mount_xyz_m: list[float] = _field(length=3)
    mount_rpy: list[float] = _field(length=3)


@dataclass(frozen=True)
class Config:
    droid_root: Path | str = _field(path=True, url=True)
    episode_paths_file: Path | str | None = _field(path=True, url=True)
    storage_token: str | None = _field()
    scratch_dir: Path | None = _field(path=True)
    prefetch_episodes: int = _field(min=0, max=64)
    scratch_max_bytes: int = _field(min=1)
    output_root: Path = _field(path=True)
    run_root: Path = _field(path=True)
    episode_index_path: Path | None = _field(path=True)
    cam2base_extrinsics_path: Path | None = _field(path=True)
    cam2base_extrinsics_paths: list[Path] = _field(path=True)
    cam2cam_extrinsics_path: Path | None = _field(path=True)
    min_calibration_quality: CalibrationQualityConfig = _field()
    intrinsics_path: Path | None = _field(path=True)
    zed_calibration_dir: Path | None = _field(path=True)

    outcomes: list[Literal["success", "failure"]] = _field()
    labs: list[str] = _field()

    intrinsics_sources: list[Literal["published", "h5", "zed_conf", "zed_sdk"]] = _field()

    num_track_points: int = _field(min=2, even=True)
    fps: float | None = _field(min=1e-3)
    min_depth: PerRole = _field()
    normalized_step_size_mm: float = _field(min=1e-3)
    allow_missing_intrinsics: bool = _field()
    idle_filter: IdleFilterConfig = _field()
    language_annotations_file: Path | None = _field(path=True)
    wrist_pose_tolerance_mm: float = _field(min=0)
    video_frame_mismatch: VideoFrameMismatchConfig = _field()
    plausibility: PlausibilityConfig = _field()
    gripper: GripperConfig = _field()
    occlusion: OcclusionConfig = _field()
    npz: NpzConfig = _field()

    depth_backend: Literal["zed", "stereo"] = _field()
    zed_depth_mode: Literal["NEURAL", "NEURAL_PLUS", "NEURAL_LIGHT", "ULTRA", "QUALITY",
                            "PERFORMANCE"] = _field()
    depth_min_mm: PerRole = _field()
    depth_max_mm: PerRole = _field()
    depth_size: str = _field()
    export_rgb: bool = _field()
    stereo: StereoConfig = _field()
    ffv1: FFV1Config = _field()

    workers: int | None = _field(min=1)
    gpus: str = _field()
    workers_per_gpu: int = _field(min=1)
    slurm: SlurmConfig = _field()

    metadata_repo: str | None = _field()
    full_repo: str | None = _field()
    upload_interval_s: float = _field(min=0)
    max_files_per_commit: int = _field(min=1, max=10000)
    max_commits_per_hour: int = _field(min=1)
    delete_after_upload: bool = _field()
    private: bool = _field()
    hub_layout: Literal["auto", "files", "shards"] = _field()
    shard_max_episodes: int = _field(min=1, max=100_000)
    shard_max_bytes: PerRepo = _field()

    @property
    def index_path(self) -> Path:
        """Where the cached episode index lives."""
        return self.episode_index_path or self.output_root / "episode_index.json"

    @property
    def remote_root(self) -> bool:
        """Whether droid_root is an object-store URL, whose episodes the fetch step copies first."""
        return isinstance(self.droid_root, str)

    @property
    def scratch_root(self) -> Path:
        """Where fetched episodes go: scratch_dir, else $TMPDIR or the system temporary folder."""
        import tempfile

        return self.scratch_dir or Path(tempfile.gettempdir())

    @property
    def cam2base_paths(self) -> list[Path]:
        """The published cam2base files, in the order each camera tries them: the list
        ``cam2base_extrinsics_paths``, or the single ``cam2base_extrinsics_path`` it replaces
        (setting both is an error, see :func:`load_config`)."""
        single = self.cam2base_extrinsics_path
        return list(self.cam2base_extrinsics_paths) if single is None else [single]

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-serialisable form (paths as strings), as written to a run folder."""
        return _plain(dataclasses.asdict(self))


def load_config(config_files: list[str | os.PathLike] | tuple = (),
                overrides: list[str] | tuple = (), *, defaults: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Load and validate the layered configuration (see module docstring)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    layers = [Path(defaults)]
    site = os.environ.get(SITE_CONFIG_ENV)
    if site:
        layers.append(Path(site))
    layers.extend(Path(f) for f in config_files)
    for path in layers:
        data = _read_yaml(path)
        base = Path.cwd() if path == Path(defaults) else path.parent
        _merge(merged, origin, _resolve_paths(data, Config, base, str(path), ""), str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.load(raw, Loader=_YAML_LOADER) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from exc
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        resolved = _resolve_paths(nested, Config, Path.cwd(), "--set", "")
        _merge(merged, origin, resolved, f"--set {key}")
    config = _build(Config, merged, origin, "")
    if config.cam2base_extrinsics_path is not None and config.cam2base_extrinsics_paths:
        raise ConfigError(f"cam2base_extrinsics_path (set by {origin.get('cam2base_extrinsics_path')}) and "
                          f"cam2base_extrinsics_paths (set by {origin.get('cam2base_extrinsics_paths')}) are "
                          "both set: list every file in cam2base_extrinsics_paths and set "
                          "cam2base_extrinsics_path to null")
    _check_npz(config.npz, origin)
    return config


def _check_npz(npz: NpzConfig, origin: dict[str, str]) -> None:
    """Members named in level_by_member exist, levels are the engine's (isal's stop at 3), and
    isal's package is installed (checked before any episode)."""
    from droid_pipeline.core.schema import NPZ_FILES

    members = {key for npz_file in NPZ_FILES for key in npz_file.expected()}
    where = origin.get("npz.level_by_member", "config")
    unknown = sorted(set(npz.level_by_member) - members)
    if unknown:
        raise ConfigError(f"{where}: key 'npz.level_by_member' names {', '.join(unknown)}, not a member of "
                          f"tracks.npz or extrinsics.npz")
    allowed = DEFLATE_LEVELS[npz.engine]
    levels = {"npz.level": npz.level} | {f"npz.level_by_member.{key}": level
                                         for key, level in npz.level_by_member.items()}
    for key, level in levels.items():
        if level not in allowed:
            raise ConfigError(f"{origin.get(key, where)}: key '{key}' must be 0..{allowed[-1]} with npz.engine "
                              f"{npz.engine}, got {level}")
    if npz.engine != "isal":
        return
    if importlib.util.find_spec("isal") is None:
        raise ConfigError(f"{origin.get('npz.engine', 'config')}: npz.engine is isal but the package isal is "
                          "not installed (pip install isal; droid-pipeline depends on it)")


def dump_config(config: Config, path: Path) -> None:
    """Write the effective configuration as YAML (used for each run folder)."""
    from droid_pipeline.core.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    from droid_pipeline.core.files import MAX_METADATA_BYTES, read_text_capped

    try:
        text = read_text_capped(path, MAX_METADATA_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(into: dict, origin: dict[str, str], new: dict, source: str, prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], origin, value, source, dotted + ".")
        else:
            into[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _flat_keys(value, dotted + "."):
                    origin[sub] = source


def _flat_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys.extend(_flat_keys(value, f"{prefix}{key}."))
    return keys


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _resolve_paths(data: Any, cls: type, base: Path, source: str, prefix: str) -> Any:
    """Make relative path values absolute against ``base``; leave everything else as given."""
    if not isinstance(data, dict):
        return data
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            out[key] = value  # reported as unknown by _build, with its origin
            continue
        sub = _dataclass_of(hints[key])
        if sub is not None:
            out[key] = _resolve_paths(value, sub, base, source, f"{prefix}{key}.")
        elif field.metadata.get("url") and is_url(value):
            out[key] = value
        elif field.metadata.get("path") and isinstance(value, str) and value:
            out[key] = _resolve_path(value, base)
        elif field.metadata.get("path") and isinstance(value, list):
            out[key] = [_resolve_path(item, base) if isinstance(item, str) and item else item for item in value]
        else:
            out[key] = value
    return out


def _resolve_path(value: str, base: Path) -> str:
    return str((base / Path(value).expanduser()).resolve())


def _dataclass_of(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _build(cls: type, data: Any, origin: dict[str, str], prefix: str) -> Any:
    where = origin.get(prefix.rstrip("."), "config")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: key '{prefix.rstrip('.')}' must be a mapping, got {data!r}")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            raise ConfigError(f"{origin.get(dotted, 'config')}: unknown key '{dotted}' "
                              f"(known keys here: {', '.join(sorted(names))})")
    hints = _hints(cls)
    values = {}
    for field in fields:
        dotted = f"{prefix}{field.name}"
        if field.name not in data:
            raise ConfigError(f"missing key '{dotted}' (not set by {DEFAULT_CONFIG_PATH} "
                              "or any override)")
        source = origin.get(dotted, "config")
        values[field.name] = _convert(data[field.name], hints[field.name], field.metadata,
                                      dotted, source, origin)
    return cls(**values)


def _convert(value: Any, hint: Any, meta: Any, key: str, source: str, origin: dict) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' must be {expected}, got {value!r}")

    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if meta.get("url") and is_url(value):
            return value
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], meta, key, source, origin)
    sub = _dataclass_of(hint)
    if sub is not None:
        return _build(sub, value, origin, key + ".")
    if typing.get_origin(hint) is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if typing.get_origin(hint) is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise fail("a list")
        if meta.get("length") is not None and len(value) != meta["length"]:
            raise fail(f"a list of {meta['length']} values")
        return [_convert(v, args[0], meta, f"{key}[{i}]", source, origin) for i, v in enumerate(value)]
    if typing.get_origin(hint) is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise fail("a mapping")
        for name in value:
            if not isinstance(name, str) or not name:
                raise fail("a mapping with non-empty string keys")
        return {name: _convert(v, args[1], meta, f"{key}.{name}", origin.get(f"{key}.{name}", source), origin)
                for name, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        _check_range(value, meta, fail)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        _check_range(value, meta, fail)
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise fail("a non-empty string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise fail("a path")
        return Path(value)
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _check_range(value: float, meta: Any, fail: Any) -> None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise fail(f">= {lo}")
    if hi is not None and value > hi:
        raise fail(f"<= {hi}")
    if meta.get("even") and value % 2:
        raise fail("an even integer")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
