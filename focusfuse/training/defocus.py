"""Models of optical defocus for making data with known ground truth.

Two models: a layered one (a near and a far layer, each with its own blur; the
blurred near layer spreads over the far one at their border, as a real lens does)
for training pairs, and a depth-dependent one (blur grows with the distance of a
pixel's depth from the focal plane) for synthetic z-stacks. The depth-dependent blur
comes two ways: ``depth_defocus`` gathers, each output pixel averaging its neighbourhood
with its own blur (one set of whole-image blurs serves every slice), and
``scatter_defocus`` spreads, each scene point's light with the blur of its own depth, as
a lens forms an image. They differ only where the blur changes across the frame, and
there, in the phase of the detail: the scatter of a tilted textured plane shifts the
phase between neighbouring slices, the gather does not, so slice alignment is judged on
scattered stacks.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

KernelKind = Literal["gaussian", "disc"]


def defocus_kernel(kind: KernelKind, strength: float) -> np.ndarray | None:
    """Normalised blur kernel; ``None`` for no blur (strength below a quarter pixel).

    ``strength`` is sigma for a Gaussian and the radius for a disc (the aperture
    image of a real defocused lens).
    """
    if strength < 0.25:
        return None
    if kind == "gaussian":
        radius = max(1, int(np.ceil(3.0 * strength)))
        offsets = np.arange(-radius, radius + 1, dtype=np.float32)
        line = np.exp(-(offsets**2) / (2.0 * strength * strength))
        kernel = np.outer(line, line)
    else:
        radius = int(np.ceil(strength))
        supersample = 4
        grid = (np.arange((2 * radius + 1) * supersample, dtype=np.float32) + 0.5) / supersample - radius - 0.5
        inside = (grid[None, :] ** 2 + grid[:, None] ** 2 <= strength * strength).astype(np.float32)
        kernel = inside.reshape(2 * radius + 1, supersample, 2 * radius + 1, supersample).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


def apply_kernel(image: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
    """Blur a float32 ``(H, W)`` image; reflected borders."""
    if kernel is None:
        return image
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)


def layered_defocus(
    sharp: np.ndarray, near_mask: np.ndarray, near_kernel: np.ndarray | None, far_kernel: np.ndarray | None
) -> np.ndarray:
    """Image of a near layer (where ``near_mask`` is 1) over a far layer, each blurred.

    The far layer is blurred from far pixels only (normalised convolution), then the
    blurred near layer is composited over it with its blurred alpha: a defocused
    foreground bleeds over the background, a defocused background does not bleed
    over a sharp foreground.
    """
    far_mask = 1.0 - near_mask
    if far_kernel is None:
        far = sharp
    else:
        weight = apply_kernel(far_mask, far_kernel)
        far = apply_kernel(sharp * far_mask, far_kernel) / np.maximum(weight, 1e-3)
        far = np.where(weight > 1e-3, far, sharp)
    near_alpha = apply_kernel(near_mask, near_kernel)
    near = apply_kernel(sharp * near_mask, near_kernel)
    return (near + (1.0 - near_alpha) * far).astype(np.float32)


def _level_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` blurred by one of the depth models' levels: below a quarter pixel, not at all."""
    return image if sigma < 0.25 else cv2.GaussianBlur(image, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)


def blur_levels(sharp: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``(L, H, W[, C])``: ``sharp`` blurred by a Gaussian of each sigma in ``levels``."""
    return np.stack([_level_blur(sharp, sigma) for sigma in levels])


def depth_defocus(
    sharp: np.ndarray, blur_map: np.ndarray, levels: np.ndarray, blurred: np.ndarray | None = None
) -> np.ndarray:
    """Space-variant Gaussian blur: pixel blur sigma ``blur_map``, interpolated between ``levels``.

    Args:
        sharp: float32 ``(H, W)`` or ``(H, W, C)``.
        blur_map: float32 ``(H, W)`` sigma per pixel, within [levels[0], levels[-1]].
        levels: increasing sigmas at which whole-image blurs are computed.
        blurred: ``blur_levels(sharp, levels)`` when already computed (a stack renders
            every slice from the same levels).
    """
    stack = blur_levels(sharp, levels) if blurred is None else blurred
    position = np.interp(blur_map, levels, np.arange(len(levels), dtype=np.float32))
    lower = np.clip(np.floor(position).astype(np.int32), 0, len(levels) - 2)
    frac = (position - lower).astype(np.float32)
    if sharp.ndim == 3:
        frac = frac[:, :, None]
        lower_c = lower[:, :, None]
    else:
        lower_c = lower
    below = np.take_along_axis(stack, lower_c[None], 0)[0]
    above = np.take_along_axis(stack, lower_c[None] + 1, 0)[0]
    return (below * (1.0 - frac) + above * frac).astype(np.float32)


def scatter_defocus(sharp: np.ndarray, blur_map: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Space-variant Gaussian blur as image formation makes it: each pixel's light spread with
    its own sigma ``blur_map``, split linearly between the two nearest of ``levels``.

    Args:
        sharp: float32 ``(H, W)`` or ``(H, W, C)``.
        blur_map: float32 ``(H, W)`` sigma per pixel, within [levels[0], levels[-1]].
        levels: increasing sigmas; the closer they lie, the closer to a continuous blur.
    """
    position = np.interp(blur_map, levels, np.arange(len(levels), dtype=np.float32)).astype(np.float32)
    out = np.zeros(sharp.shape, np.float32)
    for level, sigma in enumerate(levels):
        share = np.clip(1.0 - np.abs(position - level), 0.0, 1.0)
        if not share.any():
            continue
        out += _level_blur(sharp * (share[:, :, None] if sharp.ndim == 3 else share), sigma)
    return out
