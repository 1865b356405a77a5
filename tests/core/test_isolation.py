"""The suite keeps out of the user's home: caches point into the session's own folder (conftest),
libraries and child processes use it, and a change in the home caches is caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from isolation import CACHE_VARIABLES, changes, home_snapshot


def test_every_cache_variable_points_into_the_session_folder(session_caches: Path) -> None:
    for variable in CACHE_VARIABLES:
        assert Path(os.environ[variable]).is_relative_to(session_caches), variable


def test_libraries_in_a_child_process_cache_in_the_session_folder(session_caches: Path, tmp_path: Path) -> None:
    # A repo folder named like a test repo of the suite: its rows come back, and its cache entry is
    # written in the session's folder, not the user's.
    folder = tmp_path / "meta"
    folder.mkdir()
    pq.write_table(pa.table({"n": [1, 2, 3]}), folder / "rows.parquet")
    home = Path(os.path.expanduser("~"))
    before = home_snapshot(home)
    code = ("import json, sys, datasets, matplotlib; from huggingface_hub import constants; "
            "rows = datasets.load_dataset(sys.argv[1], split='train')['n']; rows = list(rows); "
            "print(json.dumps([rows, *map(str, (constants.HF_HUB_CACHE, datasets.config.HF_DATASETS_CACHE, "
            "matplotlib.get_cachedir()))]))")
    result = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows, *caches = json.loads(result.stdout.splitlines()[-1])
    assert rows == [1, 2, 3]
    assert all(Path(c).is_relative_to(session_caches) for c in caches), caches
    assert any((session_caches / "huggingface" / "datasets").rglob("*.arrow"))
    assert changes(before, home_snapshot(home)) == []


def test_a_write_in_the_home_caches_is_seen(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    before = home_snapshot(home)
    assert changes(before, home_snapshot(home)) == []
    (home / ".cache" / "huggingface" / "token").write_text("x")
    (home / ".netrc").write_text("machine x")
    assert changes(before, home_snapshot(home)) == [str(home / ".cache" / "huggingface"),
                                                    str(home / ".cache" / "huggingface" / "token"),
                                                    str(home / ".netrc")]
