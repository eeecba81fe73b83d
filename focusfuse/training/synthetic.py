"""Data with known ground truth: multi-focus training pairs and synthetic z-stacks.

Training pairs come from a natural image and its segmentation: a region (one or
more segments) is sharper in source A, the rest sharper in source B, and the
ground-truth decision map is the region. Synthetic z-stacks come from a sharp
image and a depth surface: slice k is in focus where the depth is k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from focusfuse.io.color import unit_scale
from focusfuse.training.defocus import blur_levels, defocus_kernel, depth_defocus, layered_defocus, scatter_defocus

TRAIN_SIZE = 256  # images are resized to this square before cropping (gacn.md)
TEXTURE_THRESHOLD = 0.02  # gradient magnitude (intensity per pixel) that counts as texture
SCATTER_LEVELS = 40  # blur levels of a scattered stack: spread light is split between neighbours


@dataclass
class PairSettings:
    """Distribution of a training pair; the defaults are the training distribution."""

    crop: int = 96
    rotate: bool = True
    noise_max: float = 0.1
    both_blurred_fraction: float = 0.3
    min_region: float = 0.1
    max_region: float = 0.7
    max_shift: int = 2  # misregistration of B against A (and the truth), pixels


@dataclass
class TrainingPair:
    """float32 ``(H, W)`` sources in [0, 1], the decision-map truth and the sharp image."""

    source_a: np.ndarray
    source_b: np.ndarray
    truth: np.ndarray
    sharp: np.ndarray


def choose_region(labels: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray | None:
    """Random set of segment labels covering a fraction in [low, high] of ``labels``.

    Returns the chosen label values, or ``None`` when no such set is found.
    """
    values, counts = np.unique(labels, return_counts=True)
    fractions = counts / labels.size
    for _ in range(8):
        order = rng.permutation(len(values))
        chosen, covered = [], 0.0
        for index in order:
            if covered + fractions[index] > high:
                continue
            chosen.append(values[index])
            covered += fractions[index]
            if covered >= low and rng.random() < 0.5:
                break
        if low <= covered <= high:
            return np.array(chosen)
    return None


def _rotate(image: np.ndarray, labels: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rotate about the centre; returns the side of the central square that stays valid."""
    size = image.shape[0]
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), degrees, 1.0)
    rotated = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    rotated_labels = cv2.warpAffine(
        labels, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT
    )
    radians = np.deg2rad(degrees)
    valid = int(size / (abs(np.cos(radians)) + abs(np.sin(radians))))
    return rotated, rotated_labels, valid


def _blur_strengths(rng: np.random.Generator, both_blurred: bool) -> tuple[float, float]:
    """(less, more) blur for the region in its sharp and its blurred source."""
    if both_blurred:
        less = rng.uniform(0.0, 1.5)
        return less, less + rng.uniform(0.75, 3.0)
    return 0.0, rng.uniform(1.0, 4.0)


def _kernel(kind: str, sigma: float) -> np.ndarray | None:
    # A disc of radius ~2 sigma has roughly the spread of a Gaussian of that sigma.
    return defocus_kernel("gaussian", sigma) if kind == "gaussian" else defocus_kernel("disc", 2.0 * sigma)


