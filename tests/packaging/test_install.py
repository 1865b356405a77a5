"""A non-editable install works without the checkout: build the wheel, install it into a fresh
venv and run every documented command from another folder.

Offline on purpose: the wheel is built with ``--no-build-isolation`` (setuptools from the test
extras) and installed with ``--no-deps --no-index``; the fresh venv sees the dependencies through a
``.pth`` line naming this interpreter's site-packages (whose editable hook such a line does not
run), so the package it imports is the installed wheel's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ASSETS = sorted(p.relative_to(REPO / "droid_pipeline" / "robot" / "assets").as_posix()
                for p in (REPO / "droid_pipeline" / "robot" / "assets").rglob("*") if p.is_file())
CONSOLE_SCRIPTS = ("droid-run-metadata", "droid-run-full", "droid-intrinsics", "droid-depth", "droid-tracks",
                   "droid-compress-depth", "droid-upload", "droid-render", "droid-episodes", "droid-verify",
                   "droid-timing", "droid-demo")
# Checkout-only paths the copy of the source tree leaves out (what `pip install git+...` would not see).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "demo", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".mypy_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source tree (no stale build/ of the checkout in it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--no-index", "--quiet", "--wheel-dir", str(work / "dist")],
                   check=True, capture_output=True, timeout=120)
    (built,) = (work / "dist").glob("droid_pipeline-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed, non-editable."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(
        "".join(f"{p}\n" for p in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))))
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    return root


def run(venv: Path, *command: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``command`` with the venv's bin/ first on PATH, outside the checkout, without its paths."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DROID_PYTHON", "DROID_PIPELINE_SITE_CONFIG", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_wheel_holds_the_defaults_the_robot_assets_and_the_driver(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "droid_pipeline/core/default.yaml" in names
    assert "droid_pipeline/execution/driver.sh" in names
    assert {f"droid_pipeline/robot/assets/{a}" for a in ASSETS} <= names
    assert {"panda_robotiq.urdf", "meshes/inner_finger_fine.STL", "meshes/link7.stl"} <= set(ASSETS)
    assert not any(n.startswith(("tests/", "bench/", "configs/")) for n in names)
    for script in CONSOLE_SCRIPTS:
        assert re.search(rf"^{script} = droid_pipeline\.cli\.drivers:\w+$", entry_points, re.MULTILINE), script


def test_installed_package_runs_every_documented_command(venv, tmp_path):
    python = str(venv / "bin" / "python")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(venv, python, "-c", "import droid_pipeline, droid_pipeline.core.config as c; "
                "c.load_config(); print(droid_pipeline.__file__); print(c.DEFAULT_CONFIG_PATH)", cwd=elsewhere)
    package_file, defaults = where.stdout.split()
    assert Path(package_file).is_relative_to(venv) and Path(defaults).is_relative_to(venv)

    demo = tmp_path / "D"
    run(venv, python, "-m", "droid_pipeline.demo", "--out", str(demo), "--episodes", "1", "--frames", "8",
        cwd=elsewhere)
    config = str(demo / "config.yaml")
    listing = run(venv, python, "-m", "droid_pipeline.episodes", "--config", config, cwd=elsewhere)
    episode_id = next(word for word in listing.stdout.split() if word.count("+") == 2)

    hub = tmp_path / "hub"
    driver = run(venv, "droid-run-metadata", "--config", config, "--workers", "1",
                 "--set", f"metadata_repo=file://{hub}", cwd=elsewhere, timeout=300)
    assert "upload complete" in driver.stdout, driver.stdout + driver.stderr
    (run_dir,) = (demo / "runs").glob("metadata-*")
    rows = (run_dir / "timing.csv").read_text().splitlines()
    assert len(rows) == 2 and f"{episode_id}," in rows[1] and ",done," in rows[1]
    assert len(list(hub.rglob("tracks.npz"))) == 1

    verify = run(venv, python, "-m", "droid_pipeline.verify", str(demo / "output"), "--no-progress", cwd=elsewhere)
    assert "1 of 1 episodes pass" in verify.stdout
    run(venv, python, "-m", "droid_pipeline.timing", "review", str(run_dir), cwd=elsewhere)
    assert (run_dir / "timing.png").stat().st_size > 0
    loaded = run(venv, python, "-c", "import sys; from droid_pipeline import load_episode; "
                 "e = load_episode(sys.argv[1], sys.argv[2]); print(e.tracks_3d.shape[0])",
                 str(hub), episode_id, cwd=elsewhere)
    assert loaded.stdout.split() == ["8"]

    # A SLURM task runs the installed driver with the installed interpreter, not a checkout path.
    sbatch = run(venv, "droid-run-full", "--config", config, "--slurm", "--dry-run", "--force", cwd=elsewhere)
    exec_line = next(line for line in sbatch.stdout.splitlines() if line.startswith("exec "))
    driver_path = exec_line.split()[2]
    assert Path(driver_path).is_relative_to(venv) and Path(driver_path).is_file(), exec_line
    interpreter = re.search(r"^export DROID_PYTHON=(\S+)$", sbatch.stdout, re.MULTILINE).group(1)
    assert Path(interpreter).is_relative_to(venv), interpreter
    assert str(REPO) not in sbatch.stdout

    for script in CONSOLE_SCRIPTS:
        assert "usage:" in run(venv, script, "--help", cwd=elsewhere).stdout, script


def test_console_scripts_keep_the_exit_codes(venv, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("no_such_key: 1\n")
    for script in ("droid-tracks", "droid-run-metadata"):
        result = subprocess.run([str(venv / "bin" / script), "--config", str(broken), "--episode_id",
                                 "AUTOLab+84bd5053+2023-08-18-12h-01m-10s"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "no_such_key" in result.stderr
        assert "Traceback" not in result.stderr
    missing = subprocess.run([str(venv / "bin" / "droid-intrinsics"), "--set", f"droid_root={tmp_path}",
                              "--set", f"episode_index_path={tmp_path / 'index.json'}",
                              "--episode_id", "AUTOLab+84bd5053+2023-08-18-12h-01m-10s"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert missing.stderr.startswith("error: ") and "AUTOLab+84bd5053+2023-08-18-12h-01m-10s" in missing.stderr
