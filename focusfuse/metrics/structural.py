"""Qy (Yang et al.): SSIM-based fusion quality, source-weighted where the sources agree.

Follows Zheng Liu's metricYang with the conventions of
``../shared/metric_vectors/README.md``: a 7x7 Gaussian window (sigma 1.5) with
'valid' filtering, SSIM constants 2e-16 plus 1e-10 on the denominator, and the 0.75 similarity switch.
"""

from __future__ import annotations

import cv2
import numpy as np

WINDOW_SIZE = 7
WINDOW_SIGMA = 1.5
SSIM_CONSTANT = 2e-16
SIMILARITY_SWITCH = 0.75
DENOMINATOR_GUARD = 1e-10


def _gaussian_window() -> np.ndarray:
    """MATLAB fspecial('gaussian', 7, 1.5): normalised to sum 1."""
    half = (WINDOW_SIZE - 1) / 2
    grid = np.arange(WINDOW_SIZE) - half
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    window = np.exp(-(xx * xx + yy * yy) / (2 * WINDOW_SIGMA * WINDOW_SIGMA))
    return window / window.sum()


WINDOW = _gaussian_window()


def _filter_valid(image: np.ndarray) -> np.ndarray:
    """Correlation with the window, keeping only positions where it fits (filter2 'valid')."""
    margin = WINDOW_SIZE // 2
    filtered = cv2.filter2D(image, cv2.CV_64F, WINDOW, borderType=cv2.BORDER_CONSTANT)
    return filtered[margin:-margin, margin:-margin]


def _flat_windows(image: np.ndarray) -> np.ndarray:
    """True where the 7x7 window is exactly constant ('valid' positions)."""
    margin = WINDOW_SIZE // 2
    footprint = np.ones((WINDOW_SIZE, WINDOW_SIZE), np.uint8)
    low = cv2.erode(image, footprint, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(image, footprint, borderType=cv2.BORDER_REPLICATE)
    return (low == high)[margin:-margin, margin:-margin]


def _local_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window mean, variance and flatness.

    E[x^2] - E[x]^2 leaves rounding noise (up to ~1e-11 on a 0..255 scale) in
    exactly constant windows, and SSIM of such a window is then a ratio of noises
    (values like 8 for a whole image were seen); their variance is set to the exact 0.
    """
    mean = _filter_valid(image)
    flat = _flat_windows(image)
    variance = np.where(flat, 0.0, _filter_valid(image * image) - mean * mean)
    return mean, variance, flat


def _ssim_map(mean_1, variance_1, mean_2, variance_2, covariance) -> np.ndarray:
    numerator = (2 * mean_1 * mean_2 + SSIM_CONSTANT) * (2 * covariance + SSIM_CONSTANT)
    denominator = (mean_1 * mean_1 + mean_2 * mean_2 + SSIM_CONSTANT) * (variance_1 + variance_2 + SSIM_CONSTANT)
    # The extra 1e-10 makes exactly flat windows (variances of rounding size) score ~0.
    return numerator / (denominator + DENOMINATOR_GUARD)


def qy(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Qy of ``fused`` against two sources; all three are prepared 2-D float64 arrays."""
    mean_a, variance_a, flat_a = _local_statistics(source_a)
    mean_b, variance_b, flat_b = _local_statistics(source_b)
    mean_f, variance_f, flat_f = _local_statistics(fused)

    def covariance(x, y, mean_x, mean_y, flat_x, flat_y) -> np.ndarray:
        return np.where(flat_x | flat_y, 0.0, _filter_valid(x * y) - mean_x * mean_y)

    ssim_ab = _ssim_map(
        mean_a, variance_a, mean_b, variance_b, covariance(source_a, source_b, mean_a, mean_b, flat_a, flat_b)
    )
    ssim_af = _ssim_map(
        mean_a, variance_a, mean_f, variance_f, covariance(source_a, fused, mean_a, mean_f, flat_a, flat_f)
    )
    ssim_bf = _ssim_map(
        mean_b, variance_b, mean_f, variance_f, covariance(source_b, fused, mean_b, mean_f, flat_b, flat_f)
    )
    weight_a = variance_a / (variance_a + variance_b + 1e-10)
    similar = ssim_ab >= SIMILARITY_SWITCH
    quality = np.where(similar, weight_a * ssim_af + (1 - weight_a) * ssim_bf, np.maximum(ssim_af, ssim_bf))
    return float(np.mean(quality))
