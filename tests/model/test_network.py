"""The GACN architecture as gacn.md states it: parameter count, shapes, the comparison."""

from __future__ import annotations

import torch

from focusfuse.model.filters import box_sum, gradient_energy
from focusfuse.model.network import GACN, SF_RADIUS, compare_activity

# 4 feature blocks (conv+BN) + 4 channel SE + 1 input spatial SE + 4 decision blocks + 4 spatial SE.
EXPECTED_PARAMETERS = (
    (1 * 9 * 16 + 16 + 32)
    + (16 * 9 * 16 + 16 + 32)
    + (32 * 9 * 16 + 16 + 32)
    + (48 * 9 * 16 + 16 + 32)
    + 4 * (16 * 2 + 2 * 16)
    + 64 * 49
    + (64 * 9 * 48 + 48 + 96)
    + (48 * 9 * 32 + 32 + 64)
    + (32 * 9 * 16 + 16 + 32)
    + (16 * 9 * 1 + 1 + 2)
    + (48 + 32 + 16 + 1) * 49
)


def test_parameter_count_is_pinned():
    assert EXPECTED_PARAMETERS == 68820
    assert GACN().parameter_count == EXPECTED_PARAMETERS


def test_output_shapes_follow_the_input():
    model = GACN().eval()
    a, b = torch.rand(2, 1, 40, 56), torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        decision, fused = model(a, b)
        features = model.features(a)
    assert features.shape == (2, 64, 40, 56)
    for tensor in (decision.score, decision.initial_map, decision.final_map, fused):
        assert tensor.shape == (2, 1, 40, 56)
    assert float(decision.final_map.min()) >= 0.0 and float(decision.final_map.max()) <= 1.0


def test_comparison_is_sigmoid_of_spatial_frequency_difference():
    torch.manual_seed(0)
    features_a, features_b = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)

    # Naive pixel-wise spatial frequency: zero outside the image, 11x11 window.
    def naive_sf(f):
        padded = torch.nn.functional.pad(f, (1, 0, 1, 0))
        energy = (f - padded[..., 1:, :-1]) ** 2 + (f - padded[..., :-1, 1:]) ** 2
        window = torch.nn.functional.pad(energy, (SF_RADIUS,) * 4)
        out = torch.zeros_like(f)
        for dy in range(2 * SF_RADIUS + 1):
            for dx in range(2 * SF_RADIUS + 1):
                out += window[..., dy : dy + 20, dx : dx + 24]
        return out

    expected = torch.sigmoid(1000.0 * (naive_sf(features_a) - naive_sf(features_b)))
    actual = compare_activity(gradient_energy(features_a), gradient_energy(features_b))
    assert torch.allclose(actual, expected, atol=1e-4)
    assert torch.allclose(box_sum(gradient_energy(features_a), SF_RADIUS), naive_sf(features_a), atol=1e-4)


def test_baseline_activity_broadcasts_against_a_batch():
    model = GACN().eval()
    gray = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        energies = model.activity(gray)
        batched = model.decide(energies[0:1], energies[1:], gray[0:1], gray[1:]).final_map
        single = model.decide(energies[0:1], energies[2:3], gray[0:1], gray[2:3]).final_map
    assert batched.shape == (2, 1, 32, 32)
    assert torch.allclose(batched[1:2], single, atol=1e-6)


def test_score_smoothing_lets_textured_neighbours_outvote_a_flat_patch():
    """z is confidently positive around a 5x5 patch of weak negative noise (a flat spot)."""
    score = torch.full((1, 1, 40, 40), 0.05)
    score[:, :, 18:23, 18:23] = -0.01
    paper, pooled = GACN(), GACN(score_sigma=4.0)
    assert torch.equal(paper.smooth_score(score), score)
    assert (paper.smooth_score(score) < 0).sum() == 25  # sigmoid(1000 z) would make an island
    assert (pooled.smooth_score(score) > 0).all()
    # A real border (half the field each way) stays where it is.
    border = torch.where(torch.arange(40).view(1, 1, 1, 40) < 20, -0.05, 0.05).expand(1, 1, 40, 40)
    assert torch.equal(pooled.smooth_score(border) > 0, border > 0)


