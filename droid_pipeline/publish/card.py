"""The dataset card (``README.md``) of a sharded repo, rewritten from the index by every shard commit.

Its YAML front matter is the Hub's dataset metadata: licence (DROID's CC BY 4.0, which the
derived data keeps), task categories, tags, size category and the ``configs`` entry that lets
``datasets.load_dataset(<repo>, "index")`` read the episode index (and the Hub's viewer show it).
The shards are not a second config: ``datasets`` picks one builder for all the configs of a repo,
from the files of the first, so a webdataset config beside the Parquet one would fail; the card
shows ``load_dataset("webdataset", data_files=..., features=shard_features(<repo>))`` for them
instead (the member types kept in the index, so that ``datasets`` does not guess them from the
first samples). The body has the
counts, the file and key tables of the output contract (from :mod:`droid_pipeline.core.schema`),
how to load one episode and where the data came from (pipeline version, calibration sources).
"""

from __future__ import annotations

import collections
from importlib import metadata
from typing import TYPE_CHECKING, Any

import yaml

from droid_pipeline.core.schema import KIND_REPOS, NPZ_FILES, OUTPUT_FILES, SCHEMA_VERSION, markdown_table
from droid_pipeline.publish.shards import (
    CAMERA_FILES_ORDER,
    SHARDS_DIR,
    SHARDS_PER_FOLDER,
    index_path,
    member_suffix,
)

if TYPE_CHECKING:
    import pyarrow as pa

LICENSE = "cc-by-4.0"
TAGS = ["robotics", "droid", "manipulation", "point-tracking", "depth", "webdataset"]
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(episodes: int) -> str:
    return next((name for limit, name in _SIZES if episodes < limit), "1M<n<10M")


