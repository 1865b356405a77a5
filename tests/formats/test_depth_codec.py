"""Lossless depth codec: checked against Debian's ffmpeg/ffprobe, PyAV used directly, OpenCV,
numpy and hashlib, never against the codec's own decoder alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np
import pytest

from droid_pipeline.core.config import ConfigError, FFV1Config, load_config
from droid_pipeline.formats.depth_codec import (
    DepthCodecError,
    DepthMeta,
    DepthReader,
    DepthWriter,
    encode_depth_stack,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Debian's ffmpeg/ffprobe (installed by tests/setup_system.sh) are the independent reference.
FFMPEG, FFPROBE = "ffmpeg", "ffprobe"


@pytest.fixture(scope="module")
def settings() -> FFV1Config:
    return load_config().ffv1


def random_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Full-range random depth with both extremes present in every frame."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 65536, (height, width), dtype=np.uint16) for _ in range(count)]
    for frame in frames:
        frame[0, 0], frame[-1, -1] = 0, 65535
    return frames


def depth_like_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth surfaces with noise and invalid holes, compressible like real depth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        depth = 800 + 2 * xx + 3 * yy + 4 * i + rng.integers(0, 3, (height, width))
        depth[(xx - 3 * i) % 97 < 9] = 0
        frames.append(depth.astype(np.uint16))
    return frames


def raw_bytes(frames: list[np.ndarray]) -> bytes:
    return np.stack(frames).astype("<u2").tobytes()


def ffmpeg_raw(path: Path) -> bytes:
    return subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo",
                           "-pix_fmt", "gray16le", "-"], check=True, capture_output=True).stdout


def write_mkv(path: Path, frames: list[np.ndarray], settings: FFV1Config, **kwargs) -> DepthMeta:
    height, width = frames[0].shape
    with DepthWriter(path, width, height, 15.0, settings, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.meta


def test_round_trip_is_bit_exact_with_extremes_and_odd_size(tmp_path, settings):
    frames = random_frames(5, 17, 33)
    meta = write_mkv(tmp_path / "depth.mkv", frames, settings, source={"serial": "12345"})
    reader = DepthReader(tmp_path / "depth.mkv")
    assert len(reader) == 5 and (reader.width, reader.height) == (33, 17)
    np.testing.assert_array_equal(reader.read_all(), np.stack(frames))
    assert len(list(reader)) == len(frames)
    for decoded, original in zip(reader, frames):
        assert decoded.dtype == np.uint16
        np.testing.assert_array_equal(decoded, original)
    assert meta.checksum == {"algorithm": "sha256",
                             "value": hashlib.sha256(raw_bytes(frames)).hexdigest()}
    on_disk = json.loads((tmp_path / "depth_meta.json").read_text())
    assert on_disk == meta.to_dict()
    assert (on_disk["format"], on_disk["codec"], on_disk["pix_fmt"], on_disk["unit"],
            on_disk["scale"], on_disk["invalid_value"]) == ("mkv", "ffv1", "gray16le", "mm", 1.0, 0)
    assert (on_disk["width"], on_disk["height"], on_disk["num_frames"], on_disk["fps"],
            on_disk["missing_frames"]) == (33, 17, 5, 15.0, [])
    assert on_disk["source"] == {"serial": "12345"}
    assert on_disk["encoder"]["slices"] == settings.slices
    reader.verify(DepthMeta.load(tmp_path / "depth_meta.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.mkv", "depth_meta.json"]


def test_pyav_frame_from_ndarray_keeps_byte_order():
    frame = np.array([[0, 1, 256], [65535, 4660, 258]], dtype=np.uint16)
    video_frame = av.VideoFrame.from_ndarray(frame, format="gray16le")
    plane = video_frame.planes[0]
    row_bytes = bytes(plane)[: 3 * 2]
    assert row_bytes == frame[0].astype("<u2").tobytes()
    np.testing.assert_array_equal(video_frame.to_ndarray(), frame)


def test_debian_ffmpeg_and_documented_commands_decode_identical_bytes(tmp_path, settings,
                                                                      monkeypatch):
    frames = depth_like_frames(6, 45, 61) + random_frames(2, 45, 61)
    meta = write_mkv(tmp_path / "depth.mkv", frames, settings)
    assert ffmpeg_raw(tmp_path / "depth.mkv") == raw_bytes(frames)

    command = shlex.split(meta.decode["ffmpeg"])
    assert command[0] == "ffmpeg"
    subprocess.run([FFMPEG, "-v", "error", *command[1:]], cwd=tmp_path, check=True)
    assert (tmp_path / "depth.raw").read_bytes() == raw_bytes(frames)

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(meta.decode["python"], namespace)
    np.testing.assert_array_equal(namespace["depth"], np.stack(frames))


def ffv1_header(path: Path) -> dict[str, str]:
    """FFV1 global header fields as Debian's decoder prints them with -debug pict."""
    log = subprocess.run([FFPROBE, "-v", "debug", "-debug", "pict", "-show_entries",
                          "stream=codec_name", str(path)], capture_output=True, text=True).stderr
    line = next(line for line in log.splitlines() if "global:" in line)
    return dict(re.findall(r"(\w+):([\w.]+)", line.split("global:", 1)[1]))


