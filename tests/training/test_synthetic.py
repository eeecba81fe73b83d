"""Synthetic data: regions, defocus models and depth stacks carry the truth they claim."""

from __future__ import annotations

import numpy as np

from focusfuse.training.baselines import laplacian_energy
from focusfuse.training.defocus import defocus_kernel, layered_defocus, scatter_defocus
from focusfuse.training.synthetic import (
    PairSettings,
    choose_region,
    make_depth_stack,
    make_training_pair,
    procedural_texture,
    smooth_depth,
)


def labels_and_image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint8)
    labels[:, size // 3 :] = 1
    labels[size // 2 :, size // 2 :] = 2
    return procedural_texture(size, size, rng), labels


def test_region_fraction_is_within_bounds():
    _, labels = labels_and_image()
    for seed in range(20):
        chosen = choose_region(labels, np.random.default_rng(seed), 0.1, 0.7)
        fraction = np.isin(labels, chosen).mean()
        assert 0.1 <= fraction <= 0.7


def test_kernels_are_normalised():
    for kind in ("gaussian", "disc"):
        kernel = defocus_kernel(kind, 3.0)
        assert abs(float(kernel.sum()) - 1.0) < 1e-5
    assert defocus_kernel("disc", 0.1) is None


def test_blurred_near_layer_bleeds_over_a_sharp_far_layer():
    image = np.zeros((32, 32), np.float32)
    near = np.zeros_like(image)
    near[:, :16] = 1.0
    image[:, :16] = 1.0  # a bright near object on a dark background
    rendered = layered_defocus(image, near, defocus_kernel("gaussian", 3.0), None)
    assert rendered[16, 18] > 0.05  # light spilled over the sharp background
    sharp_near = layered_defocus(image, near, None, defocus_kernel("gaussian", 3.0))
    assert sharp_near[16, 18] == 0.0 and sharp_near[16, 10] == 1.0


def test_training_pair_truth_marks_the_sharper_source():
    image, labels = labels_and_image(128)
    settings = PairSettings(crop=96, rotate=False, noise_max=0.0, both_blurred_fraction=0.0)
    for seed in range(5):
        pair = make_training_pair(image, labels, np.random.default_rng(seed), settings)
        sharper_a = laplacian_energy(pair.source_a) > laplacian_energy(pair.source_b)
        inside = pair.truth > 0.5
        assert sharper_a[inside].mean() > 0.8 and (~sharper_a[~inside]).mean() > 0.8
        assert pair.source_a.shape == (96, 96) and pair.source_a.dtype == np.float32


def test_depth_stack_focuses_each_slice_at_its_depth():
    rng = np.random.default_rng(0)
    sharp = (procedural_texture(64, 64, rng) * 255).astype(np.uint8)
    depth = smooth_depth(64, 64, 5, rng)
    stack = make_depth_stack(sharp, depth, 5)
    assert len(stack.slices) == 5 and all(s.dtype == np.uint8 for s in stack.slices)
    assert depth.min() == 0.0 and abs(float(depth.max()) - 4.0) < 1e-5
    energies = np.stack([laplacian_energy(s.astype(np.float32)) for s in stack.slices])
    assert (energies.argmax(0) == stack.truth_index).mean() > 0.6


def test_scattered_blur_spreads_each_point_with_its_own_blur_and_keeps_its_light():
    """A point's light stays centred on it, spread by the blur at the point, even where the
    pixels it reaches have another blur (a gather would spread it unevenly there), and none is lost."""
    blur = np.where(np.arange(81)[None, :] < 40, 1.0, 4.0).astype(np.float32) * np.ones((81, 1), np.float32)
    levels = np.array([0.0, 1.0, 2.0, 4.0], np.float32)
    xs = np.arange(-15, 16)
    for column, sigma in ((37, 1.0), (43, 4.0)):
        image = np.zeros((81, 81), np.float32)
        image[40, column] = 1.0
        out = scatter_defocus(image, blur, levels)
        assert abs(out.sum() - 1.0) < 1e-4
        profile = out[:, column - 15 : column + 16].sum(0)
        centre = (profile * xs).sum() / profile.sum()
        spread = np.sqrt((profile * (xs - centre) ** 2).sum() / profile.sum())
        assert abs(centre) < 1e-3 and abs(spread - sigma) < 0.05, (column, centre, spread)


def test_a_scattered_stack_matches_a_gathered_one_where_the_depth_is_flat():
    texture = procedural_texture(48, 48, np.random.default_rng(2))
    depth = np.full((48, 48), 1.3, np.float32)
    gathered = make_depth_stack(texture, depth, 3)
    scattered = make_depth_stack(texture, depth, 3, render="scatter")
    for a, b in zip(gathered.slices, scattered.slices, strict=True):
        assert np.abs(a - b)[8:-8, 8:-8].max() < 0.01
