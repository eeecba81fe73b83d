"""``--speed fast``: decisions on shrunk slices, the fused image and index map at full size."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_pipeline import psnr, write_stack

from focusfuse import FocusFuseError, fuse_stack
from focusfuse.fusion.resolution import (
    DEFAULT_DECISION_SIDE,
    DEFAULT_MAX_REDUCTION,
    FAST_DECISION_SIDE,
    FAST_SLICES_PER_DECISION,
    MAX_REDUCTION,
    decision_size,
    enlarge_index_map,
    reduced_stack,
    refine_boundaries,
)
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth

from conftest import step_depth_stack


def written(folder, slices):
    return write_stack(folder, slices, ".png")


def test_decision_size_shrinks_only_large_images_and_by_at_most_the_cap():
    assert decision_size(768, 1024, "default") == (768, 1024)
    assert decision_size(1536, 2048, "default") == (768, DEFAULT_DECISION_SIDE)
    assert decision_size(864, 1152, "default") == (768, DEFAULT_DECISION_SIDE)
    assert decision_size(3648, 5440, "default") == (3648 // DEFAULT_MAX_REDUCTION, 5440 // DEFAULT_MAX_REDUCTION)
    assert decision_size(1536, 2048, "default", strategy="serial") == (1536, 2048)
    assert decision_size(1536, 2048, "fast") == (384, FAST_DECISION_SIDE)
    assert decision_size(300, 400, "fast") == (300, 400)  # small images are decided as by default
    assert decision_size(3648, 5440, "fast") == (round(3648 / MAX_REDUCTION), round(5440 / MAX_REDUCTION))


def test_fast_on_a_small_image_is_the_default_bit_for_bit(tmp_path):
    stack = step_depth_stack(n_slices=8, size=96)  # more slices than a fast group: same groups
    paths = written(tmp_path / "s", stack.slices)
    default, fast = fuse_stack(paths, device="cpu"), fuse_stack(paths, device="cpu", speed="fast")
    assert fast.timing["slices_per_decision"] == default.timing["slices_per_decision"] == 4
    np.testing.assert_array_equal(fast.index_map, default.index_map)
    np.testing.assert_array_equal(fast.fused, default.fused)


@pytest.fixture(scope="module")
def large_depth_stack(tmp_path_factory):
    """6 slices of 1152x864 (decided at 512x384 under fast) with a smooth depth surface."""
    rng = np.random.default_rng(21)
    height, width = 864, 1152
    sharp = np.rint(procedural_texture(height, width, rng) * 255).astype(np.uint8)
    stack = make_depth_stack(sharp, smooth_depth(height, width, 6, rng), 6, rng=rng)
    return stack, written(tmp_path_factory.mktemp("large") / "s", stack.slices)


# Decided at full size, this stack fuses to 37.08 dB with 99.998% of the index map within
# one slice of the truth (measured once; not fused here, it takes most of a minute on 2 cores).
DEFAULT_PSNR_ON_LARGE_STACK = 37.08


def test_fast_keeps_full_size_and_stays_near_the_default_on_a_large_stack(large_depth_stack, tmp_path):
    stack, paths = large_depth_stack
    output = tmp_path / "fast.png"
    fast = fuse_stack(paths, device="cpu", speed="fast", output=output)
    assert fast.fused.shape == stack.sharp.shape and fast.index_map.shape == stack.sharp.shape
    assert cv2.imread(str(tmp_path / "fast.index.png"), cv2.IMREAD_UNCHANGED).shape == stack.sharp.shape
    timing = json.loads((tmp_path / "fast.timing.json").read_text())
    assert timing["speed"] == "fast" and timing["decision_size"] == [384, 512]
    assert timing["options"]["speed"] == "fast"
    assert timing["slices_per_decision"] == timing["options"]["slices_per_decision"] == FAST_SLICES_PER_DECISION
    within_one = (np.abs(fast.index_map.astype(int) - stack.truth_index) <= 1).mean()
    assert within_one >= 0.99, f"fast: {within_one:.3f} of the index map within one slice of the truth"
    assert psnr(fast.fused, stack.sharp) >= DEFAULT_PSNR_ON_LARGE_STACK - 0.5


def test_a_boundary_decided_coarsely_is_placed_at_full_resolution():
    """Slice 0 sharp left of column 203, slice 1 right of it; the coarse decision puts the boundary at 200."""
    rng = np.random.default_rng(5)
    texture = np.rint(procedural_texture(64, 400, rng) * 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(texture, (0, 0), 3.0)
    boundary = 203
    slice0, slice1 = blurred.copy(), blurred.copy()
    slice0[:, :boundary], slice1[:, boundary:] = texture[:, :boundary], texture[:, boundary:]
    coarse = np.zeros((16, 100), np.uint8)
    coarse[:, 50:] = 1  # a decision pixel covers 4 full-size ones: the boundary lands at 200
    enlarged = enlarge_index_map(coarse, (64, 400))
    refined = refine_boundaries(enlarged, [slice0, slice1].__getitem__, 0.25)
    rows = slice(8, 56)  # away from the top and bottom edges, where the window is cut
    assert (enlarged[rows, 200:boundary] == 1).all()  # 3 columns on the wrong side before
    wrong = (refined[rows, : boundary - 1] != 0).mean() + (refined[rows, boundary + 1 :] != 1).mean()
    assert wrong < 0.01
    assert (refined[rows, :180] == 0).all() and (refined[rows, 230:] == 1).all()  # far from it, untouched


def test_an_unknown_speed_is_refused(tmp_path):
    paths = written(tmp_path / "s", step_depth_stack(n_slices=3, size=64).slices)
    with pytest.raises(FocusFuseError, match="--speed quick: use one of default, fast"):
        fuse_stack(paths, device="cpu", speed="quick")  # type: ignore[arg-type]


def test_fast_writes_a_full_size_height_map_from_the_command_line(large_depth_stack, tmp_path):
    from click.testing import CliRunner

    from focusfuse.cli import main

    _, paths = large_depth_stack
    height = tmp_path / "height.tif"
    arguments = ["stack", *map(str, paths), "-o", str(tmp_path / "f.png"), "--speed", "fast"]
    result = CliRunner().invoke(main, [*arguments, "--height-map", str(height), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    import tifffile

    assert tifffile.imread(height).shape == (864, 1152)


def test_the_shrunk_slices_are_the_same_in_memory_and_in_a_temporary_file():
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    with (
        reduced_stack(slices.__getitem__, 3, (45, 60), in_memory=True) as kept,
        reduced_stack(slices.__getitem__, 3, (45, 60), in_memory=False) as filed,
    ):
        for j in range(3):
            expected = cv2.resize(slices[j], (60, 45), interpolation=cv2.INTER_AREA)
            np.testing.assert_array_equal(kept.read(j), expected)
            np.testing.assert_array_equal(filed.read(j), expected)
            np.testing.assert_array_equal(filed.read_rows(j, slice(10, 20)), expected[10:20])


def test_the_default_decides_a_wide_image_shrunk_and_fuses_it_at_full_size(tmp_path):
    """A 3-slice stack of 1280x320 with a depth step: decided at 1024x256, each side of the
    step from its sharp slice at full size, the boundary placed within a few pixels."""
    stack = step_depth_stack(n_slices=3, size=320, width=1280)
    output = tmp_path / "f.png"
    result = fuse_stack(written(tmp_path / "s", stack.slices), device="cpu", output=output)
    timing = json.loads((tmp_path / "f.timing.json").read_text())
    assert timing["decision_size"] == [256, 1024] and "speed" not in timing["options"]
    assert result.fused.shape == stack.sharp.shape and result.index_map.shape == stack.sharp.shape
    within_one = (np.abs(result.index_map.astype(int) - stack.truth_index) <= 1).mean()
    assert within_one >= 0.99, within_one
    assert psnr(result.fused, stack.sharp) >= 30.0


def test_the_memory_plan_reports_the_tiles_of_the_image_the_decisions_see():
    from focusfuse.fusion.pipeline import stack_memory_plan
    from focusfuse.fusion.tiling import tile_grid

    class Source:
        labels = ["stack"]

        def __len__(self):
            return 64

    budget = 2 * 2**30
    full = stack_memory_plan(Source(), 1500, 2000, 1, 1, "calibrated", 1, budget)  # type: ignore[arg-type]
    decided = stack_memory_plan(Source(), 1500, 2000, 1, 1, "calibrated", 1, budget, decided_at=(768, 1024))  # type: ignore[arg-type]
    assert full.tile_pixels is not None and full.tiles == len(tile_grid(1500, 2000, full.tile_pixels, full.halo))
    assert decided.tiles == len(tile_grid(768, 1024, full.tile_pixels, full.halo)) < full.tiles
    assert decided.tile_pixels == full.tile_pixels and decided.estimated_peak == full.estimated_peak


def test_slices_per_decision_on_shrunk_slices_by_speed():
    from focusfuse.fusion.resolution import DEFAULT_REDUCED_SLICES_PER_DECISION, slices_per_decision_for
    from focusfuse.fusion.strategies import SLICES_PER_DECISION

    assert slices_per_decision_for("default", reduced=True) == DEFAULT_REDUCED_SLICES_PER_DECISION == 5
    assert slices_per_decision_for("fast", reduced=True) == FAST_SLICES_PER_DECISION == 6
    assert slices_per_decision_for("default", reduced=False) == slices_per_decision_for("fast", reduced=False)
    assert slices_per_decision_for("fast", reduced=False) == SLICES_PER_DECISION == 4


def test_deep_stacks_on_shrunk_slices_take_more_slices_per_decision_under_the_default():
    from focusfuse.fusion.resolution import slices_per_decision_for

    by_depth = {n: slices_per_decision_for("default", True, n) for n in (2, 10, 46, 47, 55, 56, 64, 200)}
    assert by_depth == {2: 5, 10: 5, 46: 5, 47: 6, 55: 6, 56: 7, 64: 7, 200: 7}
    assert slices_per_decision_for("fast", True, 64) == 6
    assert slices_per_decision_for("default", False, 64) == 4


def test_a_deep_stack_runs_the_deep_stack_slices_per_decision(tmp_path):
    """The rule reaches the fusion: a 48-slice stack decided on shrunk slices runs 6 per path."""
    from focusfuse.fusion import resolution

    folder = tmp_path / "deep"
    folder.mkdir()
    rng = np.random.default_rng(5)
    base = cv2.resize(rng.random((40, 40), np.float32), (1100, 64), interpolation=cv2.INTER_CUBIC)
    for j in range(48):
        blurred = cv2.GaussianBlur(base, (0, 0), 0.5 + abs(j - 20) * 0.2)
        cv2.imwrite(str(folder / f"z{j:02d}.png"), np.clip(blurred * 255, 0, 255).astype(np.uint8))
    assert resolution.decision_size(64, 1100, "default") != (64, 1100)
    result = fuse_stack([folder], device="cpu", align="none")
    assert result.timing["slices_per_decision"] == 6
    precision = resolution.network_precision(torch.device("cpu"), reduced=True)  # recorded as it ran
    assert result.timing["feature_precision"] == result.timing["decision_precision"] == precision


def test_network_precision_is_bfloat16_for_shrunk_decisions_on_a_cpu_that_has_it():
    from focusfuse.fusion.resolution import network_precision

    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    cpu = torch.device("cpu")
    assert network_precision(cpu, reduced=True) == ("bfloat16" if native else "float32")
    assert network_precision(cpu, reduced=False) == "float32"
    assert network_precision(torch.device("cuda"), reduced=True) == "float32"
