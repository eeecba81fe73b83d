"""Slice alignment: drift and breathing recovered, auto by default, still stacks kept as read, failures reported."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import focusfuse.cli as cli
from focusfuse import fuse_stack
from focusfuse.fusion.alignment import EVIDENCE_FLOOR, estimate_alignment
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
    unaligned = psnr(fuse_stack(folder, device="cpu", align="none").fused)
    truth = psnr(fuse_stack(reference, device="cpu", align="none").fused)
    # Defocus that varies across the frame reads as a few tenths of a pixel of motion
    # (focusfuse/fusion/alignment.py), which keeps this 0.37 dB under the truth.
    assert aligned >= truth - 0.5 and aligned >= unaligned + 15.0, (aligned, truth, unaligned)


def test_auto_is_the_default_and_fuses_a_still_stack_from_its_slices_as_read():
    folder = EXAMPLES / "stack8"  # never moved; the blur difference reads as 0.28 px at a corner
    default = fuse_stack([folder], device="cpu")
    alignment = default.timing["alignment"]
    assert alignment["mode"] == "auto" and (alignment["min_significance"], alignment["min_coherence"]) == (12, 4)
    assert 0.01 < alignment["largest_motion_px"] < 0.5  # it was estimated
    assert alignment["auto_verdict"].startswith("fused as read: at most slice")
    assert not any(s["applied"] for s in alignment["slices"])
    plain = fuse_stack([folder], device="cpu", align="none")
    assert plain.timing["alignment"]["mode"] == "none" and plain.timing["stages_s"]["align"] < 0.1
    assert np.array_equal(default.fused, plain.fused) and np.array_equal(default.index_map, plain.index_map)


def still_stack(size, n, seed, render="gather"):
    """The drifting generator never moved: only the blur differs from slice to slice."""
    rng = np.random.default_rng(seed)
    stack = make_drifting_stack(size, n, rng, max_shift=0.0, scale_span=0.0, jitter=0.0, render=render)
    return stack.slices


@pytest.mark.parametrize(("size", "n"), [(64, 5), (128, 16), (256, 32)])
def test_auto_leaves_still_stacks_of_small_frames_as_read_where_the_blur_fakes_whole_pixels(size, n):
    """Small frames, deep stacks: the chained estimate wanders by whole pixels (1-13 px on such
    stacks, probe), but its own uncertainty grows with it, so auto does not warp."""
    slices = still_stack(size, n, seed=3)
    alignment = estimate_alignment(lambda j: slices[j], n, "auto")
    assert not alignment.active and alignment.verdict.startswith("fused as read"), alignment.verdict


def test_a_pair_is_taken_as_registered_by_auto_and_the_estimate_is_reported():
    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)[:, :, 1]
    height, width = sharp.shape
    moved = cv2.warpAffine(sharp, np.array([[1, 0, 3.0], [0, 1, 0.0]]), (width, height), flags=cv2.INTER_LANCZOS4)
    alignment = estimate_alignment(lambda j: (sharp, moved)[j], 2, "auto")
    assert not alignment.active
    assert alignment.verdict.startswith("fused as read: a pair is taken as registered (the estimate: slice 2 moved 3.0")
    assert alignment.verdict.endswith("--align similarity warps it")
    assert alignment.transforms[1].significance > 50
    forced = estimate_alignment(lambda j: (sharp, moved)[j], 2, "similarity")
    assert forced.active and abs(forced.transforms[1].largest_motion(height, width) - 3.0) < 0.05


def test_auto_aligns_a_stack_that_moved_as_similarity_aligns_it(tmp_path):
    """Frames of at most 512 px are screened at their full size, so auto keeps the screen's
    estimate: from its cheaper start the phase refinement reaches similarity's transforms."""
    slices, _, sharp = drifting_stack(seed=2)
    screened = estimate_alignment(lambda j: slices[j], len(slices), "auto")
    registered = estimate_alignment(lambda j: slices[j], len(slices), "similarity")
    assert screened.active
    for kept, full in zip(screened.transforms, registered.transforms, strict=True):
        assert kept.corner_error(full.matrix, 256, 256) < 0.05
    folder = write_slices(tmp_path / "drift", slices)
    auto = fuse_stack(folder, device="cpu", align="auto")
    assert all(s["applied"] for s in auto.timing["alignment"]["slices"] if s["slice"] != 2)
    inner = (slice(16, -16), slice(16, -16))

    def squared_error(image):
        return np.mean((image[inner].astype(float) - sharp[inner].astype(float)) ** 2)

    similarity = fuse_stack(folder, device="cpu", align="similarity")
    assert squared_error(auto.fused) < 1.03 * squared_error(similarity.fused)  # within 0.13 dB


