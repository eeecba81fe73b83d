"""Pure tensor filters used by the network and the refinement of decision maps.

Every function takes and returns ``(N, C, H, W)`` float tensors, so the same code
serves training (with autograd) and inference, on CPU or CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Without autograd ``gradient_energy`` works a band of rows at a time, each band's features
# at most this many bytes: every step on a band then finds it in the CPU's cache (a few MiB
# of L2 and L3 per core), where whole feature maps (50 to 200 MB) went through memory at
# each step.
ENERGY_BAND_BYTES = 2 * 2**20


def energy_band_rows(features: torch.Tensor) -> int:
    """Rows of ``features`` ``(N, C, H, W)`` in one band of ``gradient_energy`` without autograd:
    on a GPU the whole map (a band per launch of its kernels would only add launches)."""
    if features.device.type != "cpu":
        return max(2, features.shape[2])
    row_bytes = features.shape[0] * features.shape[1] * features.shape[3] * features.element_size()
    return max(2, ENERGY_BAND_BYTES // max(row_bytes, 1))


def box_mean(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window; the window is clipped at the borders.

    Dividing by the count of pixels inside the image (not the full window) keeps
    border means unbiased, as He et al.'s guided filter does.
    """
    size = 2 * radius + 1
    # Separable: the clipped window count is a product of row and column counts.
    rows = F.avg_pool2d(image, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(rows, (1, size), stride=1, padding=(0, radius), count_include_pad=False)


def box_sum(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a (2r+1)^2 window with zero padding: two depthwise passes of ones."""
    channels = image.shape[1]
    size = 2 * radius + 1
    ones = torch.ones(size, device=image.device, dtype=image.dtype)
    rows = F.conv2d(image, ones.view(1, 1, size, 1).expand(channels, 1, size, 1), padding=(radius, 0), groups=channels)
    return F.conv2d(rows, ones.view(1, 1, 1, size).expand(channels, 1, 1, size), padding=(0, radius), groups=channels)


def box_sum_(image: torch.Tensor, radius: int, channels_at_once: int = 16) -> torch.Tensor:
    """``box_sum`` written over ``image`` (inference only), a few channels at a time.

    The window sums of a 64-channel map otherwise take two new tensors its size;
    a group of channels at a time keeps the temporaries small enough to be reused.
    """
    for start in range(0, image.shape[1], channels_at_once):
        part = image[:, start : start + channels_at_once]
        part.copy_(box_sum(part, radius))
    return image


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Gray-guide guided filter (He, Sun, Tang 2013).

    Args:
        guide: ``(N, 1, H, W)`` guidance image.
        source: ``(N, C, H, W)`` image to filter.
        radius: window radius r (window 2r+1).
        eps: regularisation; larger smooths more.
    """
    mean_guide = box_mean(guide, radius)
    mean_source = box_mean(source, radius)
    cov = box_mean(guide * source, radius) - mean_guide * mean_source
    var = box_mean(guide * guide, radius) - mean_guide * mean_guide
    slope = cov / (var + eps)
    offset = mean_source - slope * mean_guide
    return box_mean(slope, radius) * guide + box_mean(offset, radius)


def fill_from_known(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``values`` where ``known``; elsewhere interpolated from the known values around them.

    Push-pull (Gortler et al. 1996): a pyramid of 2x2 means of values x known and of
    known, halved until every cell holds some known pixel; then, from the coarsest
    level up, each level keeps the mean of its known pixels and fills the rest of
    each cell from the bilinearly upsampled level below. Holes of any size fill
    smoothly from their rims in O(pixels).

    Args:
        values: ``(N, 1, H, W)`` float.
        known: ``(N, 1, H, W)`` bool; an image with no known pixel comes back as zeros.
    """
    weight = known.to(values.dtype)
    levels = [(values * weight, weight)]
    while min(levels[-1][1].shape[-2:]) > 1 and not bool((levels[-1][1] > 0).all()):
        weighted, weight = levels[-1]
        levels.append((F.avg_pool2d(weighted, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)))
    weighted, weight = levels[-1]
    filled = weighted / weight.clamp_min(torch.finfo(values.dtype).tiny)
    for weighted, weight in reversed(levels[:-1]):
        below = F.interpolate(filled, size=weighted.shape[-2:], mode="bilinear", align_corners=False)
        filled = weighted + (1.0 - weight) * below
    return torch.where(known, values, filled)


def gaussian_kernel1d(sigma: float, radius: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of length 2r+1."""
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with replicated borders (no darkening at the edge)."""
    channels = image.shape[1]
    kernel = gaussian_kernel1d(sigma, radius, device=image.device, dtype=image.dtype)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(blurred, vertical, groups=channels)


def gradient_energy(features: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared difference with the left neighbour plus with the upper neighbour, per channel.

    Outside the image counts as zero, as the authors' code shifts with zero padding.
    Summed over a window (``box_sum``) this is the pixel-wise spatial frequency.

    Args:
        features: ``(N, C, H, W)``.
        out: without autograd, a tensor of the same shape to write the energy into (one
            whose pages are already in memory saves faulting in a new one's).
    """
    if torch.is_grad_enabled() and features.requires_grad:
        horizontal = features.clone()
        horizontal[..., :, 1:] -= features[..., :, :-1]
        vertical = features.clone()
        vertical[..., 1:, :] -= features[..., :-1, :]
        return horizontal.square_().add_(vertical.square_())
    # Without autograd the energy is built in one tensor (``out`` or a new one), a band of rows
    # at a time (``ENERGY_BAND_BYTES``): the horizontal differences written straight into it and
    # squared in place, then the vertical ones added (addcmul). A fresh tensor the size of the
    # features costs its page faults on every slice, more than the arithmetic on this CPU
    # (bench/profile.py); a band's temporary is small enough for the allocator to reuse.
    energy = torch.empty_like(features) if out is None else out
    height = features.shape[-2]
    rows = energy_band_rows(features)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        band, target = features[..., start:stop, :], energy[..., start:stop, :]
        target[..., :, :1] = band[..., :, :1]
        torch.sub(band[..., :, 1:], band[..., :, :-1], out=target[..., :, 1:])
        target.square_()
        if start == 0:  # the first row's upper neighbour is outside: zero
            top = band[..., :1, :]
            target[..., :1, :].addcmul_(top, top)
            band, target, above = band[..., 1:, :], target[..., 1:, :], band[..., :-1, :]
        else:
            above = features[..., start - 1 : stop - 1, :]
        vertical = band - above
        target.addcmul_(vertical, vertical)
    return energy


SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))


def sobel(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives (correlation, zero padding) of a ``(N, 1, H, W)`` image."""
    kernel = torch.tensor((SOBEL_X, SOBEL_Y), device=image.device, dtype=image.dtype).unsqueeze(1)
    gradients = F.conv2d(image, kernel, padding=1)
    return gradients[:, 0:1], gradients[:, 1:2]


def fold_orientation(gx: torch.Tensor, gy: torch.Tensor, min_abs_gx: float) -> torch.Tensor:
    """Edge orientation atan(gy/gx) in (-pi/2, pi/2), with |gx| kept >= min_abs_gx.

    The floor keeps the derivative bounded where both gradients vanish.
    """
    sign = torch.where(gx < 0, -1.0, 1.0).to(gx.dtype)
    safe_gx = torch.where(gx.abs() < min_abs_gx, sign * min_abs_gx, gx)
    return torch.atan(gy / safe_gx)


HALF_PI = math.pi / 2
