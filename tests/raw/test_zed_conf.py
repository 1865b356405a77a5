"""ZED factory calibration: parsing (case variants, resolutions, missing parts), writing, rectifying.

Rectification is checked against independent OpenCV runs: cv2.stereoRectify on the file's values
with the documented convention, and the geometry itself (a 3D point projected into the raw left
and right images with cv2.projectPoints lands on one rectified row with disparity f * B / Z).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from droid_pipeline.raw.zed_conf import (
    RESOLUTIONS,
    CameraCalibration,
    StereoExtras,
    ZedConf,
    ZedConfError,
    format_conf,
    match_resolution,
    parse_conf,
    rectify,
)

CAMERA_KEYS = ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3")


def random_conf(rng: np.random.Generator, serial: str = "28839214",
                resolutions: tuple[str, ...] = tuple(RESOLUTIONS)) -> ZedConf:
    """A plausible ZED 2 calibration with distinct values per lens and resolution."""
    def lens(key: str) -> CameraCalibration:
        width, height = RESOLUTIONS[key]
        f = width * rng.uniform(0.5, 0.6)
        return CameraCalibration(fx=f * rng.uniform(0.998, 1.002), fy=f * rng.uniform(0.998, 1.002),
                                 cx=width / 2 + rng.uniform(-20, 20), cy=height / 2 + rng.uniform(-12, 12),
                                 k1=rng.uniform(-0.06, -0.03), k2=rng.uniform(0.01, 0.03),
                                 p1=rng.uniform(-5e-4, 5e-4), p2=rng.uniform(-5e-4, 5e-4),
                                 k3=rng.uniform(-0.02, 0.0))
    extras = {k: StereoExtras(ty_mm=rng.uniform(-0.5, 0.5), tz_mm=rng.uniform(-0.5, 0.5),
                              cv_rad=rng.uniform(-0.01, 0.01), rx_rad=rng.uniform(-0.005, 0.005),
                              rz_rad=rng.uniform(-0.003, 0.003)) for k in resolutions}
    return ZedConf(serial=serial, left={k: lens(k) for k in resolutions}, right={k: lens(k) for k in resolutions},
                   baseline_mm=rng.uniform(118.0, 122.0), stereo=extras)


def conf_text(conf: ZedConf, case: str) -> str:
    """The file as a person or an older tool might write it, in a given letter case, by hand."""
    def cased(name: str) -> str:
        return {"lower": name.lower(), "upper": name.upper(), "mixed": name.title()}[case]
    lines = ["[MISC]", "Sensor_ID = 1", ""]
    for side, table in (("LEFT_CAM", conf.left), ("RIGHT_CAM", conf.right)):
        for key, lens in table.items():
            lines.append(f"[{cased(f'{side}_{key}')}]")
            lines.extend(f"{cased(name)}={getattr(lens, name)!r}" for name in CAMERA_KEYS)
    lines.append(f"[{cased('STEREO')}]")
    lines.append(f"{cased('BaseLine')} = {conf.baseline_mm!r}")
    for key, extras in conf.stereo.items():
        for label, value in (("TY", extras.ty_mm), ("TZ", extras.tz_mm), ("CV", extras.cv_rad),
                             ("RX", extras.rx_rad), ("RZ", extras.rz_rad)):
            lines.append(f"{cased(f'{label}_{key}')} = {value!r}")
    return "\n".join(lines) + "\n"


def independent_rectification(conf: ZedConf, key: str, width: int, height: int, scale: int):
    """cv2.stereoRectify on the file's values: T = [-Baseline, TY, TZ] mm, R = Rodrigues([RX, CV, RZ])."""
    def matrix(lens: CameraCalibration) -> np.ndarray:
        return np.array([[lens.fx / scale, 0, (lens.cx + 0.5) / scale - 0.5],
                         [0, lens.fy / scale, (lens.cy + 0.5) / scale - 0.5], [0, 0, 1]])
    left, right, extras = conf.left[key], conf.right[key], conf.stereo[key]
    R = cv2.Rodrigues(np.array([[extras.rx_rad], [extras.cv_rad], [extras.rz_rad]]))[0]
    T = np.array([[-conf.baseline_mm], [extras.ty_mm], [extras.tz_mm]]) / 1000.0
    dist = [np.array([c.k1, c.k2, c.p1, c.p2, c.k3]) for c in (left, right)]
    return cv2.stereoRectify(matrix(left), dist[0], matrix(right), dist[1], (width, height), R, T,
                             flags=cv2.CALIB_ZERO_DISPARITY, alpha=0)