@pytest.mark.parametrize(("shift", "warped"), [(0.3, False), (0.5, False), (0.8, True), (1.5, True)])
def test_auto_warps_a_neighbour_of_the_reference_only_beyond_the_bias_floor(shift, warped):
    """Identical content, so only the floor (0.05 px per pair) bounds the evidence: 12 times it
    is 0.6 px."""
    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)[:, :, 1]
    height, width = sharp.shape
    moved = cv2.warpAffine(sharp, np.array([[1, 0, shift], [0, 1, 0.0]]), (width, height), flags=cv2.INTER_LANCZOS4)
    alignment = estimate_alignment(lambda j: (sharp, sharp, moved)[j], 3, "auto")
    assert abs(alignment.transforms[2].largest_motion(height, width) - shift) < 0.05
    assert [t.applied for t in alignment.transforms] == [warped, False, warped] and alignment.active == warped
    assert abs(alignment.transforms[2].significance - shift / EVIDENCE_FLOOR) < 0.5


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
        assert set(entry) == {
            "slice",
            "shift_px",
            "scale",
            "rotation_deg",
            "registered",
            "applied",
            "significance",
            "coherence",
        }


def test_tile_spectra_are_the_windowed_tiles_fourier_transforms_less_their_mean():
    """The window is folded into the bases and the mean taken out afterwards: the same numbers
    as the plain FFT of each tile, its mean subtracted and the window applied."""
    from focusfuse.fusion.alignment import PHASE_CUTOFF, PHASE_TILE, _PhaseTiles

    image = np.random.default_rng(0).random((150, 170), dtype=np.float32)
    tiles = _PhaseTiles(*image.shape)
    window = np.outer(np.hanning(PHASE_TILE), np.hanning(PHASE_TILE))
    rows = np.arange(-PHASE_CUTOFF, PHASE_CUTOFF + 1) % PHASE_TILE
    # Cut off the grid, as a moving image's tiles are, and on it (the template's: the x transform
    # shared by each column of tiles).
    for origins in (tiles.origins + np.array([3, 1]), tiles.origins):
        for spectrum, (x, y) in zip(tiles.spectra(image, origins), origins, strict=True):
            tile = image[y : y + PHASE_TILE, x : x + PHASE_TILE].astype(np.float64)
            plain = np.fft.fft2((tile - tile.mean()) * window)[rows][:, : PHASE_CUTOFF + 1][tiles.band]
            np.testing.assert_allclose(spectrum, plain, rtol=0, atol=1e-3 * np.abs(plain).max())
    shared, each = tiles._grid_sums(image), tiles._tile_sums(image, tiles.origins)
    np.testing.assert_allclose(shared, each, rtol=0, atol=1e-5 * np.abs(each).max())  # the same sums reordered
    # Layers stacked on a leading axis (an image and its blur probes) are each what they give alone.
    layers = np.stack([image, image[::-1, ::-1].copy(), 2 * image])
    for origins in (tiles.origins + np.array([3, 1]), tiles.origins):
        together = tiles.spectra(layers, origins)
        for layer, spectra in zip(layers, together, strict=True):
            alone = tiles.spectra(layer, origins)
            np.testing.assert_allclose(spectra, alone, rtol=0, atol=1e-5 * np.abs(alone).max())


