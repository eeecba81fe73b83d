"""The six fusion metrics: reference values, the FMI window maths, preparation, sanity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from focusfuse.metrics import METRIC_NAMES, METRICS, evaluate_fusion, feature_mi, prepare_image
from focusfuse.metrics.common import correlate_same
from focusfuse.metrics.gradient import SOBEL_Y, qg

from conftest import EXAMPLES, SHARED

VECTORS = SHARED / "metric_vectors"
TOLERANCE = {"Qg": 2e-5, "Qy": 2e-5, "Qncie": 1e-6, "Qcb": 1e-6, "FMI_EDGE": 1e-6, "FMI_DCT": 1e-6}
EXAMPLE_PAIR = EXAMPLES / "pair"


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else image


def _reference_cases() -> list[str]:
    if not (VECTORS / "reference.json").is_file():
        return []
    return sorted(json.loads((VECTORS / "reference.json").read_text()))


@pytest.mark.skipif(not (VECTORS / "reference.json").is_file(), reason="../shared/metric_vectors is absent")
@pytest.mark.parametrize("case", _reference_cases() or ["none"])
def test_reference_values_reproduced(case):
    reference = json.loads((VECTORS / "reference.json").read_text())[case]
    base, kind = case.rsplit("_", 1)
    source_a = _read_rgb(VECTORS / f"{base}_1.png")
    source_b = _read_rgb(VECTORS / f"{base}_2.png")
    fused = source_a if kind == "src1" else _read_rgb(VECTORS / f"{base}_{kind}.png")
    scores = evaluate_fusion(source_a, source_b, fused)
    misses = {
        name: (scores[name], reference[name])
        for name in METRIC_NAMES
        if abs(scores[name] - reference[name]) > TOLERANCE[name]
    }
    assert not misses, f"{case}: {misses}"


def _fmi_window_as_published(source: np.ndarray, fused: np.ndarray) -> float:
    """Haghighat's per-window FMI transcribed loop by loop (windows already normalised)."""
    taps = len(source)
    source_pdf = source / source.reshape(3, 3).sum(axis=1).sum()
    fused_pdf = fused / fused.reshape(3, 3).sum(axis=1).sum()
    source_cdf, fused_cdf = np.cumsum(source_pdf), np.cumsum(fused_pdf)
    source_centred = source_pdf - sum(source_pdf) / taps
    fused_centred = fused_pdf - sum(fused_pdf) / taps
    numerator = sum(source_centred * fused_centred)
    correlation = 0.0 if numerator == 0 else numerator / math.sqrt(sum(source_centred**2) * sum(fused_centred**2))

    def sd(pdf):
        mean = sum((i + 1) * pdf[i] for i in range(taps))
        return math.sqrt(max(sum((i + 1) ** 2 * pdf[i] for i in range(taps)) - mean * mean, 0.0))

    source_sd, fused_sd = sd(source_pdf), sd(fused_pdf)

    def bound(i, j):
        if i < 0 or j < 0:
            return 0.0
        if correlation >= 0:
            return 0.5 * (fused_cdf[i] + source_cdf[j] - abs(fused_cdf[i] - source_cdf[j]))
        return 0.5 * (fused_cdf[i] + source_cdf[j] - 1 + abs(fused_cdf[i] + source_cdf[j] - 1))

    if source_sd == 0 or fused_sd == 0 or correlation == 0:
        mixing = 0.0
    else:
        covariance = sum(bound(i, j) - fused_cdf[i] * source_cdf[j] for i in range(taps) for j in range(taps))
        mixing = correlation / (covariance / (fused_sd * source_sd))
    joint_entropy = 0.0
    for i in range(taps):
        for j in range(taps):
            mass = bound(i, j) - bound(i - 1, j) - bound(i, j - 1) + bound(i - 1, j - 1)
            joint = mixing * mass + (1 - mixing) * fused_pdf[i] * source_pdf[j]
            if joint != 0:
                joint_entropy -= joint * math.log2(abs(joint))
    source_entropy = -sum(p * math.log2(p) for p in source_pdf if p != 0)
    fused_entropy = -sum(p * math.log2(p) for p in fused_pdf if p != 0)
    information = source_entropy + fused_entropy - joint_entropy
    return 0.0 if information == 0 else 2 * information / (source_entropy + fused_entropy)


