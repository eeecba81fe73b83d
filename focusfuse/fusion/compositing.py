"""Compositing: the fused image from the index map and the slices.

``select`` copies every pixel from its chosen slice: exact source intensities, but
wherever the choice changes between neighbouring pixels, any brightness, blur or
position difference between the two slices becomes an edge that no slice has.
``pyramid`` blends the slices in a Laplacian pyramid with the one-hot masks of the
index map (Burt and Adelson's multiresolution spline, as enfuse's ``--hard-mask``
does): fine detail still comes from the chosen slice alone, while coarse levels,
where brightness differences live, change gradually across a choice boundary, so
those differences fade out over a width that grows with the level instead of
stepping at one pixel. The index map is the same in both modes.

Slices stream through one at a time and only slices that the index map uses are
read, so memory is one accumulator pyramid (4/3 of the image in float32) plus one
slice's pyramid, whatever N is. A large image is blended in horizontal strips
(``composite_pyramid(..., max_pixels=)``), each with ``strip_halo`` rows above and
below, starting on rows that are multiples of 2 ** levels, so that every level samples
the same rows as the whole image's pyramid would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

Composite = Literal["pyramid", "select"]
COMPOSITES: tuple[str, ...] = ("pyramid", "select")
# Pyramid levels below full resolution. The blend around a choice boundary reaches
# about 2 ** (levels + 1) px at the coarsest level. Chosen on synthetic stacks with
# acquisition nuisances (bench/seams.py --seed 1 --levels L, not the seed it reports):
# from 3 to 7 levels the spurious-edge ratio fell 0.21 -> 0.15% and PSNR rose
# 30.00 -> 30.50 dB; 8 added 0.03 dB. Clean stacks did not change (36.52 dB).
PYRAMID_LEVELS = 7
# Bytes per pixel and channel while a strip is blended: the float32 slice, its Gaussian and
# Laplacian pyramids and the accumulator pyramid, the mask pyramid shared by the channels.
COMPOSITE_BYTES_PER_CHANNEL_PIXEL = 40
# A strip's halo in units of the coarsest level's pixels: the 5-tap kernels of pyrDown and of
# pyrUp in the collapse reach about 2 such pixels each. With 2, strips differ from the whole
# blend by at most one grey level on under 0.5% of the pixels (tests/fusion/test_tiling.py).
STRIP_HALO_UNITS = 2


def level_count(height: int, width: int, levels: int = PYRAMID_LEVELS) -> int:
    """Levels that fit the image: the coarsest level keeps at least 2 px on each side."""
    fitting = 0
    while fitting < levels and min(height, width) >> (fitting + 1) >= 2:
        fitting += 1
    return fitting


def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Band-pass levels, finest first, and the low-pass residual last (float32)."""
    gaussian = [image]
    for _ in range(levels):
        gaussian.append(cv2.pyrDown(gaussian[-1]))
    bands = []
    for fine, coarse in zip(gaussian[:-1], gaussian[1:], strict=True):
        bands.append(fine - cv2.pyrUp(coarse, dstsize=(fine.shape[1], fine.shape[0])))
    bands.append(gaussian[-1])
    return bands


def _mask_pyramid(mask: np.ndarray, levels: int) -> list[np.ndarray]:
    """A slice's weight at every level: its Gaussian pyramid, with the half-resolution level
    a plain 2x2 average instead, so the two finest bands switch slices within a pixel or
    two and only coarser ones blend. With the 5-tap Gaussian at that level too, the
    finest detail mixed across every boundary: 0.03 dB below ``select`` on clean 20-slice
    stacks, against 0.01 above (bench/multislice.py's stacks, seed 1, probe).
    """
    pyramid = [mask]
    for _ in range(levels):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    if levels >= 1:
        height, width = pyramid[1].shape[:2]
        pyramid[1] = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    return pyramid


def _collapse(bands: list[np.ndarray]) -> np.ndarray:
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = cv2.pyrUp(image, dstsize=(band.shape[1], band.shape[0])) + band
    return image


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range (a blend can overshoot); floats stay as they are."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(dtype)