def test_the_ramp_probes_are_the_blur_of_the_ramp_times_the_image_from_one_gaussian():
    """The ramp probes take the Gaussian of the ramp times the image as the ramp times the
    image's Gaussian plus sigma² times its slope: away from the border, what blurring the
    product itself gives (within 1% of the ramp's change; a sign or a factor wrong is far off)."""
    from focusfuse.fusion.alignment import BLUR_PROBE, BLUR_RAMP, _probe_layers

    image = cv2.GaussianBlur(np.random.default_rng(4).random((180, 240), dtype=np.float32), (0, 0), 1.0)
    kept, uniform, along_x, along_y = _probe_layers(image)
    assert np.array_equal(kept, image)
    sigma, slope = np.sqrt(BLUR_PROBE), BLUR_RAMP / 240
    ramps = (np.arange(240, dtype=np.float32) - 119.5)[None, :], (np.arange(180, dtype=np.float32) - 89.5)[:, None]
    inner = (slice(16, -16), slice(16, -16))
    for probe, ramp in zip((along_x, along_y), ramps, strict=True):
        direct = 0.5 * slope * cv2.Laplacian(cv2.GaussianBlur(image * ramp, (0, 0), sigma), cv2.CV_32F)
        change = probe - uniform
        assert np.abs(change - direct)[inner].max() < 0.01 * np.abs(direct)[inner].max()


def test_the_high_pass_takes_out_a_gaussian_of_its_sigma_computed_on_a_smaller_image():
    """The low-pass is blurred on a 4x smaller image: on content that grid carries it is the
    Gaussian of ``HIGH_PASS_SIGMA``, and a point spreads as wide, its light kept and, over the
    four places it can fall on the small grid, not moved."""
    from focusfuse.fusion.alignment import HIGH_PASS_SIGMA, _low_pass

    y, x = np.mgrid[0:240, 0:320].astype(np.float32)
    smooth = np.sin(x / 23.0) * np.cos(y / 31.0) + 0.002 * x
    exact = cv2.GaussianBlur(smooth, (0, 0), HIGH_PASS_SIGMA)
    inner = (slice(40, -40), slice(40, -40))
    assert np.abs(_low_pass(smooth) - exact)[inner].max() < 0.01
    widths, centres = [], []
    for phase in range(4):
        point = np.zeros((256, 256), np.float32)
        point[128 + phase, 128 + phase] = 1.0
        spread = _low_pass(point).sum(axis=0)
        offset = np.arange(256) - 128 - phase
        assert spread.sum() == pytest.approx(1.0, abs=1e-4)
        centres.append(float((spread * offset).sum()))
        widths.append(float((spread * (offset - centres[-1]) ** 2).sum()))
    assert abs(np.mean(centres)) < 0.01
    np.testing.assert_allclose(widths, HIGH_PASS_SIGMA**2, rtol=0.03)


def test_a_round_that_cuts_the_tiles_where_the_last_did_would_move_nothing():
    """The phase rounds stop once the tiles are cut where they were: the fit is linear in its
    target, so the same shifts less the motion just fitted fit no further motion, with the same
    outliers down-weighted and the blur field's columns alongside."""
    from focusfuse.fusion.alignment import _fit_displacement, _phase_tiles

    tiles = _phase_tiles(300, 400)
    rng = np.random.default_rng(5)
    shifts = rng.normal(0.0, 0.3, (len(tiles), 2)) + [1.2, -0.7]
    shifts[:6] += 4.0  # outliers
    weights = rng.uniform(0.1, 1.0, len(tiles))
    nuisance = rng.normal(0.0, 1.0, (2 * len(tiles), 10))
    design = np.concatenate([tiles.motion_design("similarity"), nuisance], 1)
    first = _fit_displacement(tiles.centres, shifts, weights, "similarity", design)
    fitted = tiles.centres @ first.displacement[:, :2].T + first.displacement[:, 2]
    second = _fit_displacement(tiles.centres, shifts - fitted, weights, "similarity", design)
    assert np.abs(first.displacement).max() > 0.5
    assert np.abs(second.displacement).max() < 1e-9
    np.testing.assert_allclose(second.robust, first.robust, rtol=1e-9)


