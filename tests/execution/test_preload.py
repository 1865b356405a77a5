"""What the warm worker prepares before it forks episode processes.

Each step runs in a fresh interpreter that has imported only the step's module; the third-party
packages it imports while it runs must all be in its declared ``libraries`` (else every forked episode
process pays for the import again). After the tracks step's ``warm_up`` an episode reads no
packaged asset (URDF, meshes): the models are built once per worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from droid_pipeline.execution.steps import BY_NAME, STEPS
from droid_pipeline.synthetic.generator import generate_dataset

# Runs the step named by argv[1] on the dataset's first episode; prints the packages it imported.
RUN_STEP = """
import importlib, json, sys
from pathlib import Path
from droid_pipeline.core.config import load_config
from droid_pipeline.raw.discovery import build_index
module, function = sys.argv[2], sys.argv[3]
step = importlib.import_module(module)
config = load_config([sys.argv[4]], [f"output_root={sys.argv[6]}", "depth_backend=stereo"])
episode = build_index(config.droid_root, None).get(sys.argv[5])
output = Path(sys.argv[6]) / "episode"
before = {name.split(".")[0] for name in sys.modules}
getattr(step, function)(config, episode, output)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} - before)))
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synthetic"), episodes=1, frames=6, size=(160, 90), seed=4)


def imported_while_running(dataset, tmp_path: Path, step: str) -> set[str]:
    """The top-level packages a fresh interpreter imports while it runs ``step``."""
    module, _, function = BY_NAME[step].run.partition(":")
    result = subprocess.run([sys.executable, "-c", RUN_STEP, step, module, function, str(dataset.config_path),
                             dataset.episodes[0].episode_id, str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("step", sorted(s.name for s in STEPS if not s.remote_only))
def test_the_warm_worker_preloads_what_each_step_imports(dataset, tmp_path, step):
    if step == "tracks":  # its input, written by another process
        imported_while_running(dataset, tmp_path, "intrinsics")
    imported = imported_while_running(dataset, tmp_path, step)
    third_party = {name for name in imported if not name.startswith("_") and name not in sys.stdlib_module_names
                   and name != "droid_pipeline"}
    assert third_party <= set(BY_NAME[step].libraries), f"{step} imports {sorted(third_party)} while it runs"
    if step == "tracks":  # it always reads trajectory.h5 and counts the MP4s' frames
        assert {"h5py", "av"} <= imported


WARM_TRACKS = """
import sys
from pathlib import Path
from droid_pipeline.core.config import load_config
from droid_pipeline.raw.discovery import build_index
from droid_pipeline.robot import kinematics
from droid_pipeline.steps import intrinsics, tracks
config = load_config([sys.argv[1]], [f"output_root={sys.argv[3]}"])
episode = build_index(config.droid_root, None).get(sys.argv[2])
output = Path(sys.argv[3]) / "episode"
intrinsics.extract_intrinsics(config, episode, output)
tracks.warm_up(config)
kinematics.resources = None  # any read of the package's assets now fails
tracks.generate_tracks(config, episode, output)
print("ok")
"""


def test_after_warm_up_the_tracks_step_builds_no_model_again(dataset, tmp_path):
    result = subprocess.run([sys.executable, "-c", WARM_TRACKS, str(dataset.config_path),
                             dataset.episodes[0].episode_id, str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