@pytest.mark.parametrize("coder, coder_id", [("range_tab", "2"), ("range_def", "1")])
def test_ffprobe_reports_codec_pix_fmt_and_encoder_settings(tmp_path, settings, coder, coder_id):
    chosen = dataclasses.replace(settings, level=3, gop=1, slices=16, coder=coder)
    write_mkv(tmp_path / "depth.mkv", depth_like_frames(3, 48, 64), chosen)
    stream = json.loads(subprocess.run(
        [FFPROBE, "-v", "error", "-show_streams", "-of", "json", str(tmp_path / "depth.mkv")],
        check=True, capture_output=True, text=True).stdout)["streams"]
    assert [(s["codec_name"], s["pix_fmt"], s["width"], s["height"]) for s in stream] == [
        ("ffv1", "gray16le", 64, 48)]
    header = ffv1_header(tmp_path / "depth.mkv")
    h_slices, v_slices = header["slices"].split("x")
    assert header["ver"].split(".")[0] == "3"  # level 3
    assert header["coder"] == coder_id
    assert header["ec"] == "1"  # slice CRCs
    assert header["intra"] == "1"  # one frame per GOP
    assert int(h_slices) * int(v_slices) == 16


@pytest.mark.parametrize("change, key", [({"level": 1}, "ffv1.level"),
                                         ({"coder": "golomb_rice"}, "ffv1.coder")])