@pytest.mark.parametrize("case", ["lower", "upper", "mixed"])
def test_parse_reads_every_value_in_any_letter_case(tmp_path, case):
    conf = random_conf(np.random.default_rng(1))
    path = tmp_path / f"SN{conf.serial}.conf"
    path.write_text(conf_text(conf, case))
    assert parse_conf(path) == conf


def test_format_conf_round_trips_exactly(tmp_path):
    conf = random_conf(np.random.default_rng(2), serial="17132213", resolutions=("HD", "VGA"))
    path = tmp_path / "SN17132213.conf"
    path.write_text(format_conf(conf))
    parsed = parse_conf(path)
    assert parsed == conf
    assert sorted(parsed.left) == ["HD", "VGA"]


def test_shared_ty_tz_apply_to_every_resolution(tmp_path):
    text = conf_text(random_conf(np.random.default_rng(3)), "upper")
    lines = [line for line in text.splitlines() if not line.startswith(("TY_", "TZ_"))]
    lines.insert(lines.index("[STEREO]") + 1, "TY = 0.25\nTZ = -0.5")
    path = tmp_path / "SN1.conf"
    path.write_text("\n".join(lines))
    conf = parse_conf(path)
    assert {(e.ty_mm, e.tz_mm) for e in conf.stereo.values()} == {(0.25, -0.5)}


@pytest.mark.parametrize("key", list(RESOLUTIONS))
def test_rectify_each_native_resolution_matches_opencv(tmp_path, key):
    conf = random_conf(np.random.default_rng(4))
    path = tmp_path / f"SN{conf.serial}.conf"
    path.write_text(conf_text(conf, "mixed"))
    width, height = RESOLUTIONS[key]
    result = rectify(parse_conf(path), width, height)
    R1, R2, P1, P2, *_ = independent_rectification(conf, key, width, height, 1)
    assert (result.resolution_key, result.scale, result.width, result.height) == (key, 1, width, height)
    np.testing.assert_allclose(result.K, P1[:3, :3], rtol=1e-12)
    for ours, reference in ((result.R1, R1), (result.R2, R2), (result.P1, P1), (result.P2, P2)):
        np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
    extras = conf.stereo[key]
    # Rectification only rotates the baseline vector, so its length is kept.
    expected_baseline = np.linalg.norm([conf.baseline_mm, extras.ty_mm, extras.tz_mm]) / 1000.0
    assert result.baseline_m == pytest.approx(expected_baseline, rel=1e-9)


def test_rectified_geometry_aligns_rows_with_expected_disparity():
    """Points seen by the raw lenses (X_right = R X_left + T) fall on equal rows after rectifying."""
    conf = random_conf(np.random.default_rng(5))
    result = rectify(conf, 1280, 720)
    left, right, extras = conf.left["HD"], conf.right["HD"], conf.stereo["HD"]
    rng = np.random.default_rng(6)
    points = np.column_stack([rng.uniform(-0.6, 0.6, 50), rng.uniform(-0.3, 0.3, 50), rng.uniform(0.8, 4.0, 50)])
    rvec = np.array([extras.rx_rad, extras.cv_rad, extras.rz_rad])
    tvec = np.array([-conf.baseline_mm, extras.ty_mm, extras.tz_mm]) / 1000.0
    raw_left, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), left.matrix, left.distortion)
    raw_right, _ = cv2.projectPoints(points, rvec, tvec, right.matrix, right.distortion)
    rect_left = cv2.undistortPoints(raw_left, left.matrix, left.distortion, R=result.R1, P=result.P1).reshape(-1, 2)
    rect_right = cv2.undistortPoints(raw_right, right.matrix, right.distortion, R=result.R2,
                                     P=result.P2).reshape(-1, 2)
    depth = (points @ result.R1.T)[:, 2]
    np.testing.assert_allclose(rect_left[:, 1], rect_right[:, 1], atol=1e-3)
    np.testing.assert_allclose(rect_left[:, 0] - rect_right[:, 0], result.K[0, 0] * result.baseline_m / depth,
                               rtol=1e-4)


