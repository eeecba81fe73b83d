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
with outlying tiles down-weighted). Defocus blur is symmetric, so it changes a tile's
spectral amplitudes but not its phase: neighbours blurred differently across the frame
bias the phase far less than they bias ECC's intensity match, which reads them partly
as scale and shear (on synthetic drifting stacks the largest corner error of
``similarity`` fell from a median 0.70 px to 0.34 px over 8 seeds; probe, seeds 3-10).
``translation`` has no scale or shear to absorb the bias and stays with ECC at both sizes.

Transforms map reference-frame coordinates to slice coordinates (2x3, float64), as
``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)`` takes them. ``similarity`` fits an
affine ECC and keeps its closest scale + rotation + translation. A neighbour pair that
cannot be registered (too flat or too blurred: ECC fails or correlates weakly) counts
as not moved, so the slice keeps its neighbour's transform, and the report says so.

Where the depth of the scene varies, two neighbouring slices are blurred differently
from place to place, and intensity registration reads some of that as motion: on
synthetic stacks that never moved, up to a tenth of a pixel per pair, chained to 0.2
to 0.4 px at the corners of the end slices of examples/stack8 (costing it 0.5 dB,
bench/alignment.py). So alignment is asked
for (``--align similarity``), not applied by default: it is right for stacks that
drift or breathe by more than that, and a loss for stacks that are already aligned.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from focusfuse.io.color import to_gray

AlignMode = Literal["none", "translation", "similarity", "affine"]
ALIGN_MODES: tuple[str, ...] = ("none", "translation", "similarity", "affine")
COARSE_SIDE = 512  # estimate on images of at most this many px on the long side...
FINE_SIDE = 1024  # ...then refine at up to this: ECC's sub-pixel precision there is ample, at a
# quarter of the cost of 2048 (pcb10: 34 s at 2048, probe)
MIN_CORRELATION = 0.5  # ECC's correlation below this: the pair is not registered
MAX_SHIFT_FRACTION = 0.1  # a neighbour shift beyond this share of the image is a failure
MAX_SCALE_CHANGE = 0.05  # likewise a neighbour scale change beyond 5%
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
HIGH_PASS_SIGMA = 8.0  # px: detail only; ECC's own invariance covers global brightness, not vignetting
ECC_PREFILTER = 5  # px: ECC smooths both images by a Gaussian of this size first
# Phase refinement. Chosen on synthetic drifting stacks (bench/alignment.py's generator, seeds
# 1 and 2, and a static 8-slice stack rendered with blur spread from each scene point), not on
# the seed the bench reports: tiles of 64 px every 16 px, frequencies up to 5 cycles per tile
# (higher ones carry more of the defocus bias: 20 cycles doubled the largest corner error).
PHASE_TILE = 64  # px
PHASE_STEP = 16  # px between tile origins
PHASE_CUTOFF = 5  # cycles per tile: the highest spatial frequency whose phase is used
PHASE_ROUNDS = 4  # warp, measure, fit: each round removes most of what is left
PHASE_OUTLIER = 3.0  # tiles further than this many median residuals from the fit count less


@dataclass
class SliceTransform:
    """Where slice ``index`` lies relative to the reference frame."""

    index: int
    matrix: np.ndarray  # (2, 3) float64: reference-frame coordinates -> slice coordinates
    registered: bool = True  # False: its pair with the neighbour could not be registered
    applied: bool = True  # False: left unwarped (the reference, or alignment off)

    def corner_error(self, truth: np.ndarray, height: int, width: int) -> float:
        """The largest distance, px, between where this transform and ``truth`` (2x3) put an image corner."""
        corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
        return float(np.max(np.hypot(*(corners @ self.matrix.T - corners @ truth.T).T)))

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
                flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
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
        }


