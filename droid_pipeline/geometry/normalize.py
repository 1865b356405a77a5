"""Arc-length resampling of a path: one sample every ``step`` millimetres of travel.

The path is the piecewise-linear polyline through the per-frame points (cumulative chord
lengths). Sample k lies exactly k * step along it, the last one at the path's end, so
consecutive samples are at most ``step`` apart. Values attached to the frames are carried to
the samples by linear interpolation between the two bracketing frames, rotations by Slerp
(geodesic, never Euler). A path with no motion at all gives one sample.

Within a stretch where the path does not move (the arm rotates in place, or waits), every
frame sits at the same arc length; a sample there takes the LAST such frame, the pose with which
the path leaves that point (at the path's end: the final frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from droid_pipeline.geometry.rotations import slerp_matrices

# A remainder shorter than this (mm) after the last whole step is rounding, not another sample.
END_TOLERANCE_MM = 1e-9


@dataclass(frozen=True)
class ArcLengthSampling:
    """Where each arc-length sample falls on the per-frame path.

    Sample m lies between frames ``lower[m]`` and ``upper[m]`` (``upper = lower + 1``, or equal
    for a one-frame path) at ``fraction[m]`` in [0, 1] of that segment.
    """

    cumulative_distance_mm: np.ndarray   # (T,) arc length of each frame, from 0
    sample_distance_mm: np.ndarray       # (M,) arc length of each sample: k * step, last = end
    lower: np.ndarray                    # (M,) int
    upper: np.ndarray                    # (M,) int
    fraction: np.ndarray                 # (M,)
    frame_to_sample: np.ndarray          # (T,) nearest sample of each frame, non-decreasing

    @property
    def num_samples(self) -> int:
        return int(self.sample_distance_mm.shape[0])

    @property
    def path_length_mm(self) -> float:
        return float(self.cumulative_distance_mm[-1])


def cumulative_distance_mm(points_m: np.ndarray) -> np.ndarray:
    """(T, 3) points in metres -> (T,) arc length in millimetres along their polyline, from 0."""
    points_m = np.asarray(points_m, dtype=np.float64)
    chords = np.linalg.norm(np.diff(points_m, axis=0), axis=1) * 1000.0
    return np.concatenate([[0.0], np.cumsum(chords)])


def arc_length_sampling(points_m: np.ndarray, step_mm: float) -> ArcLengthSampling:
    """Place samples every ``step_mm`` along the polyline through ``points_m`` (T, 3), metres."""
    points_m = np.asarray(points_m, dtype=np.float64)
    if points_m.ndim != 2 or points_m.shape[1] != 3 or points_m.shape[0] == 0:
        raise ValueError(f"need (T>=1, 3) path points, got shape {points_m.shape}")
    if not np.isfinite(points_m).all():
        raise ValueError("path points contain NaN or inf")
    if not step_mm > 0:
        raise ValueError(f"step must be positive, got {step_mm}")
    cumulative = cumulative_distance_mm(points_m)
    length = cumulative[-1]
    whole_steps = int(np.floor(length / step_mm + END_TOLERANCE_MM / step_mm))
    samples = np.arange(whole_steps + 1, dtype=np.float64) * step_mm
    samples = np.minimum(samples, length)
    if length - samples[-1] > END_TOLERANCE_MM:
        samples = np.append(samples, length)

    num_frames = cumulative.shape[0]
    last_segment = max(num_frames - 2, 0)
    lower = np.clip(np.searchsorted(cumulative, samples, side="right") - 1, 0, last_segment)
    upper = np.minimum(lower + 1, num_frames - 1)
    span = cumulative[upper] - cumulative[lower]
    moving = span > 0
    fraction = np.ones_like(samples) if num_frames > 1 else np.zeros_like(samples)
    fraction[moving] = np.clip((samples[moving] - cumulative[lower[moving]]) / span[moving], 0.0, 1.0)
    return ArcLengthSampling(cumulative, samples, lower, upper, fraction,
                             _nearest_sample(cumulative, samples))


def _nearest_sample(cumulative: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Index of the sample nearest each frame's arc length (ties to the earlier sample)."""
    right = np.clip(np.searchsorted(samples, cumulative, side="left"), 0, samples.shape[0] - 1)
    left = np.maximum(right - 1, 0)
    take_left = np.abs(cumulative - samples[left]) <= np.abs(samples[right] - cumulative)
    return np.where(take_left, left, right).astype(np.int64)


def interpolate_linear(values: np.ndarray, sampling: ArcLengthSampling) -> np.ndarray:
    """(T, ...) per-frame values -> (M, ...) linearly interpolated at the samples."""
    values = np.asarray(values, dtype=np.float64)
    weight = sampling.fraction.reshape(-1, *([1] * (values.ndim - 1)))
    return values[sampling.lower] * (1.0 - weight) + values[sampling.upper] * weight


def interpolate_rotations(rotations: np.ndarray, sampling: ArcLengthSampling) -> np.ndarray:
    """(T, 3, 3) per-frame rotations -> (M, 3, 3) by Slerp between the bracketing frames.

    R = R_lower @ exp(fraction * log(R_lower^T @ R_upper)): the constant-speed geodesic.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    start = rotations[sampling.lower]
    return slerp_matrices(start, rotations[sampling.upper], sampling.fraction)
