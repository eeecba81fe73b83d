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

The blend is kept only where copying would leave a seam: ``pyramid`` writes
``select + need * (blend - select)``, where ``need`` (0 to 1) grows with how far the
blend moves from the copied pixels, smoothed and spread so that noise does not count
and the change between the two is gradual. Where neighbouring slices differ only by
their blur (a well-behaved stack), the blend would mix a sharp slice's detail with a
blurrier one's across every choice boundary, and copying is closer to the truth
(0.05-0.14 dB on deep 20-slice stacks, bench/multislice.py); where they differ in
brightness or position, the blend takes over. Away from choice boundaries the result
is the source pixel.

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
# Laplacian pyramids and the accumulator pyramid, the mask pyramid shared by the channels,
# and the copied (select) image and the seam-need maps beside the blend.
COMPOSITE_BYTES_PER_CHANNEL_PIXEL = 52
# Where the blend is kept (``seam_need``). Chosen on bench/multislice.py's stacks with seeds 1-3
# and bench/seams.py --seed 1, not on the seeds or stacks those benches report (probe): with the
# difference blurred by 2 px, spread by 8 px, and blending fully from half an 8-bit grey level,
# 25 of those 27 stacks are at or above ``select`` in PSNR and two 0.01 dB below (the blend
# alone: up to 0.14 dB below on 20-slice stacks), and the seam measures equal the blend's.
# A full grey level blended a little less (seam_px 0.065 against 0.046 per mille on the
# clean seams stack) at equal PSNR.
SEAM_DIFFERENCE_SIGMA = 2.0  # px: blend minus select is smoothed first, so that noise does not count
SEAM_SPREAD_SIGMA = 8.0  # px: the need is spread, so the change from copying to blending is gradual
SEAM_FULL_NEED = 0.5 / 255  # of the full range: a smoothed difference this large blends fully
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
        expanded = cv2.pyrUp(coarse, dstsize=(fine.shape[1], fine.shape[0]))
        bands.append(cv2.subtract(fine, expanded, dst=expanded))
    bands.append(gaussian[-1])
    return bands


def _mask_pyramid(mask: np.ndarray, levels: int) -> list[np.ndarray]:
    """A slice's weight at every level: the Gaussian pyramid of its one-hot mask.

    The finest band switches slices within a pixel; every coarser one blends. (A plain
    2x2 average at the half-resolution level, which kept more detail at boundaries, is
    not needed now that ``seam_need`` copies pixels where the slices differ only in blur;
    the Gaussian there left fewer seams on the nuisance stack of bench/seams.py --seed 1.)
    """
    pyramid = [mask]
    for _ in range(levels):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def _collapse(bands: list[np.ndarray]) -> np.ndarray:
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = cv2.pyrUp(image, dstsize=(band.shape[1], band.shape[0])) + band
    return image


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every channel (OpenCV blurs at most 4 channels in one call)."""
    if image.ndim == 3 and image.shape[2] > 4:
        return np.dstack([_blurred(image[:, :, c], sigma) for c in range(image.shape[2])])
    blurred = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(image.shape)


def seam_need(blended: np.ndarray, selected: np.ndarray, full_range: float | np.ndarray) -> np.ndarray:
    """How much of the blend to keep at each pixel and channel, 0 to 1 (float32, the images' shape).

    The blend's difference from the copied pixels, smoothed (noise alone does not ask
    for blending) and spread (the change from copying to blending is gradual), in
    units of ``SEAM_FULL_NEED`` of the full range (one per channel, or one for all).
    Each channel needs its own: the channels of a multichannel stack are independent images.
    """
    difference = np.abs(_blurred(blended - selected, SEAM_DIFFERENCE_SIGMA))
    need = _blurred(difference, SEAM_SPREAD_SIGMA) / (SEAM_FULL_NEED * full_range)
    return np.clip(need, 0.0, 1.0)


def _to_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range (a blend can overshoot); floats stay as they are."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(dtype)


def _weigh_in_place(band: np.ndarray, weight: np.ndarray) -> None:
    """``band *= weight`` per pixel over every channel (float32). OpenCV's element-wise
    product on the weight copied to each channel: the same products as numpy's broadcast
    over a short last axis, which steps through memory a few floats at a time."""
    if band.ndim == 2:
        cv2.multiply(band, weight, dst=band)
    elif band.shape[2] <= 4:
        cv2.multiply(band, cv2.merge([weight] * band.shape[2]), dst=band)
    else:
        np.multiply(band, weight[:, :, None], out=band)


class PyramidBlend:
    """Accumulates slices, each weighted by its one-hot mask at every pyramid level, and
    the copied pixels beside them.

    ``add`` each slice the index map uses (in any order), then ``result``. A pixel
    whose whole neighbourhood, out to the coarsest level, comes from one slice is that
    slice's pixel (to float rounding).
    """

    def __init__(
        self,
        index_map: np.ndarray,
        levels: int = PYRAMID_LEVELS,
        *,
        fit: bool = True,
        full_range: float | np.ndarray | None = None,
    ) -> None:
        """``fit``: fewer levels where the image is too small for ``levels`` (``level_count``).
        ``full_range``: the slices' range, for ``seam_need`` (default: the dtype's, 1.0 for floats)."""
        self.index_map = index_map
        height, width = index_map.shape
        self.levels = level_count(height, width, levels) if fit else levels
        self.full_range = full_range
        self.accumulator: list[np.ndarray] | None = None
        self.selected: np.ndarray | None = None
        self.dtype: np.dtype | None = None

    def used_slices(self, n_slices: int) -> list[int]:
        """The slices the index map takes any pixel from: the only ones that contribute."""
        return np.flatnonzero(np.bincount(self.index_map.ravel(), minlength=n_slices)).tolist()

    def add(self, index: int, image: np.ndarray) -> None:
        """Fold in slice ``index``, ``(H, W)`` or ``(H, W, C)``."""
        self.dtype = image.dtype
        image = image.astype(np.float32)
        chosen = self.index_map == index
        if self.selected is None:
            self.selected = np.zeros_like(image)
        if image.ndim == 2 or image.shape[2] <= 4:
            cv2.copyTo(image, chosen.view(np.uint8), self.selected)  # numpy's masked copy: 5x the time
        else:
            np.copyto(self.selected, image, where=chosen[:, :, None])
        bands = _laplacian_pyramid(image, self.levels)
        weights = _mask_pyramid(chosen.astype(np.float32), self.levels)
        for band, weight in zip(bands, weights, strict=True):
            _weigh_in_place(band, weight)  # the bands are this slice's own
        if self.accumulator is None:
            self.accumulator = bands
            return
        for total, band in zip(self.accumulator, bands, strict=True):
            cv2.add(total, band, dst=total)

    def result(self) -> np.ndarray:
        """The blend where copying leaves a seam, the copied pixels elsewhere (``seam_need``),
        in the slices' dtype (integers rounded and clipped to their range)."""
        if self.accumulator is None or self.selected is None or self.dtype is None:
            raise ValueError("PyramidBlend.result() before any slice was added")
        blended = _collapse(self.accumulator)
        full_range = self.full_range if self.full_range is not None else full_range_of(self.dtype)
        need = seam_need(blended, self.selected, full_range)
        return _to_dtype(self.selected + need * (blended - self.selected), self.dtype)


