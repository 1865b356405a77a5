"""ZED factory calibration files (``SN<serial>.conf``): parse, write, and rectify as the ZED SDK does.

The file is INI with case-insensitive sections and keys: ``[LEFT_CAM_<res>]`` and
``[RIGHT_CAM_<res>]`` hold the raw (unrectified) ``fx fy cx cy k1 k2 p1 p2 k3`` of each lens for
``<res>`` in 2K, FHD, HD, VGA; ``[STEREO]`` holds ``Baseline`` (mm) and, per resolution,
``TY_<res>``, ``TZ_<res>`` (mm) and ``CV_<res>``, ``RX_<res>``, ``RZ_<res>`` (radians). Some
files give one ``TY``/``TZ`` for all resolutions; that value is used when ``TY_<res>`` is absent.
Other sections (``[MISC]``, ``[IMU]``, newer camera modes) are ignored.

Stereo convention (the one of Stereolabs' OpenCV examples, and OpenCV's ``stereoRectify``):
``R = Rodrigues([RX, CV, RZ])`` and ``T = [-Baseline, TY, TZ]`` map a point from the LEFT
camera's frame into the RIGHT camera's frame, ``X_right = R @ X_left + T``; the right lens sits
at about ``+Baseline`` along the left camera's x axis. ``T`` is passed in metres, so ``P2`` and
``baseline_m`` are in metres.

Rectification reproduces the SDK's rectified left view (what DROID's MP4s show):
``cv2.stereoRectify(K_l, d_l, K_r, d_r, (w, h), R, T, flags=CALIB_ZERO_DISPARITY, alpha=0)``;
the rectified intrinsics are ``P1[:3, :3]`` with zero distortion and the baseline is
``-P2[0, 3] / P2[0, 0]``.

A video whose size is an exact integer downscale ``s`` of a native mode with the same aspect
ratio (DROID's RLDS release stores 320x180 = HD/4) uses that mode's raw intrinsics scaled to the
video before rectifying. Pixel centres are at integer coordinates, so a pixel of the small image
covers ``s`` native pixels and ``f' = f / s``, ``c' = (c + 0.5) / s - 0.5``; distortion
coefficients act on normalised coordinates and are unchanged. When several modes fit (320x180 is
both HD/4 and FHD/6) the smallest factor among the sections present wins.
"""

from __future__ import annotations

import configparser
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from droid_pipeline.core.files import MAX_METADATA_BYTES as MAX_CONF_BYTES
from droid_pipeline.core.files import read_text_capped

RESOLUTIONS: dict[str, tuple[int, int]] = {
    "2K": (2208, 1242), "FHD": (1920, 1080), "HD": (1280, 720), "VGA": (672, 376)}
CAMERA_KEYS = ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3")
STEREO_KEYS = ("ty", "tz", "cv", "rx", "rz")
SERIAL_FILE_PATTERN = re.compile(r"^SN(.+)\.conf$", re.IGNORECASE)


class ZedConfError(ValueError):
    """A calibration file is unreadable, incomplete, or has no section for a video's size."""


@dataclass(frozen=True)
class CameraCalibration:
    """Raw pinhole intrinsics (pixels) and Brown-Conrady distortion of one lens at one resolution."""

    fx: float
    fy: float
    cx: float
    cy: float
    k1: float
    k2: float
    p1: float
    p2: float
    k3: float

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def distortion(self) -> np.ndarray:
        """OpenCV order: k1, k2, p1, p2, k3."""
        return np.array([self.k1, self.k2, self.p1, self.p2, self.k3])


@dataclass(frozen=True)
class StereoExtras:
    """Per-resolution right-lens pose terms of ``[STEREO]``: offsets in mm, rotations in radians."""

    ty_mm: float
    tz_mm: float
    cv_rad: float
    rx_rad: float
    rz_rad: float

    @property
    def rotation(self) -> np.ndarray:
        """``R`` of ``X_right = R @ X_left + T``: Rodrigues([RX, CV, RZ])."""
        import cv2

        return cv2.Rodrigues(np.array([self.rx_rad, self.cv_rad, self.rz_rad], dtype=np.float64))[0]


