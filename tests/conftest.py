"""Shared test fixtures, and the session's isolation from the user's home folder.

The cache variables are set when this file is imported, before any test module imports a library
that reads them at its own import (huggingface_hub, datasets, matplotlib)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from isolation import changes, home_snapshot, isolate
from reference_data import REFERENCE_DATA

# The gs:// emulator and fault proxy fixtures of the tests that read a remote root.
pytest_plugins = ["remote_runs"]
HOME = Path(os.path.expanduser("~"))
SESSION_CACHES = Path(tempfile.mkdtemp(prefix="droid-test-caches-"))
HOME_BEFORE = home_snapshot(HOME)
isolate(SESSION_CACHES)


@pytest.fixture(scope="session")
def reference_data() -> Path:
    """The original URDFs and meshes (tests/data/reference), the oracles for the robot model."""
    return REFERENCE_DATA


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (tests/support/slurm_cluster.py), started for one test module."""
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def session_caches() -> Path:
    """The folder every cache variable points into for this session."""
    return SESSION_CACHES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when anything in the user's home caches changed while it ran."""
    changed = changes(HOME_BEFORE, home_snapshot(HOME))
    shutil.rmtree(SESSION_CACHES, ignore_errors=True)
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  {path}" for path in changed[:20])
        message = f"the test session changed the user's home folder ({len(changed)} paths):\n{lines}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