def test_the_fit_solves_as_least_squares_does_and_falls_back_to_it_where_a_column_is_empty():
    """The normal equations, scaled, give least squares' parameters; where they are singular
    (a blur-field column with no weight under it) least squares itself answers (its minimum norm)."""
    from focusfuse.fusion.alignment import _median, _weighted_least_squares

    rng = np.random.default_rng(2)
    design = np.column_stack([rng.uniform(0, 500, 200), rng.uniform(0, 500, 200), np.ones(200), rng.normal(size=200)])
    target = design @ [0.01, -0.02, 1.5, 0.3] + rng.normal(0.0, 0.1, 200)
    weights = rng.uniform(0.0, 1.0, 200)
    root = np.sqrt(weights)
    plain = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]
    np.testing.assert_allclose(_weighted_least_squares(design, target, weights), plain, rtol=1e-9, atol=1e-12)
    design[:, 3] = 0.0  # nothing under the last column: singular
    fallback = _weighted_least_squares(design, target, weights)
    assert np.all(np.isfinite(fallback)) and fallback[3] == pytest.approx(0.0, abs=1e-12)
    for values in (rng.random(361), rng.random(100), np.array([3.0])):
        assert _median(values) == np.median(values)


def test_a_pair_registered_from_the_screens_start_needs_no_ecc_and_reads_the_same_transform(monkeypatch):
    """A stack the screen found moved is registered again at full size from the screen's pairs:
    the phase refinement takes a start half a pixel off to the transform ECC's start leads to."""
    import focusfuse.fusion.alignment as alignment

    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)[:, :, 1]
    height, width = sharp.shape
    truth = np.array([[1.01, 0.0, 2.5], [0.0, 1.01, -1.5]])
    moved = cv2.warpAffine(sharp, truth, (width, height), flags=cv2.INTER_LANCZOS4)  # template x lies at truth x
    template, moving = alignment._registration_image(sharp), alignment._registration_image(moved)
    from_ecc = alignment.register_pair(template, moving, "similarity")

    def no_ecc(*args, **kwargs):
        raise AssertionError("ECC ran although the pair had a start")

    monkeypatch.setattr(alignment, "_ecc", no_ecc)
    start = truth + [[0.0, 0.0, 0.5], [0.0, 0.0, -0.4]]
    from_start = alignment.register_pair(template, moving, "similarity", start=start)
    assert from_ecc is not None and from_start is not None and from_start.corner_covariance is not None
    corners = alignment._image_corners(height, width)
    assert np.abs(corners @ (from_start.matrix - truth).T).max() < 0.1
    assert np.abs(corners @ (from_start.matrix - from_ecc.matrix).T).max() < 0.02


def test_a_moving_image_transforms_only_the_tiles_a_round_cut_elsewhere(monkeypatch):
    """A round that moves a few tiles by a pixel transforms those alone and keeps the rest from
    the last cut (the grid's at first): the spectra are the ones a fresh cut gives."""
    from focusfuse.fusion.alignment import _phase_tiles, _PhaseImage, _PhaseTiles

    image = np.random.default_rng(3).random((200, 260), dtype=np.float32)
    tiles = _phase_tiles(*image.shape)
    moving = _PhaseImage(image)
    moving.spectra(tiles)  # the grid
    plain, transformed = _PhaseTiles.spectra, []

    def counting(self, layer, origins=None):
        transformed.append(len(self.origins if origins is None else origins))
        return plain(self, layer, origins)

    monkeypatch.setattr(_PhaseTiles, "spectra", counting)
    first = tiles.origins.copy()
    first[[0, 5]] += [1, 0]
    second = first.copy()
    second[7] += [0, 1]
    for cut, expected in ((first, 2), (second, 1)):
        spectra = moving.spectra(tiles, cut)
        assert transformed[-1] == expected
        fresh = plain(tiles, image, cut)
        np.testing.assert_allclose(spectra, fresh, rtol=0, atol=1e-5 * np.abs(fresh).max())


