"""What the network sees: gray in [0, 1], whatever the file held.

The dtype policy lives here too: fused pixels are source pixels, so the output
keeps the input dtype (uint8 -> uint8, uint16 -> uint16, float32 -> float32).
"""

from __future__ import annotations

import numpy as np

GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
GRAY_BAND_PIXELS = 65536  # pixels of a band ``to_gray`` converts at once (a few hundred KiB of float32 RGB)


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

    Converted a band of rows at a time (``GRAY_BAND_PIXELS``): the same numbers as the
    whole image at once, without a float32 copy of every channel of a large slice (a
    pcb10 JPEG: 2.9 against 6.8-18.7 ms).
    """
    if scale is None:
        scale = unit_scale(image.dtype)
    gray = np.empty(image.shape[:2], np.float32)
    rows = max(1, GRAY_BAND_PIXELS // max(1, image.shape[1]))
    for start in range(0, image.shape[0], rows):
        part, out = image[start : start + rows], gray[start : start + rows]
        if part.ndim == 3 and part.shape[2] >= 3:
            np.matmul(part[:, :, :3].astype(np.float32), GRAY_WEIGHTS, out=out)
        else:
            out[...] = part[:, :, 0] if part.ndim == 3 else part
        if offset:
            out -= offset
        if scale != 1.0:
            out *= np.float32(1.0 / scale)
    return gray


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip a float result into an integer dtype, or keep float32."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
