"""Slice alignment: register every slice to the stack's middle slice before fusing.

Real stacks move between slices: the stage drifts by a few pixels, and the image
scale changes with focus ("focus breathing"). Slices far apart in focus look very
different, so each slice is registered only to its neighbour, where the blur differs
by one z step, and the neighbour transforms are chained to the reference (the middle
slice). Registration starts with OpenCV's ECC (enhanced correlation coefficient),
invariant to brightness and contrast changes, on gray images downscaled to at most
``COARSE_SIDE`` px, and is refined on images of at most ``FINE_SIDE`` px by local phase
correlation: the slice is cut into overlapping tiles, each tile's shift is read from
the slope of the Fourier phase of its cross-power spectrum at the lowest frequencies,
and the transform is fitted to the tiles' shifts (weighted by their spectral energy,
with outlying tiles down-weighted). ``translation`` has no scale or shear to absorb a
bias and stays with ECC at both sizes.

Neighbouring slices differ in blur, and blur moves the phase a tile is read by: the
window that cuts a tile weights the light that the blur spreads across its edge
unevenly, wherever the detail in the tile is not spread evenly, and where the blur
changes across the frame the spread light shifts the detail's phase. Read plainly, a
slice blurred more than its neighbour looks scaled (0.2 px at the corners of the demo
image blurred uniformly, probe) and a stack that never moved reads
0.2-1.2 px at its end slices' corners (probe). So each tile's shift is modelled as the
motion plus a blur term: the blur difference between the two slices is a smooth field
(a cubic polynomial over the frame), and how much a unit of it, or of its gradient,
moves each tile's shift is measured on the slices themselves, by blurring them by a
known amount (uniformly, and growing across the frame as scattered light does). The
motion and the field are fitted together. The moving tiles are cut at whole pixels and
the fraction is subtracted, so that no interpolation moves their phase either.

Transforms map reference-frame coordinates to slice coordinates (2x3, float64), as
``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)`` takes them. ``similarity`` fits an
affine ECC and keeps its closest scale + rotation + translation. A neighbour pair that
cannot be registered (too flat or too blurred: ECC fails or correlates weakly) counts
as not moved, so the slice keeps its neighbour's transform, and the report says so.

What is left is measured by bench/alignment.py on stacks with known motion: a tenth to
a few tenths of a pixel at the end slices' corners, more on stacks rendered by gathering
blur than on stacks whose blur spreads from each point as a lens's does, and whole pixels
on deep stacks of small frames, whose end slices are blurred past registering. So the
default, ``auto``, warps a stack only on evidence that it moved: each pair's uncertainty
is measured (a jackknife over blocks of tiles, plus a floor for the blur bias that the
whole frame shares), summed along the chain, and a slice must move by more than
``AUTO_MIN_SIGNIFICANCE`` times it. A still stack, whatever the blur makes the chain
wander by, is fused from its slices as read. ``auto`` screens on images of at most
``AUTO_SCREEN_SIDE`` px with a cheap start and registers at ``FINE_SIDE`` only a stack the
screen finds moved; a pair of two images is taken as registered.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from focusfuse.io.color import to_gray

AlignMode = Literal["auto", "none", "translation", "similarity", "affine"]
ALIGN_MODES: tuple[str, ...] = ("auto", "none", "translation", "similarity", "affine")
COARSE_SIDE = 512  # estimate on images of at most this many px on the long side...
FINE_SIDE = 1024  # ...then refine at up to this: ECC's sub-pixel precision there is ample, at a
# quarter of the cost of 2048 (pcb10: 34 s at 2048, probe)
MIN_CORRELATION = 0.5  # ECC's correlation below this: the pair is not registered
MAX_SHIFT_FRACTION = 0.1  # a neighbour shift beyond this share of the image is a failure
MAX_SCALE_CHANGE = 0.05  # likewise a neighbour scale change beyond 5%
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
ECC_SCREEN_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4)  # a start, refined by phase
HIGH_PASS_SIGMA = 8.0  # px: detail only; ECC's own invariance covers global brightness, not vignetting
LOW_PASS_SHRINK = 4  # the high-pass's low-pass is blurred on an image this many times smaller
ECC_PREFILTER = 5  # px: ECC smooths both images by a Gaussian of this size first
# Phase refinement. Chosen on synthetic stacks that are never reported: bench/alignment.py's
# drifting generator at seeds 1-4 and static 8-slice stacks of BSDS500 val images 0-3, each
# rendered by scatter and by gather (probe): tiles of 64 px, frequencies up to 5 cycles per tile
# (8 cycles: larger errors), a cubic blur field (quadratic: larger on static stacks; quartic: no
# better), a probe blur of 2 px² (1 and 8-16 px²: larger errors). Tiles every 24 px read as well
# as every 16 at less than half the cost; every 32 px, slightly worse.
PHASE_TILE = 64  # px
PHASE_STEP = 24  # px between tile origins
PHASE_CUTOFF = 5  # cycles per tile: the highest spatial frequency whose phase is used
PHASE_ROUNDS = 4  # warp, measure, fit: each round removes most of what is left...
PHASE_CONVERGED = 1e-3  # px: ...and a round that moves no corner by this much is the last
PHASE_OUTLIER = 3.0  # tiles further than this many median residuals from the fit count less
# px² of known blur whose effect on each tile's shift is measured: the response is read as the
# secant over this much blur, not the tangent, since neighbours differ by tens of px² where the
# depth is steep. 6 rather than 2: drifting selection stacks (seeds 11-13) fused 1-3 dB nearer
# their true transforms where deep (32 x 512, 16 x 256 gathered) and within 0.04 dB where shallow
# and scattered; still selection stacks (seeds 11-22) kept below both thresholds of ``auto``
# (the largest of the two ratios' smaller one 0.91, with 2 px² 0.79; probe).
BLUR_PROBE = 6.0
BLUR_RAMP = 4.0  # px² of blur across the frame, to measure the effect of a blur gradient
BLUR_FIELD_ORDER = 3  # the blur difference between neighbours: a cubic polynomial over the frame
EVIDENCE_BLOCKS = 4  # a pair's uncertainty: a jackknife over the tiles of a 4 x 4 grid of blocks
EVIDENCE_MIN_BLOCKS = 8  # fewer blocks holding tiles: too little to judge the pair by
# A pair's error that the jackknife cannot see: a bias from the blur difference, shared by the
# whole frame (px of the registration image, added to each corner's standard error in quadrature).
# Chosen on still selection stacks (the drifting generator unmoved, seeds 11-14, and a 64-slice
# 2000x1500 stack, seed 11), whose pairs read 1-3 times their jackknife error, one sign for many
# pairs in a row (probe).
EVIDENCE_FLOOR = 0.05
# ``auto`` warps a stack when some slice moved by more than this many standard errors: twice the
# most that still selection stacks read (6.2: 32 slices of 256 px whose end slices wandered by 13 px).
# With the floor, a neighbour of the reference must move 0.6 px of the registration image, a slice
# k pairs away 0.6 sqrt(k) px at least.
AUTO_MIN_SIGNIFICANCE = 12.0
# ...and by more than this many times the sum of its pairs' standard errors: what the chain would
# be worth were the pairs' errors all of one sign, as the blur's are over runs of pairs of a deep
# stack. Twice the most that still selection stacks read (2.0); stacks that moved read 7 to 42.
AUTO_MIN_COHERENCE = 4.0
AUTO_SCREEN_SIDE = 512  # px: ``auto`` screens a stack for motion on images this small first...
# ...with ECC's start on images of at most this many px: the phase refinement takes the start from
# there to the same transforms (drifting and still selection stacks, seeds 35 and 38: corner errors
# within 0.001 px and the same standard errors as from 128 px, in 5-20% less time; probe). The start
# is a translation: an affine one this small misread the scale and shear by px at the corners of a
# 256 px frame, which took the phase two or three rounds to undo (a still 65 x 256 stack: 5 of 64
# pairs in one round, 35 of 64 from a translation; the estimate in 77% of the time). The still
# selection stacks' largest margin fell from 0.92 to 0.46 of auto's thresholds (65 x 256), the others
# within 0.01; moved ones fused within 0.03 dB, 8 x 128 ones within 0.25 dB or better (probe). On
# frames under 256 px the start is at a quarter of the long side, where ECC's fixed cost is less: 8-12%
# less time on 8 x 128 stacks, the same margins (seeds 11-22), and 31 of 32 moved 8 x 128 and
# 6 x 160 selection stacks (seeds 11-26) fused within 0.1 dB; one 8 x 128 stack, whose fit turns on
# its start, 2.7 dB lower (probe).
AUTO_SCREEN_START_SIDE = 64


@dataclass
class PairRegistration:
    """One neighbour pair registered: the transform, and how uncertain it is."""

    matrix: np.ndarray  # (2, 3) float64: template coordinates -> moving coordinates
    corner_covariance: np.ndarray | None  # (4, 2, 2) px² at the frame's corners; None: too little to judge


@dataclass
class SliceTransform:
    """Where slice ``index`` lies relative to the reference frame."""

    index: int
    matrix: np.ndarray  # (2, 3) float64: reference-frame coordinates -> slice coordinates
    registered: bool = True  # False: its pair with the neighbour could not be registered
    applied: bool = True  # False: left unwarped (the reference, or alignment off)
    significance: float = 0.0  # its largest corner motion in standard errors of the chained estimate
    coherence: float = 0.0  # the same, were the pairs' errors all of one sign: over their sum

    def corner_error(self, truth: np.ndarray, height: int, width: int) -> float:
        """The largest distance, px, between where this transform and ``truth`` (2x3) put an image corner."""
        corners = _image_corners(height, width)
        return float(np.max(np.hypot(*(corners @ self.matrix.T - corners @ truth.T).T)))

    def largest_motion(self, height: int, width: int) -> float:
        """The farthest this transform moves a pixel of a height x width slice, px (at a corner)."""
        return self.corner_error(np.eye(2, 3), height, width)

    def describe(self, height: int, width: int) -> dict:
        """Shift of the image centre (px), scale and rotation (degrees), as the report states them."""
        linear = self.matrix[:, :2]
        centre = np.array([(width - 1) / 2, (height - 1) / 2])
        shift = linear @ centre + self.matrix[:, 2] - centre
        return {
            "slice": self.index,
            "shift_px": [round(float(shift[0]), 3), round(float(shift[1]), 3)],
            "scale": round(math.sqrt(abs(float(np.linalg.det(linear)))), 6),
            "rotation_deg": round(math.degrees(math.atan2(linear[1, 0], linear[0, 0])), 4),
            "registered": self.registered,
            "applied": self.applied,
            "significance": round(self.significance, 1),
            "coherence": round(self.coherence, 1),
        }


@dataclass
class StackAlignment:
    """Per-slice transforms to the reference slice, and the crop every slice covers."""

    mode: str
    reference: int
    transforms: list[SliceTransform]
    height: int
    width: int
    crop: tuple[int, int, int, int] | None = None  # x, y, width, height in the reference frame
    warnings: list[str] = field(default_factory=list)
    verdict: str | None = None  # ``auto``: why it warped the stack or left it as read
    interpolation: int = cv2.INTER_LANCZOS4  # how warped slices are resampled

    @property
    def active(self) -> bool:
        return any(t.applied for t in self.transforms) or self.crop is not None

    def warp(self, index: int, image: np.ndarray) -> np.ndarray:
        """Slice ``index`` in the reference frame (cropped when asked); untouched when not applied."""
        transform = self.transforms[index]
        if transform.applied:
            image = cv2.warpAffine(
                image,
                transform.matrix,
                (self.width, self.height),
                flags=self.interpolation | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REPLICATE,  # uncovered borders take the nearest covered value
            )
        if self.crop is not None:
            x, y, w, h = self.crop
            image = np.ascontiguousarray(image[y : y + h, x : x + w])
        return image

    def report(self) -> dict:
        return {
            "mode": self.mode,
            "reference": self.reference,
            "slices": [t.describe(self.height, self.width) for t in self.transforms],
            "crop": list(self.crop) if self.crop is not None else None,
            "warnings": list(self.warnings),
            "largest_motion_px": round(self.largest_motion(), 3),
            "min_significance": AUTO_MIN_SIGNIFICANCE if self.mode == "auto" else None,
            "min_coherence": AUTO_MIN_COHERENCE if self.mode == "auto" else None,
            "auto_verdict": self.verdict,
        }

    def largest_motion(self) -> float:
        """The farthest any slice's estimated transform moves a pixel, px (applied or not)."""
        if self.height == 0:  # ``none``: nothing was estimated
            return 0.0
        return max(t.largest_motion(self.height, self.width) for t in self.transforms)


