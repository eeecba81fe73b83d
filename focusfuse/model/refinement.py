"""From the initial decision map to the final one: boundary band and guided filter.

The network's initial map p0 is nearly binary. Along the borders between focus
regions a hard switch leaves seams, so GACN blends a guided-filtered copy of p0 in
a band around those borders and keeps p0 everywhere else (gacn.md, Decision path).
Everything here is differentiable and has no per-image parameter.
"""

from __future__ import annotations

import torch

from focusfuse.model.filters import gaussian_blur, guided_filter

BAND_SIGMA = 8.0
BAND_RADIUS = 4  # 9x9 kernel
BAND_UPPER = 0.8
BAND_LOWER = 0.1
GUIDED_RADIUS = 3
GUIDED_EPS = 0.1


def boundary_band_weight(initial_map: torch.Tensor) -> torch.Tensor:
    """Weight w in [0, 1]: 1 in the border band, falling to 0 inside uniform regions.

    Args:
        initial_map: ``(N, 1, H, W)`` initial decision map p0.
    """
    blurred = gaussian_blur(initial_map, BAND_SIGMA, BAND_RADIUS)
    high = (blurred > BAND_UPPER).to(blurred.dtype)
    low = (blurred < BAND_LOWER).to(blurred.dtype)
    certainty = high * blurred + low * (1.0 - blurred)
    centred = blurred * certainty + 0.5 * (1.0 - certainty)
    return 1.0 - torch.abs(2.0 * centred - 1.0)


def refine_decision_map(initial_map: torch.Tensor, gray_a: torch.Tensor, gray_b: torch.Tensor) -> torch.Tensor:
    """Final decision map p = w * guided(p0) + (1 - w) * p0.

    Args:
        initial_map: ``(N, 1, H, W)`` p0, probability that A is sharper.
        gray_a, gray_b: ``(N, 1, H, W)`` gray sources in [0, 1] (the guide is their p0 mix).
    Returns:
        ``(N, 1, H, W)`` final decision map in [0, 1].
    """
    guide = initial_map * gray_a + (1.0 - initial_map) * gray_b
    smoothed = guided_filter(guide, initial_map, GUIDED_RADIUS, GUIDED_EPS)
    band = boundary_band_weight(initial_map)
    return (band * smoothed + (1.0 - band) * initial_map).clamp(0.0, 1.0)
