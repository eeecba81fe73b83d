"""Qcb (Chen-Blum): a human-visual-system model of contrast preservation.

Follows Zheng Liu's metricChenBlum with the conventions of
``../shared/metric_vectors/README.md``: a Mannos-Sakrison contrast sensitivity filter
applied in the frequency domain, local contrast from 31x31 Gaussians of sigma 2
and 4, masked contrast C^3 / (C^2 + 1e-4), and saliency-weighted preservation.
"""

from __future__ import annotations

import cv2
import numpy as np

from focusfuse.metrics.common import stretch_to_8bit

CSF_PEAK = 15.3870  # f0, cycles per degree
CSF_LOW = 1.3456  # f1
CSF_LOW_WEIGHT = 0.7622  # a
MASKING_FLOOR = 1e-4  # Z in C' = C^p / (C^q + Z), p = 3, q = 2
GAUSSIAN_HALF = 15  # 31x31 kernels


def _contrast_sensitivity(height: int, width: int) -> np.ndarray:
    """CSF on the centred (fftshift) frequency grid, MATLAB freqspace scaled by N/30."""

    def axis(size: int) -> np.ndarray:
        return (np.arange(size) - size // 2) * (2.0 / size) * (size / 30.0)

    v, u = np.meshgrid(axis(height), axis(width), indexing="ij")
    radius = np.sqrt(u * u + v * v)
    return np.exp(-((radius / CSF_PEAK) ** 2)) - CSF_LOW_WEIGHT * np.exp(-((radius / CSF_LOW) ** 2))


def _gaussian(sigma: float) -> np.ndarray:
    """Un-normalised 31x31 Gaussian scaled by 1 / (2 pi sigma^2), as the reference builds it."""
    grid = np.arange(-GAUSSIAN_HALF, GAUSSIAN_HALF + 1, dtype=np.float64)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    return np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma)) / (2 * np.pi * sigma * sigma)


CENTRE_GAUSSIAN = _gaussian(2.0)
SURROUND_GAUSSIAN = _gaussian(4.0)


def _masked_contrast(image: np.ndarray, sensitivity: np.ndarray) -> np.ndarray:
    """C' = C^3 / (C^2 + Z) of the CSF-filtered image, C = |G2 * I / G4 * I - 1|."""
    spectrum = np.fft.fftshift(np.fft.fft2(image)) * sensitivity
    filtered = np.real(np.fft.ifft2(np.fft.ifftshift(spectrum)))
    centre = cv2.filter2D(filtered, cv2.CV_64F, CENTRE_GAUSSIAN, borderType=cv2.BORDER_CONSTANT)
    surround = cv2.filter2D(filtered, cv2.CV_64F, SURROUND_GAUSSIAN, borderType=cv2.BORDER_CONSTANT)
    contrast = np.abs(centre / surround - 1.0)
    return contrast**3 / (contrast**2 + MASKING_FLOOR)


def _preservation(source: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """min(C'S / C'F, C'F / C'S) per pixel."""
    return np.where(source < fused, source / fused, fused / source)


def qcb(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Qcb of ``fused`` against two sources; all three are prepared 2-D float64 arrays."""
    sensitivity = _contrast_sensitivity(*source_a.shape)
    contrast_a, contrast_b, contrast_f = (
        _masked_contrast(stretch_to_8bit(image), sensitivity) for image in (source_a, source_b, fused)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        saliency_a, saliency_b = contrast_a**2, contrast_b**2
        weight_a = saliency_a / (saliency_a + saliency_b)
        weight_b = saliency_b / (saliency_a + saliency_b)
        quality = weight_a * _preservation(contrast_a, contrast_f) + weight_b * _preservation(contrast_b, contrast_f)
    return float(np.mean(quality))