def _registration_image(image: np.ndarray, side: int = FINE_SIDE) -> np.ndarray:
    """Gray detail of a slice at up to ``side`` px: the image minus its Gaussian low-pass.

    ECC is invariant to a global gain and offset, but not to illumination that varies
    across the frame (vignetting that changes with focus, uneven brightfield); removing
    the low frequencies leaves the detail that registration needs. On synthetic stacks
    it also halved the chained error at the most defocused slices (probe).
    """
    gray = _downscaled(to_gray(image), side)[0]
    return gray - _low_pass(gray)


def _low_pass(gray: np.ndarray) -> np.ndarray:
    """The image blurred by a Gaussian of ``HIGH_PASS_SIGMA``, computed at ``LOW_PASS_SHRINK``
    times smaller: the low-pass holds nothing that the smaller grid cannot carry, and the full
    Gaussian was a sixth of the screen's time at 512 px (3 ms a slice). The box of the shrink and
    the tent of the enlargement add their variance, which the small Gaussian leaves room for.
    Drifting and still selection stacks (seeds 35 and 38) read the same corner errors within
    0.006 px and the same verdicts, in 10-20% less time at 512 px (probe)."""
    height, width = gray.shape
    shrink = LOW_PASS_SHRINK
    if min(height, width) < 8 * shrink:
        return cv2.GaussianBlur(gray, (0, 0), HIGH_PASS_SIGMA)
    small = cv2.resize(gray, (round(width / shrink), round(height / shrink)), interpolation=cv2.INTER_AREA)
    added = (shrink**2 - 1) / 12 + shrink**2 / 6  # px²: the box averaging down, the tent interpolating up
    small = cv2.GaussianBlur(small, (0, 0), math.sqrt(HIGH_PASS_SIGMA**2 - added) / shrink)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _scale_factor(height: int, width: int, side: int) -> float:
    """The factor that brings the long side of a height x width image to at most ``side`` px."""
    return min(1.0, side / max(height, width))


