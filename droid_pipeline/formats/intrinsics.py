"""``recordings/<serial>/intrinsics.json``: one camera's rectified left-image intrinsics, typed.

:class:`IntrinsicsRecord` holds what the file holds and checks it whenever one is made, so a
record read back (:meth:`IntrinsicsRecord.load`) or produced by a source is always sane: finite
fx, fy > 0, the principal point inside the image, K equal to fx, fy, cx, cy, matrices of their
shapes. The JSON form keeps the keys and order the file has always had.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from droid_pipeline.core.atomic import write_json_atomic
from droid_pipeline.core.files import MAX_METADATA_BYTES, read_text_capped

SOURCES = ("published", "h5", "zed_conf", "zed_sdk")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")   # OpenCV's order
MATRIX_SHAPES = {"K": (3, 3), "R1": (3, 3), "R2": (3, 3), "P1": (3, 4), "P2": (3, 4)}
# Keys in the order the file lists them; those after "k3" are present only when known.
JSON_KEYS = ("episode_id", "serial", "camera", "source", "source_detail", "rectified", "width", "height",
             "fx", "fy", "cx", "cy", "K", *DISTORTION_KEYS, "baseline_m", "R1", "R2", "P1", "P2",
             "zed_resolution", "zed_scale", "attempts", "warnings")
_REQUIRED = ("source", "rectified", "width", "height", "fx", "fy", "cx", "cy", "K", *DISTORTION_KEYS)


class IntrinsicsError(ValueError):
    """An intrinsics.json file or value is malformed or fails the sanity checks."""


@dataclass(frozen=True)
class SourceAttempt:
    """A source tried before the one that worked, and why it gave nothing usable."""

    source: str
    error: str


@dataclass(frozen=True, eq=False, kw_only=True)
class IntrinsicsRecord:
    """One camera's intrinsics (pixels), where they came from, and for stereo sources the
    baseline and rectification. Raises IntrinsicsError when any value is not sane."""

    source: str
    rectified: bool
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    K: np.ndarray                       # (3, 3) float64, equal to fx, fy, cx, cy
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0
    episode_id: str | None = None
    serial: str | None = None
    camera: str | None = None           # role: wrist, ext1 or ext2
    source_detail: str | None = None
    baseline_m: float | None = None
    R1: np.ndarray | None = None        # rectification (zed_conf): rotations (3, 3), projections (3, 4)
    R2: np.ndarray | None = None
    P1: np.ndarray | None = None
    P2: np.ndarray | None = None
    zed_resolution: str | None = None
    zed_scale: int | None = None
    attempts: tuple[SourceAttempt, ...] | None = None
    # What the source said about itself that was wrong and how it was dealt with (intrinsics for
    # another image size rescaled, a source skipped for values in another order), for quality.json.
    warnings: tuple[str, ...] | None = None

    @classmethod
    def pinhole(cls, fx: float, fy: float, cx: float, cy: float, **fields: Any) -> IntrinsicsRecord:
        """A record whose K is the zero-skew pinhole matrix of fx, fy, cx, cy."""
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
        return cls(fx=fx, fy=fy, cx=cx, cy=cy, K=K, **fields)

    def __post_init__(self) -> None:
        for key in ("fx", "fy", "cx", "cy", *DISTORTION_KEYS):
            value = getattr(self, key)
            if not _is_number(value) or not math.isfinite(value):
                raise IntrinsicsError(f"{key} must be a finite number, got {value!r}")
            object.__setattr__(self, key, float(value))
        for key in ("width", "height"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise IntrinsicsError(f"{key} must be a positive integer, got {value!r}")
        if self.source not in SOURCES:
            raise IntrinsicsError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if not isinstance(self.rectified, bool):
            raise IntrinsicsError(f"rectified must be true or false, got {self.rectified!r}")
        for key, shape in MATRIX_SHAPES.items():
            value = getattr(self, key)
            if value is None and key != "K":
                continue
            try:
                matrix = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise IntrinsicsError(f"{key} is not a numeric matrix") from exc
            if matrix.shape != shape or not np.isfinite(matrix).all():
                raise IntrinsicsError(f"{key} must be a finite {shape} matrix, got {value!r}")
            object.__setattr__(self, key, matrix)
        if self.baseline_m is not None:
            if not (_is_number(self.baseline_m) and self.baseline_m > 0):
                raise IntrinsicsError(f"baseline_m must be a positive number, got {self.baseline_m!r}")
            object.__setattr__(self, "baseline_m", float(self.baseline_m))
        for key in ("episode_id", "serial", "camera", "source_detail", "zed_resolution"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise IntrinsicsError(f"{key} must be a string, got {getattr(self, key)!r}")
        if self.warnings is not None:
            if not isinstance(self.warnings, (list, tuple)) or not all(isinstance(w, str) for w in self.warnings):
                raise IntrinsicsError(f"warnings must be a list of strings, got {self.warnings!r}")
            object.__setattr__(self, "warnings", tuple(self.warnings))
        if self.zed_scale is not None and (not isinstance(self.zed_scale, int) or self.zed_scale <= 0):
            raise IntrinsicsError(f"zed_scale must be a positive integer, got {self.zed_scale!r}")
        if self.fx <= 0 or self.fy <= 0:
            raise IntrinsicsError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if not (0 <= self.cx < self.width and 0 <= self.cy < self.height):
            raise IntrinsicsError(f"principal point ({self.cx}, {self.cy}) lies outside the "
                                  f"{self.width}x{self.height} image")
        expected_K = np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])
        if not np.allclose(self.K, expected_K, rtol=0, atol=1e-9):
            raise IntrinsicsError(f"K {self.K.tolist()} disagrees with fx, fy, cx, cy")

    @property
    def distortion(self) -> np.ndarray:
        """(5,) float64: k1, k2, p1, p2, k3 (OpenCV's order)."""
        return np.array([getattr(self, key) for key in DISTORTION_KEYS], dtype=np.float64)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image the intrinsics are for."""
        return self.width, self.height

    def with_attempts(self, attempts: list[SourceAttempt]) -> IntrinsicsRecord:
        return dataclasses.replace(self, attempts=tuple(attempts))

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object: keys in the file's order, unknown optional ones left out."""
        data: dict[str, Any] = {}
        for key in JSON_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif key == "attempts":
                value = [dataclasses.asdict(attempt) for attempt in value]
            elif key == "warnings":
                value = list(value)
            data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Any) -> IntrinsicsRecord:
        """Parse and check the file's JSON object. Raises IntrinsicsError."""
        if not isinstance(data, dict):
            raise IntrinsicsError("intrinsics file is not a JSON object")
        unknown = [key for key in data if key not in JSON_KEYS]
        if unknown:
            raise IntrinsicsError(f"unknown keys {unknown}")
        fields: dict[str, Any] = {key: data.get(key) for key in _REQUIRED}
        fields.update({key: data[key] for key in JSON_KEYS if key in data and key not in _REQUIRED})
        if "attempts" in fields:
            fields["attempts"] = _attempts(fields["attempts"])
        return cls(**fields)

    @classmethod
    def load(cls, path: os.PathLike | str) -> IntrinsicsRecord:
        """Read one intrinsics.json back, checked; errors name the file."""
        try:
            data = json.loads(read_text_capped(path, MAX_METADATA_BYTES))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntrinsicsError(f"{path}: cannot read intrinsics file: {exc}") from exc
        try:
            return cls.from_json(data)
        except IntrinsicsError as exc:
            raise IntrinsicsError(f"{path}: {exc}") from exc

    def write(self, path: os.PathLike | str) -> None:
        write_json_atomic(path, self.to_json())


def _attempts(value: Any) -> tuple[SourceAttempt, ...]:
    if not isinstance(value, list) or not all(
            isinstance(a, dict) and set(a) == {"source", "error"} and all(isinstance(v, str) for v in a.values())
            for a in value):
        raise IntrinsicsError(f"attempts must be a list of {{source, error}} strings, got {value!r}")
    return tuple(SourceAttempt(a["source"], a["error"]) for a in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