class PyramidBlend:
    """Accumulates slices, each weighted by its one-hot mask at every pyramid level.

    ``add`` each slice the index map uses (in any order), then ``result``. A pixel
    whose whole neighbourhood, out to the coarsest level, comes from one slice is that
    slice's pixel (to float rounding).
    """

    def __init__(self, index_map: np.ndarray, levels: int = PYRAMID_LEVELS, *, fit: bool = True) -> None:
        """``fit``: fewer levels where the image is too small for ``levels`` (``level_count``)."""
        self.index_map = index_map
        height, width = index_map.shape
        self.levels = level_count(height, width, levels) if fit else levels
        self.accumulator: list[np.ndarray] | None = None
        self.dtype: np.dtype | None = None

    def used_slices(self, n_slices: int) -> list[int]:
        """The slices the index map takes any pixel from: the only ones that contribute."""
        return np.flatnonzero(np.bincount(self.index_map.ravel(), minlength=n_slices)).tolist()

    def add(self, index: int, image: np.ndarray) -> None:
        """Fold in slice ``index``, ``(H, W)`` or ``(H, W, C)``."""
        self.dtype = image.dtype
        bands = _laplacian_pyramid(image.astype(np.float32), self.levels)
        weights = _mask_pyramid((self.index_map == index).astype(np.float32), self.levels)
        if image.ndim == 3:
            weights = [weight[:, :, None] for weight in weights]
        if self.accumulator is None:
            self.accumulator = [band * weight for band, weight in zip(bands, weights, strict=True)]
            return
        for total, band, weight in zip(self.accumulator, bands, weights, strict=True):
            total += band * weight

    def result(self) -> np.ndarray:
        """The blended image in the slices' dtype (integers rounded and clipped to their range)."""
        if self.accumulator is None or self.dtype is None:
            raise ValueError("PyramidBlend.result() before any slice was added")
        return _to_dtype(_collapse(self.accumulator), self.dtype)


def strip_halo(levels: int) -> int:
    """Rows above and below a strip that its blend reads but does not keep."""
    return STRIP_HALO_UNITS * 2**levels


def strip_rows(height: int, width: int, levels: int, max_pixels: int | None) -> list[tuple[int, int]]:
    """Rows ``(start, stop)`` of the strips a blend of at most ``max_pixels`` (halo included) takes.

    Strip starts are multiples of 2 ** levels; one strip when the image fits.
    """
    if max_pixels is None or height * width <= max_pixels:
        return [(0, height)]
    unit = 2**levels
    core_rows = max_pixels // width - 2 * strip_halo(levels)
    core_rows = max(unit, core_rows // unit * unit)
    return [(start, min(height, start + core_rows)) for start in range(0, height, core_rows)]


def composite_pyramid(
    read: Callable[[int], np.ndarray],
    index_map: np.ndarray,
    n_slices: int,
    levels: int = PYRAMID_LEVELS,
    *,
    max_pixels: int | None = None,
) -> np.ndarray:
    """The pyramid blend of the slices ``read(j)`` under ``index_map`` (``(H, W)``, 0-based).

    With ``max_pixels`` the image is blended in strips of at most about that many pixels.
    """
    height, width = index_map.shape
    levels = level_count(height, width, levels)
    strips = strip_rows(height, width, levels, max_pixels)
    if len(strips) == 1:
        blend = PyramidBlend(index_map, levels, fit=False)
        for j in blend.used_slices(n_slices):
            blend.add(j, read(j))
        return blend.result()
    halo = strip_halo(levels)
    fused: np.ndarray | None = None
    for start, stop in strips:
        top, bottom = max(0, start - halo), min(height, stop + halo)
        blend = PyramidBlend(index_map[top:bottom], levels, fit=False)
        for j in blend.used_slices(n_slices):
            blend.add(j, read(j)[top:bottom])
        strip = blend.result()
        if fused is None:
            fused = np.empty((height, *strip.shape[1:]), strip.dtype)
        fused[start:stop] = strip[start - top : stop - top]
    assert fused is not None
    return fused
