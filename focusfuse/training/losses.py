"""Training losses: Dice on the initial decision map and a differentiable Qg.

Qg (Xydeas-Petrovic) measures how much of the sources' edge strength and
orientation reaches the fused image. Its Heaviside choice between the two strength
ratios is replaced by a steep sigmoid so it can be a loss (gacn.md, Training).
"""

from __future__ import annotations

import torch

from focusfuse.model.filters import HALF_PI, fold_orientation, sobel

QG_STEEPNESS = 1e5
QG_GAMMA_G, QG_KAPPA_G, QG_SIGMA_G = 1.0, -10.0, 0.5
QG_GAMMA_A, QG_KAPPA_A, QG_SIGMA_A = 1.0, -20.0, 0.75
GRADIENT_FLOOR = 1e-5
ORIENTATION_FLOOR = 1e-3


def dice_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum(p g) + 1) / (sum(p^2) + sum(g^2) + 1), averaged over the batch."""
    dims = tuple(range(1, prediction.ndim))
    overlap = (prediction * target).sum(dims)
    total = (prediction * prediction).sum(dims) + (target * target).sum(dims)
    return (1.0 - (2.0 * overlap + 1.0) / (total + 1.0)).mean()


def _edge(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx, gy = sobel(image)
    strength = torch.sqrt(gx * gx + gy * gy + 1e-12)
    return strength, fold_orientation(gx, gy, ORIENTATION_FLOOR)


def _preservation(source: tuple[torch.Tensor, torch.Tensor], fused: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Edge preservation Q^{SF} per pixel, in [0, 1]."""
    strength_s, orientation_s = source
    strength_f, orientation_f = fused
    safe_s = strength_s.clamp_min(GRADIENT_FLOOR)
    safe_f = strength_f.clamp_min(GRADIENT_FLOOR)
    source_stronger = torch.sigmoid(QG_STEEPNESS * (strength_s - strength_f))
    ratio = source_stronger * (safe_f / safe_s) + (1.0 - source_stronger) * (safe_s / safe_f)
    alignment = torch.abs(torch.abs(orientation_s - orientation_f) - HALF_PI) / HALF_PI
    strength_kept = QG_GAMMA_G / (1.0 + torch.exp(QG_KAPPA_G * (ratio - QG_SIGMA_G)))
    orientation_kept = QG_GAMMA_A / (1.0 + torch.exp(QG_KAPPA_A * (alignment - QG_SIGMA_A)))
    return strength_kept * orientation_kept


def qg_index(gray_a: torch.Tensor, gray_b: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
    """Differentiable Qg per sample: sum(Q^A w^A + Q^B w^B) / sum(w^A + w^B), w = edge strength.

    Args:
        gray_a, gray_b, fused: ``(N, 1, H, W)``.
    Returns:
        ``(N,)`` values in [0, 1].
    """
    edge_a, edge_b, edge_f = _edge(gray_a), _edge(gray_b), _edge(fused)
    weight_a, weight_b = edge_a[0], edge_b[0]
    kept = _preservation(edge_a, edge_f) * weight_a + _preservation(edge_b, edge_f) * weight_b
    dims = (1, 2, 3)
    return kept.sum(dims) / (weight_a + weight_b).sum(dims).clamp_min(1e-8)


def gacn_loss(
    initial_map: torch.Tensor,
    target_map: torch.Tensor,
    gray_a: torch.Tensor,
    gray_b: torch.Tensor,
    fused: torch.Tensor,
    *,
    qg_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss = Dice(p0, GT) + lambda (1 - Qg(A, B, F)); returns the loss and its parts.

    The parts are detached scalar tensors on the loss's device, so that a training
    loop can add them up there without waiting for the GPU at every step.
    """
    dice = dice_loss(initial_map, target_map)
    total = dice
    parts = {"dice": dice.detach()}
    if qg_weight:
        qg = qg_index(gray_a, gray_b, fused).mean()
        total = total + qg_weight * (1.0 - qg)
        parts["qg"] = qg.detach()
    parts["loss"] = total.detach()
    return total, parts
