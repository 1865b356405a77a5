"""CPU stereo depth from rectified side-by-side frames: OpenCV StereoSGBM plus a left-right check.

DROID's ``<serial>-stereo.mp4`` holds the ZED SDK's rectified left and right views side by side,
so rows correspond and a scene point at depth ``Z`` appears ``d = fx * B / Z`` pixels further
left in the right view (``fx`` the rectified focal length in pixels, ``B`` the baseline).
:class:`StereoMatcher` matches the left view against the right one with semi-global block
matching (``cv2.StereoSGBM``, settings from ``config.stereo``) at 1/16 pixel resolution and,
when ``lr_check`` is on, matches the mirrored pair as well (mirroring both views and swapping
them turns right-to-left matching into ordinary left-to-right matching), then keeps a left
pixel only where the right view's disparity at the pixel it maps to agrees within
``lr_max_diff_px``. This removes occluded and mismatched pixels, which SGBM alone fills with
plausible but wrong values. Everything is whole-array NumPy/OpenCV; one pair in memory at a time.
"""

from __future__ import annotations

import cv2
import numpy as np

from droid_pipeline.core.config import StereoConfig

# StereoSGBM returns fixed-point disparities with 4 fractional bits.
DISPARITY_SCALE = 16.0
# SGBM leaves the first numDisparities columns unmatched; padding both views on the left by that
# much lets every real column search the disparities that stay inside the image.
BORDER = cv2.BORDER_REPLICATE


def split_side_by_side(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left and right halves of a ``left|right`` frame (views, no copy); the width must be even."""
    width = frame.shape[1]
    if width % 2:
        raise ValueError(f"side-by-side frame has odd width {width}")
    half = width // 2
    return frame[:, :half], frame[:, half:]


def to_gray(image: np.ndarray) -> np.ndarray:
    """8-bit single-channel view of an RGB (H, W, 3) or already gray (H, W) uint8 image."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def disparity_to_depth_mm(disparity: np.ndarray, fx: float, baseline_m: float) -> np.ndarray:
    """Depth in millimetres, ``fx * B / d``; NaN where the disparity is NaN or not positive."""
    disparity = np.asarray(disparity, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(fx * baseline_m * 1000.0) / disparity
    depth[~(disparity > 0)] = np.nan
    return depth


class StereoMatcher:
    """Disparity and depth of rectified stereo pairs with the configured SGBM and left-right check."""

    def __init__(self, settings: StereoConfig):
        self.settings = settings
        # Pixels SGBM matched, and of those the ones the left-right check kept, over every pair so far.
        self.matched_pixels = self.consistent_pixels = 0
        block = settings.block_size | 1  # SGBM needs an odd block size
        self.num_disparities = -(-settings.num_disparities // 16) * 16
        self._sgbm = cv2.StereoSGBM.create(
            minDisparity=0, numDisparities=self.num_disparities, blockSize=block,
            P1=8 * block * block, P2=32 * block * block, disp12MaxDiff=-1,
            uniquenessRatio=settings.uniqueness_ratio,
            speckleWindowSize=settings.speckle_window_size, speckleRange=settings.speckle_range,
            mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)

    def disparity(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Left-view disparity in pixels (float32, NaN = no reliable match) of a rectified pair."""
        left, right = to_gray(left), to_gray(right)
        if left.shape != right.shape:
            raise ValueError(f"left and right views differ in size: {left.shape} vs {right.shape}")
        disparity = self._match(left, right)
        if self.settings.lr_check:
            mirrored = self._match(np.ascontiguousarray(right[:, ::-1]),
                                   np.ascontiguousarray(left[:, ::-1]))
            self.matched_pixels += int(np.count_nonzero(np.isfinite(disparity)))
            disparity = consistent(disparity, mirrored[:, ::-1], self.settings.lr_max_diff_px)
            self.consistent_pixels += int(np.count_nonzero(np.isfinite(disparity)))
        return disparity

    @property
    def lr_consistent_fraction(self) -> float | None:
        """Of the pixels SGBM matched so far, the fraction the left-right check kept (None without
        the check or a match): low when the views do not form a rectified left|right pair."""
        return self.consistent_pixels / self.matched_pixels if self.matched_pixels else None

    def depth_mm(self, left: np.ndarray, right: np.ndarray, fx: float, baseline_m: float) -> np.ndarray:
        """Left-view depth in millimetres (float32, NaN = invalid) of a rectified pair."""
        return disparity_to_depth_mm(self.disparity(left, right), fx, baseline_m)

    def _match(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        pad = self.num_disparities
        raw = self._sgbm.compute(cv2.copyMakeBorder(left, 0, 0, pad, 0, BORDER),
                                 cv2.copyMakeBorder(right, 0, 0, pad, 0, BORDER))[:, pad:]
        disparity = raw.astype(np.float32) / np.float32(DISPARITY_SCALE)
        disparity[raw <= 0] = np.nan  # SGBM marks unmatched pixels with minDisparity - 1
        return disparity


def consistent(left_disparity: np.ndarray, right_disparity: np.ndarray, max_diff: float) -> np.ndarray:
    """``left_disparity`` with NaN wherever the right view's disparity disagrees by > ``max_diff``.

    Left pixel ``(y, x)`` with disparity ``d`` maps to right pixel ``(y, round(x - d))``; the right
    view's disparity there (right-to-left, positive) must be within ``max_diff`` of ``d``.
    """
    height, width = left_disparity.shape
    columns = np.arange(width, dtype=np.float32)[None, :]
    with np.errstate(invalid="ignore"):
        target = np.rint(columns - left_disparity)
    inside = (target >= 0) & (target < width)  # NaN compares False: unmatched stay out
    index = np.where(inside, target, 0).astype(np.intp)
    back = np.take_along_axis(right_disparity, index, axis=1)
    with np.errstate(invalid="ignore"):
        keep = inside & (np.abs(back - left_disparity) <= max_diff)
    return np.where(keep, left_disparity, np.float32(np.nan)).astype(np.float32, copy=False)