def _downscaled(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The gray image with its long side at most ``side`` px, and the factor applied."""
    factor = _scale_factor(gray.shape[0], gray.shape[1], side)
    if factor == 1.0:
        return gray, 1.0
    size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), factor


def _rescaled(matrix: np.ndarray, factor: float) -> np.ndarray:
    """A transform estimated on images scaled by ``factor``, for images scaled by 1 instead."""
    out = matrix.copy()
    out[:, 2] /= factor
    return out


def _closest_similarity(matrix: np.ndarray) -> np.ndarray:
    """Scale + rotation + translation closest (Frobenius) to an affine transform's linear part."""
    a, b, c, d = matrix[0, 0], matrix[0, 1], matrix[1, 0], matrix[1, 1]
    p, q = (a + d) / 2, (c - b) / 2
    return np.array([[p, -q, matrix[0, 2]], [q, p, matrix[1, 2]]])


@functools.lru_cache(maxsize=8)
def _every_pixel(height: int, width: int) -> np.ndarray:
    """ECC's mask where every pixel counts, made once per size (read only: every pair shares it)."""
    mask = np.full((height, width), 255, np.uint8)
    mask.flags.writeable = False
    return mask


def _ecc(
    template: np.ndarray, moving: np.ndarray, motion: int, start: np.ndarray, criteria: tuple = ECC_CRITERIA
) -> tuple[np.ndarray, float]:
    correlation, warp = cv2.findTransformECC(
        template, moving, start.astype(np.float32), motion, criteria, _every_pixel(*template.shape), ECC_PREFILTER
    )
    return np.asarray(warp, np.float64), float(correlation)


class _PhaseTiles:
    """Overlapping tiles of one image size, and the low frequencies their phase is read at.

    Only the frequencies up to ``PHASE_CUTOFF`` cycles are needed, so each tile's spectrum is
    three small real matrix products (the x basis, the y basis, the assembly), not a whole FFT.
    """

    def __init__(self, height: int, width: int) -> None:
        size = PHASE_TILE
        self.height, self.width = height, width
        rows = np.arange(0, height - size + 1, PHASE_STEP)  # tile origins on the template
        cols = np.arange(0, width - size + 1, PHASE_STEP)
        self.rows, self.cols = rows, cols
        origin_y, origin_x = np.meshgrid(rows, cols, indexing="ij")
        self.origins = np.stack([origin_x.ravel(), origin_y.ravel()], axis=1)
        self.centres = self.origins + (size - 1) / 2
        window = np.hanning(size)
        fy = np.arange(-PHASE_CUTOFF, PHASE_CUTOFF + 1)[:, None] / size  # cycles per px, both signs
        fx = np.arange(0, PHASE_CUTOFF + 1)[None, :] / size  # one half-plane: real input
        radius = np.hypot(fx, fy) * size
        self.band = (radius <= PHASE_CUTOFF) & (radius > 0)
        self.fx = 2 * np.pi * np.broadcast_to(fx, self.band.shape)[self.band]
        self.fy = 2 * np.pi * np.broadcast_to(fy, self.band.shape)[self.band]
        # The window is folded into the Fourier bases (it is separable), so no tile is multiplied by
        # it. Both bases are real: the cosines and sines of the non-negative frequencies, then a
        # row of ones (a tile's plain sum, from which its mean comes). A tile through both is a
        # 13 x 13 table of real sums, of which four entries and the plain sum make each frequency
        # of the complex spectrum in the band, both signs of fy, less the tile's mean (``_assemble``).
        steps = np.arange(PHASE_CUTOFF + 1)
        angle = -2 * np.pi * np.outer(np.arange(size), steps) / size  # (pixel, frequency)
        real = np.concatenate([np.cos(angle) * window[:, None], np.sin(angle) * window[:, None], np.ones((size, 1))], 1)
        self.basis_x = real.astype(np.float32)  # (x, 13)
        self.basis_y = real.T.astype(np.float32)  # (13, y)
        # A tile's mean is taken out: its mean times the window's own spectrum.
        window_x = window @ np.exp(1j * angle)  # (fx,)
        window_y = np.exp(-2j * np.pi * np.outer(fy[:, 0], np.arange(size))) @ window  # (fy,)
        window_spectrum = np.outer(window_y, window_x)[self.band]
        self._assembly(window_spectrum)
        self.moments = np.stack([np.ones_like(self.fx), self.fx * self.fx, self.fx * self.fy, self.fy * self.fy], 1)
        self.slopes = np.stack([self.fx, self.fy], 1)
        self.blocks = _tile_blocks(self.centres, height, width)
        self.field_basis = _blur_field_basis(self.centres, height, width)
        self._motion_designs: dict[str, np.ndarray] = {}

    def motion_design(self, mode: str) -> np.ndarray:
        """``_motion_design`` of the grid's centres, made once per mode: every pair's rounds fit it."""
        if mode not in self._motion_designs:
            self._motion_designs[mode] = _motion_design(self.centres, mode)
        return self._motion_designs[mode]

    def __len__(self) -> int:
        return len(self.centres)

    def _assembly(self, window_spectrum: np.ndarray) -> None:
        """Where in a tile's 13 x 13 real sums (flattened) each frequency of the band takes its
        real and imaginary parts from, and with which sign; the plain sum's share, the tile's mean
        times the window's own spectrum, is taken out (``_assemble``).

        ``e^{i(a + b)}`` is ``cos a cos b - sin a sin b + i (sin a cos b + cos a sin b)``; a
        negative fy is the positive one with its sine negated.
        """
        frequencies, ones, size = PHASE_CUTOFF + 1, 2 * PHASE_CUTOFF + 2, PHASE_TILE
        fy_all, fx_all = np.meshgrid(np.arange(-PHASE_CUTOFF, PHASE_CUTOFF + 1), np.arange(frequencies), indexing="ij")
        fy, fx = fy_all[self.band], fx_all[self.band]
        cos_y, sin_y, cos_x, sin_x = np.abs(fy), frequencies + np.abs(fy), fx, frequencies + fx
        row = ones + 1
        self.cos_cos, self.sin_sin = cos_y * row + cos_x, sin_y * row + sin_x
        self.sin_cos, self.cos_sin = sin_y * row + cos_x, cos_y * row + sin_x
        self.fy_sign = np.where(fy >= 0, 1.0, -1.0).astype(np.float32)
        self.plain = ones * row + ones
        self.mean_share = (-window_spectrum / size**2).astype(np.complex64)

    def _assemble(self, sums: np.ndarray) -> np.ndarray:
        """``(..., tiles, frequencies)`` complex64: tiles' 13 x 13 real sums -> their spectra in the
        band less their means. Four entries per frequency, gathered, not a product with a matrix of
        mostly zeros, which BLAS would thread (``_single_thread_product``) for no less time."""
        flat = sums.reshape(*sums.shape[:-2], -1)
        plain = flat[..., self.plain, None]
        spectra = np.empty((*flat.shape[:-1], len(self.fy_sign)), np.complex64)
        spectra.real = flat[..., self.cos_cos] - self.fy_sign * flat[..., self.sin_sin] + self.mean_share.real * plain
        spectra.imag = self.fy_sign * flat[..., self.sin_cos] + flat[..., self.cos_sin] + self.mean_share.imag * plain
        return spectra

    def spectra(self, image: np.ndarray, origins: np.ndarray | None = None) -> np.ndarray:
        """``(..., tiles, frequencies)``: the windowed tiles' Fourier transforms in the band, less
        their means, the tiles cut at ``origins`` (integer x, y per tile; the template's grid when
        not given). ``image`` is ``(H, W)``, or ``(layers, H, W)`` transformed together."""
        if origins is None or np.array_equal(origins, self.origins):
            sums = self._grid_sums(image)
        else:
            sums = self._tile_sums(image, origins)
        return self._assemble(sums)

    def _tile_sums(self, image: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """``(..., tiles, 13, 13)``: tiles cut anywhere through both bases (y, x)."""
        size = PHASE_TILE
        tiles = np.lib.stride_tricks.sliding_window_view(image, (size, size), axis=(-2, -1))
        tiles = tiles[..., origins[:, 1], origins[:, 0], :, :]  # (..., tiles, y, x)
        lead, count = tiles.shape[:-3], len(origins)
        along_x = tiles.reshape(-1, size) @ self.basis_x  # one product for all tiles' rows
        terms = along_x.shape[-1]
        along_x = along_x.reshape(-1, count, size, terms).transpose(0, 2, 1, 3).reshape(-1, size, count * terms)
        sums = (self.basis_y @ along_x).reshape(-1, terms, count, terms).transpose(0, 2, 1, 3)
        return sums.reshape(*lead, count, terms, terms)

    def _grid_sums(self, image: np.ndarray) -> np.ndarray:
        """``_tile_sums`` of the template's grid, the x transform shared by the tiles of a column.

        Tiles overlap (``PHASE_STEP`` < ``PHASE_TILE``), so every column of tiles is one strip
        of the image through the x basis, and each row of tiles one product of the y basis with
        the strips' rows it covers: the same sums in another order (within 4e-6), in 55-65% of
        the time tile by tile takes at 256-512 px (probe). Layers (a leading axis) share each call.
        """
        lead, height = image.shape[:-2], image.shape[-2]
        layers = image.reshape(-1, height, image.shape[-1])
        # The origins are every PHASE_STEP px from 0: strided views, copied into one matrix whose
        # rows go through the x basis in chunks (``_single_thread_product``).
        strips = np.ascontiguousarray(_windows(layers, len(self.cols), axis=2))  # (L, H, columns, x)
        along_x = _single_thread_product(strips.reshape(-1, PHASE_TILE), self.basis_x)
        along_x = along_x.reshape(len(layers), height, -1)  # (L, H, columns * 13)
        covered = _windows(along_x, len(self.rows), axis=1).transpose(0, 1, 3, 2)  # (L, rows, y, columns * 13)
        sums = self.basis_y @ covered  # (L, rows, 13, columns * 13)
        terms = len(self.basis_y)
        sums = sums.reshape(len(layers), len(self.rows), terms, len(self.cols), terms).transpose(0, 1, 3, 2, 4)
        return sums.reshape(*lead, len(self.rows) * len(self.cols), terms, terms)

    def shifts(self, template_spectra: np.ndarray, moving_spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per tile: the shift (x, y) that takes the template tile onto the moving one, and its weight
        (over the last axis: leading axes, such as several moving layers, are kept).

        The phase of the cross-power spectrum is a plane through the origin whose slope is the
        shift; it is fitted by least squares, each frequency weighted by the two amplitudes.
        The weight of a tile is its spectral energy, less where the phase fits no plane.
        """
        cross = template_spectra * np.conj(moving_spectra)
        weight, phase = np.abs(cross), np.arctan2(cross.imag, cross.real)  # np.angle, without its wrapper
        # The weighted sums as products with the frequencies' moments (one call each, not one per sum).
        moments = weight @ self.moments  # (..., tiles, 4): total, fx fx, fx fy, fy fy
        total, sxx, sxy, syy = (moments[..., j] for j in range(4))
        slopes = (weight * phase) @ self.slopes
        bx, by = slopes[..., 0], slopes[..., 1]
        determinant = np.maximum(sxx * syy - sxy**2, 1e-12)
        dx = (syy * bx - sxy * by) / determinant
        dy = (sxx * by - sxy * bx) / determinant
        residual = phase - self.fx * dx[..., None] - self.fy * dy[..., None]
        misfit = (weight * residual**2).sum(-1) / np.maximum(total, 1e-12)
        return np.stack([dx, dy], axis=-1), total / (1.0 + 10.0 * misfit)


# Rows per product in ``_single_thread_product``: OpenBLAS runs a product on one thread while
# rows x columns x depth is at most 4 x 65536 (its SMP_THRESHOLD_MIN times GEMM_MULTITHREAD_THRESHOLD).
SINGLE_THREAD_WORK = 4 * 65536


def _single_thread_product(rows: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``rows @ basis`` in chunks of rows small enough that BLAS runs each on one thread.

    One product of every row would be threaded, and on two cores with the other one busy (a
    neighbour, or the stack's decoding) the estimate took 1.3 times as long; numpy's batch of
    one small product per image row, with strided rows no BLAS takes, took 2-3 times as long
    as these chunks at 128-256 px (probe).
    """
    count = max(SINGLE_THREAD_WORK // (basis.shape[0] * basis.shape[1]), 1)
    product = np.empty((len(rows), basis.shape[1]), np.result_type(rows, basis))
    for start in range(0, len(rows), count):
        np.matmul(rows[start : start + count], basis, out=product[start : start + count])
    return product


def _windows(array: np.ndarray, count: int, axis: int) -> np.ndarray:
    """A read-only view of ``count`` windows of ``PHASE_TILE`` along ``axis`` of a 3-d array, every
    ``PHASE_STEP``, as a new axis after ``axis`` with the window's own axis last (what numpy's
    ``sliding_window_view`` then a step gives, without its checks, which were 2% of a small stack's estimate).
    A contiguous array's view is made on its buffer directly: ``as_strided`` took three times as long."""
    shape, strides = list(array.shape), list(array.strides)
    shape[axis : axis + 1] = [count]
    strides[axis : axis + 1] = [PHASE_STEP * array.strides[axis]]
    shape.append(PHASE_TILE)
    strides.append(array.strides[axis])
    if not array.flags.c_contiguous:
        return np.lib.stride_tricks.as_strided(array, shape, strides, writeable=False)
    view = np.ndarray(tuple(shape), array.dtype, buffer=array, strides=tuple(strides))
    view.flags.writeable = False
    return view


@functools.lru_cache(maxsize=8)
def _phase_tiles(height: int, width: int) -> _PhaseTiles:
    """The tiles of one image size, made once: every pair of a stack has the same (read only)."""
    return _PhaseTiles(height, width)


def _probe_layers(image: np.ndarray) -> np.ndarray:
    """``(4, H, W)``: the image; the image blurred by ``BLUR_PROBE`` px² everywhere; and that plus
    the changes (to first order) that a blur growing across the frame by ``BLUR_RAMP`` px² makes
    on top, along x and along y. Written into one array, which the tiles transform together.

    A scene point spreads its own blur: the light of ``image * ramp`` is spread, so the change
    is half the Laplacian (the derivative of a Gaussian in its variance) of that product blurred.
    """
    height, width = image.shape
    layers = np.empty((4, height, width), image.dtype)
    layers[0] = image
    uniform = cv2.GaussianBlur(image, (0, 0), math.sqrt(BLUR_PROBE), dst=layers[1])
    slope = BLUR_RAMP / max(height, width)
    across_x = (np.arange(width, dtype=np.float32) - (width - 1) / 2)[None, :]
    across_y = (np.arange(height, dtype=np.float32) - (height - 1) / 2)[:, None]
    for layer, (ramp, dx, dy) in enumerate(((across_x, 1, 0), (across_y, 0, 1)), start=2):
        # A Gaussian of a ramp times the image is the ramp times its Gaussian plus sigma² times
        # that Gaussian's slope along the ramp: one blur serves the three probes.
        slope_along = cv2.Sobel(uniform, cv2.CV_32F, dx, dy, ksize=1, scale=0.5)
        spread = ramp * uniform
        spread += BLUR_PROBE * slope_along
        change = cv2.Laplacian(spread, cv2.CV_32F)
        change *= 0.5 * slope
        np.add(uniform, change, out=layers[layer])
    return layers


class _PhaseImage:
    """A registration image with its tiles' spectra (and its blur probes' shifts), kept from the
    pair it is the moving image of to the next, where it is the template: a stack that hardly
    moved cuts its tiles at the same pixels in both, and in every round."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self._spectra: dict[bytes, np.ndarray] = {}
        self._probe_shifts: np.ndarray | None = None
        self._last_cut: tuple[np.ndarray, np.ndarray] | None = None
        self._coarse: dict[int, tuple[np.ndarray, float]] = {}

    def coarse(self, side: int) -> tuple[np.ndarray, float]:
        """``_downscaled`` to ``side``, kept for the next pair, where this image is the template."""
        if side not in self._coarse:
            self._coarse[side] = _downscaled(self.image, side)
        return self._coarse[side]

    def spectra(self, tiles: _PhaseTiles, origins: np.ndarray | None = None) -> np.ndarray:
        """The image's tiles cut at ``origins`` (the grid when not given), through the band.

        A cut off the grid transforms only the tiles cut elsewhere than in the last cut (the
        grid's, at first): a round moves a few tiles by a pixel, the rest stay put. The same
        numbers within 2e-8 px; deep still selection stacks (32 x 512, 65 x 256) estimated in
        80% of the time, moved 512 px ones in 65-70% (probe, alternating runs).
        """
        origins = tiles.origins if origins is None else origins
        key = origins.tobytes()
        if key not in self._spectra:
            last = self._last_cut
            if last is None or origins is tiles.origins:
                spectra = tiles.spectra(self.image, origins)
            else:
                moved = np.any(origins != last[0], axis=1)
                spectra = last[1].copy()
                if moved.any():
                    spectra[moved] = tiles.spectra(self.image, origins[moved])
            self._keep(origins, spectra)
        return self._spectra[key]

    def _keep(self, origins: np.ndarray, spectra: np.ndarray) -> None:
        self._spectra[origins.tobytes()] = spectra
        self._last_cut = (origins, spectra)

    def probe_shifts(self, tiles: _PhaseTiles) -> np.ndarray:
        """``(3, tiles, 2)``: how far each blur probe (``_probe_layers``) moves the phase-read shift
        of each tile of the grid; kept for the next pair, where this image is the template. The
        image and its three probes are transformed in one call (the grid's spectra of the image
        are kept for the rounds)."""
        if self._probe_shifts is None:
            spectra = tiles.spectra(_probe_layers(self.image))
            if tiles.origins.tobytes() not in self._spectra:
                self._keep(tiles.origins, spectra[0])
            self._probe_shifts = tiles.shifts(spectra[0], spectra[1:])[0]
        return self._probe_shifts


def _blur_responses(
    tiles: _PhaseTiles,
    image: _PhaseImage,
    centres: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile (cut on the grid), how far a blur difference moves its phase-read shift, per px²
    of blur (uniform), and per px² per px of blur gradient along x and along y, where the tile
    lies at ``centres``: ``(tiles, 2)`` each."""
    height, width = tiles.height, tiles.width
    slope = BLUR_RAMP / max(height, width)
    probed = image.probe_shifts(tiles)
    uniform = probed[0] / BLUR_PROBE
    gradients = []
    for ramped, axis, extent in ((probed[1], 0, width), (probed[2], 1, height)):
        local = BLUR_PROBE + slope * (centres[:, axis] - (extent - 1) / 2)
        gradients.append((ramped - uniform * local[:, None]) / slope)
    return uniform, gradients[0], gradients[1]


def _blur_field_basis(centres: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blur-difference field's polynomial terms at the tile centres, and their x and y derivatives."""
    side = max(height, width)
    u, v = (centres[:, 0] - width / 2) / side, (centres[:, 1] - height / 2) / side
    terms, along_u, along_v = [], [], []
    for i in range(BLUR_FIELD_ORDER + 1):
        for j in range(BLUR_FIELD_ORDER + 1 - i):
            terms.append(u**i * v**j)
            along_u.append(i * u ** max(i - 1, 0) * v**j)
            along_v.append(j * u**i * v ** max(j - 1, 0))
    return np.stack(terms, 1), np.stack(along_u, 1) / side, np.stack(along_v, 1) / side


MOTION_PARAMETERS = {"translation": 2, "similarity": 4, "affine": 6}  # the columns of each mode's design


def _motion_design(centres: np.ndarray, mode: str) -> np.ndarray:
    """``(2 * tiles, k)``: each tile's x then y shift as linear in the mode's motion parameters."""
    x, y = centres[:, 0], centres[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    if mode == "translation":
        design_x, design_y = np.stack([one, zero], 1), np.stack([zero, one], 1)
    elif mode == "similarity":  # D = [[a, -b, tx], [b, a, ty]]
        design_x, design_y = np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)
    else:
        design_x = np.stack([x, y, one, zero, zero, zero], 1)
        design_y = np.stack([zero, zero, zero, x, y, one], 1)
    return np.concatenate([design_x, design_y])


def _displacement(params: np.ndarray, mode: str) -> np.ndarray:
    """The 2x3 ``D`` that the mode's motion parameters stand for."""
    if mode == "translation":
        return np.array([[0.0, 0.0, params[0]], [0.0, 0.0, params[1]]])
    if mode == "similarity":
        a, b, tx, ty = params
        return np.array([[a, -b, tx], [b, a, ty]])
    return params.reshape(2, 3)


def _image_corners(height: int, width: int) -> np.ndarray:
    """``(4, 3)``: the corners of a height x width image as homogeneous x, y."""
    return np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)


def _tile_blocks(centres: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each tile's block on a ``EVIDENCE_BLOCKS`` square grid over the frame (by its centre)."""
    column = np.minimum((centres[:, 0] / width * EVIDENCE_BLOCKS).astype(int), EVIDENCE_BLOCKS - 1)
    row = np.minimum((centres[:, 1] / height * EVIDENCE_BLOCKS).astype(int), EVIDENCE_BLOCKS - 1)
    return row * EVIDENCE_BLOCKS + column


@dataclass
class _MotionFit:
    """A pair's displacement fitted to its tiles, with what its uncertainty is computed from."""

    displacement: np.ndarray  # (2, 3): shift ~ displacement @ (x, y, 1)
    design: np.ndarray  # (2 * tiles, k): the motion's columns, then the nuisance's
    target: np.ndarray  # (2 * tiles,): the tiles' x shifts, then their y shifts
    robust: np.ndarray  # (tiles,): the tiles' final weights, outliers down-weighted
    centres: np.ndarray
    mode: str
    motion: int  # how many of the design's columns are the motion's

    def corner_covariance(self, height: int, width: int) -> np.ndarray | None:
        """``(4, 2, 2)``: how uncertain the displacement is at the corners of a height x width
        frame, by a jackknife over blocks of tiles (each block left out in turn); None when fewer
        than ``EVIDENCE_MIN_BLOCKS`` blocks hold tiles with weight (too little to judge).
        Neighbouring tiles overlap and share their errors; whole blocks left out measure the
        scatter that a fit to other parts of the frame would give."""
        blocks = _tile_blocks(self.centres, height, width)
        carrying = np.flatnonzero(np.bincount(blocks, weights=self.robust, minlength=EVIDENCE_BLOCKS**2) > 0)
        if len(carrying) < EVIDENCE_MIN_BLOCKS:
            return None
        corners = _image_corners(height, width)
        # The normal equations of the whole fit, less each block's share: one small system per
        # block, solved together. Each block's share is its rows' outer products summed, one
        # product with the rows' block membership for all blocks.
        rows = np.concatenate([blocks, blocks])
        weighted = self.design * np.concatenate([self.robust, self.robust])[:, None]
        normal, moment = weighted.T @ self.design, weighted.T @ self.target
        member = (rows[None, :] == carrying[:, None]).astype(float)  # (blocks, rows)
        columns = self.design.shape[1]
        outer = (weighted[:, :, None] * self.design[:, None, :]).reshape(len(rows), columns * columns)
        kept_normal = normal - (member @ outer).reshape(-1, columns, columns)
        kept_moment = moment - member @ (weighted * self.target[:, None])
        try:
            params = np.linalg.solve(kept_normal, kept_moment[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a block held what alone determined a column
            pairs = zip(kept_normal, kept_moment, strict=True)
            params = np.stack([np.linalg.lstsq(n, m, rcond=None)[0] for n, m in pairs])
        # Each corner's displacement is linear in the motion's parameters, as each tile's shift is.
        estimates = params[:, : self.motion] @ _motion_design(corners[:, :2], self.mode).T  # (blocks, x of 4, y of 4)
        estimates = estimates.reshape(-1, 2, 4).transpose(0, 2, 1)  # (blocks, 4, 2)
        spread = estimates - estimates.mean(axis=0)
        count = len(carrying)
        return (count - 1) / count * np.einsum("bci,bcj->cij", spread, spread)


def _fit_displacement(
    centres: np.ndarray, shifts: np.ndarray, weights: np.ndarray, mode: str, design: np.ndarray
) -> _MotionFit:
    """The 2x3 ``D`` with ``shift ~ D @ (x, y, 1)`` for the mode's degrees of freedom, fitted by
    weighted least squares, re-weighted a few times so that outlying tiles (occlusions, depth
    edges, noise) count less. ``design``, ``(2 * tiles, k)`` (x rows, then y rows): the mode's
    motion columns at ``centres`` (``_motion_design``), then any fitted alongside whose
    coefficients are not part of the motion: the blur field. A pair's rounds share one.
    """
    motion = MOTION_PARAMETERS[mode]
    target = np.concatenate([shifts[:, 0], shifts[:, 1]])
    robust = weights.copy()
    confident = weights >= _median(weights)
    for _ in range(5):
        params = _weighted_least_squares(design, target, np.concatenate([robust, robust]))
        residual = np.hypot(*(target - design @ params).reshape(2, -1))
        scale = PHASE_OUTLIER * (_median(residual[confident]) + 1e-3)
        robust = weights / (1.0 + (residual / scale) ** 2)
    return _MotionFit(_displacement(params[:motion], mode), design, target, robust, centres, mode, motion)


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-d array, by partition alone (a fifth of its overhead on a few hundred values)."""
    middle = ((len(values) - 1) // 2, len(values) // 2)
    parted = values.copy()
    parted.partition(middle)
    return float(parted[middle[0]] + parted[middle[1]]) / 2


def _weighted_least_squares(design: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The parameters minimising ``sum(weights * (target - design @ params) ** 2)``.

    By the normal equations, their columns scaled to one on the diagonal (a 14 x 14 system for
    a similarity and the blur field, a quarter of the time of a factorisation of the whole
    design); by least squares where they are singular (a column all zero, or made of tiles
    without weight).
    """
    weighted = design * weights[:, None]
    normal, moment = weighted.T @ design, weighted.T @ target
    diagonal = normal.diagonal()
    if (diagonal > 0).all():  # the methods, not np.all and np.outer: their wrappers were a tenth of a fit
        scale = 1.0 / np.sqrt(diagonal)
        try:
            return np.linalg.solve(normal * (scale[:, None] * scale), moment * scale) * scale
        except np.linalg.LinAlgError:
            pass
    root = np.sqrt(weights)
    return np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]


def _judgeable(height: int, width: int) -> bool:
    """Whether a pair of images this size has tiles in enough blocks to judge its uncertainty."""
    return int(np.count_nonzero(np.bincount(_phase_tiles(height, width).blocks))) >= EVIDENCE_MIN_BLOCKS


def _blur_columns(
    responses: tuple[np.ndarray, np.ndarray, np.ndarray], basis: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """``(2 * tiles, terms)``: each tile's shift caused by each term of the blur-difference field:
    its value there times the uniform response plus its gradient times the gradient responses."""
    uniform, along_x, along_y = responses
    terms, d_u, d_v = basis
    columns = [
        uniform[:, axis, None] * terms + along_x[:, axis, None] * d_u + along_y[:, axis, None] * d_v for axis in (0, 1)
    ]
    return np.concatenate(columns)


def _refine_by_phase(template: _PhaseImage, moving: _PhaseImage, warp: np.ndarray, mode: str) -> PairRegistration:
    """``warp`` (template -> moving coordinates) refined by local phase correlation.

    Each round cuts every moving tile at the whole pixel the warp maps its template tile to
    and subtracts the fraction, so the moving image is never resampled (interpolation moves
    the phase it is read by). The tile shifts are fitted by the motion together with a smooth
    blur-difference field between the two slices (``BLUR_FIELD_ORDER``), through each tile's
    measured response to known blur, on both images (their mean), so that a slice sharper or
    blurrier than its neighbour is not read as moved. The responses are measured on the
    template's grid in both: a tile's response is a property of its detail, which a motion of
    a few pixels hardly changes, and an image's responses, measured once, serve both pairs it
    is in (drifting selection stacks, seeds 35 and 38: the largest corner errors within
    0.015 px of those read at the moving tiles, as often smaller as larger, in 15-35% less time).
    """
    height, width = template.image.shape
    tiles = _phase_tiles(height, width)
    if len(tiles) < 4:  # too small to tile: keep ECC's estimate, with no evidence of its own
        return PairRegistration(warp, None)
    centres = tiles.centres
    template_responses = _blur_responses(tiles, template, centres)
    basis = tiles.field_basis
    half = (PHASE_TILE - 1) / 2
    limit = np.array([width - PHASE_TILE, height - PHASE_TILE])
    # The moving image's responses first: its grid's spectra are then there to cut from.
    moving_responses = _blur_responses(tiles, moving, centres @ warp[:, :2].T + warp[:, 2])
    responses = tuple((a + b) / 2 for a, b in zip(template_responses, moving_responses, strict=True))
    template_spectra = template.spectra(tiles)  # the grid's, kept by the responses
    design = np.concatenate([tiles.motion_design(mode), _blur_columns(responses, basis)], 1)  # every round's
    cut = None
    for _ in range(PHASE_ROUNDS):
        mapped = centres @ warp[:, :2].T + warp[:, 2]
        origins = np.minimum(np.maximum(np.rint(mapped - half).astype(np.intp), 0), limit)  # np.clip's wrapper: 1%
        fraction = mapped - (origins + half)
        measured = np.abs(fraction).max(axis=1) < 2.0  # cut far off at the border: not measured
        if cut is not None and np.array_equal(origins, cut[0]) and np.array_equal(measured, cut[1]):
            # The tiles are cut where they were: the same shifts less the fraction the last round
            # fitted, so this round's fit would move nothing (least squares is linear in its target).
            break
        cut = origins, measured
        shifts, weights = tiles.shifts(template_spectra, moving.spectra(tiles, origins))
        weights = weights * measured
        fit = _fit_displacement(centres, shifts - fraction, weights, mode, design)
        warp = warp + fit.displacement
        if np.abs(_image_corners(height, width) @ fit.displacement.T).max() < PHASE_CONVERGED:
            break
    # The motion is known as well as the last round's fit knows it.
    return PairRegistration(warp, fit.corner_covariance(height, width))


def register_pair(
    template: np.ndarray | _PhaseImage,
    moving: np.ndarray | _PhaseImage,
    mode: str,
    *,
    screen: bool = False,
    start: np.ndarray | None = None,
) -> PairRegistration | None:
    """The transform mapping ``template`` coordinates to ``moving`` coordinates, or None if it fails.

    Args:
        template, moving: gray float32 ``(H, W)`` of one size (or kept with their spectra).
        mode: ``translation``, ``similarity`` or ``affine``.
        screen: a cheaper start, for ``auto``'s screen: ECC of a translation alone on images
            of at most ``AUTO_SCREEN_START_SIDE`` px (and a quarter of these), stopped sooner;
            the phase refinement takes it from there.
        start: the pair already registered (2x3, in these images' pixels; ``similarity`` or
            ``affine``), by ``auto``'s screen on smaller images: the phase refinement starts
            there, and ECC, which the screen's registration passed, is not run again.
    """
    template_phase = template if isinstance(template, _PhaseImage) else _PhaseImage(template)
    moving_phase = moving if isinstance(moving, _PhaseImage) else _PhaseImage(moving)
    template, moving = template_phase.image, moving_phase.image
    motion = cv2.MOTION_TRANSLATION if mode == "translation" else cv2.MOTION_AFFINE
    if screen:
        coarse_side, criteria = min(AUTO_SCREEN_START_SIDE, max(template.shape) // 4), ECC_SCREEN_CRITERIA
    else:
        coarse_side, criteria = COARSE_SIDE, ECC_CRITERIA
    try:
        if start is not None:
            warp, correlation, factor = start, 1.0, 1.0
        else:
            coarse_template, factor = template_phase.coarse(coarse_side)
            coarse_moving, _ = moving_phase.coarse(coarse_side)
            start_motion = cv2.MOTION_TRANSLATION if screen else motion  # the phase fits the rest
            warp, correlation = _ecc(coarse_template, coarse_moving, start_motion, np.eye(2, 3), criteria)
        if mode == "translation" and factor < 1.0:
            # A shift alone is measured by ECC as well as by phase, better: 0.05 against 0.16 px
            # at the corners on drifting stacks (probe, seeds 3-10); only the scale and shape that
            # the other modes fit take up the defocus bias.
            warp, correlation = _ecc(template, moving, motion, _rescaled(warp, factor))
    except cv2.error:
        return None
    covariance = None  # translation, or a pair too small or poorly correlated to refine: no evidence
    if mode != "translation":
        warp = _rescaled(warp, factor)
        if mode == "similarity":
            warp = _closest_similarity(warp)
        if correlation >= MIN_CORRELATION and np.all(np.isfinite(warp)):
            refined = _refine_by_phase(template_phase, moving_phase, warp, mode)
            warp, covariance = refined.matrix, refined.corner_covariance
    height, width = template.shape
    scale = math.sqrt(abs(float(np.linalg.det(warp[:, :2]))))
    if (
        correlation < MIN_CORRELATION
        or not np.all(np.isfinite(warp))
        or abs(scale - 1.0) > MAX_SCALE_CHANGE
        or np.abs(warp[:, 2]).max()
        > MAX_SHIFT_FRACTION * max(height, width) + 2.0 * abs(scale - 1.0) * max(height, width)
    ):
        return None
    return PairRegistration(warp, covariance)


def _largest_covered_rectangle(covered: np.ndarray) -> tuple[int, int, int, int]:
    """An axis-aligned rectangle inside a convex covered region: shrink the worst side until all is covered."""
    top, bottom, left, right = 0, covered.shape[0], 0, covered.shape[1]
    while top < bottom and left < right:
        window = covered[top:bottom, left:right]
        misses = {
            "top": int((~window[0]).sum()),
            "bottom": int((~window[-1]).sum()),
            "left": int((~window[:, 0]).sum()),
            "right": int((~window[:, -1]).sum()),
        }
        side = max(misses, key=lambda name: misses[name])
        if misses[side] == 0:
            return left, top, right - left, bottom - top
        if side == "top":
            top += 1
        elif side == "bottom":
            bottom -= 1
        elif side == "left":
            left += 1
        else:
            right -= 1
    return 0, 0, 0, 0


def common_crop(transforms: list[SliceTransform], height: int, width: int) -> tuple[int, int, int, int]:
    """The reference-frame rectangle that every applied slice covers (x, y, width, height)."""
    covered = np.ones((height, width), bool)
    ones = np.ones((height, width), np.uint8)
    for transform in transforms:
        if transform.applied:
            footprint = cv2.warpAffine(
                ones,
                transform.matrix,
                (width, height),
                flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            covered &= footprint.astype(bool)
    return _largest_covered_rectangle(covered)


def _chained(
    read: Callable[[int], np.ndarray],
    n_slices: int,
    mode: str,
    side: int,
    *,
    judged_only: bool,
    screen: bool = False,
    starts: list[np.ndarray | None] | None = None,
) -> tuple[list[SliceTransform], list[PairRegistration | None], int, int]:
    """Each slice registered to its neighbour on images of at most ``side`` px (with the
    screen's cheaper start, or from ``starts[k]``, pair k already registered in full-resolution
    pixels: ``register_pair``), the transforms chained to the middle slice, with each slice's
    motion weighed against its uncertainty.

    Returns the transforms (full resolution), the pairs (``pairs[k]``: slice k coordinates ->
    slice k + 1 coordinates, None where registration failed or, with ``judged_only``, where the
    pair holds too little to judge its uncertainty by), and the frame's height and width.
    """
    reference = (n_slices - 1) // 2
    first = read(0)
    height, width = first.shape[:2]
    template = _PhaseImage(_registration_image(first, side))
    del first
    pairs: list[PairRegistration | None] = []
    factor = _scale_factor(height, width, side)
    if judged_only and not _judgeable(*template.image.shape):
        pairs = [None] * (n_slices - 1)  # no pair of this size could be judged: none is registered
    else:
        for j in range(1, n_slices):
            moving = _PhaseImage(_registration_image(read(j), side))
            known = None if starts is None else starts[j - 1]
            start = None if known is None else _rescaled(known, 1 / factor)
            pair = register_pair(template, moving, mode, screen=screen, start=start)
            pairs.append(None if judged_only and (pair is None or pair.corner_covariance is None) else pair)
            template = moving  # only the neighbour is needed
    full = [None if p is None else np.vstack((_rescaled(p.matrix, factor), [0, 0, 1])) for p in pairs]
    floor = np.eye(2) * EVIDENCE_FLOOR**2
    variance = [
        np.zeros((4, 2, 2)) if p is None or p.corner_covariance is None else (p.corner_covariance + floor) / factor**2
        for p in pairs
    ]
    chained = [np.eye(3) for _ in range(n_slices)]
    spread = [np.zeros((4, 2, 2)) for _ in range(n_slices)]  # the chained transforms' corner covariance
    summed = [np.zeros(4) for _ in range(n_slices)]  # the pairs' corner standard errors, added up
    errors = [np.sqrt(np.trace(v, axis1=1, axis2=2) / 2) for v in variance]  # (4,) per pair
    for j in range(reference + 1, n_slices):
        step = full[j - 1]
        chained[j] = (step if step is not None else np.eye(3)) @ chained[j - 1]
        spread[j] = spread[j - 1] + variance[j - 1]
        summed[j] = summed[j - 1] + errors[j - 1]
    for j in range(reference - 1, -1, -1):
        step = full[j]
        chained[j] = (np.linalg.inv(step) if step is not None else np.eye(3)) @ chained[j + 1]
        spread[j] = spread[j + 1] + variance[j]
        summed[j] = summed[j + 1] + errors[j]
    corners = _image_corners(height, width)
    least = np.eye(2) * 1e-12  # the reference: no motion, no uncertainty
    transforms = []
    for j in range(n_slices):
        # A slice is unregistered when the pair linking it towards the reference failed.
        link = full[j - 1] if j > reference else full[j] if j < reference else np.eye(3)
        transform = SliceTransform(j, chained[j][:2].copy(), registered=link is not None, applied=j != reference)
        moved = corners @ (transform.matrix - np.eye(2, 3)).T  # (4, 2): each corner's displacement
        # Per corner, the motion's length in standard errors: sqrt(m' C^-1 m), the four solved together.
        weighed = np.linalg.solve(spread[j] + least, moved[:, :, None])[:, :, 0]
        transform.significance = math.sqrt(float(np.max(np.einsum("ci,ci->c", moved, weighed))))
        transform.coherence = float(np.max(np.hypot(*moved.T) / np.maximum(summed[j], 1e-6)))
        transforms.append(transform)
    return transforms, pairs, height, width


def _auto_verdict(
    transforms: list[SliceTransform], pairs: list, share: float, height: int, width: int, *, screened: str = ""
) -> str:
    """Why ``auto`` warps the stack or leaves it as read: the sentence the report and ``info`` give.

    It warps when some slice's motion is more than ``AUTO_MIN_SIGNIFICANCE`` standard errors
    of its chained estimate and more than ``AUTO_MIN_COHERENCE`` times the sum of its pairs'
    standard errors, each times ``share``. ``screened``: the size of the screen's shrunk
    images, where that evidence only sends the stack on to the full-size estimate.
    """
    if all(p is None for p in pairs):
        return "fused as read: no neighbour pair held enough texture to measure motion by"
    needed = (AUTO_MIN_SIGNIFICANCE * share, AUTO_MIN_COHERENCE * share)
    strongest = max(transforms, key=lambda t: min(t.significance / needed[0], t.coherence / needed[1]))
    motion = strongest.largest_motion(height, width)
    evidence = (
        f"slice {strongest.index + 1} moved {motion:.2f} px, {strongest.significance:.1f} standard errors "
        f"({strongest.coherence:.1f} were its pairs' errors all of one sign)"
    )
    if strongest.significance <= needed[0] or strongest.coherence <= needed[1]:
        rule = f"{needed[0]:g} and {needed[1]:g}"
        rule = f"screened at {screened}, where {rule} look closer" if screened else f"warping needs {rule}"
        return f"fused as read: at most {evidence}; {rule}"
    return f"warped: {evidence}"


def estimate_alignment(
    read: Callable[[int], np.ndarray],
    n_slices: int,
    mode: str = "similarity",
    *,
    crop: bool = False,
    side: int = FINE_SIDE,
) -> StackAlignment:
    """Register each slice to its neighbour and chain the transforms to the middle slice.

    Args:
        read: slice number -> image ``(H, W)`` or ``(H, W, C)``.
        n_slices: slices in the stack.
        mode: ``auto``, ``none``, ``translation``, ``similarity`` or ``affine``. ``auto``
            estimates a similarity and warps the stack only when some slice moved by more
            than ``AUTO_MIN_SIGNIFICANCE`` standard errors; otherwise it is left as read
            (and a pair of two images always is). It screens on images of at most
            ``AUTO_SCREEN_SIDE`` px first and registers at ``side`` only a stack the
            screen finds moved (where ``side`` is larger than the screen's).
        crop: crop every slice to the rectangle they all cover.
        side: the phase refinement's images are at most this many px on the long side
            (``FINE_SIDE``; ``--speed fast``, which decides at 512 px, registers at 512).
    """
    reference = (n_slices - 1) // 2
    identity = np.eye(2, 3)
    if mode == "none":  # nothing is read: the identity needs no frame size
        transforms = [SliceTransform(j, identity.copy(), applied=False) for j in range(n_slices)]
        return StackAlignment(mode, reference, transforms, 0, 0)
    if mode == "auto":
        # The screen: small images, a cheap start. A stack it finds moved (on half the evidence
        # that warping needs where it shrank the slices: they carry less) is registered again at
        # ``side`` from the screen's pairs (ECC is not run again), and judged again. Where ``side``
        # is no larger than the screen's images, the screen's estimate is kept. The phase
        # refinement converges to the same transforms from either start: drifting selection
        # stacks, seeds 11-14, registered at 512 px: largest corner errors within 0.02 px of each
        # other, in 40-60% of the time; seeds 35 and 38 at 1024-1536 px, from the screen's pairs
        # or from ECC at 512 px: within 0.008 px and the same verdicts, in 50-70% of the time.
        transforms, pairs, height, width = _chained(
            read,
            n_slices,
            "similarity",
            min(AUTO_SCREEN_SIDE, side),
            judged_only=True,
            screen=True,
        )
        screen_factor = _scale_factor(height, width, min(AUTO_SCREEN_SIDE, side))
        if screen_factor < _scale_factor(height, width, side):
            screened = f"{round(width * screen_factor)} x {round(height * screen_factor)}"
            verdict = _auto_verdict(transforms, pairs, 0.5, height, width, screened=screened)
        else:
            verdict = _auto_verdict(transforms, pairs, 1.0, height, width)
        if verdict.startswith("warped") and screen_factor < _scale_factor(height, width, side):
            starts = [None if p is None else _rescaled(p.matrix, screen_factor) for p in pairs]
            transforms, pairs, height, width = _chained(
                read, n_slices, "similarity", side, judged_only=True, starts=starts
            )
            verdict = _auto_verdict(transforms, pairs, 1.0, height, width)
        if n_slices == 2:
            # Pair fusion takes its two images as registered, as the multi-focus pairs it is judged
            # on are given, and its metrics judge the fused image against them as they are.
            estimate = verdict.split(": ", 1)[1]
            verdict = (
                f"fused as read: a pair is taken as registered (the estimate: {estimate}); --align similarity warps it"
            )
        if not verdict.startswith("warped"):
            for transform in transforms:
                transform.applied = False
    else:
        transforms, pairs, height, width = _chained(read, n_slices, mode, side, judged_only=False)
    alignment = StackAlignment(mode, reference, transforms, height, width)
    if mode == "auto":
        alignment.verdict = verdict
    elif all(p is None for p in pairs):
        alignment.warnings.append("no slice could be registered (no texture to align on); fused unaligned")
        for transform in transforms:
            transform.applied = False
    if any(p is None for p in pairs) and not all(p is None for p in pairs) and alignment.active:
        failed = [t.index for t in transforms if not t.registered]
        names = ", ".join(str(j + 1) for j in failed)
        alignment.warnings.append(
            f"slice{'s' if len(failed) > 1 else ''} {names} could not be registered to a neighbour; "
            "kept the neighbour's transform"
        )
    if crop and alignment.active:
        alignment.crop = common_crop(transforms, height, width)
    return alignment
