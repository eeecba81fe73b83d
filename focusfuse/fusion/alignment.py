"""Slice alignment: register every slice to the stack's middle slice before fusing.

Real stacks move between slices: the stage drifts by a few pixels, and the image
scale changes with focus ("focus breathing"). Slices far apart in focus look very
different, so each slice is registered only to its neighbour, where the blur differs
by one z step, and the neighbour transforms are chained to the reference (the middle
slice). Registration is OpenCV's ECC (enhanced correlation coefficient), which is
invariant to brightness and contrast changes between the two images: first on gray
images downscaled to at most ``COARSE_SIDE`` px, then refined on images of at most
``FINE_SIDE`` px.

Transforms map reference-frame coordinates to slice coordinates (2x3, float64), as
``cv2.warpAffine(..., flags=WARP_INVERSE_MAP)`` takes them. ``similarity`` fits an
affine ECC and keeps its closest scale + rotation + translation. A neighbour pair that
cannot be registered (too flat or too blurred: ECC fails or correlates weakly) counts
as not moved, so the slice keeps its neighbour's transform, and the report says so.

Where the depth of the scene varies, two neighbouring slices are blurred differently
from place to place, and intensity registration reads some of that as motion: on
synthetic stacks that never moved, a few tenths of a pixel per pair, chained to 0.7
to 1.5 px at the ends of an 8-slice stack (examples/stack8). So alignment is asked
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
        if factor < 1.0:
            warp, correlation = _ecc(template, moving, motion, _rescaled(warp, factor))
    except cv2.error:
        return None
    if mode == "similarity":
        warp = _closest_similarity(warp)
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
