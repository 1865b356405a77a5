"""Recorded fake of the few ``pyzed.sl`` (ZED SDK 4) calls the pipeline's ZED adapter makes.

An "SVO" here is a JSON file holding what the real SDK reported for a recording:
``{"resolution": [w, h], "fps": F, "left_cam": {"fx", "fy", "cx", "cy", "disto": [12 floats]},
"baseline_mm": B, "depth_frames": [HxW millimetres or null for a failed grab, ...],
"left_frames": [HxWx4 BGRA, ...]}``. Opening anything else fails like the SDK does, with an
error code; ``grab`` past the last frame returns END_OF_SVOFILE_REACHED.
Every call is appended to :data:`CALLS` so tests can check how the adapter drove the SDK.
"""

from __future__ import annotations

import enum
import json

import numpy as np

CALLS: list[tuple] = []


class ERROR_CODE(enum.Enum):
    SUCCESS = 0
    INVALID_SVO_FILE = 1
    END_OF_SVOFILE_REACHED = 2
    CORRUPTED_FRAME = 3


class DEPTH_MODE(enum.Enum):
    NONE = 0
    PERFORMANCE = 1
    QUALITY = 2
    ULTRA = 3
    NEURAL = 4


class MEASURE(enum.Enum):
    DEPTH = 0


class VIEW(enum.Enum):
    LEFT = 0


class RuntimeParameters:
    pass


class Mat:
    def __init__(self):
        self._data = None

    def get_data(self) -> np.ndarray:
        return self._data


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
    def __init__(self, resolution: Resolution, fps: float, calibration_parameters: CalibrationParameters):
        self.resolution = resolution
        self.fps = fps
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
        self._position = -1

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
            Resolution(*record["resolution"]), record.get("fps", 60.0),
            CalibrationParameters(left, record["baseline_mm"], self._units)))

    def get_svo_number_of_frames(self) -> int:
        CALLS.append(("get_svo_number_of_frames",))
        return len(self._recording.get("depth_frames", []))

    def grab(self, runtime: RuntimeParameters) -> ERROR_CODE:
        CALLS.append(("grab",))
        self._position += 1
        frames = self._recording.get("depth_frames", [])
        if self._position >= len(frames):
            return ERROR_CODE.END_OF_SVOFILE_REACHED
        if frames[self._position] is None:
            self._position -= 1  # worst case: a failed grab does not move past the bad frame
            return ERROR_CODE.CORRUPTED_FRAME
        return ERROR_CODE.SUCCESS

    def set_svo_position(self, frame: int) -> None:
        CALLS.append(("set_svo_position", frame))
        self._position = frame - 1

    def retrieve_measure(self, mat: Mat, measure: MEASURE) -> ERROR_CODE:
        CALLS.append(("retrieve_measure", measure))
        depth = np.array(self._recording["depth_frames"][self._position], dtype=np.float32)
        mat._data = depth / 1000.0 if self._units == UNIT.METER else depth
        return ERROR_CODE.SUCCESS

    def retrieve_image(self, mat: Mat, view: VIEW) -> ERROR_CODE:
        CALLS.append(("retrieve_image", view))
        mat._data = np.array(self._recording["left_frames"][self._position], dtype=np.uint8)
        return ERROR_CODE.SUCCESS

    def close(self) -> None:
        CALLS.append(("close",))
        self._recording = None
