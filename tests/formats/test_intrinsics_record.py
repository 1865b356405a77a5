"""intrinsics.json as a typed record: the file's keys and order, round trips, checks on load, and
the distortion vector in OpenCV's order (checked with cv2.projectPoints)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from droid_pipeline.formats.intrinsics import IntrinsicsError, IntrinsicsRecord, SourceAttempt

STEREO = {"baseline_m": 0.12, "R1": np.eye(3), "R2": np.eye(3),
          "P1": np.hstack([np.eye(3), np.zeros((3, 1))]), "P2": np.hstack([np.eye(3), [[-0.12], [0], [0]]]),
          "zed_resolution": "HD", "zed_scale": 4}


def record(**fields) -> IntrinsicsRecord:
    base = {"episode_id": "LAB+1+2023-01-01-1h-2m-3s", "serial": "24259877", "camera": "ext1",
            "source": "zed_conf", "source_detail": "SN24259877.conf", "rectified": True,
            "width": 320, "height": 180}
    return IntrinsicsRecord.pinhole(130.5, 130.25, 160.0, 89.5, **{**base, **fields})


def test_json_keys_in_the_file_order_and_round_trip(tmp_path):
    path = tmp_path / "intrinsics.json"
    original = record(**STEREO, attempts=(SourceAttempt("published", "intrinsics_path is not set"),))
    original.write(path)
    text = path.read_text()
    data = json.loads(text)
    assert list(data) == ["episode_id", "serial", "camera", "source", "source_detail", "rectified", "width",
                          "height", "fx", "fy", "cx", "cy", "K", "k1", "k2", "p1", "p2", "k3", "baseline_m",
                          "R1", "R2", "P1", "P2", "zed_resolution", "zed_scale", "attempts"]
    assert data["K"] == [[130.5, 0.0, 160.0], [0.0, 130.25, 89.5], [0.0, 0.0, 1.0]]
    assert data["attempts"] == [{"source": "published", "error": "intrinsics_path is not set"}]
    assert text == json.dumps(data, indent=2) + "\n"
    loaded = IntrinsicsRecord.load(path)
    assert loaded.to_json() == data and loaded.attempts == original.attempts
    np.testing.assert_array_equal(loaded.P2, STEREO["P2"])
    assert loaded.size == (320, 180) and loaded.baseline_m == 0.12


def test_optional_keys_stay_out_of_the_file():
    data = record().to_json()
    assert "baseline_m" not in data and "R1" not in data and "attempts" not in data
    minimal = {k: data[k] for k in ("source", "rectified", "width", "height", "fx", "fy", "cx", "cy", "K",
                                    "k1", "k2", "p1", "p2", "k3")}
    assert IntrinsicsRecord.from_json(minimal).to_json() == minimal


@pytest.mark.parametrize("change, reason", [
    ({"K": None}, r"K must be a finite \(3, 3\) matrix, got None"),
    ({"k3": None}, "k3 must be a finite number, got None"),
    ({"rectified": 1}, "rectified must be true or false"),
    ({"height": 180.0}, "height must be a positive integer"),
    ({"baseline_m": -0.1}, "baseline_m must be a positive number"),
    ({"P1": np.eye(3).tolist()}, r"P1 must be a finite \(3, 4\) matrix"),
    ({"zed_scale": 0}, "zed_scale must be a positive integer"),
    ({"attempts": [{"source": "h5"}]}, "attempts must be a list of"),
    ({"focal": 1.0}, r"unknown keys \['focal'\]"),
])
def test_bad_values_are_refused(change, reason):
    with pytest.raises(IntrinsicsError, match=reason):
        IntrinsicsRecord.from_json({**record().to_json(), **change})


def test_distortion_is_in_opencv_order():
    distorted = record(k1=0.1, k2=-0.02, p1=0.003, p2=-0.004, k3=0.0005, rectified=False)
    points = np.array([[0.2, -0.1, 1.0], [-0.3, 0.25, 2.0]])
    pixels, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), distorted.K, distorted.distortion)
    x, y = points[:, 0] / points[:, 2], points[:, 1] / points[:, 2]
    r2 = x * x + y * y
    radial = 1 + 0.1 * r2 - 0.02 * r2 ** 2 + 0.0005 * r2 ** 3
    xd = x * radial + 2 * 0.003 * x * y + -0.004 * (r2 + 2 * x * x)
    yd = y * radial + 0.003 * (r2 + 2 * y * y) + 2 * -0.004 * x * y
    expected = np.stack([130.5 * xd + 160.0, 130.25 * yd + 89.5], axis=1)
    np.testing.assert_allclose(pixels.reshape(-1, 2), expected, rtol=0, atol=1e-9)
