"""Fusion in tiles: the tile grid, the halo's reach, the memory plan, fixed image-wide statistics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from focusfuse import fuse_stack
from focusfuse.fusion import tiling
from focusfuse.fusion.compositing import composite_pyramid, strip_rows
from focusfuse.fusion.pruning import candidate_slices
from focusfuse.io.slice_cache import DecodedStack
from focusfuse.io.writer import write_image
from focusfuse.model import refinement
from focusfuse.model.weights import find_weights, load_model
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth


@pytest.mark.parametrize(
    ("height", "width", "max_pixels"), [(300, 500, 200**2), (1000, 700, 257**2), (97, 2000, 300**2)]
)
def test_tile_cores_cover_the_image_once_and_windows_add_the_halo(height, width, max_pixels):
    halo = 24
    covered = np.zeros((height, width), int)
    for tile in tiling.tile_grid(height, width, max_pixels, halo):
        covered[tile.core_slices()] += 1
        (y0, y1, x0, x1), (wy0, wy1, wx0, wx1) = tile.core, tile.window
        assert (wy0, wx0) == (max(0, y0 - halo), max(0, x0 - halo))
        assert (wy1, wx1) == (min(height, y1 + halo), min(width, x1 + halo))
        assert (wy1 - wy0) * (wx1 - wx0) <= max_pixels
        rows, columns = tile.core_in_window()
        assert rows.stop - rows.start == y1 - y0 and columns.stop - columns.start == x1 - x0
    assert (covered == 1).all()


def test_a_wide_image_gets_wide_tiles():
    """pcb10's frame in windows of 0.7 Mpx: 2 x 3 tiles, not the 3 x 3 squares of that size."""
    tiles = tiling.tile_grid(1536, 2048, 700_000, 48)
    assert len(tiles) == 6
    read = sum((t.window[1] - t.window[0]) * (t.window[3] - t.window[2]) for t in tiles)
    assert read < 1.35 * 1536 * 2048


def test_the_halo_covers_one_decision_steps_reach():
    model = load_model(find_weights(None), torch.device("cpu"))
    assert tiling.decision_reach(model.score_sigma) == 47
    assert tiling.TILE_HALO >= tiling.decision_reach(model.score_sigma)