def full_range_of(dtype: np.dtype) -> float:
    """An integer dtype's largest value; 1.0 for floats (images in [0, 1])."""
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def recorded_range(sample: np.ndarray) -> float | np.ndarray:
    """The range a slice was recorded in, per channel for ``(H, W, C)``.

    Integers: the smallest 2 ** bits - 1 (8 bits at least) that holds the largest value,
    so that a 12-bit camera's images in 16-bit files are not judged against 65535.
    Floats: 1.0, or the largest magnitude when it is beyond 1. An underestimate only
    blends more (``seam_need``).
    """
    peaks = np.abs(sample.reshape(-1, sample.shape[2]) if sample.ndim == 3 else sample.reshape(-1, 1)).max(axis=0)
    if sample.dtype.kind in "ui":
        ranges = np.array([2.0 ** max(8, int(peak).bit_length()) - 1 for peak in peaks])
    else:
        ranges = np.maximum(1.0, peaks.astype(np.float64))
    return ranges.astype(np.float32) if sample.ndim == 3 else float(ranges[0])


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
    full_range: float | np.ndarray | None = None,
    read_rows: Callable[[int, slice], np.ndarray] | None = None,
) -> np.ndarray:
    """The pyramid composite of the slices ``read(j)`` under ``index_map`` (``(H, W)``, 0-based).

    With ``max_pixels`` the image is blended in strips of at most about that many pixels,
    each strip's rows read by ``read_rows`` when given (no whole slice held per strip).
    ``full_range``: the slices' range (``PyramidBlend``).
    """
    height, width = index_map.shape
    levels = level_count(height, width, levels)
    strips = strip_rows(height, width, levels, max_pixels)
    if len(strips) == 1:
        blend = PyramidBlend(index_map, levels, fit=False, full_range=full_range)
        for j in blend.used_slices(n_slices):
            blend.add(j, read(j))
        return blend.result()
    halo = strip_halo(levels)
    fused: np.ndarray | None = None
    for start, stop in strips:
        top, bottom = max(0, start - halo), min(height, stop + halo)
        blend = PyramidBlend(index_map[top:bottom], levels, fit=False, full_range=full_range)
        for j in blend.used_slices(n_slices):
            blend.add(j, read_rows(j, slice(top, bottom)) if read_rows is not None else read(j)[top:bottom])
        strip = blend.result()
        if fused is None:
            fused = np.empty((height, *strip.shape[1:]), strip.dtype)
        fused[start:stop] = strip[start - top : stop - top]
    assert fused is not None
    return fused
