"""Filters against direct definitions."""

from __future__ import annotations

import torch

from focusfuse.model.filters import box_mean, box_sum, fill_from_known, gaussian_blur, guided_filter


def test_box_mean_clips_the_window_at_borders():
    image = torch.arange(30, dtype=torch.float32).reshape(1, 1, 5, 6)
    mean = box_mean(image, 1)
    assert torch.isclose(mean[0, 0, 0, 0], image[0, 0, :2, :2].mean())
    assert torch.isclose(mean[0, 0, 2, 3], image[0, 0, 1:4, 2:5].mean())


def test_guided_filter_with_flat_guide_is_a_double_box_mean():
    # Slope a = 0 for a flat guide, so q = mean(b) = mean(mean(p)).
    torch.manual_seed(0)
    source = torch.rand(1, 1, 12, 12)
    flat = torch.full_like(source, 0.5)
    assert torch.allclose(guided_filter(flat, source, 3, 0.1), box_mean(box_mean(source, 3), 3), atol=1e-6)


def test_guided_filter_keeps_edges_of_its_guide():
    step = torch.zeros(1, 1, 16, 16)
    step[..., 8:] = 1.0
    filtered = guided_filter(step, step, 3, 1e-4)
    assert torch.allclose(filtered, step, atol=1e-2)


def test_gaussian_blur_preserves_constants_and_mass():
    constant = torch.full((1, 1, 10, 10), 0.7)
    assert torch.allclose(gaussian_blur(constant, 8.0, 4), constant, atol=1e-6)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[..., 10, 10] = 1.0
    assert torch.isclose(gaussian_blur(impulse, 8.0, 4).sum(), torch.tensor(1.0), atol=1e-6)


def test_fill_from_known_keeps_known_values_and_fills_a_hole_from_its_rim():
    # A plane with a 40 px hole: the fill comes from the rim, so it stays near the
    # plane, and nothing known moves.
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    plane = (0.05 * xx + 0.02 * yy)[None, None]
    hole = ((yy - 48) ** 2 + (xx - 40) ** 2 < 20**2)[None, None]
    filled = fill_from_known(plane, ~hole)
    assert torch.equal(filled[~hole], plane[~hole])
    assert (filled[hole] - plane[hole]).abs().max() < 0.4  # the plane rises 2.8 across the hole
    inside = filled[hole]
    assert inside.min() > plane[hole].min() - 0.3 and inside.max() < plane[hole].max() + 0.3


def test_fill_from_known_with_nothing_or_everything_known():
    values = torch.rand(1, 1, 9, 7)
    assert torch.equal(fill_from_known(values, torch.ones_like(values, dtype=torch.bool)), values)
    assert torch.equal(fill_from_known(values, torch.zeros_like(values, dtype=torch.bool)), torch.zeros_like(values))


def test_gradient_energy_without_autograd_is_the_same_numbers_as_with_it(monkeypatch):
    import focusfuse.model.filters as filters
    from focusfuse.model.filters import energy_band_rows, gradient_energy

    features = torch.rand(2, 5, 87, 47, requires_grad=True)
    # Bands of 8 rows, so that their seams (and a short last band) are inside the image.
    monkeypatch.setattr(filters, "ENERGY_BAND_BYTES", 8 * 2 * 5 * 47 * 4)
    assert energy_band_rows(features) == 8
    # Off the CPU there is no cache to fit: one band (a tensor on the meta device stands in for a GPU's).
    assert energy_band_rows(torch.empty(2, 5, 87, 47, device="meta")) == 87
    with_autograd = gradient_energy(features)
    with_autograd.sum().backward()  # the training path still has a gradient
    assert features.grad is not None and features.grad.abs().sum() > 0
    with torch.inference_mode():
        without = gradient_energy(features.detach())
    # The same numbers up to the rounding of a fused multiply-add.
    torch.testing.assert_close(without, with_autograd.detach(), rtol=1e-6, atol=1e-7)


def test_box_sum_in_place_is_box_sum():
    from focusfuse.model.filters import box_sum_

    image = torch.rand(1, 40, 31, 29).contiguous(memory_format=torch.channels_last)
    expected = box_sum(image, 5)
    with torch.inference_mode():
        result = box_sum_(image.clone(), 5, channels_at_once=16)
    torch.testing.assert_close(result, expected)
