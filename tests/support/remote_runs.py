"""Driver runs against a gs:// root served by fake-gcs-server (tests/support/gcs_emulator.py), and
the checks that compare their outputs with a local run's. Its fixtures (a plugin of the root
conftest): ``emulator`` serves the requesting module's ``dataset``, ``proxy`` stands in front of it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gcs_emulator import PREFIX, ROOT_URL, FaultProxy, start_emulator

from droid_pipeline.execution.timing import COLUMNS
from droid_pipeline.raw.discovery import build_index

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "run_pipeline_metadata_only.sh"
FULL = REPO / "run_pipeline_compressed_depth.sh"
MAP_URL = f"gs://gresearch/{PREFIX}/episode_id_to_path.json"


def serve(dataset, work: Path):
    """The dataset's raw tree on a fresh emulator, with DROID's map file beside it (MAP_URL)."""
    index = build_index(dataset.droid_root)
    paths = work / "episode_id_to_path.json"
    paths.write_text(json.dumps({e.episode_id: e.relative_path for e in index.episodes}))
    return start_emulator(dataset.droid_root, work, {f"{PREFIX}/episode_id_to_path.json": paths})


@pytest.fixture(scope="module")
def emulator(dataset, tmp_path_factory):
    """The module's dataset served as a gs:// root, for the module's tests."""
    server = serve(dataset, tmp_path_factory.mktemp("gcs"))
    yield server
    server.stop()


@pytest.fixture
def proxy(emulator):
    """A fault-injecting proxy in front of the emulator, for one test."""
    proxy = FaultProxy(emulator.url)
    yield proxy
    proxy.close()


def run(script: Path, dataset, work: Path, endpoint: str | None, *extra: str,
        check_rc: int | None = None) -> subprocess.CompletedProcess:
    """A driver over the dataset with one worker: from the gs:// root through ``endpoint``, or
    from the local folder (None); node-local scratch is ``work/node-tmp`` ($TMPDIR)."""
    env = dict(os.environ, TMPDIR=str(work / "node-tmp"))
    (work / "node-tmp").mkdir(parents=True, exist_ok=True)
    args = ["--config", str(dataset.config_path), "--out", str(work / "out"), "--set", f"run_root={work / 'runs'}",
            "--set", "outcomes=[success, failure]", "--workers", "1", "--no-upload"]
    if script == FULL:
        args += ["--depth-backend", "stereo"]
    if endpoint is not None:
        env["STORAGE_EMULATOR_HOST"] = endpoint
        args += ["--droid-root", ROOT_URL]
    result = subprocess.run([str(script), *args, *extra], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    if check_rc is not None:
        assert result.returncode == check_rc, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def timing_rows(work: Path) -> list[dict[str, str]]:
    (run_dir,) = sorted((work / "runs").glob("*-*-*"))[-1:]
    with open(run_dir / "timing.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def scratch_files(work: Path) -> list[Path]:
    """What the run left in its node-local scratch ($TMPDIR): files and worker folders alike."""
    return sorted((work / "node-tmp" / "droid-fetch").rglob("*"))


def assert_same_outputs(local: Path, remote: Path, episodes) -> None:
    """Every output file of each episode equal: npz array by array, JSON value by value (the
    provenance paths aside), the rest byte for byte."""
    for episode in episodes:
        a, b = local / episode.relative_path, remote / episode.relative_path
        names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
        assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()), episode
        for name in names:
            if name.endswith(".npz"):
                with np.load(a / name) as x, np.load(b / name) as y:
                    assert sorted(x.files) == sorted(y.files)
                    for key in x.files:
                        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{episode.relative_path}/{name}:{key}")
            elif name.endswith(".json"):
                assert _comparable(json.loads((a / name).read_text())) == \
                    _comparable(json.loads((b / name).read_text())), f"{episode.relative_path}/{name}"
            elif name.endswith(".mkv"):  # the container stamps its muxing time: compare decoded frames
                for x, y in zip(_frames(a / name), _frames(b / name), strict=True):
                    np.testing.assert_array_equal(x, y, err_msg=f"{episode.relative_path}/{name}")
            else:
                assert (a / name).read_bytes() == (b / name).read_bytes(), f"{episode.relative_path}/{name}"


def _frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as FFmpeg's decoder (PyAV) gives it, 16-bit gray for depth."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


def _comparable(value):
    """JSON without what names where or when it was made (the scratch copy's paths, times)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()
                if k not in ("created", "created_at", "published_at", "run", "host", "bytes", "sha256")}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, str) and ("/" in value and ("node-tmp" in value or "droid_raw" in value)):
        return "<path>"
    return value


