"""The warm worker imports every library a step imports where it uses it.

Each step runs in a fresh interpreter that has imported only the step's module; the third-party
packages it imports while it runs must all be in ``STEP_LIBRARIES`` (else every forked episode
process pays for the import again).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from droid_pipeline.execution.worker import STEP_FUNCTIONS, STEP_LIBRARIES
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
    module, function = STEP_FUNCTIONS[step]
    result = subprocess.run([sys.executable, "-c", RUN_STEP, step, module, function, str(dataset.config_path),
                             dataset.episodes[0].episode_id, str(tmp_path)],
                            capture_output=True, text=True, timeout=300, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.mark.parametrize("step", sorted(STEP_FUNCTIONS))
def test_the_warm_worker_preloads_what_each_step_imports(dataset, tmp_path, step):
    if step == "tracks":  # its input, written by another process
        imported_while_running(dataset, tmp_path, "intrinsics")
    imported = imported_while_running(dataset, tmp_path, step)
    third_party = {name for name in imported if not name.startswith("_") and name not in sys.stdlib_module_names
                   and name != "droid_pipeline"}
    assert third_party <= set(STEP_LIBRARIES[step]), f"{step} imports {sorted(third_party)} while it runs"
    if step == "tracks":  # it always reads trajectory.h5 and counts the MP4s' frames
        assert {"h5py", "av"} <= imported