@dataclass(frozen=True)
class ZedConf:
    """One camera's factory calibration; dict keys are resolution names of :data:`RESOLUTIONS`."""

    serial: str
    left: dict[str, CameraCalibration]
    right: dict[str, CameraCalibration]
    baseline_mm: float
    stereo: dict[str, StereoExtras]

    def translation_m(self, resolution_key: str) -> np.ndarray:
        """``T`` of ``X_right = R @ X_left + T`` in metres: [-Baseline, TY, TZ] / 1000."""
        extras = self.stereo[resolution_key]
        return np.array([-self.baseline_mm, extras.ty_mm, extras.tz_mm]) / 1000.0

    @property
    def complete_resolutions(self) -> list[str]:
        """Resolutions with a left, a right and a stereo entry (the ones :func:`rectify` can use)."""
        return [k for k in RESOLUTIONS if k in self.left and k in self.right and k in self.stereo]


@dataclass(frozen=True)
class RectifiedStereo:
    """Rectified stereo geometry at a video's size; ``K`` is the left (and right) rectified matrix."""

    K: np.ndarray
    baseline_m: float
    R1: np.ndarray
    R2: np.ndarray
    P1: np.ndarray
    P2: np.ndarray
    resolution_key: str
    scale: int
    width: int
    height: int


def parse_conf(path: os.PathLike | str) -> ZedConf:
    """Read ``SN<serial>.conf``; the serial comes from the file name (else its stem)."""
    path = Path(path)
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    try:
        parser.read_string(read_text_capped(path, MAX_CONF_BYTES, encoding="utf-8-sig"), source=str(path))
    except OSError as exc:
        raise ZedConfError(f"{path}: cannot read ZED calibration file: {exc.strerror or exc}") from exc
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ZedConfError(f"{path}: not a valid ZED calibration file: {exc}") from exc
    sections: dict[str, configparser.SectionProxy] = {}
    for name in parser.sections():
        upper = name.strip().upper()
        if upper in sections:
            raise ZedConfError(f"{path}: section [{upper}] appears twice (sections are case-insensitive)")
        sections[upper] = parser[name]

    left: dict[str, CameraCalibration] = {}
    right: dict[str, CameraCalibration] = {}
    for side, table in (("LEFT", left), ("RIGHT", right)):
        for key in RESOLUTIONS:
            section = sections.get(f"{side}_CAM_{key}")
            if section is not None:
                values = [_number(path, f"{side}_CAM_{key}", section, k) for k in CAMERA_KEYS]
                calibration = CameraCalibration(*values)
                if calibration.fx <= 0 or calibration.fy <= 0:
                    raise ZedConfError(f"{path}: [{side}_CAM_{key}] focal lengths must be positive, "
                                       f"got fx={calibration.fx}, fy={calibration.fy}")
                table[key] = calibration
    if not left:
        raise ZedConfError(f"{path}: no [LEFT_CAM_<res>] section for any of {', '.join(RESOLUTIONS)}")

    stereo_section = sections.get("STEREO")
    if stereo_section is None:
        raise ZedConfError(f"{path}: no [STEREO] section")
    baseline_mm = _number(path, "STEREO", stereo_section, "baseline")
    if baseline_mm <= 0:
        raise ZedConfError(f"{path}: [STEREO] Baseline must be positive (mm), got {baseline_mm}")
    stereo = {}
    for key in RESOLUTIONS:
        present = [k for k in STEREO_KEYS if f"{k}_{key.lower()}" in stereo_section]
        if not present:
            continue
        values = []
        for name in STEREO_KEYS:
            option = f"{name}_{key.lower()}"
            if option not in stereo_section and name in ("ty", "tz") and name in stereo_section:
                option = name
            if option not in stereo_section:
                raise ZedConfError(f"{path}: [STEREO] has {', '.join(p.upper() + '_' + key for p in present)}"
                                   f" but no {name.upper()}_{key}")
            values.append(_number(path, "STEREO", stereo_section, option))
        stereo[key] = StereoExtras(*values)
    match = SERIAL_FILE_PATTERN.match(path.name)
    return ZedConf(serial=match.group(1) if match else path.stem, left=left, right=right,
                   baseline_mm=baseline_mm, stereo=stereo)


