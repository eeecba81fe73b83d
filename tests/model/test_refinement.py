"""Boundary band and final decision map (gacn.md, Decision path)."""

from __future__ import annotations

import torch

from focusfuse.model.refinement import boundary_band_weight, refine_decision_map


def step_map(size: int = 40) -> torch.Tensor:
    initial = torch.zeros(1, 1, size, size)
    initial[..., size // 2 :] = 1.0
    return initial


def test_band_is_one_at_the_border_and_zero_inside_regions():
    band = boundary_band_weight(step_map())
    assert float(band[0, 0, 20, 20]) == 1.0 and float(band[0, 0, 20, 19]) == 1.0
    assert float(band[0, 0, 20, 2]) == 0.0 and float(band[0, 0, 20, 37]) == 0.0


def test_final_map_keeps_the_initial_map_away_from_borders_and_smooths_at_them():
    initial = step_map()
    torch.manual_seed(0)
    gray_a, gray_b = torch.rand(1, 1, 40, 40), torch.rand(1, 1, 40, 40)
    final = refine_decision_map(initial, gray_a, gray_b)
    assert torch.equal(final[..., :, :10], initial[..., :, :10])
    assert torch.equal(final[..., :, 30:], initial[..., :, 30:])
    border = final[0, 0, :, 18:22]
    assert float(border.min()) > 0.0 or float(border.max()) < 1.0
    assert float(final.min()) >= 0.0 and float(final.max()) <= 1.0