def test_downscaled_video_uses_scaled_section(tmp_path):
    conf = random_conf(np.random.default_rng(7))
    result = rectify(conf, 320, 180)   # DROID's RLDS size: HD / 4 (also FHD / 6: the smaller factor wins)
    P1 = independent_rectification(conf, "HD", 320, 180, 4)[2]
    assert (result.resolution_key, result.scale) == ("HD", 4)
    np.testing.assert_allclose(result.K, P1[:3, :3], rtol=1e-12)
    only_fhd = ZedConf(conf.serial, {"FHD": conf.left["FHD"]}, {"FHD": conf.right["FHD"]}, conf.baseline_mm,
                       {"FHD": conf.stereo["FHD"]})
    assert (rectify(only_fhd, 320, 180).resolution_key, rectify(only_fhd, 320, 180).scale) == ("FHD", 6)


def test_match_resolution_rejects_other_aspect_ratios():
    assert match_resolution(1280, 720) == ("HD", 1)
    assert match_resolution(336, 188) == ("VGA", 2)
    assert match_resolution(1280, 960) is None
    assert match_resolution(1000, 562) is None


def test_missing_section_names_size_and_sections(tmp_path):
    conf = random_conf(np.random.default_rng(8), resolutions=("HD", "VGA"))
    path = tmp_path / "SN99.conf"
    path.write_text(format_conf(conf))
    with pytest.raises(ZedConfError) as error:
        rectify(parse_conf(path), 1920, 1080)
    message = str(error.value)
    assert "1920x1080" in message and "HD 1280x720" in message and "VGA 672x376" in message
    assert "[LEFT_CAM_FHD]" in message
    with pytest.raises(ZedConfError, match="1000x500"):
        rectify(conf, 1000, 500)


def test_right_section_missing_is_reported(tmp_path):
    conf = random_conf(np.random.default_rng(9), resolutions=("HD",))
    text = format_conf(conf)
    start = text.index("[RIGHT_CAM_HD]")
    path = tmp_path / "SN5.conf"
    path.write_text(text[:start] + text[text.index("[STEREO]"):])
    with pytest.raises(ZedConfError, match=r"\[RIGHT_CAM_HD\]"):
        rectify(parse_conf(path), 1280, 720)


@pytest.mark.parametrize("mutation, expected", [
    (lambda t: t.replace("fx = ", "fx_typo = ", 1), r"\[LEFT_CAM_HD\] has no key fx"),
    (lambda t: t.replace("cy = ", "cy = abc #", 1), r"cy = 'abc' is not a number"),
    (lambda t: t.replace("k1 = ", "k1 = nan #", 1), "not finite"),
    (lambda t: t.replace("Baseline = ", "Baseline = -", 1), "Baseline must be positive"),
    (lambda t: t.replace("RX_HD", "RX_XX", 1), r"no RX_HD"),
    (lambda t: t.replace("[STEREO]", "[OTHER]"), r"no \[STEREO\] section"),
    (lambda t: t + "[left_cam_hd]\nfx = 1\n", "appears twice"),
    (lambda t: "fx = 1\n" + t, "not a valid ZED calibration file"),
    (lambda t: t.replace("LEFT_CAM", "LEFT_LENS"), "no \\[LEFT_CAM_<res>\\] section"),
])
def test_bad_files_raise_clear_errors(tmp_path, mutation, expected):
    path = tmp_path / "SN7.conf"
    path.write_text(mutation(format_conf(random_conf(np.random.default_rng(10), resolutions=("HD",)))))
    with pytest.raises(ZedConfError, match=expected) as error:
        parse_conf(path)
    assert str(path) in str(error.value)


def test_unreadable_file_raises(tmp_path):
    with pytest.raises(ZedConfError, match="cannot read"):
        parse_conf(tmp_path / "SN404.conf")