def test_gates_and_gated_features_from_one_pass_are_those_of_two():
    """Tiled fusion measures each slice's channel gates in the same pass as its features:
    the same numbers as measuring the gates first and running the feature path with them."""
    from focusfuse.model.weights import find_weights, load_model

    model = load_model(find_weights()).eval()  # the shipped weights: gates that are not all alike
    torch.manual_seed(1)
    gray = torch.rand(1, 1, 40, 56).contiguous(memory_format=torch.channels_last)
    weight = torch.zeros(1, 1, 40, 56)
    weight[..., 5:30, 10:50] = 1.0
    with torch.inference_mode():
        gates, features = model.features.gated_features(gray, weight)
        assert torch.equal(gates, model.features.channel_gates(gray, weight))
        assert torch.equal(features, model.features(gray, gates))
        assert not torch.equal(gates, model.features.channel_gates(gray))  # the weight matters


def test_inference_in_place_paths_give_the_training_paths_numbers():
    """Without autograd, BatchNorm, gates and spatial SEs are applied in place: the same
    numbers to rounding as the autograd path, on trained-like weights (random BN statistics)."""
    torch.manual_seed(3)
    model = GACN(score_sigma=2.0).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    a, b = torch.rand(2, 1, 150, 70), torch.rand(2, 1, 150, 70)
    gates = model.features.channel_gates(a).detach()
    expected_features = model.features(a).detach()
    expected_gated = model.features(a, gates).detach()
    expected_activity = model.activity(a).detach()
    comparison = compare_activity(model.activity(a), model.activity(b)).detach()
    expected_score = model.decision(comparison).detach()
    with torch.inference_mode():
        torch.testing.assert_close(model.features(a), expected_features, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.features(a, gates), expected_gated, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.features.channel_gates(a), gates, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.activity(a), expected_activity, rtol=1e-4, atol=1e-6)
        kept = comparison.clone()
        torch.testing.assert_close(model.decision(kept), expected_score, rtol=1e-4, atol=1e-5)
        assert torch.equal(kept, comparison)  # not overwritten unless asked
        torch.testing.assert_close(model.decision.score_in_place(kept), expected_score, rtol=1e-4, atol=1e-5)


def test_gated_affine_in_bfloat16_is_the_float32_result_rounded_once():
    """bfloat16 takes a 1x1 depthwise convolution instead of addcmul (which has no fast CPU
    kernel there): each pixel's product and sum rounded once, per image of a batch."""
    from focusfuse.model.network import gated_affine

    torch.manual_seed(3)
    x = torch.rand(2, 16, 23, 31).contiguous(memory_format=torch.channels_last).bfloat16()
    scale, shift = torch.rand(2, 16, 1, 1) * 3, torch.rand(2, 16, 1, 1) - 0.5  # a gate per image
    out = torch.empty(2, 32, 23, 31, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        gated_affine(x, scale.bfloat16(), shift.bfloat16(), out=out[:, 16:])
    expected = x.float() * scale.bfloat16().float() + shift.bfloat16().float()
    error = (out[:, 16:].float() - expected).abs()
    assert float((error / expected.abs().clamp_min(1e-3)).max()) <= 2**-8  # half a bfloat16 step
    float32 = torch.empty(2, 16, 23, 31)
    with torch.inference_mode():
        gated_affine(x.float(), scale, shift, out=float32)
    torch.testing.assert_close(float32, x.float() * scale + shift)


def test_the_decision_path_in_bfloat16_decides_as_in_float32():
    """The shipped weights on a real pair (stack8's first and last slices): bfloat16 moves
    the decision only where the two are close to a tie."""
    import numpy as np

    from focusfuse.io.reader import read_image
    from focusfuse.model.weights import find_weights, load_model

    from conftest import EXAMPLES

    model = load_model(find_weights())
    files = sorted((EXAMPLES / "stack8").iterdir())
    grays = [
        torch.from_numpy(read_image(f).astype(np.float32).mean(axis=2) / 255)[None, None].contiguous(
            memory_format=torch.channels_last
        )
        for f in (files[0], files[-1])
    ]
    with torch.inference_mode():
        a, b = (model.activity(g) for g in grays)
        single = model.decide(a, b, *grays).final_map
        half = model.decide(a, b, *grays, dtype=torch.bfloat16).final_map
    assert half.dtype == torch.float32 and not torch.equal(single, half)  # it did run in bfloat16
    assert float(((single < 0.5) == (half < 0.5)).float().mean()) > 0.99
