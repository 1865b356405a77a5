"""The one error type a pipeline step raises for bad input: it names episode, step and cause."""

from __future__ import annotations


class EpisodeError(RuntimeError):
    """An episode cannot be processed by a step; the run goes on with the other episodes."""

    def __init__(self, episode_id: str, step: str, cause: str):
        self.episode_id = episode_id
        self.step = step
        self.cause = cause
        super().__init__(f"episode {episode_id}: step {step}: {cause}")