def _registration_image(image: np.ndarray) -> np.ndarray:
    """Gray detail of a slice at up to ``FINE_SIDE`` px: the image minus its Gaussian low-pass.

    ECC is invariant to a global gain and offset, but not to illumination that varies
    across the frame (vignetting that changes with focus, uneven brightfield); removing
    the low frequencies leaves the detail that registration needs. On synthetic stacks
    it also halved the chained error at the most defocused slices (probe).
    """
    gray = _downscaled(to_gray(image), FINE_SIDE)[0]
    return gray - cv2.GaussianBlur(gray, (0, 0), HIGH_PASS_SIGMA)


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


def _ecc(template: np.ndarray, moving: np.ndarray, motion: int, start: np.ndarray) -> tuple[np.ndarray, float]:
    mask = np.full(template.shape, 255, np.uint8)  # every pixel counts
    correlation, warp = cv2.findTransformECC(
        template, moving, start.astype(np.float32), motion, ECC_CRITERIA, mask, ECC_PREFILTER
    )
    return np.asarray(warp, np.float64), float(correlation)


class _PhaseTiles:
    """Overlapping tiles of one image size, and the low frequencies their phase is read at.

    Only the frequencies up to ``PHASE_CUTOFF`` cycles are needed, so each tile's spectrum is
    two small matrix products with the Fourier basis at those frequencies, not a whole FFT.
    """

    def __init__(self, height: int, width: int) -> None:
        size = PHASE_TILE
        rows = np.arange(0, height - size + 1, PHASE_STEP)  # tile origins, as ``spectra`` slices them
        cols = np.arange(0, width - size + 1, PHASE_STEP)
        centre_y, centre_x = np.meshgrid(rows + (size - 1) / 2, cols + (size - 1) / 2, indexing="ij")
        self.centres = np.stack([centre_x.ravel(), centre_y.ravel()], axis=1)
        self.window = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)
        fy = np.arange(-PHASE_CUTOFF, PHASE_CUTOFF + 1)[:, None] / size  # cycles per px, both signs
        fx = np.arange(0, PHASE_CUTOFF + 1)[None, :] / size  # one half-plane: real input
        radius = np.hypot(fx, fy) * size
        self.band = (radius <= PHASE_CUTOFF) & (radius > 0)
        self.fx = 2 * np.pi * np.broadcast_to(fx, self.band.shape)[self.band]
        self.fy = 2 * np.pi * np.broadcast_to(fy, self.band.shape)[self.band]
        angle_x = -2 * np.pi * np.outer(np.arange(size), fx[0])  # (size, fx)
        self.cos_x, self.sin_x = np.cos(angle_x).astype(np.float32), np.sin(angle_x).astype(np.float32)
        self.basis_y = np.exp(-2j * np.pi * np.outer(fy[:, 0], np.arange(size))).astype(np.complex64)  # (fy, size)

    def __len__(self) -> int:
        return len(self.centres)

    def spectra(self, image: np.ndarray) -> np.ndarray:
        """``(tiles, frequencies)``: every windowed tile's Fourier transform in the band."""
        size = PHASE_TILE
        windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))[::PHASE_STEP, ::PHASE_STEP]
        tiles = windows.reshape(-1, size, size)
        count = len(tiles)
        tiles = (tiles - tiles.mean(axis=(1, 2), keepdims=True, dtype=np.float32)) * self.window
        rows = tiles.reshape(count * size, size)  # one matrix product for all tiles, not one per tile
        along_x = (rows @ self.cos_x + 1j * (rows @ self.sin_x)).astype(np.complex64)  # (tiles * y, fx)
        along_x = along_x.reshape(count, size, -1).transpose(1, 0, 2).reshape(size, -1)  # (y, tiles * fx)
        spectra = (self.basis_y @ along_x).reshape(len(self.basis_y), count, -1).transpose(1, 0, 2)
        return spectra[:, self.band]

    def shifts(self, template_spectra: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per tile: the shift (x, y) that takes the template onto ``moving``, and its weight.

        The phase of the cross-power spectrum is a plane through the origin whose slope is the
        shift; it is fitted by least squares, each frequency weighted by the two amplitudes.
        The weight of a tile is its spectral energy, less where the phase fits no plane.
        """
        cross = template_spectra * np.conj(self.spectra(moving))
        weight, phase = np.abs(cross), np.angle(cross)
        fx, fy = self.fx[None], self.fy[None]
        sxx, sxy, syy = (weight * fx * fx).sum(1), (weight * fx * fy).sum(1), (weight * fy * fy).sum(1)
        bx, by = (weight * fx * phase).sum(1), (weight * fy * phase).sum(1)
        determinant = np.maximum(sxx * syy - sxy**2, 1e-12)
        dx = (syy * bx - sxy * by) / determinant
        dy = (sxx * by - sxy * bx) / determinant
        total = weight.sum(1)
        misfit = (weight * (phase - fx * dx[:, None] - fy * dy[:, None]) ** 2).sum(1) / np.maximum(total, 1e-12)
        return np.stack([dx, dy], axis=1), total / (1.0 + 10.0 * misfit)


def _fit_displacement(centres: np.ndarray, shifts: np.ndarray, weights: np.ndarray, mode: str) -> np.ndarray:
    """The 2x3 ``D`` with ``shift ~ D @ (x, y, 1)`` for the mode's degrees of freedom, fitted by
    weighted least squares, re-weighted a few times so that outlying tiles (occlusions, depth
    edges, noise) count less."""
    x, y = centres[:, 0], centres[:, 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    if mode == "translation":
        design_x, design_y = np.stack([one, zero], 1), np.stack([zero, one], 1)
    elif mode == "similarity":  # D = [[a, -b, tx], [b, a, ty]]
        design_x, design_y = np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)
    else:
        design_x = np.stack([x, y, one, zero, zero, zero], 1)
        design_y = np.stack([zero, zero, zero, x, y, one], 1)
    design = np.concatenate([design_x, design_y])
    target = np.concatenate([shifts[:, 0], shifts[:, 1]])
    robust = weights.copy()
    confident = weights >= np.median(weights)
    for _ in range(5):
        root = np.sqrt(np.concatenate([robust, robust]))
        params = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]
        residual = np.hypot(*(target - design @ params).reshape(2, -1))
        scale = PHASE_OUTLIER * (float(np.median(residual[confident])) + 1e-3)
        robust = weights / (1.0 + (residual / scale) ** 2)
    if mode == "translation":
        return np.array([[0.0, 0.0, params[0]], [0.0, 0.0, params[1]]])
    if mode == "similarity":
        a, b, tx, ty = params
        return np.array([[a, -b, tx], [b, a, ty]])
    return params.reshape(2, 3)


def _refine_by_phase(template: np.ndarray, moving: np.ndarray, warp: np.ndarray, mode: str) -> np.ndarray:
    """``warp`` (template -> moving coordinates) refined by local phase correlation."""
    height, width = template.shape
    tiles = _PhaseTiles(height, width)
    if len(tiles) < 4:  # too small to tile: keep ECC's estimate
        return warp
    template_spectra = tiles.spectra(template)
    for _ in range(PHASE_ROUNDS):
        warped = cv2.warpAffine(
            moving, warp, (width, height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        shifts, weights = tiles.shifts(template_spectra, warped)
        step = np.vstack((np.eye(2, 3) + _fit_displacement(tiles.centres, shifts, weights, mode), [0, 0, 1]))
        warp = (np.vstack((warp, [0, 0, 1])) @ step)[:2]
    return warp


def register_pair(template: np.ndarray, moving: np.ndarray, mode: str) -> np.ndarray | None:
    """The transform mapping ``template`` coordinates to ``moving`` coordinates, or None if it fails.

    Args:
        template, moving: gray float32 ``(H, W)`` of one size.
        mode: ``translation``, ``similarity`` or ``affine``.
    """
    motion = cv2.MOTION_TRANSLATION if mode == "translation" else cv2.MOTION_AFFINE
    coarse_template, factor = _downscaled(template, COARSE_SIDE)
    coarse_moving, _ = _downscaled(moving, COARSE_SIDE)
    try:
        warp, correlation = _ecc(coarse_template, coarse_moving, motion, np.eye(2, 3))
        if mode == "translation" and factor < 1.0:
            # A shift alone is measured by ECC as well as by phase, better: 0.05 against 0.16 px
            # at the corners on drifting stacks (probe, seeds 3-10); only the scale and shape that
            # the other modes fit take up the defocus bias.
            warp, correlation = _ecc(template, moving, motion, _rescaled(warp, factor))
    except cv2.error:
        return None
    if mode != "translation":
        warp = _rescaled(warp, factor)
        if mode == "similarity":
            warp = _closest_similarity(warp)
        if correlation >= MIN_CORRELATION and np.all(np.isfinite(warp)):
            warp = _refine_by_phase(template, moving, warp, mode)
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
    return warp


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


def estimate_alignment(
    read: Callable[[int], np.ndarray],
    n_slices: int,
    mode: str = "similarity",
    *,
    crop: bool = False,
) -> StackAlignment:
    """Register each slice to its neighbour and chain the transforms to the middle slice.

    Args:
        read: slice number -> image ``(H, W)`` or ``(H, W, C)``.
        n_slices: slices in the stack.
        mode: ``none``, ``translation``, ``similarity`` or ``affine``.
        crop: crop every slice to the rectangle they all cover.
    """
    reference = (n_slices - 1) // 2
    identity = np.eye(2, 3)
    if mode == "none":  # nothing is read: the identity needs no frame size
        transforms = [SliceTransform(j, identity.copy(), applied=False) for j in range(n_slices)]
        return StackAlignment(mode, reference, transforms, 0, 0)
    first = read(0)
    height, width = first.shape[:2]
    grays: list[np.ndarray | None] = [_registration_image(first)]
    pairs: list[np.ndarray | None] = []  # pairs[k]: slice k coordinates -> slice k + 1 coordinates
    for j in range(1, n_slices):
        grays.append(_registration_image(read(j)))
        template, moving = grays[j - 1], grays[j]
        assert template is not None and moving is not None
        pairs.append(register_pair(template, moving, mode))
        grays[j - 1] = None  # only the neighbour is needed
    fine_factor = _scale_factor(height, width, FINE_SIDE)
    full = [None if p is None else np.vstack((_rescaled(p, fine_factor), [0, 0, 1])) for p in pairs]
    chained = [np.eye(3) for _ in range(n_slices)]
    for j in range(reference + 1, n_slices):
        step = full[j - 1]
        chained[j] = (step if step is not None else np.eye(3)) @ chained[j - 1]
    for j in range(reference - 1, -1, -1):
        step = full[j]
        chained[j] = (np.linalg.inv(step) if step is not None else np.eye(3)) @ chained[j + 1]
    transforms = []
    for j in range(n_slices):
        # A slice is unregistered when the pair linking it towards the reference failed.
        link = full[j - 1] if j > reference else full[j] if j < reference else np.eye(3)
        transform = SliceTransform(j, chained[j][:2].copy(), registered=link is not None)
        transform.applied = j != reference
        transforms.append(transform)
    alignment = StackAlignment(mode, reference, transforms, height, width)
    if all(p is None for p in pairs):
        alignment.warnings.append("no slice could be registered (no texture to align on); fused unaligned")
        for transform in transforms:
            transform.applied = False
    elif any(p is None for p in pairs):
        failed = [t.index for t in transforms if not t.registered]
        names = ", ".join(str(j + 1) for j in failed)
        alignment.warnings.append(
            f"slice{'s' if len(failed) > 1 else ''} {names} could not be registered to a neighbour; "
            "kept the neighbour's transform"
        )
    if crop and alignment.active:
        alignment.crop = common_crop(transforms, height, width)
    return alignment