def format_conf(conf: ZedConf) -> str:
    """INI text that :func:`parse_conf` reads back to an equal :class:`ZedConf` (floats via repr)."""
    lines = []
    for side, table in (("LEFT", conf.left), ("RIGHT", conf.right)):
        for key in RESOLUTIONS:
            if key in table:
                lines.append(f"[{side}_CAM_{key}]")
                lines.extend(f"{name} = {float(getattr(table[key], name))!r}" for name in CAMERA_KEYS)
                lines.append("")
    lines.append("[STEREO]")
    lines.append(f"Baseline = {float(conf.baseline_mm)!r}")
    names = {"ty_mm": "TY", "tz_mm": "TZ", "cv_rad": "CV", "rx_rad": "RX", "rz_rad": "RZ"}
    for key in RESOLUTIONS:
        if key in conf.stereo:
            extras = conf.stereo[key]
            lines.extend(f"{names[f.name]}_{key} = {float(getattr(extras, f.name))!r}"
                         for f in fields(StereoExtras))
    lines.append("")
    return "\n".join(lines)


def match_resolution(width: int, height: int, available: list[str] | None = None) -> tuple[str, int] | None:
    """``(resolution key, integer scale)`` of a native ZED mode that ``width x height`` equals or
    exactly downscales (same aspect ratio), smallest scale first; ``None`` if there is none.
    ``available`` restricts the modes considered."""
    candidates = []
    for key, (native_w, native_h) in RESOLUTIONS.items():
        if available is not None and key not in available:
            continue
        if width > 0 and height > 0 and native_w % width == 0:
            scale = native_w // width
            if native_h == scale * height:
                candidates.append((scale, key))
    if not candidates:
        return None
    scale, key = min(candidates)
    return key, scale


def rectify(conf: ZedConf, width: int, height: int) -> RectifiedStereo:
    """Rectified left intrinsics, baseline and rectification for a ``width x height`` video."""
    import cv2  # only rectification needs OpenCV: parsing the file does not

    available = conf.complete_resolutions
    matched = match_resolution(width, height, available)
    if matched is None:
        present = ", ".join(f"{k} {RESOLUTIONS[k][0]}x{RESOLUTIONS[k][1]}" for k in available) or "none"
        unusable = match_resolution(width, height)
        hint = ""
        if unusable is not None:
            key = unusable[0]
            missing = [s for s, table in ((f"[LEFT_CAM_{key}]", conf.left), (f"[RIGHT_CAM_{key}]", conf.right),
                                          (f"[STEREO] terms for {key}", conf.stereo)) if key not in table]
            hint = f"; it fits {key} but the file lacks {', '.join(missing)}"
        raise ZedConfError(f"SN{conf.serial}.conf: video size {width}x{height} is neither a native ZED "
                           f"resolution nor an integer downscale of one with a complete calibration "
                           f"(complete sections: {present}){hint}")
    key, scale = matched
    left = _scaled_matrix(conf.left[key], scale)
    right = _scaled_matrix(conf.right[key], scale)
    R1, R2, P1, P2, *_ = cv2.stereoRectify(
        left, conf.left[key].distortion, right, conf.right[key].distortion, (width, height),
        conf.stereo[key].rotation, conf.translation_m(key).reshape(3, 1),
        flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)
    return RectifiedStereo(K=P1[:3, :3].copy(), baseline_m=float(-P2[0, 3] / P2[0, 0]), R1=R1, R2=R2,
                           P1=P1, P2=P2, resolution_key=key, scale=scale, width=width, height=height)


def _scaled_matrix(calibration: CameraCalibration, scale: int) -> np.ndarray:
    """Camera matrix for an image ``scale`` times smaller: f / s and (c + 0.5) / s - 0.5."""
    K = calibration.matrix
    if scale != 1:
        K[0, 0] /= scale
        K[1, 1] /= scale
        K[:2, 2] = (K[:2, 2] + 0.5) / scale - 0.5
    return K


def _number(path: Path, section_name: str, section: configparser.SectionProxy, key: str) -> float:
    raw = section.get(key)
    if raw is None:
        raise ZedConfError(f"{path}: [{section_name}] has no key {key}")
    try:
        value = float(raw)
    except ValueError as exc:
        raise ZedConfError(f"{path}: [{section_name}] {key} = {raw!r} is not a number") from exc
    if not math.isfinite(value):
        raise ZedConfError(f"{path}: [{section_name}] {key} = {raw!r} is not finite")
    return value
