"""What the network sees: gray in [0, 1], converted a band of rows at a time."""

from __future__ import annotations

import numpy as np
import pytest

import focusfuse.io.color as color
from focusfuse.io.color import GRAY_WEIGHTS, to_gray


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535), (np.float32, 1.0)])
@pytest.mark.parametrize("channels", [0, 1, 2, 3, 4])
def test_gray_in_bands_is_the_whole_image_at_once(monkeypatch, dtype, top, channels):
    """Bands of 7 rows (and a short last one) give the numbers of the whole-image formula."""
    rng = np.random.default_rng(channels)
    shape = (45, 31) if channels == 0 else (45, 31, channels)
    image = (rng.random(shape) * top).astype(dtype)
    monkeypatch.setattr(color, "GRAY_BAND_PIXELS", 7 * 31)
    for scale, offset in ((None, 0.0), (1000.0, 12.5)):
        whole = image[:, :, :3].astype(np.float32) @ GRAY_WEIGHTS if channels >= 3 else image.astype(np.float32)
        if channels in (1, 2):
            whole = whole[:, :, 0]
        whole -= np.float32(offset)
        divisor = color.unit_scale(image.dtype) if scale is None else scale
        if divisor != 1.0:
            whole *= np.float32(1.0 / divisor)
        gray = to_gray(image, scale=scale, offset=offset)
        assert gray.dtype == np.float32 and gray.shape == (45, 31)
        np.testing.assert_array_equal(gray, whole)
