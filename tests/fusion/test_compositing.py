"""The pyramid blend: source pixels away from choice boundaries, no seam across them, any dtype."""

from __future__ import annotations

import numpy as np
import pytest
from test_pipeline import psnr

from focusfuse import fuse_stack
from focusfuse.fusion import compositing
from focusfuse.fusion.compositing import PYRAMID_LEVELS, PyramidBlend, composite_pyramid, level_count
from focusfuse.metrics.seams import seam_scores
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth

from conftest import EXAMPLES


def halves(height: int = 128, width: int = 128) -> np.ndarray:
    """Index map: slice 0 on the left half, slice 1 on the right."""
    index = np.zeros((height, width), np.uint8)
    index[:, width // 2 :] = 1
    return index


def test_a_slice_chosen_everywhere_comes_back_unchanged():
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(3)]
    index = np.full((96, 80), 2, np.uint8)
    fused = composite_pyramid(lambda j: slices[j], index, 3)
    np.testing.assert_array_equal(fused, slices[2])


def test_only_the_slices_the_index_map_uses_are_read():
    index = halves()
    index[:, :10] = 3
    read = []

    def reader(j):
        read.append(j)
        return np.full((128, 128), 10 * j, np.uint8)

    composite_pyramid(reader, index, 5)
    assert sorted(read) == [0, 1, 3]


def test_a_brightness_step_between_slices_fades_instead_of_stepping():
    """Two flat slices 100 and 110: select steps by 10 at the boundary; pyramid ramps, never overshoots,
    and keeps each slice's value far from the boundary."""
    index = halves(64, 256)
    slices = [np.full((64, 256), 100, np.uint8), np.full((64, 256), 110, np.uint8)]
    row = composite_pyramid(lambda j: slices[j], index, 2)[32].astype(int)
    assert row.min() >= 100 and row.max() <= 110
    assert np.all(np.diff(row) >= 0), "the blend is monotone across the boundary"
    assert np.abs(np.diff(row)).max() <= 2, "no step of more than 2 grey levels anywhere"
    assert row[0] == 100 and row[-1] == 110


def test_pyramid_leaves_no_seam_where_select_does():
    """A textured scene whose two halves come from slices 4% apart in brightness (flicker)."""
    rng = np.random.default_rng(1)
    texture = procedural_texture(128, 128, rng)
    dim = np.rint(texture * 200).astype(np.uint8)
    bright = np.rint(texture * 200 * 1.04).astype(np.uint8)
    index = halves()
    selected = np.where(index == 0, dim, bright)
    blended = composite_pyramid(lambda j: (dim, bright)[j], index, 2)
    select_scores, pyramid_scores = seam_scores([dim, bright], selected), seam_scores([dim, bright], blended)
    assert pyramid_scores.spurious < 0.5 * select_scores.spurious
    assert pyramid_scores.edge_kept >= 0.97, "the texture itself survives the blend"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_blend_keeps_the_dtype_and_clips_integers_to_their_range(dtype):
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    slices = [np.zeros((64, 64), dtype), np.full((64, 64), top, dtype)]
    slices[1][:, 40:44] = 0  # a dark line beside the boundary: the blend overshoots there
    fused = composite_pyramid(lambda j: slices[j], halves(64, 64), 2)
    assert fused.dtype == dtype
    if dtype != np.float32:
        assert fused.max() <= top and fused.min() >= 0


def test_level_count_fits_small_images():
    assert level_count(1536, 2048) == PYRAMID_LEVELS
    assert level_count(16, 300) == 3  # 16 -> 8 -> 4 -> 2
    assert level_count(3, 3) == 0
    fused = composite_pyramid(lambda j: np.full((3, 3), j * 50, np.uint8), np.eye(3, dtype=np.uint8), 2)
    np.testing.assert_array_equal(fused, np.eye(3) * 50)


def test_result_before_any_slice_is_an_error():
    with pytest.raises(ValueError):
        PyramidBlend(halves()).result()


