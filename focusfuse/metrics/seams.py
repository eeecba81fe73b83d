"""Seams without ground truth: edges in the fused image that no slice shows.

A fused edge stronger than the strongest edge any slice has at that place is a seam,
a ghost or a halo made by the fusion. With every image in gray [0, 1], smoothed by a
3x3 Gaussian (sigma 0.8), and G the Sobel gradient magnitude (3x3 kernels,
unnormalised), Gmax the largest G over the slices at each pixel:

- ``spurious`` = sum max(0, G_fused - Gmax) / sum Gmax: the spurious-edge ratio;
- ``seam_px`` = the fraction of pixels where G_fused > 1.5 Gmax + 0.05;
- ``edge_kept`` = sum min(G_fused, Gmax) / sum Gmax: how much of the sharpest slice's
  edge energy survives, so that blurring everything does not pass.

The slices stream through (``SeamMeter.add_slice``), so memory does not grow with N.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from focusfuse.io.color import to_gray

SMOOTH_SIGMA = 0.8
SEAM_FACTOR = 1.5
SEAM_MARGIN = 0.05


def gradient_magnitude(image: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Sobel magnitude of the smoothed gray image, float32 ``(H, W)``."""
    gray = to_gray(image, scale=scale)
    smooth = cv2.GaussianBlur(gray, (3, 3), SMOOTH_SIGMA, borderType=cv2.BORDER_REFLECT)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(gx, gy)


@dataclass
class SeamScores:
    spurious: float  # ratio, 0.027 = 2.7 %
    seam_px: float  # fraction of pixels, 0.0165 = 16.5 per mille
    edge_kept: float  # ratio

    def row(self) -> str:
        return (
            f"spurious {self.spurious:7.3%}  seam_px {self.seam_px * 1000:7.3f}\u2030  edge_kept {self.edge_kept:6.1%}"
        )


class SeamMeter:
    """Gmax over the slices as they stream in, then any number of fused images scored against it."""

    def __init__(self, scale: float | None = None) -> None:
        self.scale = scale
        self.peak: np.ndarray | None = None

    def add_slice(self, image: np.ndarray) -> None:
        magnitude = gradient_magnitude(image, self.scale)
        self.peak = magnitude if self.peak is None else np.maximum(self.peak, magnitude)

    def score(self, fused: np.ndarray) -> SeamScores:
        if self.peak is None:
            raise ValueError("SeamMeter.score() before any slice was added")
        fused_magnitude = gradient_magnitude(fused, self.scale)
        if fused_magnitude.shape != self.peak.shape:
            raise ValueError(f"fused image {fused_magnitude.shape} and slices {self.peak.shape} differ in size")
        total = float(self.peak.sum(dtype=np.float64))
        excess = float(np.maximum(fused_magnitude - self.peak, 0.0).sum(dtype=np.float64))
        kept = float(np.minimum(fused_magnitude, self.peak).sum(dtype=np.float64))
        seams = fused_magnitude > SEAM_FACTOR * self.peak + SEAM_MARGIN
        return SeamScores(
            spurious=excess / max(total, 1e-12), seam_px=float(seams.mean()), edge_kept=kept / max(total, 1e-12)
        )


def seam_scores(slices: list[np.ndarray], fused: np.ndarray) -> SeamScores:
    """The three measures of one fused image against its slices (all of one dtype)."""
    meter = SeamMeter()
    for image in slices:
        meter.add_slice(image)
    return meter.score(fused)
