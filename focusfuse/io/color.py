"""What the network sees: gray in [0, 1], whatever the file held.

The dtype policy lives here too: fused pixels are source pixels, so the output
keeps the input dtype (uint8 -> uint8, uint16 -> uint16, float32 -> float32).
"""

from __future__ import annotations

import numpy as np

GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def unit_scale(dtype: np.dtype) -> float:
    """Divisor that maps the dtype's full range to [0, 1] (1 for float32)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return 1.0


def to_gray(image: np.ndarray, *, scale: float | None = None, offset: float = 0.0) -> np.ndarray:
    """Gray float32 ``(H, W)`` in [0, 1] from ``(H, W)`` or ``(H, W, C)``.

    Three or more channels are taken as RGB(+alpha): gray = 0.2125 R + 0.7154 G +
    0.0721 B. One or two channels (gray, gray + alpha) use the first.
    ``(value - offset) / scale`` maps to [0, 1]; the default scale is the dtype's range.
    """
    if scale is None:
        scale = unit_scale(image.dtype)
    if image.ndim == 3:
        if image.shape[2] >= 3:
            gray = image[:, :, :3].astype(np.float32) @ GRAY_WEIGHTS
        else:
            gray = image[:, :, 0].astype(np.float32)
    else:
        gray = image.astype(np.float32)
    if offset:
        gray -= offset
    if scale != 1.0:
        gray *= np.float32(1.0 / scale)
    return gray


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip a float result into an integer dtype, or keep float32."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
