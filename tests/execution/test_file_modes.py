"""Every file a run writes honours the umask, so a group on a shared cluster can read the dataset.

A real episode goes through the full driver (intrinsics, stereo depth + FFV1, tracks, publish,
upload to local repos) under each umask; every file and folder under output_root, run_root (run
folder, staging journal, ledger) and the repos must have 0666 / 0777 less the umask.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from droid_pipeline.synthetic.generator import generate_dataset

REPO = Path(__file__).resolve().parents[2]
DEPTH = REPO / "run_pipeline_compressed_depth.sh"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=1, frames=8)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_of_a_run_honours_the_umask(dataset, tmp_path, umask):
    out, runs, hub = tmp_path / "out", tmp_path / "runs", tmp_path / "hub"
    result = subprocess.run(
        [str(DEPTH), "--config", str(dataset.config_path), "--out", str(out), "--set", f"run_root={runs}",
         "--set", f"metadata_repo=file://{hub / 'metadata'}", "--set", f"full_repo=file://{hub / 'full'}",
         "--workers", "1", "--depth-backend", "stereo", "--gpus", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, umask=umask)
    assert result.returncode == 0, result.stdout + result.stderr
    paths = [p for root in (out, runs, hub) for p in root.rglob("*")]
    names = {p.name for p in paths}
    # The run wrote what it should: so an empty or partial tree cannot pass.
    assert {"tracks.npz", "extrinsics.npz", "quality.json", "intrinsics.json", "depth.mkv", "depth_meta.json",
            "manifest.json", "episode_index.json", "timing.csv", "config.yaml", "summary.json",
            "uploader.log", "published.jsonl"} <= names, sorted(names)
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths
             if stat.S_IMODE(p.lstat().st_mode) != (folder_mode if p.is_dir() else file_mode)}
    assert not wrong, f"expected {oct(file_mode)} for files and {oct(folder_mode)} for folders: {wrong}"
