"""How a command's process runs its main: imports without the cyclic collector, then frozen."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

import droid_pipeline.cli
from droid_pipeline.cli.drivers import run_command
from droid_pipeline.core.exit_codes import ExitCode

# A command module that records the collector's state at import and while its main runs.
PROBE = """
import gc
STATE = {"import_enabled": gc.isenabled()}

def main():
    STATE.update(main_enabled=gc.isenabled(), main_frozen=gc.get_freeze_count())
    return 0
"""


@pytest.fixture
def probe_command(tmp_path: Path, monkeypatch):
    (tmp_path / "gc_probe.py").write_text(PROBE)
    monkeypatch.setattr(droid_pipeline.cli, "__path__", [*droid_pipeline.cli.__path__, str(tmp_path)])
    yield "gc_probe"
    sys.modules.pop("droid_pipeline.cli.gc_probe", None)
    gc.unfreeze()
    gc.enable()


def test_a_command_imports_without_collections_and_runs_with_its_imports_frozen(probe_command):
    assert gc.isenabled()
    with pytest.raises(SystemExit) as exit_info:
        run_command(probe_command)
    assert exit_info.value.code == ExitCode.DONE
    state = sys.modules[f"droid_pipeline.cli.{probe_command}"].STATE
    assert state["import_enabled"] is False
    assert state["main_enabled"] is True and state["main_frozen"] > 1000   # the imports' objects
    assert gc.isenabled()