def test_fuse_stack_blends_by_default_and_selects_on_request(tmp_path):
    """Same index map in both modes; the timing report names the mode; pyramid stays near the source pixels."""
    folder = EXAMPLES / "stack8"
    blended = fuse_stack([folder], device="cpu")
    selected = fuse_stack([folder], device="cpu", composite="select")
    np.testing.assert_array_equal(blended.index_map, selected.index_map)
    assert blended.timing["composite"] == "pyramid" and blended.timing["pyramid_levels"] == PYRAMID_LEVELS
    assert selected.timing["composite"] == "select" and "composite" not in selected.timing["stages_s"]
    assert blended.timing["stages_s"]["composite"] > 0
    difference = np.abs(blended.fused.astype(int) - selected.fused.astype(int))
    assert np.median(difference) <= 1 and difference.mean() < 3


def test_serial_fusion_ignores_the_compositing_mode(tmp_path):
    result = fuse_stack([EXAMPLES / "stack8"], device="cpu", strategy="serial", composite="select")
    assert result.timing["composite"] == "decision-map blend"


def test_where_slices_differ_only_in_blur_the_composite_leans_to_the_source_pixels(monkeypatch):
    """A deep clean textured stack under its true index map: blending alone mixes a sharp slice's detail
    with its blurrier neighbour's across every boundary and loses to copying; the shipped composite keeps
    source pixels where nothing but blur differs, so it loses less, and most pixels are source pixels."""
    rng = np.random.default_rng(3)
    sharp = np.rint(procedural_texture(160, 160, rng) * 255).astype(np.uint8)
    stack = make_depth_stack(sharp, smooth_depth(160, 160, 20, rng), 20)
    index = stack.truth_index
    selected = np.take_along_axis(np.stack(stack.slices), index[None].astype(np.intp), 0)[0]
    shipped = composite_pyramid(lambda j: stack.slices[j], index, 20)
    monkeypatch.setattr(compositing, "SEAM_FULL_NEED", 1e-9)  # blend wherever the blend differs at all
    blend_only = composite_pyramid(lambda j: stack.slices[j], index, 20)
    assert psnr(blend_only, sharp) < psnr(selected, sharp) - 0.3
    assert psnr(shipped, sharp) > psnr(blend_only, sharp) + 0.1
    assert (shipped == selected).mean() > 0.5


@pytest.mark.parametrize("channels", [None, 2, 3, 4, 5])
def test_the_pyramid_blend_is_the_plain_arithmetic_bit_for_bit(channels):
    """The blend's OpenCV calls (masked copy, per-channel weighting, band sums) give the same
    floats as the plain numpy formula, for gray, gray+alpha, RGB, RGBA and 5 channels."""
    import cv2

    from focusfuse.fusion import compositing

    rng = np.random.default_rng(4)
    shape = (70, 90) if channels is None else (70, 90, channels)
    slices = [rng.random(shape, dtype=np.float32) for _ in range(3)]
    index_map = np.repeat(np.arange(3, dtype=np.uint8), 30)[None, :].repeat(70, axis=0)
    levels = 3

    selected = np.zeros(shape, np.float32)
    accumulator = None
    for j, image in enumerate(slices):
        chosen = index_map == j
        selected[chosen] = image[chosen]
        gaussian = [image]
        for _ in range(levels):
            gaussian.append(cv2.pyrDown(gaussian[-1]))
        bands = [
            f - cv2.pyrUp(c, dstsize=(f.shape[1], f.shape[0])) for f, c in zip(gaussian[:-1], gaussian[1:], strict=True)
        ]
        bands.append(gaussian[-1])
        weights = [chosen.astype(np.float32)]
        for _ in range(levels):
            weights.append(cv2.pyrDown(weights[-1]))
        if image.ndim == 3:
            weights = [w[:, :, None] for w in weights]
        weighted = [b * w for b, w in zip(bands, weights, strict=True)]
        accumulator = weighted if accumulator is None else [a + b for a, b in zip(accumulator, weighted, strict=True)]

    blend = compositing.PyramidBlend(index_map, levels, fit=False, full_range=1.0)
    for j, image in enumerate(slices):
        blend.add(j, image)
    assert blend.selected is not None and blend.accumulator is not None
    np.testing.assert_array_equal(blend.selected, selected)
    for ours, plain in zip(blend.accumulator, accumulator, strict=True):
        np.testing.assert_array_equal(ours, plain)