def test_settings_ffmpeg_would_override_are_refused(tmp_path, settings, change, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        DepthWriter(tmp_path / "depth.mkv", 64, 48, 15.0, dataclasses.replace(settings, **change))


def test_unsupported_slice_count_is_a_clear_error_and_leaves_nothing(tmp_path, settings):
    with pytest.raises(DepthCodecError, match="ffv1 encoder rejected settings"):
        DepthWriter(tmp_path / "depth.mkv", 64, 48, 15.0, dataclasses.replace(settings, slices=3))
    assert list(tmp_path.iterdir()) == []


def test_random_access_equals_sequential(tmp_path, settings):
    frames = depth_like_frames(12, 30, 40, seed=3)
    write_mkv(tmp_path / "depth.mkv", frames, settings)
    with DepthReader(tmp_path / "depth.mkv") as reader:
        sequential = list(reader)
        for index in [7, 0, 11, 3, 3, -1, -12, 5]:
            np.testing.assert_array_equal(reader[index], sequential[index])
            np.testing.assert_array_equal(reader[index], frames[index])
        with pytest.raises(IndexError):
            reader[12]


def test_missing_frames_are_zero_and_listed(tmp_path, settings):
    frames = depth_like_frames(5, 20, 24)
    with DepthWriter(tmp_path / "depth.mkv", 24, 20, 15.0, settings) as writer:
        writer.write_missing()
        writer.write(frames[1])
        writer.write_missing()
        writer.write(frames[3])
    assert writer.meta.missing_frames == [0, 2]
    assert json.loads((tmp_path / "depth_meta.json").read_text())["missing_frames"] == [0, 2]
    decoded = np.frombuffer(ffmpeg_raw(tmp_path / "depth.mkv"), "<u2").reshape(4, 20, 24)
    assert not decoded[0].any() and not decoded[2].any()
    np.testing.assert_array_equal(decoded[[1, 3]], np.stack([frames[1], frames[3]]))


@pytest.mark.parametrize("bad", [np.zeros((20, 24), np.float32), np.zeros((20, 25), np.uint16),
                                 np.zeros((20, 24, 1), np.uint16), np.zeros((20, 24), np.int16),
                                 [[0] * 24] * 20])
def test_bad_frame_is_rejected_and_nothing_is_left(tmp_path, settings, bad):
    (tmp_path / "depth.mkv").write_bytes(b"old result")
    (tmp_path / "depth_meta.json").write_text("{}")
    with pytest.raises(DepthCodecError, match=r"depth\.mkv: frame 1: expected a uint16 array "
                                              r"of shape \(20, 24\)"):
        with DepthWriter(tmp_path / "depth.mkv", 24, 20, 15.0, settings) as writer:
            writer.write(np.zeros((20, 24), np.uint16))
            writer.write(bad)
    assert list(tmp_path.iterdir()) == []


def test_exception_in_block_and_empty_writer_leave_nothing(tmp_path, settings):
    with pytest.raises(KeyError), DepthWriter(tmp_path / "depth.mkv", 24, 20, 15.0, settings) as writer:
        writer.write(np.ones((20, 24), np.uint16))
        raise KeyError("caller failed")
    with pytest.raises(DepthCodecError, match="no frames were written"):
        with DepthWriter(tmp_path / "depth.mkv", 24, 20, 15.0, settings):
            pass
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_publishes_nothing(tmp_path, settings, monkeypatch):
    def decode_one_value_off(self, frame, index):
        array = frame.to_ndarray().copy()
        array[0, 0] ^= 1
        return array

    monkeypatch.setattr(DepthReader, "_to_array", decode_one_value_off)
    with pytest.raises(DepthCodecError, match=r"depth\.mkv: decoded frames have sha256"):
        write_mkv(tmp_path / "depth.mkv", depth_like_frames(3, 20, 24), settings)
    assert list(tmp_path.iterdir()) == []


def test_encode_depth_stack_takes_a_generator_and_a_meta_path(tmp_path, settings):
    frames = depth_like_frames(4, 26, 18)
    meta = encode_depth_stack((frame for frame in frames), tmp_path / "cam" / "d.mkv", 15.0,
                              settings, meta_path=tmp_path / "meta" / "m.json")
    assert ffmpeg_raw(tmp_path / "cam" / "d.mkv") == raw_bytes(frames)
    assert DepthMeta.load(tmp_path / "meta" / "m.json") == meta
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == ["d.mkv"]
    with pytest.raises(DepthCodecError, match="no depth frames to encode"):
        encode_depth_stack(iter(()), tmp_path / "empty.mkv", 15.0, settings)
    assert not (tmp_path / "empty.mkv").exists()


@pytest.fixture
def encoded(tmp_path, settings):
    frames = depth_like_frames(20, 120, 160, seed=5)
    meta = write_mkv(tmp_path / "depth.mkv", frames, settings)
    return tmp_path / "depth.mkv", frames, meta


@pytest.mark.parametrize("fraction", [0.002, 0.3, 0.77, 0.995])
def test_truncated_file_is_a_clear_error(encoded, fraction):
    path, _, meta = encoded
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    for use in (lambda r: list(r), lambda r: r.read_all(), lambda r: r.verify(meta)):
        with pytest.raises(DepthCodecError, match=re.escape(str(path))):
            use(DepthReader(path))


def test_flipped_bytes_inside_a_frame_fail_the_slice_crc(encoded):
    path, frames, meta = encoded
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    position, size = packets[len(packets) // 2]
    data = bytearray(path.read_bytes())
    for offset in range(4):
        data[position + size // 2 + offset] ^= 0xA5
    path.write_bytes(bytes(data))
    with pytest.raises(DepthCodecError, match=rf"{re.escape(str(path))}: decoding frame "
                                              rf"{len(packets) // 2}: .*CRC mismatch"):
        list(DepthReader(path))
    with pytest.raises(DepthCodecError, match="CRC mismatch"):
        DepthReader(path)[len(packets) // 2]


def test_not_a_depth_file_is_a_clear_error(tmp_path):
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), np.zeros((8, 8), np.uint16))
    with pytest.raises(DepthCodecError, match=r"frame\.png: not a depth file"):
        DepthReader(png)
    with pytest.raises(DepthCodecError, match="no such depth file"):
        DepthReader(tmp_path / "absent.mkv")
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(DepthCodecError, match=r"garbage\.mkv"):
        DepthReader(garbage)


def test_metadata_that_does_not_match_fails_verify_and_load(encoded, tmp_path):
    path, _, meta = encoded
    wrong = dataclasses.replace(meta, num_frames=meta.num_frames + 1)
    with pytest.raises(DepthCodecError, match="decoded 20 frames, metadata says 21"):
        DepthReader(path).verify(wrong)
    data = meta.to_dict()
    del data["checksum"]
    (tmp_path / "broken_meta.json").write_text(json.dumps(data))
    with pytest.raises(DepthCodecError, match=r"broken_meta\.json: missing keys \['checksum'\]"):
        DepthMeta.load(tmp_path / "broken_meta.json")


MEMORY_PROBE = textwrap.dedent("""
    import dataclasses, resource, sys
    import numpy as np
    from droid_pipeline.core.config import load_config
    from droid_pipeline.formats.depth_codec import DepthReader, DepthWriter
    count, path = int(sys.argv[1]), sys.argv[2]
    settings = dataclasses.replace(load_config().ffv1, remap_values=sys.argv[3] == "remap")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    with DepthWriter(path, 320, 240, 15.0, settings) as writer:
        for i in range(count):
            writer.write((900 + xx + yy + i + rng.integers(0, 8, (240, 320))).astype(np.uint16))
    assert sum(1 for _ in DepthReader(path)) == count
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "remap"])
def test_memory_stays_flat_as_the_episode_grows(tmp_path, mode):
    def peak_rss_kib(count: int) -> int:
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(count),
                                 str(tmp_path / f"depth_{count}.mkv"), mode], cwd=REPO_ROOT,
                                check=True, capture_output=True, text=True)
        return int(result.stdout.split()[-1])

    short, long = peak_rss_kib(60), peak_rss_kib(600)
    extra_raw_kib = (600 - 60) * 240 * 320 * 2 // 1024
    assert long - short < extra_raw_kib // 10, (short, long, extra_raw_kib)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "compress_depth_ffv1.py"), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True)


def read_pngs(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))]


def test_cli_converts_png_folder_and_decodes_back(tmp_path):
    frames = depth_like_frames(11, 36, 52) + random_frames(1, 36, 52)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for index, frame in enumerate(frames):  # 1.png ... 12.png: numbers sort naturally
        assert cv2.imwrite(str(pngs / f"{index + 1}.png"), frame)
    out = tmp_path / "out" / "depth.mkv"
    result = run_cli("--input", str(pngs), "--output", str(out), "--fps", "15",
                     "--set", "ffv1.threads=1")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "out" / "depth_meta.json").read_text())
    assert meta["num_frames"] == 12 and meta["encoder"]["threads"] == 1
    assert meta["source"] == {"converted_from": "pngs", "layout": "png_folder"}
    assert ffmpeg_raw(out) == raw_bytes(frames)

    back = tmp_path / "back"
    result = run_cli("--decode", str(out), "--output", str(back))
    assert result.returncode == 0, result.stderr
    decoded = read_pngs(back)
    assert len(decoded) == 12
    for got, want in zip(decoded, frames):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, want)

    result = run_cli("--decode", str(out), "--output", str(back))
    assert result.returncode == 1 and "exists and is not an empty folder" in result.stderr
    meta["checksum"]["value"] = "0" * 64
    (tmp_path / "out" / "depth_meta.json").write_text(json.dumps(meta))
    result = run_cli("--decode", str(out), "--output", str(tmp_path / "again"))
    assert result.returncode == 1 and "depth_meta.json says 12 frames with 000" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "out", "pngs"]


@pytest.mark.parametrize("layout", ["npy", "npz", "npz_key"])
def test_cli_converts_npy_and_npz_stacks(tmp_path, layout):
    stack = np.stack(depth_like_frames(4, 21, 19) + random_frames(1, 21, 19))
    if layout == "npy":
        source, extra = tmp_path / "depth.npy", []
        np.save(source, stack)
    else:
        source = tmp_path / "episode.npz"
        extra = ["--key", "d"] if layout == "npz_key" else []
        np.savez_compressed(source, **({"d": stack, "rgb": np.zeros(3)} if extra else
                                       {"depth": stack}))
    out = tmp_path / "depth.mkv"
    result = run_cli("--input", str(source), "--output", str(out), *extra)
    assert result.returncode == 0, result.stderr
    decoded = np.frombuffer(ffmpeg_raw(out), "<u2").reshape(stack.shape)
    np.testing.assert_array_equal(decoded, stack)


def test_cli_reports_bad_input_with_the_file_and_cause(tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    cv2.imwrite(str(pngs / "000.png"), np.zeros((8, 8), np.uint16))
    cv2.imwrite(str(pngs / "001.png"), np.zeros((8, 8), np.uint8))
    result = run_cli("--input", str(pngs), "--output", str(tmp_path / "depth.mkv"))
    assert result.returncode == 1
    assert "001.png: expected a single-channel 16-bit PNG" in result.stderr
    assert not (tmp_path / "depth.mkv").exists()

    np.savez(tmp_path / "two.npz", a=np.zeros((2, 4, 4), np.uint16), b=np.zeros(2))
    result = run_cli("--input", str(tmp_path / "two.npz"), "--output", str(tmp_path / "d.mkv"))
    assert result.returncode == 1 and "name the depth stack with --key" in result.stderr

    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4), np.float32))
    result = run_cli("--input", str(tmp_path / "float.npy"), "--output", str(tmp_path / "d.mkv"))
    assert result.returncode == 1 and "float.npy: expected a uint16 array" in result.stderr

    result = run_cli("--input", str(tmp_path / "absent"), "--output", str(tmp_path / "d.mkv"))
    assert result.returncode == 1 and "absent: no such file or folder" in result.stderr

    result = run_cli("--input", str(pngs), "--output", str(tmp_path / "d.mkv"),
                     "--set", "ffv1.coder=golomb_rice")
    assert result.returncode == 2 and "ffv1.coder" in result.stderr


# ---------------------------------------------------------------- remapped values (remap_values)

def stereo_like_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """Depth the way stereo makes it: fx * B / d with d on a 1/16-pixel grid, sub-pixel noise,
    invalid holes; only a sparse set of millimetre values occurs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    fx_baseline_mm = 546.0 * 120.0
    frames = []
    for i in range(count):
        disparity = 12.0 + 0.1 * yy + 0.02 * xx + 0.3 * i + rng.normal(0.0, 0.15, (height, width))
        disparity = np.round(disparity * 16) / 16
        depth = np.rint(fx_baseline_mm / disparity).astype(np.uint16)
        depth[(xx + 2 * i) % 41 < 4] = 0
        frames.append(depth)
    return frames


@pytest.fixture(scope="module")
def remap_settings(settings) -> FFV1Config:
    return dataclasses.replace(settings, remap_values=True)


def test_remapped_file_reads_back_as_millimetres_and_ffmpeg_returns_the_codes(tmp_path,
                                                                              remap_settings):
    frames = stereo_like_frames(6, 40, 56) + random_frames(1, 40, 56)
    path = tmp_path / "depth.mkv"
    with DepthWriter(path, 56, 40, 15.0, remap_settings) as writer:
        writer.write(frames[0])
        writer.write_missing()
        for frame in frames[1:]:
            writer.write(frame)
    expected = np.stack([frames[0], np.zeros_like(frames[0]), *frames[1:]])

    on_disk = json.loads((tmp_path / "depth_meta.json").read_text())
    table = np.array(on_disk["value_table"])
    np.testing.assert_array_equal(table, np.setdiff1d(np.unique(expected), [0]))
    assert on_disk["encoder"]["remap_values"] is True and on_disk["missing_frames"] == [1]
    assert on_disk["checksum"]["value"] == hashlib.sha256(raw_bytes(list(expected))).hexdigest()

    codes = np.frombuffer(ffmpeg_raw(path), "<u2").reshape(expected.shape)
    assert codes.max() == len(table) and not codes[1].any()
    np.testing.assert_array_equal(codes == 0, expected == 0)
    np.testing.assert_array_equal(np.concatenate([[0], table])[codes], expected)

    with DepthReader(path) as reader:
        np.testing.assert_array_equal(reader.read_all(), expected)
        np.testing.assert_array_equal(reader[5], expected[5])
        reader.verify(DepthMeta.load(tmp_path / "depth_meta.json"))
    tags = json.loads(subprocess.run([FFPROBE, "-v", "error", "-show_streams", "-of", "json",
                                      str(path)], check=True, capture_output=True,
                                     text=True).stdout)["streams"][0]["tags"]
    assert tags["DEPTH_VALUES"].startswith("codes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.mkv", "depth_meta.json"]


def test_documented_commands_of_a_remapped_file(tmp_path, remap_settings, monkeypatch):
    frames = stereo_like_frames(4, 24, 30, seed=2)
    meta = write_mkv(tmp_path / "depth.mkv", frames, remap_settings)
    assert "codes" in meta.decode["raw_layout"] and "not millimetres" in meta.decode["raw_layout"]
    subprocess.run([FFMPEG, "-v", "error", *shlex.split(meta.decode["ffmpeg"])[1:]], cwd=tmp_path,
                   check=True)
    codes = np.fromfile(tmp_path / "depth.raw", "<u2").reshape(4, 24, 30)
    np.testing.assert_array_equal(np.array([0, *meta.value_table])[codes], np.stack(frames))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(meta.decode["python"], namespace)
    np.testing.assert_array_equal(namespace["depth"], np.stack(frames))


def test_remapping_writes_the_same_millimetres_as_the_default(tmp_path, settings, remap_settings):
    frames = stereo_like_frames(5, 48, 64, seed=4)
    plain = write_mkv(tmp_path / "plain.mkv", frames, settings)
    coded = write_mkv(tmp_path / "coded.mkv", frames, remap_settings)
    assert plain.checksum == coded.checksum and plain.value_table is None
    assert "value_table" not in json.loads((tmp_path / "plain_meta.json").read_text())
    assert ffmpeg_raw(tmp_path / "plain.mkv") == raw_bytes(frames)
    np.testing.assert_array_equal(DepthReader(tmp_path / "coded.mkv").read_all(),
                                  DepthReader(tmp_path / "plain.mkv").read_all())


def test_remapped_file_without_its_table_is_a_clear_error(tmp_path, remap_settings):
    meta = write_mkv(tmp_path / "depth.mkv", stereo_like_frames(3, 20, 24), remap_settings)
    (tmp_path / "depth_meta.json").unlink()
    with pytest.raises(DepthCodecError, match=r"holds value codes .*depth_meta\.json, which is "
                                              r"missing"):
        DepthReader(tmp_path / "depth.mkv")
    without_table = dataclasses.replace(meta, value_table=None)
    with pytest.raises(DepthCodecError, match="has no value_table"):
        DepthReader(tmp_path / "depth.mkv", meta=without_table)
    short_table = dataclasses.replace(meta, value_table=meta.value_table[:3])
    with pytest.raises(DepthCodecError, match=r"frame 0 holds code \d+, beyond the 3 values"):
        list(DepthReader(tmp_path / "depth.mkv", meta=short_table))


@pytest.mark.parametrize("table", [[5, 5], [3, 2], [0, 4], [1, 65536], [1.5], [True], "1,2"])
def test_malformed_value_table_is_refused(encoded, tmp_path, table):
    _, _, meta = encoded
    (tmp_path / "bad_meta.json").write_text(json.dumps({**meta.to_dict(), "value_table": table}))
    with pytest.raises(DepthCodecError, match=r"bad_meta\.json: value_table must be increasing"):
        DepthMeta.load(tmp_path / "bad_meta.json")


def test_metadata_written_before_value_tables_still_loads(encoded):
    _, _, meta = encoded
    data = meta.to_dict()
    assert "value_table" not in data
    assert DepthMeta.from_dict(data) == meta


# ---------------------------------------------------------------- publishing from another thread

def test_publish_may_run_in_another_thread_and_only_once(tmp_path, settings):
    frames = depth_like_frames(4, 20, 24)
    writer = DepthWriter(tmp_path / "depth.mkv", 24, 20, 15.0, settings)
    for frame in frames:
        writer.write(frame)
    writer.finish()
    assert not (tmp_path / "depth.mkv").exists()  # finished, not yet verified
    with pytest.raises(DepthCodecError, match="already closed"):
        writer.write(frames[0])
    with ThreadPoolExecutor(1) as thread:
        meta = thread.submit(writer.publish).result()
    assert writer.meta == meta == DepthMeta.load(tmp_path / "depth_meta.json")
    assert ffmpeg_raw(tmp_path / "depth.mkv") == raw_bytes(frames)
    with pytest.raises(DepthCodecError, match="finished, unpublished writer"):
        writer.publish()


def test_a_damaged_file_decoding_in_one_thread_fails_no_other_thread(encoded, tmp_path, settings):
    """FFmpeg's error log is shared by threads: the CRC errors of a damaged file being read stay
    with its reader, never reaching a writer encoding (or verifying its own file) meanwhile, and
    the log settings come back once both are done."""
    path, _, _ = encoded
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    for position, size in packets:
        for offset in range(0, size, max(1, size // 8)):
            data[position + offset // 2 + size // 4] ^= 0xA5
    damaged = tmp_path / "damaged.mkv"
    damaged.write_bytes(bytes(data))
    level = av.logging.get_level()

    def read_damaged(rounds: int) -> list[str]:
        errors = []
        for _ in range(rounds):
            with pytest.raises(DepthCodecError) as caught:
                list(DepthReader(damaged, threads=2))
            errors.append(str(caught.value))
        return errors

    frames = depth_like_frames(60, 120, 160, seed=9)
    with ThreadPoolExecutor(1) as thread:
        reading = thread.submit(read_damaged, 15)
        meta = write_mkv(tmp_path / "good.mkv", frames, settings)
        errors = reading.result()
    assert meta.num_frames == 60 and ffmpeg_raw(tmp_path / "good.mkv") == raw_bytes(frames)
    assert all("damaged.mkv" in error and "CRC mismatch" in error for error in errors)
    assert av.logging.get_level() == level


def test_cli_converts_with_remapped_values_and_decodes_back_to_millimetres(tmp_path):
    stack = np.stack(stereo_like_frames(5, 30, 44, seed=6))
    np.save(tmp_path / "depth.npy", stack)
    out = tmp_path / "depth.mkv"
    result = run_cli("--input", str(tmp_path / "depth.npy"), "--output", str(out),
                     "--set", "ffv1.remap_values=true")
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "depth_meta.json").read_text())["value_table"]
    codes = np.frombuffer(ffmpeg_raw(out), "<u2").reshape(stack.shape)
    np.testing.assert_array_equal(np.array([0, *table])[codes], stack)
    result = run_cli("--decode", str(out), "--output", str(tmp_path / "pngs"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.stack(read_pngs(tmp_path / "pngs")), stack)


def test_metadata_needs_neither_pyav_nor_opencv(tmp_path, encoded):
    """Commands that only read depth_meta.json (the tracks step) do not pay for PyAV or OpenCV."""
    _, _, meta = encoded
    meta.write(tmp_path / "depth_meta.json")
    probe = ("import sys; from droid_pipeline.formats.depth_codec import DepthMeta, meta_path_for; "
             f"DepthMeta.load(meta_path_for({str(tmp_path / 'depth.mkv')!r})); "
             "print(sorted({'av', 'cv2'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True)
    assert result.stdout.split() == ["[]"]
