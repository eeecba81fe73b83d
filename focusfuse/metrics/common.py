"""Image preparation and the small filtering helpers the metric definitions share.

The reference values (``../shared/metric_vectors/README.md``) depend on exactly how
images are prepared and on the order in which filter sums are accumulated, so both
live here, once.
"""

from __future__ import annotations

import cv2
import numpy as np

# Luma weights of the reference (Rec. 709), applied to 8-bit RGB and divided by 255.
REFERENCE_GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def prepare_image(image: np.ndarray) -> np.ndarray:
    """The 2-D float64 array the metrics are defined on.

    Colour ``(H, W, 3)`` images become gray in [0, 1]
    ((0.2125 R + 0.7154 G + 0.0721 B) / 255 on the 8-bit scale); gray ``(H, W)``
    images stay in 0..255, not rescaled, as the reference does. uint16 inputs are
    brought to the 8-bit scale (/257) and float inputs are taken to be in [0, 1].

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (alpha ignored), uint8,
            uint16 or float.
    """
    values = np.asarray(image)
    if values.dtype == np.uint8:
        values = values.astype(np.float64)
    elif values.dtype == np.uint16:
        values = values.astype(np.float64) / 257.0
    else:
        values = values.astype(np.float64) * 255.0
    if values.ndim == 2:
        return values
    if values.ndim == 3 and values.shape[2] in (3, 4):
        # Scaling each channel before weighting matches the reference's rounding best.
        red, green, blue = (values[:, :, channel] / 255.0 for channel in range(3))
        weight_r, weight_g, weight_b = REFERENCE_GRAY_WEIGHTS
        return weight_r * red + weight_g * green + weight_b * blue
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {values.shape}")


def correlate_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation with zero padding, output the size of ``image`` (MATLAB ``filter2(k, I, 'same')``).

    OpenCV's direct 3x3 filter sums the taps in row-major order; exact cancellations
    in flat areas (which decide Qg's orientations) depend on that order.
    """
    return cv2.filter2D(image, cv2.CV_64F, np.asarray(kernel, dtype=np.float64), borderType=cv2.BORDER_CONSTANT)


def stretch_to_8bit(image: np.ndarray) -> np.ndarray:
    """Min-max stretch to 0..255, rounded half away from zero (MATLAB ``round``).

    An all-zero image is returned unchanged, as in the reference ``normalize1``.
    """
    high, low = float(image.max()), float(image.min())
    if high == 0.0 and low == 0.0:
        return image.astype(np.float64)
    if high == low:
        # The reference divides 0 by 0 here; a constant image carries no information.
        return np.zeros_like(image, dtype=np.float64)
    return np.floor((image - low) / (high - low) * 255.0 + 0.5)
