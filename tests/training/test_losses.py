"""Dice and the differentiable Qg used for training."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from focusfuse.training.losses import dice_loss, gacn_loss, qg_index
from focusfuse.training.synthetic import procedural_texture


def test_dice_is_zero_for_a_perfect_map_and_high_for_the_complement():
    truth = torch.zeros(2, 1, 8, 8)
    truth[..., :4] = 1.0
    assert float(dice_loss(truth, truth)) == 0.0
    assert float(dice_loss(1.0 - truth, truth)) > 0.9


def test_qg_prefers_the_sharp_composite_to_the_average():
    sharp = procedural_texture(64, 64, np.random.default_rng(1))
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    a = sharp.copy()
    a[:, 32:] = blurred[:, 32:]
    b = sharp.copy()
    b[:, :32] = blurred[:, :32]
    to = lambda x: torch.from_numpy(x)[None, None]  # noqa: E731
    selected = qg_index(to(a), to(b), to(sharp))
    average = qg_index(to(a), to(b), to((a + b) / 2))
    assert float(selected) > float(average) + 0.1
    assert 0.0 <= float(average) <= 1.0 and 0.0 <= float(selected) <= 1.0


def test_loss_gradients_are_finite_on_flat_images():
    flat = torch.full((1, 1, 16, 16), 0.5)
    initial = torch.full((1, 1, 16, 16), 0.5, requires_grad=True)
    fused = initial * flat + (1 - initial) * flat
    loss, parts = gacn_loss(initial, torch.ones_like(flat), flat, flat, fused)
    loss.backward()
    assert torch.isfinite(initial.grad).all()
    assert set(parts) == {"dice", "qg", "loss"}
