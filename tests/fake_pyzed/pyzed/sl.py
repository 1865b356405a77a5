"""Recorded fake of the few ``pyzed.sl`` (ZED SDK 4) calls the pipeline's ZED adapter makes.

An "SVO" here is a JSON file holding what the real SDK reported for a recording:
``{"resolution": [w, h], "left_cam": {"fx", "fy", "cx", "cy", "disto": [12 floats]},
"baseline_mm": B}``. Opening anything else fails like the SDK does, with an error code.
Every call is appended to :data:`CALLS` so tests can check how the adapter drove the SDK.
"""

from __future__ import annotations

import enum
import json

CALLS: list[tuple] = []


class ERROR_CODE(enum.Enum):
    SUCCESS = 0
    INVALID_SVO_FILE = 1


class DEPTH_MODE(enum.Enum):
    NONE = 0
    PERFORMANCE = 1
    QUALITY = 2
    ULTRA = 3
    NEURAL = 4


class UNIT(enum.Enum):
    MILLIMETER = 0
    METER = 1


class Resolution:
    def __init__(self, width: int = 0, height: int = 0):
        self.width = width
        self.height = height


class CameraParameters:
    def __init__(self, fx: float, fy: float, cx: float, cy: float, disto: list[float]):
        self.fx, self.fy, self.cx, self.cy = fx, fy, cx, cy
        self.disto = list(disto)


class CalibrationParameters:
    def __init__(self, left_cam: CameraParameters, baseline_mm: float, units: UNIT):
        self.left_cam = left_cam
        self._baseline = baseline_mm / 1000.0 if units == UNIT.METER else baseline_mm

    def get_camera_baseline(self) -> float:
        """Baseline in the InitParameters' coordinate_units, as the SDK returns it."""
        CALLS.append(("get_camera_baseline",))
        return self._baseline


class CameraConfiguration:
    def __init__(self, resolution: Resolution, calibration_parameters: CalibrationParameters):
        self.resolution = resolution
        self.calibration_parameters = calibration_parameters


class CameraInformation:
    def __init__(self, camera_configuration: CameraConfiguration):
        self.camera_configuration = camera_configuration


class InitParameters:
    def __init__(self):
        self.svo_input_filename = None
        self.depth_mode = DEPTH_MODE.PERFORMANCE
        self.coordinate_units = UNIT.MILLIMETER
        self.svo_real_time_mode = True

    def set_from_svo_file(self, path: str) -> None:
        CALLS.append(("set_from_svo_file", path))
        self.svo_input_filename = path


class Camera:
    def __init__(self):
        self._recording = None
        self._units = UNIT.MILLIMETER

    def open(self, init: InitParameters) -> ERROR_CODE:
        CALLS.append(("open", init.svo_input_filename, init.depth_mode, init.coordinate_units,
                      init.svo_real_time_mode))
        try:
            with open(init.svo_input_filename) as fh:
                self._recording = json.load(fh)
            self._units = init.coordinate_units
        except (OSError, TypeError, ValueError):
            return ERROR_CODE.INVALID_SVO_FILE
        return ERROR_CODE.SUCCESS

    def get_camera_information(self) -> CameraInformation:
        CALLS.append(("get_camera_information",))
        record = self._recording
        left = CameraParameters(**record["left_cam"])
        return CameraInformation(CameraConfiguration(
            Resolution(*record["resolution"]), CalibrationParameters(left, record["baseline_mm"], self._units)))

    def close(self) -> None:
        CALLS.append(("close",))
        self._recording = None
