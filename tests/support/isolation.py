"""Keep the test suite out of the user's home: every cache the code or its libraries use points at
one temporary folder per test session, and the home folder's caches are compared before and after."""

from __future__ import annotations

import os
from pathlib import Path

# Every variable that moves a cache, config or data folder the code or its libraries write:
# Hugging Face (hub, datasets, assets, token), the XDG base folders (pip, fsspec, gcsfs and most
# others follow them), Matplotlib, Torch, Numba.
CACHE_VARIABLES = {
    "HF_HOME": "huggingface",
    "HF_HUB_CACHE": "huggingface/hub",
    "HUGGINGFACE_HUB_CACHE": "huggingface/hub",
    "HF_DATASETS_CACHE": "huggingface/datasets",
    "HF_MODULES_CACHE": "huggingface/modules",
    "HF_ASSETS_CACHE": "huggingface/assets",
    "HF_XET_CACHE": "huggingface/xet",
    "XDG_CACHE_HOME": "xdg-cache",
    "XDG_CONFIG_HOME": "xdg-config",
    "XDG_DATA_HOME": "xdg-data",
    "XDG_STATE_HOME": "xdg-state",
    "MPLCONFIGDIR": "matplotlib",
    "TORCH_HOME": "torch",
    "NUMBA_CACHE_DIR": "numba",
}
# The folders of the user's home that those variables would otherwise have put writes in.
HOME_CACHES = (".cache", ".config", ".local/share", ".local/state", ".matplotlib", ".huggingface", ".torch")


def isolate(root: Path) -> None:
    """Point every cache variable at a folder under ``root``, for this process and its children."""
    for variable, relative in CACHE_VARIABLES.items():
        folder = root / relative
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(folder)


def home_snapshot(home: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file and folder in the home folder's caches, and of the
    home folder's own entries."""
    seen: dict[str, tuple[int, int]] = {}

    def note(path: Path) -> None:
        try:
            info = path.lstat()
        except OSError:
            return
        seen[str(path)] = (info.st_size, info.st_mtime_ns)

    try:
        entries = list(home.iterdir())
    except OSError:
        return seen
    for entry in entries:
        note(entry)
    for relative in HOME_CACHES:
        for folder, dirs, files in os.walk(home / relative):
            for name in (*dirs, *files):
                note(Path(folder) / name)
    return seen


def changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """What differs between two snapshots: added, removed and changed paths."""
    return sorted({*before.keys(), *after.keys()} - {k for k in before if before[k] == after.get(k)})