def make_training_pair(
    gray: np.ndarray, labels: np.ndarray, rng: np.random.Generator, settings: PairSettings
) -> TrainingPair:
    """One multi-focus pair from a ``(TRAIN_SIZE, TRAIN_SIZE)`` gray image and its label map.

    Augmentations (gacn.md, issue 5): rotation by a multiple of 30 degrees, a region
    of 10-70% of the crop, Gaussian or disc blur of random strength (sharp vs blurred,
    or both blurred by different amounts), defocus spread at the border of a blurred
    near layer, a shift of up to 2 px between A and B, brightness/contrast jitter,
    Gaussian noise, flips, and a random swap of A and B.
    """
    size = gray.shape[0]
    valid = size
    if settings.rotate:
        gray, labels, valid = _rotate(gray, labels, 30.0 * rng.integers(0, 12))
    margin = settings.max_shift
    window = settings.crop + 2 * margin
    start = (size - valid) // 2
    top = start + rng.integers(0, valid - window + 1)
    left = start + rng.integers(0, valid - window + 1)
    inner = (slice(top + margin, top + margin + settings.crop), slice(left + margin, left + margin + settings.crop))
    chosen = choose_region(labels[inner], rng, settings.min_region, settings.max_region)
    if chosen is None:
        # A crop inside one segment: split it by a random straight border instead.
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        centre_y, centre_x = top + window / 2, left + window / 2
        mask = (
            (yy - centre_y) * np.sin(angle) + (xx - centre_x) * np.cos(angle) > rng.uniform(-0.2, 0.2) * settings.crop
        ).astype(np.float32)
    else:
        mask = np.isin(labels, chosen).astype(np.float32)

    both_blurred = rng.random() < settings.both_blurred_fraction
    kind = "gaussian" if rng.random() < 0.5 else "disc"
    region_less, region_more = _blur_strengths(rng, both_blurred)
    rest_less, rest_more = _blur_strengths(rng, both_blurred)
    region_is_near = rng.random() < 0.5
    near_mask = mask if region_is_near else 1.0 - mask

    def layer_kernels(region_sigma: float, rest_sigma: float) -> tuple[np.ndarray | None, np.ndarray | None]:
        near_sigma, far_sigma = (region_sigma, rest_sigma) if region_is_near else (rest_sigma, region_sigma)
        return _kernel(kind, near_sigma), _kernel(kind, far_sigma)

    kernels_a, kernels_b = layer_kernels(region_less, rest_more), layer_kernels(region_more, rest_less)
    # Blur only the window and the reach of the widest kernel around it: the window's
    # pixels are those of blurring the whole image, at a fraction of the cost.
    reach = max((k.shape[0] // 2 for k in (*kernels_a, *kernels_b) if k is not None), default=0)
    rows = slice(max(top - reach, 0), min(top + window + reach, size))
    cols = slice(max(left - reach, 0), min(left + window + reach, size))
    source_a = layered_defocus(gray[rows, cols], near_mask[rows, cols], *kernels_a)
    source_b = layered_defocus(gray[rows, cols], near_mask[rows, cols], *kernels_b)
    shift_y, shift_x = rng.integers(-margin, margin + 1, size=2)
    local = (
        slice(inner[0].start - rows.start, inner[0].stop - rows.start),
        slice(inner[1].start - cols.start, inner[1].stop - cols.start),
    )
    shifted = (
        slice(local[0].start + shift_y, local[0].stop + shift_y),
        slice(local[1].start + shift_x, local[1].stop + shift_x),
    )
    source_a, source_b, truth, sharp = source_a[local], source_b[shifted], mask[inner], gray[inner]

    noise_sigma = rng.uniform(0.0, settings.noise_max)
    jittered = []
    for source in (source_a, source_b):
        contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
        source = (source - 0.5) * contrast + 0.5 + brightness
        source = source + rng.normal(0.0, noise_sigma, source.shape).astype(np.float32)
        jittered.append(np.clip(source, 0.0, 1.0).astype(np.float32))
    source_a, source_b = jittered

    if rng.random() < 0.5:
        source_a, source_b, truth, sharp = (np.fliplr(x) for x in (source_a, source_b, truth, sharp))
    if rng.random() < 0.5:
        source_a, source_b, truth, sharp = (np.flipud(x) for x in (source_a, source_b, truth, sharp))
    if rng.random() < 0.5:
        source_a, source_b, truth = source_b, source_a, 1.0 - truth
    return TrainingPair(*(np.ascontiguousarray(x, dtype=np.float32) for x in (source_a, source_b, truth, sharp)))


def texture_mask(sharp: np.ndarray, threshold: float = TEXTURE_THRESHOLD) -> np.ndarray:
    """Pixels whose all-in-focus gradient magnitude (Sobel / 8) is at least ``threshold``.

    Flat pixels carry no focus information, so accuracy is judged on these.
    """
    gx = cv2.Sobel(sharp, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(sharp, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.sqrt(gx * gx + gy * gy) >= threshold


@dataclass
class SyntheticStack:
    """A z-stack with its truth.

    Attributes:
        slices: N arrays like ``sharp`` (same dtype), slice k focused at depth k.
        depth: float32 ``(H, W)`` true depth in slice units.
        truth_index: ``(H, W)`` nearest slice to the true depth.
        sharp: the all-in-focus image.
    """

    slices: list[np.ndarray]
    depth: np.ndarray
    truth_index: np.ndarray
    sharp: np.ndarray


def smooth_depth(height: int, width: int, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random depth surface spanning [0, n_slices - 1]: tilt plus a few bumps."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy /= max(height - 1, 1)
    xx /= max(width - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    surface = np.cos(angle) * xx + np.sin(angle) * yy
    for _ in range(3):
        cy, cx, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.35)
        surface += rng.uniform(-0.8, 0.8) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius * radius))
    surface -= surface.min()
    surface /= max(float(surface.max()), 1e-6)
    return (surface * (n_slices - 1)).astype(np.float32)


def make_depth_stack(
    sharp: np.ndarray,
    depth: np.ndarray,
    n_slices: int,
    *,
    blur_per_slice: float = 1.5,
    noise_sigma: float = 0.0,
    brightness_drift: float = 0.0,
    rng: np.random.Generator | None = None,
    render: Literal["gather", "scatter"] = "gather",
) -> SyntheticStack:
    """Render slice k with Gaussian blur sigma = blur_per_slice * |depth - k| per pixel.

    Args:
        sharp: uint8, uint16 or float32 image ``(H, W)`` or ``(H, W, C)``; the slices keep its dtype.
        depth: float32 ``(H, W)`` in [0, n_slices - 1].
        noise_sigma: Gaussian noise std as a fraction of the full range.
        brightness_drift: relative gain change from the first to the last slice.
        render: ``gather`` (``depth_defocus``: fast, every slice from one set of blurs) or
            ``scatter`` (``scatter_defocus``: each point spreads its own blur, as optics does,
            with finer blur levels; the one slice alignment is judged on).
    """
    rng = rng or np.random.default_rng(0)
    dtype = sharp.dtype
    full = unit_scale(dtype)
    base = sharp.astype(np.float32) / full
    max_sigma = blur_per_slice * (n_slices - 1)
    steps = 14 if render == "gather" else SCATTER_LEVELS
    levels = np.concatenate(([0.0], np.geomspace(0.3, max(max_sigma, 0.31), steps))).astype(np.float32)
    blurred = blur_levels(base, levels) if render == "gather" else None
    slices = []
    for k in range(n_slices):
        sigma = np.clip(blur_per_slice * np.abs(depth - k), 0.0, levels[-1]).astype(np.float32)
        if blurred is not None:
            rendered = depth_defocus(base, sigma, levels, blurred)
        else:
            rendered = scatter_defocus(base, sigma, levels)
        gain = 1.0 + brightness_drift * (k / max(n_slices - 1, 1) - 0.5)
        rendered = rendered * gain
        if noise_sigma:
            rendered = rendered + rng.normal(0.0, noise_sigma, rendered.shape).astype(np.float32)
        rendered = np.clip(rendered, 0.0, 1.0) * full
        slices.append(np.rint(rendered).astype(dtype) if dtype.kind == "u" else rendered.astype(dtype))
    truth_index = np.clip(np.rint(depth), 0, n_slices - 1).astype(np.uint16 if n_slices > 256 else np.uint8)
    return SyntheticStack(slices=slices, depth=depth, truth_index=truth_index, sharp=sharp)


def procedural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 ``(H, W)`` texture in [0, 1] with detail at several scales (no data needed)."""
    texture = np.zeros((height, width), np.float32)
    for scale, weight in ((1.0, 0.5), (2.0, 0.3), (4.0, 0.2)):
        noise = rng.random((height, width)).astype(np.float32)
        texture += weight * cv2.GaussianBlur(noise, (0, 0), scale)
    texture -= texture.min()
    return texture / max(float(texture.max()), 1e-6)


@dataclass
class DriftingStack:
    """A depth stack seen through known per-slice transforms, as a drifting, breathing camera sees it.

    Attributes:
        slices: the observed slices, ``(size, size)`` uint8.
        transforms: per slice, the true (2, 3) map from the reference (middle) slice's
            coordinates to that slice's coordinates (the reference's is the identity).
        sharp: the all-in-focus image in the reference frame.
        truth_index: nearest slice to the true depth, in the reference frame.
    """

    slices: list[np.ndarray]
    transforms: list[np.ndarray]
    sharp: np.ndarray
    truth_index: np.ndarray


def drifting_render_side(size: int, max_shift: float = 10.0, scale_span: float = 0.015) -> int:
    """The side a drifting stack of ``size`` is rendered at before its slices are cut."""
    return size + 2 * (int(np.ceil(max_shift + scale_span * size)) + 8)


def make_drifting_stack(
    size: int,
    n_slices: int,
    rng: np.random.Generator,
    *,
    max_shift: float = 10.0,
    scale_span: float = 0.015,
    jitter: float = 0.3,
    noise_sigma: float = 0.005,
    texture: np.ndarray | None = None,
    render: Literal["gather", "scatter"] = "scatter",
) -> DriftingStack:
    """A depth stack warped per slice: a linear drift of ``max_shift`` px end to end (plus
    ``jitter`` px of random shake per slice) and a scale change of ``scale_span`` over the
    stack about the centre. Slices are rendered larger (``drifting_render_side``) and cut
    after warping, so their borders hold real content, as a camera's do. ``texture``, in
    [0, 1], must be at least that large. The depth stack is scattered by default (see
    ``make_depth_stack``): how the blur moves the phase of detail is what alignment meets.
    """
    big = drifting_render_side(size, max_shift, scale_span)
    pad = (big - size) // 2
    if texture is None:
        texture = procedural_texture(big, big, rng)
    elif min(texture.shape[:2]) < big:
        raise ValueError(f"texture {texture.shape[:2]} is smaller than the {big}x{big} the stack is rendered at")
    texture = texture[:big, :big]
    sharp = np.rint(np.clip(texture, 0, 1) * 255).astype(np.uint8)
    depth = smooth_depth(big, big, n_slices, rng)
    stack = make_depth_stack(sharp, depth, n_slices, noise_sigma=noise_sigma, rng=rng, render=render)
    reference = (n_slices - 1) // 2
    direction = rng.uniform(-1, 1, 2)
    drift = direction / np.abs(direction).max() * max_shift / max(n_slices - 1, 1)
    centre = (big - 1) / 2
    into_big = np.array([[1, 0, pad], [0, 1, pad], [0, 0, 1.0]])
    slices, transforms = [], []
    for k, image in enumerate(stack.slices):
        scale = 1 + scale_span * (k - reference) / max(n_slices - 1, 1)
        shift = drift * (k - reference) + (rng.uniform(-jitter, jitter, 2) if k != reference else 0.0)
        matrix = np.array([[scale, 0, shift[0] + centre * (1 - scale)], [0, scale, shift[1] + centre * (1 - scale)]])
        warped = cv2.warpAffine(image, matrix, (big, big), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
        slices.append(np.ascontiguousarray(warped[pad:-pad, pad:-pad]))
        transforms.append((np.linalg.inv(into_big) @ np.vstack((matrix, [0, 0, 1])) @ into_big)[:2])
    inner = (slice(pad, pad + size), slice(pad, pad + size))
    return DriftingStack(slices, transforms, sharp[inner], stack.truth_index[inner])
