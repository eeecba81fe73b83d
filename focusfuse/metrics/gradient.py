"""Qg (Xydeas-Petrovic): how much of the sources' edge strength and orientation survives.

Follows Zheng Liu's metricXydeas with the conventions of
``../shared/metric_vectors/README.md``: Sobel gradients with zero padding, a 1e-5
guard for zero divisors, sigmoids 1/(1+e^(-10(G-0.5))) and 1/(1+e^(-20(A-0.75))),
and a per-pixel normalised mean.
"""

from __future__ import annotations

import numpy as np

from focusfuse.metrics.common import correlate_same

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.T.copy()
GUARD = 1e-5


def _edges(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength and orientation atan(gy/gx) with gx == 0 replaced by the guard."""
    gx = correlate_same(image, SOBEL_X)
    gy = correlate_same(image, SOBEL_Y)
    strength = np.sqrt(gx * gx + gy * gy)
    gx = np.where(gx == 0.0, GUARD, gx)
    return strength, np.arctan(gy / gx)


def _preservation(source_strength, source_angle, fused_strength, fused_angle) -> tuple[np.ndarray, np.ndarray]:
    """Edge preservation of one source in the fused image and its weight (the guarded strength).

    The fused strength is guarded before the comparison, as in the reference code: a
    source strength that is only float residue (~1e-17, flat areas) then counts as
    weaker than a flat fused image, not as stronger.
    """
    guarded_source = np.where(source_strength == 0.0, GUARD, source_strength)
    guarded_fused = np.where(fused_strength == 0.0, GUARD, fused_strength)
    source_larger = source_strength > guarded_fused
    strength_ratio = np.where(source_larger, guarded_fused / guarded_source, guarded_source / guarded_fused)
    orientation = np.abs(np.abs(source_angle - fused_angle) - np.pi / 2) * (2.0 / np.pi)
    strength_term = 1.0 / (1.0 + np.exp(-10.0 * (strength_ratio - 0.5)))
    orientation_term = 1.0 / (1.0 + np.exp(-20.0 * (orientation - 0.75)))
    return strength_term * orientation_term, guarded_source


def qg(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Qg of ``fused`` against two sources; all three are prepared 2-D float64 arrays."""
    fused_strength, fused_angle = _edges(fused)
    quality_a, weight_a = _preservation(*_edges(source_a), fused_strength, fused_angle)
    quality_b, weight_b = _preservation(*_edges(source_b), fused_strength, fused_angle)
    return float(np.mean((quality_a * weight_a + quality_b * weight_b) / (weight_a + weight_b)))
