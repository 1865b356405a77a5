"""The ZED SDK adapter's contract, through a recorded fake of the pyzed.sl calls it makes.

The real SDK needs CUDA and an NVIDIA GPU and is exercised only on GPU nodes; here the fake in
tests/support/fake_pyzed stands in for it, and the tests check how the adapter drives it and what it
reports when the SDK is missing or fails.
"""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from droid_pipeline.raw import zed_adapter

FAKE_SDK = Path(__file__).resolve().parents[1] / "support" / "fake_pyzed"
PACKAGE = Path(zed_adapter.__file__).resolve().parent
RECORDING = {"resolution": [1280, 720],
             "left_cam": {"fx": 523.25, "fy": 523.5, "cx": 641.75, "cy": 362.125,
                          "disto": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]},
             "baseline_mm": 119.875}


@pytest.fixture
def fake_sl(monkeypatch):
    """Put the fake pyzed package on sys.path for one test; yields its ``sl`` module."""
    for name in ("pyzed", "pyzed.sl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKE_SDK))
    sl = importlib.import_module("pyzed.sl")
    sl.CALLS.clear()
    yield sl
    for name in ("pyzed.sl", "pyzed"):
        sys.modules.pop(name, None)


def write_svo(path: Path, recording: dict = RECORDING) -> Path:
    path.write_text(json.dumps(recording))
    return path


def test_read_calibration_drives_sdk_without_depth(fake_sl, tmp_path):
    svo = write_svo(tmp_path / "123.svo")
    calibration = zed_adapter.read_calibration(svo)
    left = RECORDING["left_cam"]
    assert (calibration.width, calibration.height) == tuple(RECORDING["resolution"])
    assert (calibration.fx, calibration.fy, calibration.cx, calibration.cy) == (
        left["fx"], left["fy"], left["cx"], left["cy"])
    assert calibration.distortion == (0.0,) * 5
    assert calibration.baseline_m == RECORDING["baseline_mm"] / 1000
    opened = [c for c in fake_sl.CALLS if c[0] == "open"]
    assert opened == [("open", str(svo), fake_sl.DEPTH_MODE.NONE, fake_sl.UNIT.MILLIMETER, False)]
    assert fake_sl.CALLS[-1] == ("close",)


def test_sdk_failure_to_open_names_file_and_code(fake_sl, tmp_path):
    svo = tmp_path / "456.svo"
    svo.write_bytes(b"\x00not an svo")
    with pytest.raises(zed_adapter.ZedSdkError, match="INVALID_SVO_FILE") as error:
        zed_adapter.read_calibration(svo)
    assert str(svo) in str(error.value)


def test_missing_svo_is_reported_before_opening(fake_sl, tmp_path):
    with pytest.raises(zed_adapter.ZedSdkError, match="SVO file not found"):
        zed_adapter.read_calibration(tmp_path / "missing.svo")
    assert not [c for c in fake_sl.CALLS if c[0] == "open"]


def test_missing_sdk_is_a_clear_error_naming_alternatives(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyzed", None)
    assert not zed_adapter.sdk_available()
    with pytest.raises(zed_adapter.ZedSdkUnavailable) as error:
        zed_adapter.read_calibration(write_svo(tmp_path / "1.svo"))
    message = str(error.value)
    assert "ZED SDK not installed" in message
    assert all(word in message for word in ("zed_conf", "published", "h5", "stereo"))


def test_unrelated_pypi_pyzed_package_counts_as_missing(monkeypatch, tmp_path):
    (tmp_path / "pyzed").mkdir()
    (tmp_path / "pyzed" / "__init__.py").write_text("")
    for name in ("pyzed", "pyzed.sl"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(zed_adapter.ZedSdkUnavailable, match="not from PyPI"):
            zed_adapter.import_sl()
    finally:
        sys.modules.pop("pyzed", None)


def test_sdk_available_with_fake(fake_sl):
    assert zed_adapter.sdk_available()


def test_only_the_adapter_imports_pyzed_and_only_inside_functions():
    importers = {}
    for module in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.parent.glob("*.py")):
        tree = ast.parse(module.read_text(), filename=str(module))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if any(n.split(".")[0] == "pyzed" for n in names):
                importers.setdefault(module.name, []).append(node)
    assert list(importers) == ["zed_adapter.py"]
    top_level = ast.parse((PACKAGE / "zed_adapter.py").read_text()).body
    assert not any(node in top_level for node in importers["zed_adapter.py"])


def depth_recording(rng: np.random.Generator) -> dict:
    """Three recorded frames (4x6): invalid values included, the middle one a failed grab."""
    depth = rng.uniform(300.0, 5000.0, (2, 4, 6))
    depth[0, 0, :3] = [np.nan, -np.inf, np.inf]
    left = rng.integers(0, 256, (2, 4, 6, 4))
    return {**RECORDING, "resolution": [6, 4], "fps": 15.0,
            "depth_frames": [depth[0].tolist(), None, depth[1].tolist()],
            "left_frames": [left[0].tolist(), None, left[1].tolist()]}


def test_open_depth_streams_frames_in_order(fake_sl, tmp_path):
    recording = depth_recording(np.random.default_rng(0))
    svo = write_svo(tmp_path / "789.svo", recording)
    with zed_adapter.open_depth(svo, "NEURAL", left_image=True) as reader:
        assert (reader.width, reader.height, reader.num_frames, reader.fps) == (6, 4, 3, 15.0)
        frames = list(reader.frames())
    assert fake_sl.CALLS[-1] == ("close",)
    assert [c for c in fake_sl.CALLS if c[0] == "open"][0][2:4] == (fake_sl.DEPTH_MODE.NEURAL,
                                                                   fake_sl.UNIT.MILLIMETER)
    assert len(frames) == 3 and frames[1] == (None, None)
    for (depth, left), recorded_depth, recorded_left in zip(
            (frames[0], frames[2]), (recording["depth_frames"][0], recording["depth_frames"][2]),
            (recording["left_frames"][0], recording["left_frames"][2])):
        assert depth.dtype == np.float32 and left.dtype == np.uint8
        np.testing.assert_array_equal(depth, np.array(recorded_depth, dtype=np.float32))
        np.testing.assert_array_equal(left, cv2.cvtColor(np.array(recorded_left, np.uint8), cv2.COLOR_BGRA2RGB))


def test_open_depth_without_left_image_and_bad_mode(fake_sl, tmp_path):
    svo = write_svo(tmp_path / "790.svo", depth_recording(np.random.default_rng(1)))
    with zed_adapter.open_depth(svo, "PERFORMANCE") as reader:
        assert all(left is None for _, left in reader.frames())
    assert not [c for c in fake_sl.CALLS if c[0] == "retrieve_image"]
    with pytest.raises(zed_adapter.ZedSdkError, match="unknown ZED depth mode 'FASTEST'"):
        with zed_adapter.open_depth(svo, "FASTEST"):
            pass
