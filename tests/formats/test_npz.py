"""The parallel npz writer against NumPy's own reader and writer, zipfile and Info-ZIP's unzip."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from droid_pipeline.formats.npz import WINDOW_BYTES, Deflate, StreamedArray, write_npz


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    walk = np.cumsum(rng.normal(0, 1e-3, size=(700, 480, 3)), axis=0).astype(np.float32)
    return {
        "walk": walk,                                               # several chunks, float32 noise
        "pixels": (walk[..., :2] * 1000 + 640).astype(np.float32),
        "visible": rng.random((700, 480)) > 0.3,
        "labels": rng.integers(0, 4, size=(700, 480), dtype=np.uint8),
        "index": np.arange(1000, dtype=np.int32),
        "poses": rng.normal(size=(50, 4, 4)),
        "serials": np.array(["18907304", "26357468"]),
        "scalar": np.float64(15.0),
        "count": np.int32(7),
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(31, 17))),
        "strided": walk[::3, ::7, 1],
    }


def written(arrays, **options) -> bytes:
    buffer = io.BytesIO()
    write_npz(buffer, arrays, **options)
    return buffer.getvalue()


def assert_same(data: bytes, arrays: dict[str, np.ndarray]) -> None:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        assert loaded.files == list(arrays)
        for key, array in arrays.items():
            got = loaded[key]
            assert got.dtype == np.asarray(array).dtype and got.shape == np.shape(array), key
            np.testing.assert_array_equal(got, array, err_msg=key)


@pytest.mark.parametrize("options", [
    {"deflate": Deflate(1), "threads": 1},
    {"deflate": Deflate(1), "threads": 3, "chunk_bytes": WINDOW_BYTES},
    {"deflate": Deflate(6), "threads": 2, "chunk_bytes": 100_000},
    {"deflate": Deflate(1, zlib.Z_HUFFMAN_ONLY), "threads": 2},
    {"deflate": Deflate(0), "threads": 2},
    {"deflate": lambda key, array: Deflate(0 if key == "walk" else 9), "threads": 2},
    {"deflate": Deflate(1, engine="isal"), "threads": 1},
    {"deflate": Deflate(3, engine="isal"), "threads": 3, "chunk_bytes": WINDOW_BYTES},
    {"deflate": lambda key, array: Deflate(3, engine="isal") if key == "walk" else Deflate(1), "threads": 2},
])
def test_np_load_reads_back_every_array_exactly(options):
    arrays = sample_arrays()
    assert_same(written(arrays, **options), arrays)


@pytest.mark.parametrize("engine", ["zlib", "isal"])
def test_each_member_is_the_npy_numpy_writes_and_the_archive_checks_with_zipfile_and_unzip(tmp_path, engine):
    arrays = sample_arrays()
    path = tmp_path / "tracks.npz"
    path.write_bytes(written(arrays, deflate=Deflate(1, engine=engine), threads=3, chunk_bytes=WINDOW_BYTES))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        for key, array in arrays.items():
            reference = io.BytesIO()
            np.lib.format.write_array(reference, np.require(array, requirements="C"), allow_pickle=False)
            assert archive.read(f"{key}.npy") == reference.getvalue(), key
            assert archive.getinfo(f"{key}.npy").compress_type == zipfile.ZIP_DEFLATED
    unzip = shutil.which("unzip")
    assert unzip is not None, "Info-ZIP unzip is installed by tests/setup_system.sh"
    result = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0 and "No errors detected" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("engine", ["zlib", "isal"])
def test_chunks_are_primed_so_parallel_deflate_costs_almost_no_ratio(engine):
    arrays = {"walk": sample_arrays()["walk"]}
    one = len(written(arrays, deflate=Deflate(1, engine=engine), threads=1, chunk_bytes=1 << 30))
    many = len(written(arrays, deflate=Deflate(1, engine=engine), threads=4, chunk_bytes=WINDOW_BYTES * 4))
    assert many <= one * 1.002


@pytest.mark.parametrize(("setting", "message"), [
    ({"level": 4, "engine": "isal"}, "isal deflate level must be 0..3, got 4"),
    ({"level": 10}, "zlib deflate level must be 0..9, got 10"),
    ({"engine": "brotli"}, "deflate engine must be one of zlib, isal, got 'brotli'"),
    ({"engine": "isal", "strategy": zlib.Z_HUFFMAN_ONLY}, "the isal engine has no deflate strategies"),
])
def test_settings_outside_an_engine_are_refused(setting, message):
    with pytest.raises(ValueError, match=message):
        Deflate(**setting)


def test_a_missing_isal_package_fails_before_anything_is_written(monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)   # import isal raises ImportError
    buffer = io.BytesIO()
    with pytest.raises(ImportError, match=r"pip install isal"):
        write_npz(buffer, {"x": np.zeros(3)}, deflate=Deflate(1, engine="isal"))
    assert buffer.getvalue() == b""


def test_a_streamed_array_gives_the_same_archive_member_as_the_whole_array():
    walk = sample_arrays()["walk"]
    pieces = (walk[i:i + 37] for i in range(0, len(walk), 37))   # pieces that do not line up with chunks
    streamed = written({"walk": StreamedArray(walk.dtype, walk.shape, pieces)}, threads=2, chunk_bytes=300_000)
    whole = written({"walk": walk}, threads=2, chunk_bytes=300_000)
    with zipfile.ZipFile(io.BytesIO(streamed)) as a, zipfile.ZipFile(io.BytesIO(whole)) as b:
        assert a.read("walk.npy") == b.read("walk.npy")
    assert_same(streamed, {"walk": walk})


def test_memory_stays_bounded_while_a_large_streamed_array_is_written(tmp_path):
    rows, row = 4096, np.linspace(0, 1, 8192, dtype=np.float32)   # 128 MiB in all

    def pieces():
        for i in range(rows):
            yield row + np.float32(i)

    tracemalloc.start()
    with open(tmp_path / "big.npz", "wb") as fh:
        write_npz(fh, {"big": StreamedArray(np.dtype(np.float32), (rows, row.size), pieces())}, threads=2,
                  chunk_bytes=1 << 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB"
    with np.load(tmp_path / "big.npz") as loaded:
        big = loaded["big"]
        assert big.shape == (rows, row.size) and big[-1, -1] == np.float32(rows)


def test_object_arrays_are_refused():
    with pytest.raises(ValueError, match="object arrays"):
        written({"x": np.array([{"a": 1}], dtype=object)})