def test_a_pixel_beyond_the_reach_does_not_change_a_decision():
    """The computed reach is real: a change just outside it leaves the centre's score alone, one well inside does not.

    The score (before the sigmoid, which saturates) reaches all but the guided filter's two windows.
    """
    model = load_model(find_weights(None), torch.device("cpu"))
    reach = tiling.decision_reach(model.score_sigma) - 2 * refinement.GUIDED_RADIUS
    rng = np.random.default_rng(0)
    size, centre = 2 * reach + 41, reach + 20
    gray_a, gray_b = (torch.from_numpy(rng.random((1, 1, size, size), np.float32)) for _ in range(2))
    gates = model.features.channel_gates(torch.cat((gray_a, gray_b)))

    def score_at_centre(a, b):
        with torch.inference_mode():
            activities = model.activity(torch.cat((a, b)), gates)
            return model.decide(activities[0:1], activities[1:2], a, b).score[0, 0, centre, centre]

    before = score_at_centre(gray_a, gray_b)
    changed = gray_b.clone()
    changed[..., centre - reach - 1, :] = 0.0  # one row just beyond the reach
    assert torch.equal(score_at_centre(gray_a, changed), before)
    # and one inside it does matter; nearer the edge its effect is below float32's
    # resolution of the score (1e-8 at 4-8 px in from the edge, on an AVX-512 CPU)
    changed[..., centre - reach // 2, :] = 0.0
    assert not torch.equal(score_at_centre(gray_a, changed), before)


def test_fixed_channel_gates_give_the_features_of_the_image_itself():
    model = load_model(find_weights(None), torch.device("cpu"))
    gray = torch.rand(2, 1, 60, 90)
    with torch.inference_mode():
        gates = model.features.channel_gates(gray)
        assert gates.shape == (2, 4, 16)
        assert torch.equal(model.activity(gray, gates), model.activity(gray))
        torch.testing.assert_close(model.features.channel_gates(gray, torch.ones(1, 1, 60, 90)), gates)
        # Means over the top half only: those of the top half (to its border effects), not the bottom's.
        gray[..., 30:, :] *= 0.2
        inside = torch.zeros(1, 1, 60, 90)
        inside[..., :30, :] = 1.0
        masked = model.features.channel_gates(gray, inside)
        top, bottom = model.features.channel_gates(gray[..., :30, :]), model.features.channel_gates(gray[..., 30:, :])
        assert (masked - top).abs().max() < 0.01 < (masked - bottom).abs().max()


def test_the_sample_mosaic_spreads_crops_over_the_image():
    mosaic = tiling.sample_mosaic(1000, 2000, 400)
    image = np.arange(1000 * 2000).reshape(1000, 2000)
    cut = mosaic.cut(image)
    crop, per_side = mosaic.crop, mosaic.per_side
    assert per_side == 400 // tiling.SAMPLE_CROP and crop * per_side <= 400
    assert cut.shape == (crop * per_side,) * 2 and mosaic.inside().shape == cut.shape
    ys, xs = zip(*mosaic.origins, strict=True)
    assert min(ys) < 150 and max(ys) > 800 and min(xs) < 300 and max(xs) > 1600
    assert cut[0, 0] == image[mosaic.origins[0]] and cut[crop, crop] == image[mosaic.origins[per_side + 1]]
    margin = tiling.SAMPLE_MARGIN
    assert mosaic.inside()[margin, margin] and not mosaic.inside()[crop, margin] and not mosaic.inside()[0, 20]


def test_the_plan_tiles_only_what_does_not_fit():
    options = {"strategy": "calibrated", "batch_size": 2, "tileable": True}
    fits = tiling.plan_memory(1000, 1000, 3, 1, 10, budget=8 * 2**30, **options)
    assert fits.tile_pixels is None and fits.tiles == 1 and fits.slices_in_memory
    tiled = tiling.plan_memory(5000, 4000, 3, 1, 5, budget=2 * 2**30, **options)
    assert tiled.tiles > 1 and tiled.estimated_peak <= tiling.PLAN_SHARE * 2 * 2**30
    on_file = tiling.plan_memory(5000, 4000, 3, 2, 100, budget=2 * 2**30, **options)
    assert not on_file.slices_in_memory and on_file.estimated_peak <= tiling.PLAN_SHARE * 2 * 2**30
    with pytest.raises(ValueError, match="whole \\(this strategy does not run in tiles\\)"):
        tiling.plan_memory(3000, 3000, 3, 1, 5, strategy="serial", batch_size=1, budget=2 * 2**30, tileable=False)


def test_a_20_megapixel_stack_plans_under_the_default_budget_with_its_slices_on_file():
    """Regression: plankton5's slices (5 x 5440x3648 RGB) fitted half of what was left, so they were
    kept in RAM, which left no room for the flat-region fill, and the plan was refused."""
    plan = tiling.plan_memory(
        3648, 5440, 3, 1, 5, strategy="calibrated", batch_size=1, budget=tiling.DEFAULT_MAX_MEMORY, tileable=True
    )
    assert not plan.slices_in_memory and plan.tiles > 1
    assert plan.estimated_peak <= tiling.PLAN_SHARE * tiling.DEFAULT_MAX_MEMORY


def test_a_pyramid_blended_in_strips_equals_the_whole_blend():
    rng = np.random.default_rng(2)
    slices = [np.rint(rng.random((1100, 300, 3)) * 255).astype(np.uint8) for _ in range(3)]
    index = np.zeros((1100, 300), np.uint8)
    index[300:700] = 1
    index[:, 200:] = 2
    whole = composite_pyramid(lambda j: slices[j], index, 3)
    strips = strip_rows(1100, 300, 7, 300 * 1000)
    assert len(strips) >= 3 and all(start % 128 == 0 for start, _ in strips)
    in_strips = composite_pyramid(lambda j: slices[j], index, 3, max_pixels=300 * 1000)
    assert np.abs(whole.astype(int) - in_strips.astype(int)).max() <= 1
    with DecodedStack(lambda j: slices[j], 3, slices[0], in_memory=False) as on_file:  # strips read their rows only
        by_rows = composite_pyramid(on_file.read, index, 3, max_pixels=300 * 1000, read_rows=on_file.read_rows)
    np.testing.assert_array_equal(by_rows, in_strips)


def test_the_focus_screen_drops_slices_that_are_sharp_nowhere_and_keeps_all_on_flat_ground():
    rng = np.random.default_rng(4)
    size, n_slices = 192, 12
    sharp = np.rint(procedural_texture(size, size, rng) * 255).astype(np.uint8)
    depth = np.tile(np.linspace(0, 4, size, dtype=np.float32), (size, 1))  # in focus in slices 0..4 only
    stack = make_depth_stack(sharp, depth, n_slices, noise_sigma=0.01, rng=rng)
    kept = candidate_slices(stack.slices)
    assert set(range(5)) <= set(kept) and max(kept) <= 6
    flat = [np.full((size, size), 100, np.uint8) for _ in range(n_slices)]
    assert candidate_slices(flat) == list(range(n_slices))


def test_a_pruned_fusion_agrees_with_the_unpruned_one_and_says_what_ran(tmp_path):
    rng = np.random.default_rng(6)
    size, n_slices = 256, 12
    sharp = np.rint(procedural_texture(size, size, rng) * 255).astype(np.uint8)
    depth = smooth_depth(size, size, 6, rng)  # the scene spans slices 0..5 of 12
    stack = make_depth_stack(sharp, depth, n_slices, noise_sigma=0.01, rng=rng)
    for k, image in enumerate(stack.slices):
        write_image(tmp_path / f"z{k:02d}.png", image)
    pruned = fuse_stack([tmp_path], device="cpu", prune=True)
    full = fuse_stack([tmp_path], device="cpu")
    assert pruned.timing["prune"] and not full.timing["prune"]
    assert full.timing["slice_tiles"] == {"run": n_slices, "in_all": n_slices}
    assert pruned.timing["slice_tiles"]["run"] <= 8 and pruned.timing["stages_s"]["prune"] > 0
    assert len(pruned.timing["per_slice_s"]) == n_slices
    assert (pruned.index_map == full.index_map).mean() >= 0.995
    assert pruned.index_map.max() <= 7


def test_the_sample_mosaic_is_what_a_tile_holds_but_at_most_a_tenth_of_the_image():
    import math

    assert tiling.mosaic_side(1536, 2048, 250_000) == math.isqrt(250_000)  # pcb10 at full size: a tile
    assert tiling.mosaic_side(768, 1024, 398_667) == math.isqrt(768 * 1024 // 10)  # decided at 1024: a tenth
    assert tiling.mosaic_side(100, 100, 398_667) >= tiling.SAMPLE_CROP


HEAP_CHECK = """
import ctypes, torch
from focusfuse.fusion import tiling

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2

def mapped_for(size):
    before = mallinfo2().hblkhd
    block = torch.empty(size // 4)
    mapped = mallinfo2().hblkhd - before
    del block
    return mapped

size = mallinfo2().fordblks + 64 * 2**20  # larger than any free block: the heap must grow or map it
print("outside", mapped_for(size) >= size)
with tiling.freed_memory_reused():
    size = mallinfo2().fordblks + 64 * 2**20
    print("inside", mapped_for(size) < size, mallinfo2().fordblks >= size)
size = mallinfo2().fordblks + 64 * 2**20
print("after", mapped_for(size) >= size)
"""


@pytest.mark.skipif(
    tiling._MALLOPT is None or tiling._glibc_function("mallinfo2") is None,
    reason="not glibc 2.33 or later: its mallopt sets what is kept, its mallinfo2 shows it",
)
def test_freed_memory_reused_keeps_feature_sized_blocks_in_the_heap():
    """Outside, glibc maps a block larger than its heap can give on its own (and unmaps it
    when it is freed, so its pages fault in again next time); inside, the heap grows to hold
    it and keeps it, free, for the next one. In a fresh process: this one's heap holds
    whatever earlier tests freed."""
    result = subprocess.run([sys.executable, "-c", HEAP_CHECK], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["outside", "True", "inside", "True", "True", "after", "True"], result.stdout