def test_a_pairs_uncertainty_is_small_where_the_frame_agrees_and_large_where_it_does_not():
    """The jackknife over blocks of tiles: a pair shifted whole reads a tight estimate; a pair whose
    halves moved apart (no one motion fits) reads a loose one."""
    from focusfuse.fusion.alignment import _registration_image, register_pair

    sharp = read_image(EXAMPLES / "stack8_truth" / "sharp.png").astype(np.float32)[:, :, 1]
    height, width = sharp.shape
    shifted = cv2.warpAffine(sharp, np.array([[1, 0, 1.5], [0, 1, 0.0]]), (width, height), flags=cv2.INTER_LANCZOS4)
    torn = shifted.copy()
    torn[:, width // 2 :] = cv2.warpAffine(
        sharp, np.array([[1, 0, -1.5], [0, 1, 0.0]]), (width, height), flags=cv2.INTER_LANCZOS4
    )[:, width // 2 :]
    errors = {}
    for name, moved in (("shifted", shifted), ("torn", torn)):
        pair = register_pair(_registration_image(sharp), _registration_image(moved), "similarity")
        assert pair is not None and pair.corner_covariance is not None
        errors[name] = float(np.sqrt(np.trace(pair.corner_covariance, axis1=1, axis2=2).max()))
    assert errors["shifted"] < 0.05 and errors["torn"] > 10 * errors["shifted"], errors


@pytest.mark.parametrize(
    ("significance", "coherence", "warped"), [(20.0, 2.0, False), (10.0, 8.0, False), (20.0, 5.0, True)]
)
def test_auto_needs_both_the_chains_significance_and_its_pairs_coherence(significance, coherence, warped):
    """Errors that add up one way along the chain (a deep stack's blurred end) can look like
    many standard errors; the plain sum of the pairs' errors must be exceeded too."""
    from focusfuse.fusion.alignment import PairRegistration, SliceTransform, _auto_verdict

    moved = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    transforms = [
        SliceTransform(0, np.eye(2, 3), applied=False),
        SliceTransform(1, moved, significance=significance, coherence=coherence),
    ]
    verdict = _auto_verdict(transforms, [PairRegistration(moved, np.zeros((4, 2, 2)))], 1.0, 100, 100)
    assert verdict.startswith("warped" if warped else "fused as read"), verdict
    assert f"slice 2 moved 3.00 px, {significance:.1f} standard errors ({coherence:.1f} were" in verdict


def test_fast_aligns_a_moved_stack_as_the_default_does_within_its_resampling(tmp_path):
    """Under --speed fast the slices are registered at up to 512 px and resampled bicubically."""
    observed, _, sharp = drifting_stack(seed=2)
    folder = write_slices(tmp_path / "drift", observed)
    inner = (slice(16, -16), slice(16, -16))

    def psnr(image):
        error = np.mean((image[inner].astype(float) - sharp[inner].astype(float)) ** 2)
        return 10 * np.log10(255**2 / error)

    default = fuse_stack(folder, device="cpu")
    fast = fuse_stack(folder, device="cpu", speed="fast")
    assert all(s["applied"] for s in fast.timing["alignment"]["slices"] if s["slice"] != 2)
    assert abs(psnr(fast.fused) - psnr(default.fused)) < 0.3, (psnr(fast.fused), psnr(default.fused))
    assert not np.array_equal(fast.fused, default.fused)  # bicubic, not Lanczos


def test_auto_does_not_register_frames_too_small_to_judge():
    """Under 128 px a pair's tiles fill too few blocks to measure its uncertainty: auto reads the
    first slice, sees the size, and leaves the stack as read without registering a pair."""
    slices = still_stack(100, 6, seed=4)
    read = []
    alignment = estimate_alignment(lambda j: read.append(j) or slices[j], 6, "auto")
    assert read == [0] and not alignment.active
    assert alignment.verdict == "fused as read: no neighbour pair held enough texture to measure motion by"