def pipeline_version() -> str:
    try:
        return metadata.version("droid-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def front_matter(kind: str, episodes: int) -> dict[str, Any]:
    """The card's YAML metadata: the Hub reads licence, tags and size; ``datasets`` the configs."""
    return {
        "license": LICENSE,
        "task_categories": ["robotics"],
        "tags": TAGS,
        "size_categories": [size_category(episodes)],
        "pretty_name": f"DROID {kind} (gripper contact tracks{', depth' if kind == 'full' else ''})",
        "configs": [{"config_name": "index", "default": True,
                     "data_files": [{"split": "train", "path": index_path(kind)}]}],
    }


def shards_pattern(kind: str) -> str:
    """The glob of every shard of a repo of ``kind``."""
    return f"{SHARDS_DIR}/{kind}/*/*.tar"


def render_card(kind: str, repo_id: str, index: pa.Table, shards: int) -> str:
    """The README.md of a sharded repo of ``kind`` holding the episodes of ``index`` in ``shards`` shards."""
    rows = index.select(["episode_id", "lab", "outcome", "bytes", "calibration_sources"]).to_pylist()
    episodes = len(rows)
    outcomes = collections.Counter(r["outcome"] for r in rows)
    labs = collections.Counter(r["lab"] for r in rows)
    sources = collections.Counter(_source_kind(s) for r in rows for s in r["calibration_sources"] or [])
    total = sum(r["bytes"] or 0 for r in rows)
    example = rows[0]["episode_id"] if rows else "AUTOLab+84bd5053+2023-08-18-12h-01m-10s"
    lines = ["---", yaml.safe_dump(front_matter(kind, episodes), sort_keys=False).rstrip(), "---", "",
             f"# DROID {kind} repo", "",
             "Gripper contact tracks in 3D and in every camera, the motion resampled every 1 mm of travel"
             + (", and each camera's depth (FFV1, lossless)" if kind == "full" else "")
             + ", converted from the raw [DROID](https://droid-dataset.github.io/) release by the DROID "
               "training-data pipeline.", "",
             "## Contents", "",
             f"- {episodes} episode(s): " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())),
             f"- {len(labs)} lab(s): " + ", ".join(f"{lab} ({n})" for lab, n in sorted(labs.items())),
             f"- {shards} shard(s), {total / 1e9:.3f} GB of episode files",
             f"- output schema version {SCHEMA_VERSION}", "",
             "## Layout", "",
             f"- `{index_path(kind)}`: the episode index, one row per episode (config `index`, the default): id, "
             "lab, outcome, date, raw relative path, schema version, T, M, cameras and their serials in role "
             "order, the task text (`current_task`, `language_instruction_1..3`), DROID RLDS's `file_path` and "
             "`recording_folderpath` (to join RLDS-based ports), the fraction of steps DROID's idle filter keeps, "
             "quality flags, and for each file its shard, byte offset, size and SHA-256.",
             f"- `{SHARDS_DIR}/{kind}/<NNN>/<NNNNNN>.tar`: WebDataset tar shards, at most "
             f"{SHARDS_PER_FOLDER} per folder. An episode's files are contiguous members `<key>.<file>`; `<key>` "
             "is the episode id with any character outside `A-Z a-z 0-9 + _ -` percent-encoded; per-camera "
             "files are named by the camera's role (`wrist`, `ext1`, `ext2`), its serial is in `quality.json` "
             "(`episode.serials`) and in the index. Members are the files byte for byte; a camera file an "
             "episode lacks (a role without a camera, a camera without intrinsics or depth) is a stub member, "
             "`null` for JSON and empty otherwise, listed in the index with an empty path.",
             f"- Every episode has the same member names, npz keys and JSON keys (output schema {SCHEMA_VERSION}): "
             "per-camera arrays and fields are named by role, serials are values, and a camera without 2D tracks "
             "keeps its keys, filled, with `tracks_2d_status` saying why. JSON fields may be null in some episodes "
             "and set in others: declare the member types kept in the index (`shard_features`, below) and "
             "`datasets` and batched readers read every episode whole.", "",
             "| file in the episode folder | member | repo | what |", "|---|---|---|---|"]
    for file in OUTPUT_FILES:
        if kind == "metadata" and file.kind == "depth":
            continue
        member = f"`<key>.<role>.{file.name}`" if file in CAMERA_FILES_ORDER else \
            f"`<key>.{member_suffix(file.path, {})}`"
        lines.append(f"| `{file.path}` | {member} | {KIND_REPOS[file.kind]} | {file.meaning} |")
    lines += ["", "### Arrays", ""]
    for npz in NPZ_FILES:
        for table in npz.tables:
            lines += [f"`{npz.file.path}` ({table.id}):", "", markdown_table(table), ""]
    lines += ["## Loading", "", "```python",
              "from droid_pipeline import load_episode, iter_episodes, shard_features",
              f'episode = load_episode("hf://datasets/{repo_id}", "{example}")  # ranged reads of its members only',
              "print(episode.tracks_3d.shape, episode.camera(\"ext1\").tracks_2d.shape)",
              f'for episode in iter_episodes("hf://datasets/{repo_id}", filter=lambda row: row["outcome"] == '
              '"success", part=(worker, num_workers)):',
              "    ...  # whole shards streamed in order; the parts are disjoint and cover the repo once",
              "", "import datasets",
              f'index = datasets.load_dataset("{repo_id}", split="train")   # the index',
              f'features = shard_features("hf://datasets/{repo_id}")   # every member\'s type, kept in the index',
              f'samples = datasets.load_dataset("webdataset", data_files="hf://datasets/{repo_id}/'
              f'{shards_pattern(kind)}", split="train", features=features)   # or streaming=True',
              'for sample in samples:   # sample["tracks.npz"]["tracks_2d_ext1"], sample["quality.json"], ...',
              "    ...",
              "", "import webdataset   # or the webdataset package: members as bytes",
              'for sample in webdataset.WebDataset("<local or https shard URLs>", shardshuffle=False):',
              '    ...  # sample["__key__"], sample["tracks.npz"] (bytes: np.load(io.BytesIO(...)))',
              "```", "",
              "Pass `features` to `datasets`: without them it guesses every field's type from the first five "
              "episodes of the first shard, and a field null in all of those (a metadata path older recorders "
              "did not write, a camera's depth or calibration entry) but set in a later episode fails the whole "
              "load. The types are kept in the index file's metadata (`droid_pipeline.shard_types`, an Arrow "
              "schema); without the package: `datasets.Features.from_arrow_schema(pa.schema([('__key__', "
              "pa.string()), *pa.ipc.read_schema(pa.py_buffer(pq.read_schema(<index file>).metadata["
              "b'droid_pipeline.shard_types'])), ('__url__', pa.string())]))`.", "",
              "Without the package: read the episode's row of the index, then fetch each member's bytes "
              "`offset .. offset + size - 1` of its shard with an HTTP range request (or `tarfile`).", "",
              "## Provenance", "",
              f"- pipeline: droid-pipeline {pipeline_version()}, output schema {SCHEMA_VERSION}",
              "- calibration and intrinsics sources (episodes using each): "
              + (", ".join(f"{name} ({n})" for name, n in sorted(sources.items())) or "none recorded"),
              "- every episode's `quality.json` records the exact calibration entry and the source of every value.",
              ""]
    return "\n".join(lines)


def _source_kind(source: str) -> str:
    """``cam2base:<file>`` and ``intrinsics:<source>`` as they are, ``h5:<dataset>`` and
    ``metadata:<key>`` by their prefix (their datasets and keys name cameras)."""
    prefix = source.split(":", 1)[0]
    return source if prefix in ("cam2base", "intrinsics") else prefix