def test_vectorised_fmi_windows_match_the_published_loop():
    rng = np.random.default_rng(0)
    source = rng.random((300, 9))
    fused = np.where(rng.random((300, 9)) < 0.5, source, rng.random((300, 9)))
    fused[::3] = 1.0 - source[::3]  # negative correlations: the lower Frechet bound
    source[::7] = np.round(source[::7])  # binary windows, as edge maps give
    source[5] = 0.3  # a flat window becomes all ones
    source, fused = feature_mi._normalise(source), feature_mi._normalise(fused)
    vectorised = feature_mi._window_fmi(source, fused)
    published = np.array([_fmi_window_as_published(source[k], fused[k]) for k in range(len(source))])
    assert (fused[::3] != source[::3]).any()
    np.testing.assert_allclose(vectorised, published, atol=1e-12)


def test_prepare_image_follows_the_reference_conventions():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    np.testing.assert_allclose(prepare_image(rgb), [[0.2125, 0.7154, 0.0721, 1.0]], atol=1e-15)
    gray = np.array([[0, 17, 255]], np.uint8)
    np.testing.assert_array_equal(prepare_image(gray), [[0.0, 17.0, 255.0]])
    np.testing.assert_allclose(prepare_image(gray.astype(np.uint16) * 257), [[0.0, 17.0, 255.0]])


def test_each_metric_prefers_the_all_in_focus_result_to_the_average():
    """Fusing the sharp halves scores higher than blending everything, on every metric."""
    source_a = _read_rgb(EXAMPLE_PAIR / "lytro_01_1.png")[:160, :160]
    sharp = source_a.copy()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)
    left = np.zeros(sharp.shape[:2], bool)
    left[:, :80] = True
    source_a = np.where(left[:, :, None], sharp, blurred)
    source_b = np.where(left[:, :, None], blurred, sharp)
    average = ((source_a.astype(np.uint16) + source_b + 1) // 2).astype(np.uint8)
    ideal, blended = evaluate_fusion(source_a, source_b, sharp), evaluate_fusion(source_a, source_b, average)
    worse = [name for name in METRIC_NAMES if not ideal[name] > blended[name]]
    assert not worse, f"the ideal fusion does not beat the average on {worse}: {ideal} vs {blended}"


def test_edge_map_thins_a_step_to_one_line():
    image = np.zeros((20, 20))
    image[:, 10:] = 255.0
    edges = feature_mi.sobel_edges(image)
    assert edges[:, 8:12].sum(axis=1).tolist() == [1.0] * 20
    assert edges[:, :8].sum() == 0 and edges[:, 12:].sum() == 0


def test_dct2_is_orthonormal():
    image = np.random.default_rng(1).random((7, 10))
    coefficients = feature_mi.dct2(image)
    assert np.isclose(np.sum(coefficients**2), np.sum(image**2))
    assert np.isclose(coefficients[0, 0], image.sum() / np.sqrt(image.size))


def test_metric_table_is_complete():
    assert METRIC_NAMES == ("Qg", "Qy", "Qncie", "Qcb", "FMI_EDGE", "FMI_DCT")
    assert set(METRICS) == set(TOLERANCE)


def test_qg_counts_a_residue_source_edge_as_weaker_than_a_flat_fused_image():
    """Flat areas leave float residue in the Sobel sums; the reference compares it with
    the guarded (1e-5) fused strength, so a flat source preserved in a flat fused image
    scores near 0 there, not near 1 (this is what puts color_lytro_05_avg on its value)."""
    flat_source = np.full((32, 32), 0.7154 / 255.0)  # green level 1 as the reference grays it
    residue = np.abs(correlate_same(flat_source, SOBEL_Y)[1:-1, 1:-1])
    assert residue.max() > 0.0 and residue.max() < 1e-15, "premise: the interior sums leave only residue"
    flat_fused = np.full((32, 32), 0.5)  # exact zeros in every interior Sobel sum
    assert qg(flat_source, flat_source, flat_fused) < 0.2


def test_fmi_windows_shared_among_threads_keep_their_values_and_order():
    """The window blocks of one FMI are shared among threads; each window's value must
    come back in its place, equal to the value computed in one block."""
    rng = np.random.default_rng(5)
    source, fused = (feature_mi._normalise(feature_mi._windows(rng.random((90, 90)))) for _ in range(2))
    assert len(source) > 1.5 * feature_mi._CHUNK  # two blocks, the second partial
    try:
        feature_mi.set_threads(3)
        threaded = feature_mi._blocked(source, fused)
    finally:
        feature_mi.set_threads(None)
    np.testing.assert_array_equal(threaded, feature_mi._window_fmi(source, fused))
