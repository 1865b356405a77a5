"""The one gateway to the ZED SDK (``pyzed.sl``); no other module imports it.

``pyzed.sl`` ships with the ZED SDK installer, needs CUDA and an NVIDIA GPU even to open an SVO
without depth, and is never installed from PyPI (the PyPI package named ``pyzed`` is unrelated).
It is imported lazily inside the functions here, so the rest of the pipeline runs without it;
its absence raises :class:`ZedSdkUnavailable`, naming the CPU alternatives. It offers what the
pipeline needs from an SVO: the rectified calibration (:func:`read_calibration`) and depth
frames (:func:`open_depth`). Written against the ZED SDK 4 Python API; only the few calls below
are used, and the tests exercise them through a recorded fake of those calls (the real SDK runs
only on GPU nodes).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from droid_pipeline.core.files import check_input_file

CPU_ALTERNATIVES = ("intrinsics sources published, h5 and zed_conf (intrinsics_sources), "
                    "and depth_backend: stereo")


class ZedSdkUnavailable(RuntimeError):
    """``pyzed.sl`` cannot be imported on this machine."""


class ZedSdkError(RuntimeError):
    """The ZED SDK is installed but could not read an SVO recording."""


@dataclass(frozen=True)
class SdkCalibration:
    """The SDK's rectified left-camera intrinsics (pixels) and stereo baseline of a recording."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, float, float, float, float]
    baseline_m: float


@dataclass(frozen=True)
class DepthReader:
    """An SVO opened with depth: its size, frame count and rate, and its frames in order."""

    width: int
    height: int
    num_frames: int
    fps: float
    sl: ModuleType
    camera: Any
    left_image: bool

    def frames(self) -> Iterator[tuple[np.ndarray | None, np.ndarray | None]]:
        """``(depth, left)`` per recorded frame: depth float32 millimetres (NaN occluded, -inf too
        close, +inf too far), left RGB uint8 when asked for, else ``None``. A frame the SDK fails
        to grab gives ``(None, None)`` and the reader seeks past it, so that frame i stays frame
        i; at most ``num_frames``."""
        sl = self.sl
        runtime = sl.RuntimeParameters()
        depth, image = sl.Mat(), sl.Mat()
        for index in range(self.num_frames):
            status = self.camera.grab(runtime)
            if status == sl.ERROR_CODE.END_OF_SVOFILE_REACHED:
                return
            if status != sl.ERROR_CODE.SUCCESS:
                self.camera.set_svo_position(index + 1)
                yield None, None
                continue
            self.camera.retrieve_measure(depth, sl.MEASURE.DEPTH)
            left = None
            if self.left_image:
                self.camera.retrieve_image(image, sl.VIEW.LEFT)
                left = np.ascontiguousarray(image.get_data()[:, :, 2::-1])  # BGRA -> RGB
            yield np.array(depth.get_data(), dtype=np.float32), left


def import_sl() -> ModuleType:
    """``pyzed.sl``, or :class:`ZedSdkUnavailable` saying what to install or use instead."""
    try:
        return importlib.import_module("pyzed.sl")
    except ImportError as exc:
        raise ZedSdkUnavailable(
            f"ZED SDK not installed (import pyzed.sl failed: {exc}); pyzed.sl comes with the ZED SDK "
            f"installer on a CUDA/NVIDIA GPU node, not from PyPI. Without it use {CPU_ALTERNATIVES}"
        ) from exc


def sdk_available() -> bool:
    """Whether ``pyzed.sl`` can be imported here."""
    try:
        import_sl()
    except ZedSdkUnavailable:
        return False
    return True


@contextlib.contextmanager
def open_svo(svo_path: os.PathLike | str, depth_mode: str = "NONE") -> Iterator[tuple[ModuleType, Any]]:
    """Open an SVO for reading, frames in recording order, units millimetres; yields (sl, camera)."""
    sl = import_sl()
    path = Path(svo_path)
    try:
        check_input_file(path)
    except FileNotFoundError as exc:
        raise ZedSdkError(f"{path}: SVO file not found") from exc
    except OSError as exc:
        raise ZedSdkError(f"{path}: SVO file not usable: {exc}") from exc
    if not hasattr(sl.DEPTH_MODE, depth_mode):
        raise ZedSdkError(f"unknown ZED depth mode {depth_mode!r}")
    init = sl.InitParameters()
    init.set_from_svo_file(str(path))
    init.svo_real_time_mode = False
    init.depth_mode = getattr(sl.DEPTH_MODE, depth_mode)
    init.coordinate_units = sl.UNIT.MILLIMETER
    camera = sl.Camera()
    status = camera.open(init)
    if status != sl.ERROR_CODE.SUCCESS:
        raise ZedSdkError(f"{path}: ZED SDK cannot open the SVO: {status}")
    try:
        yield sl, camera
    finally:
        camera.close()


@contextlib.contextmanager
def open_depth(svo_path: os.PathLike | str, depth_mode: str, left_image: bool = False) -> Iterator[DepthReader]:
    """Open an SVO with ``depth_mode`` (a ``sl.DEPTH_MODE`` name such as NEURAL) for depth frames."""
    with open_svo(svo_path, depth_mode) as (sl, camera):
        configuration = camera.get_camera_information().camera_configuration
        yield DepthReader(width=int(configuration.resolution.width), height=int(configuration.resolution.height),
                          num_frames=int(camera.get_svo_number_of_frames()), fps=float(configuration.fps),
                          sl=sl, camera=camera, left_image=left_image)


def read_calibration(svo_path: os.PathLike | str) -> SdkCalibration:
    """Rectified left intrinsics and baseline of an SVO, opened without depth."""
    with open_svo(svo_path) as (_, camera):
        configuration = camera.get_camera_information().camera_configuration
        parameters = configuration.calibration_parameters
        left = parameters.left_cam
        values = [float(v) for v in list(left.disto)[:5]]
        k1, k2, p1, p2, k3 = values + [0.0] * (5 - len(values))
        return SdkCalibration(
            width=int(configuration.resolution.width), height=int(configuration.resolution.height),
            fx=float(left.fx), fy=float(left.fy), cx=float(left.cx), cy=float(left.cy),
            distortion=(k1, k2, p1, p2, k3),
            baseline_m=float(parameters.get_camera_baseline()) / 1000.0)
