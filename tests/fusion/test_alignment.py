"""Slice alignment: drift and breathing recovered, off by default, still stacks kept by auto, failures reported."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import focusfuse.cli as cli
from focusfuse import fuse_stack
from focusfuse.fusion.alignment import estimate_alignment
from focusfuse.io.reader import read_image
from focusfuse.io.writer import write_image
from focusfuse.training.synthetic import make_depth_stack, make_drifting_stack, smooth_depth

from conftest import EXAMPLES


def drifting_stack(size=256, n=6, seed=0, max_shift=10.0, scale_span=0.015):
    stack = make_drifting_stack(size, n, np.random.default_rng(seed), max_shift=max_shift, scale_span=scale_span)
    return stack.slices, stack.transforms, stack.sharp


def write_slices(folder, slices):
    folder.mkdir()
    paths = [folder / f"z{k:02d}.png" for k in range(len(slices))]
    for path, image in zip(paths, slices, strict=True):
        write_image(path, image)
    return paths


def test_drift_and_breathing_are_recovered_at_the_corners():
    observed, truths, _ = drifting_stack()
    alignment = estimate_alignment(lambda j: observed[j], len(observed), "similarity")
    assert alignment.reference == 2 and not alignment.warnings
    errors = [t.corner_error(truth, 256, 256) for t, truth in zip(alignment.transforms, truths, strict=True)]
    # Chained pairs add up the motion that defocus differences fake (alignment.py);
    # the slices next to the reference are within 0.1 px.
    assert max(errors) < 0.5, errors
    assert max(errors[1], errors[3]) < 0.1, errors


@pytest.mark.parametrize("sigmas", [(3.75, 5.25), (5.25, 3.75), (0.75, 2.25)])
def test_a_blur_difference_alone_is_not_read_as_motion(sigmas):
    """The demo's sharp image blurred uniformly, never moved: read plainly, the blurrier slice
    looks scaled (0.22 px at the corners for 3.75 -> 5.25); the blur term takes it up."""
    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)
    pair = [np.rint(np.clip(cv2.GaussianBlur(sharp, (0, 0), s), 0, 255)).astype(np.uint8) for s in sigmas]
    moved = estimate_alignment(lambda j: pair[j], 2, "similarity").transforms[1]
    assert moved.corner_error(np.eye(2, 3), *sharp.shape[:2]) < 0.03


def test_a_still_stack_whose_blur_spreads_from_each_point_reads_almost_no_motion():
    """Eight slices of a sloping, bumpy scene, rendered as a lens forms them, never moved: the
    blur differs from place to place between neighbours (0.69 px read at the end slices' corners
    without the blur term)."""
    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png")
    height, width = sharp.shape[:2]
    depth = smooth_depth(height, width, 8, np.random.default_rng(1))
    stack = make_depth_stack(
        sharp, depth, 8, blur_per_slice=1.5, noise_sigma=0.004, rng=np.random.default_rng(1), render="scatter"
    )
    alignment = estimate_alignment(lambda j: stack.slices[j], 8, "similarity")
    errors = [t.corner_error(np.eye(2, 3), height, width) for t in alignment.transforms]
    assert max(errors) < 0.2, errors


@pytest.mark.parametrize(("mode", "bound"), [("translation", 0.15), ("affine", 0.4)])
def test_other_motion_models_recover_a_pure_drift(mode, bound):
    """Affine's six parameters fit the defocused pairs less tightly than the similarity's four."""
    observed, truths, _ = drifting_stack(scale_span=0.0, seed=1)
    alignment = estimate_alignment(lambda j: observed[j], len(observed), mode)
    errors = [t.corner_error(truth, 256, 256) for t, truth in zip(alignment.transforms, truths, strict=True)]
    assert max(errors) < bound, errors


def test_aligned_fusion_is_near_the_true_transforms_and_far_above_unaligned(tmp_path):
    observed, truths, sharp = drifting_stack(seed=2)
    folder = write_slices(tmp_path / "drift", observed)
    truly_aligned = [
        cv2.warpAffine(
            o, m, (256, 256), flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        for o, m in zip(observed, truths, strict=True)
    ]
    reference = write_slices(tmp_path / "true", truly_aligned)

    def psnr(image):
        inner = (slice(16, -16), slice(16, -16))
        error = np.mean((image[inner].astype(float) - sharp[inner].astype(float)) ** 2)
        return 10 * np.log10(255**2 / error)

    aligned = psnr(fuse_stack(folder, device="cpu", align="similarity").fused)
    unaligned = psnr(fuse_stack(folder, device="cpu").fused)
    truth = psnr(fuse_stack(reference, device="cpu").fused)
    # Defocus that varies across the frame reads as a few tenths of a pixel of motion
    # (focusfuse/fusion/alignment.py), which keeps this 0.37 dB under the truth.
    assert aligned >= truth - 0.5 and aligned >= unaligned + 15.0, (aligned, truth, unaligned)


def test_alignment_is_off_by_default_and_leaves_the_fusion_as_it_was():
    folder = EXAMPLES / "stack8"
    default = fuse_stack([folder], device="cpu")
    assert default.timing["alignment"]["mode"] == "none" and default.timing["stages_s"]["align"] < 0.1
    assert not any(s["applied"] for s in default.timing["alignment"]["slices"])


def test_auto_fuses_a_stack_that_did_not_move_from_its_slices_as_read():
    folder = EXAMPLES / "stack8"  # never moved; the blur difference reads as 0.28 px at a corner
    auto = fuse_stack([folder], device="cpu", align="auto")
    alignment = auto.timing["alignment"]
    assert alignment["mode"] == "auto" and alignment["min_motion_px"] == 0.5
    assert 0.01 < alignment["largest_motion_px"] < 0.5  # it was estimated, and read under the threshold
    assert not any(s["applied"] for s in alignment["slices"])
    plain = fuse_stack([folder], device="cpu")
    assert np.array_equal(auto.fused, plain.fused) and np.array_equal(auto.index_map, plain.index_map)


def test_auto_aligns_a_stack_that_moved_as_similarity_aligns_it(tmp_path):
    folder = write_slices(tmp_path / "drift", drifting_stack(seed=2)[0])
    auto = fuse_stack(folder, device="cpu", align="auto")
    assert all(s["applied"] for s in auto.timing["alignment"]["slices"] if s["slice"] != 2)
    assert np.array_equal(auto.fused, fuse_stack(folder, device="cpu", align="similarity").fused)


@pytest.mark.parametrize(("shift", "warped"), [(0.3, False), (0.45, False), (0.6, True), (1.5, True)])
def test_auto_warps_only_a_stack_that_moved_more_than_half_a_pixel(shift, warped):
    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)[:, :, 1]
    height, width = sharp.shape
    moved = cv2.warpAffine(sharp, np.array([[1, 0, shift], [0, 1, 0.0]]), (width, height), flags=cv2.INTER_LANCZOS4)
    alignment = estimate_alignment(lambda j: (sharp, moved)[j], 2, "auto")
    assert abs(alignment.transforms[1].largest_motion(height, width) - shift) < 0.05
    assert [t.applied for t in alignment.transforms] == [False, warped] and alignment.active == warped


def test_a_flat_slice_keeps_its_neighbours_transform_and_is_reported():
    observed, _, _ = drifting_stack(n=6, seed=4)
    observed[5] = np.full_like(observed[5], 128)
    alignment = estimate_alignment(lambda j: observed[j], len(observed), "similarity")
    last, before = alignment.transforms[5], alignment.transforms[4]
    assert not last.registered and all(t.registered for t in alignment.transforms[:5])
    np.testing.assert_allclose(last.matrix, before.matrix)
    assert alignment.warnings == ["slice 6 could not be registered to a neighbour; kept the neighbour's transform"]


def test_a_stack_without_texture_is_fused_unaligned_with_a_warning(tmp_path):
    rng = np.random.default_rng(5)
    flat = [np.full((64, 64), 100 + k, np.uint8) + rng.integers(0, 2, (64, 64), dtype=np.uint8) for k in range(3)]
    result = runner_stack(tmp_path, write_slices(tmp_path / "flat", flat), "--align", "similarity")
    assert result.exit_code == 0, result.output
    assert "no slice could be registered" in result.stderr and "warning" in result.stderr
    record = json.loads((tmp_path / "f.timing.json").read_text())
    assert not any(s["applied"] for s in record["alignment"]["slices"])


def runner_stack(tmp_path, paths, *options):
    return CliRunner().invoke(
        cli.main, ["stack", *map(str, paths), "-o", str(tmp_path / "f.png"), "--device", "cpu", *options]
    )


def test_crop_keeps_only_what_every_slice_covers(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "has_controlling_terminal", lambda: False)
    observed, _, _ = drifting_stack(seed=6)
    paths = write_slices(tmp_path / "drift", observed)
    result = runner_stack(tmp_path, paths, "--crop", "--align", "similarity")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "f.timing.json").read_text())
    x, y, width, height = record["alignment"]["crop"]
    fused = cv2.imread(str(tmp_path / "f.png"), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (height, width) and (record["width"], record["height"]) == (width, height)
    assert 256 - 30 <= width < 256 and 256 - 30 <= height < 256
    for entry in record["alignment"]["slices"]:
        assert set(entry) == {"slice", "shift_px", "scale", "rotation_deg", "registered", "applied"}
