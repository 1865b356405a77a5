"""The per-episode steps, declared once: what each runs, reads, writes and warms.

Every consumer derives from :data:`STEPS`: the pipelines' step lists (``records.PIPELINES``),
the warm worker's imports and warm-ups, the worker's step loop, timing.csv's ``<step>_s``
columns, the summary and the step table of docs/running.md (:func:`markdown_table`). A new step
is one more :class:`Step` here (the model is datatrove's ``PipelineStep``: a named unit with its
own run function, its declared inputs and outputs and the libraries it needs).

``reads`` is what the fetch step copies from a remote root: the episode files (relative to its
folder) that the step opens, for an episode record and a config. The fetch step itself only runs
for remote roots (``remote_only``); its ``run`` is the worker's prefetcher, not a function here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from droid_pipeline.core.config import Config
from droid_pipeline.raw.discovery import Episode

TRAJECTORY = "trajectory.h5"
MP4_DIR = "recordings/MP4"
SVO_DIR = "recordings/SVO"


@dataclass(frozen=True)
class Step:
    """One step: ``run`` is ``module:function(config, episode, work_dir)``; ``warm_up`` a function
    of the same module taking the config, called once per warm worker; ``libraries`` are imported
    by the warm worker so episode processes start warm."""

    name: str
    pipelines: tuple[str, ...]
    run: str
    reads: Callable[[Episode, Config], list[str]]
    reads_text: str
    writes: str
    libraries: tuple[str, ...] = ()
    warm_up: str | None = None
    remote_only: bool = False

    @property
    def module(self) -> str:
        return self.run.partition(":")[0]

    def function(self) -> Callable[..., Any]:
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)

    def warm_up_function(self) -> Callable[[Config], None] | None:
        return getattr(importlib.import_module(self.module), self.warm_up) if self.warm_up else None

    def applies(self, config: Config) -> bool:
        return config.remote_root or not self.remote_only


def _left_videos(episode: Episode) -> list[str]:
    """Each camera's left-image MP4: ``<serial>.mp4``, else its ``<serial>-stereo.mp4``."""
    return [f"{MP4_DIR}/{serial}.mp4" if serial in episode.mp4 else f"{MP4_DIR}/{serial}-stereo.mp4"
            for serial in episode.serials.values() if serial in episode.mp4 or serial in episode.stereo_mp4]


def _metadata_inputs(episode: Episode, config: Config) -> list[str]:
    return [episode.metadata_file, *([TRAJECTORY] if episode.has_h5 else []), *_left_videos(episode)]


def _depth_inputs(episode: Episode, config: Config) -> list[str]:
    if config.depth_backend == "zed":
        recordings = [f"{SVO_DIR}/{serial}.svo" for serial in episode.svo]
    else:  # a camera without -stereo.mp4 may hold left|right in its <serial>.mp4
        recordings = [f"{MP4_DIR}/{serial}-stereo.mp4" if serial in episode.stereo_mp4 else f"{MP4_DIR}/{serial}.mp4"
                      for serial in episode.serials.values() if serial in episode.stereo_mp4 or serial in episode.mp4]
    return [episode.metadata_file, *([TRAJECTORY] if episode.has_h5 else []), *recordings]


def _nothing(episode: Episode, config: Config) -> list[str]:
    return []


STEPS: tuple[Step, ...] = (
    Step("fetch", ("metadata", "full"), "droid_pipeline.execution.fetch:fetch_step", _nothing,
         "the files the pipeline's other steps read, from a remote droid_root",
         "a checked copy of them in scratch_dir (removed when the episode ends)", remote_only=True),
    Step("intrinsics", ("metadata", "full"), "droid_pipeline.steps.intrinsics:extract_intrinsics",
         _metadata_inputs, "metadata json, trajectory.h5, each camera's left-image MP4 (its size)",
         "recordings/<serial>/intrinsics.json", libraries=("h5py", "av")),
    Step("depth", ("full",), "droid_pipeline.steps.depth:extract_depth", _depth_inputs,
         "metadata json, trajectory.h5, the SVOs (zed backend) or side-by-side stereo MP4s (stereo backend)",
         "recordings/<serial>/depth.mkv, depth_meta.json (rgb.mp4 with export_rgb)", libraries=("h5py", "av")),
    Step("tracks", ("metadata", "full"), "droid_pipeline.steps.tracks:generate_tracks", _metadata_inputs,
         "metadata json, trajectory.h5, each camera's left-image MP4 (frame count), the steps' outputs",
         "tracks.npz, extrinsics.npz, quality.json", libraries=("h5py", "av", "isal"), warm_up="warm_up"),
)
# Timed like a step by the worker, after the steps: the atomic move into output_root.
PUBLISH = "publish"
STEP_NAMES = (*(step.name for step in STEPS), PUBLISH)
BY_NAME = {step.name: step for step in STEPS}


def pipeline_steps(pipeline: str) -> tuple[str, ...]:
    """The steps a pipeline runs, in order."""
    return tuple(step.name for step in STEPS if pipeline in step.pipelines)


def files_to_fetch(pipeline: str, episode: Episode, config: Config) -> list[str]:
    """The episode's files (relative to its folder) that the pipeline's steps open, each once."""
    wanted: dict[str, None] = {}
    for step in STEPS:
        if pipeline in step.pipelines:
            wanted.update(dict.fromkeys(step.reads(episode, config)))
    return list(wanted)


def markdown_table() -> str:
    """The steps as docs/running.md shows them (a test keeps the two equal)."""
    rows = ["| step | pipelines | reads | writes |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {', '.join(s.pipelines)} | {s.reads_text} | {s.writes} |" for s in STEPS]
    return "\n".join(rows) + "\n"
