"""FMI (Haghighat's fast feature mutual information, window 3) on edge and DCT features.

For every 3x3 window the source and fused feature windows are min-max normalised,
turned into PDFs, and joined by the Frechet-bound copula mixed with independence so
that the joint reproduces their Pearson correlation; FMI is the normalised mutual
information, averaged over both sources and all windows
(``../shared/metric_vectors/README.md`` states the conventions reproduced here).

All windows are processed at once as ``(M, 9)`` arrays in MATLAB's column-major
window order; the short sums whose exact rounding decides a branch (window sums,
means, the Pearson numerator) are accumulated left to right, as the reference does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

WINDOW = 3
TAPS = WINDOW * WINDOW
_POSITIONS = np.arange(1, TAPS + 1, dtype=np.float64)
_CHUNK = 4096  # windows per vectorised block: (CHUNK, 9, 9) doubles stay cache-sized
_SMALLEST = np.finfo(np.float64).tiny
_THINNING_TOLERANCE = 100 * np.finfo(np.float64).eps


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """MATLAB ``edge(I)``: Sobel/8 with replicated borders, threshold 4 mean(|g|^2), thinning.

    Returns a float64 map of 0 and 1.
    """
    kernel = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8.0
    gx = cv2.filter2D(image, cv2.CV_64F, kernel, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(image, cv2.CV_64F, kernel.T.copy(), borderType=cv2.BORDER_REPLICATE)
    magnitude = gx * gx + gy * gy
    cutoff = 4.0 * np.sum(magnitude) / magnitude.size
    gx, gy = np.abs(gx), np.abs(gy)
    # Local maximum across the edge: left <= centre > right (or up <= centre > down); outside counts as passing.
    padded = np.pad(magnitude, 1, mode="constant", constant_values=-np.inf)
    left_ok = padded[1:-1, :-2] <= magnitude
    right_ok = magnitude > padded[1:-1, 2:]
    up_ok = padded[:-2, 1:-1] <= magnitude
    down_ok = magnitude > padded[2:, 1:-1]
    horizontal = (gx >= gy - _THINNING_TOLERANCE) & left_ok & right_ok
    vertical = (gy >= gx - _THINNING_TOLERANCE) & up_ok & down_ok
    return ((magnitude > cutoff) & (horizontal | vertical)).astype(np.float64)


def _dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: row k is the k-th basis vector."""
    positions = np.arange(size)
    matrix = np.cos(np.pi * (2 * positions[None, :] + 1) * positions[:, None] / (2 * size))
    matrix *= np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def dct2(image: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II of the whole image (MATLAB ``dct2``)."""
    height, width = image.shape
    return _dct_matrix(height) @ image @ _dct_matrix(width).T


def _windows(feature: np.ndarray) -> np.ndarray:
    """``(M, 9)`` 3x3 windows of every interior pixel, row-major over pixels, column-major inside."""
    height, width = feature.shape
    rows, cols = height - WINDOW + 1, width - WINDOW + 1
    taps = [feature[dr : dr + rows, dc : dc + cols].reshape(-1) for dc in range(WINDOW) for dr in range(WINDOW)]
    return np.stack(taps, axis=1)


def _sequential_sum(values: np.ndarray) -> np.ndarray:
    """Left-to-right sum over the last axis (numpy's pairwise sum rounds differently)."""
    total = values[..., 0].copy()
    for index in range(1, values.shape[-1]):
        total += values[..., index]
    return total


def _normalise(windows: np.ndarray) -> np.ndarray:
    """Min-max normalise each window to [0, 1]; a flat window becomes all ones."""
    low = windows.min(axis=1, keepdims=True)
    high = windows.max(axis=1, keepdims=True)
    span = high - low
    flat = span == 0
    normalised = (windows - low) / np.where(flat, 1.0, span)
    return np.where(flat, 1.0, normalised)


def _pdf(windows: np.ndarray) -> np.ndarray:
    """Window / sum(sum(window)): MATLAB sums each 3-tap column, then the column sums."""
    columns = windows.reshape(-1, WINDOW, WINDOW)  # (M, column, row): windows are column-major
    per_column = (columns[:, :, 0] + columns[:, :, 1]) + columns[:, :, 2]
    total = (per_column[:, 0] + per_column[:, 1]) + per_column[:, 2]
    return windows / total[:, None]


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """-sum p log2 |p| over the last axis, zeros skipped.

    A mixing weight above 1 makes some joint cells negative; the reference keeps the
    real part of -p log2 p there, which is -p log2 |p|.
    """
    logs = np.abs(probabilities)
    np.maximum(logs, _SMALLEST, out=logs)
    np.log2(logs, out=logs)
    return -np.einsum("...i,...i->...", probabilities, logs)


def _spread(pdf: np.ndarray) -> np.ndarray:
    """Population standard deviation of the tap position under ``pdf``."""
    mean = _sequential_sum(_POSITIONS * pdf)
    second = _sequential_sum(_POSITIONS * _POSITIONS * pdf)
    return np.sqrt(np.maximum(second - mean * mean, 0.0))


def _pearson(source_pdf: np.ndarray, fused_pdf: np.ndarray) -> np.ndarray:
    """Pearson correlation of two PDFs; exactly 0 where the left-to-right numerator is 0."""
    source_centred = source_pdf - (_sequential_sum(source_pdf) / TAPS)[:, None]
    fused_centred = fused_pdf - (_sequential_sum(fused_pdf) / TAPS)[:, None]
    numerator = _sequential_sum(source_centred * fused_centred)
    scale = np.sqrt(_sequential_sum(source_centred * source_centred) * _sequential_sum(fused_centred * fused_centred))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(numerator == 0, 0.0, numerator / scale)


def _joint_entropy(
    source_pdf, fused_pdf, source_cdf, fused_cdf, correlation, source_sd, fused_sd, *, comonotone: bool
) -> np.ndarray:
    """Entropy of the copula-mixed joint PDF of each window pair.

    The joint is phi * (Frechet bound) + (1 - phi) * (independence), with phi chosen so
    the joint's correlation equals ``correlation``: the upper (comonotone) bound for
    correlation >= 0, the lower one otherwise.
    """
    fused_grid, source_grid = fused_cdf[:, :, None], source_cdf[:, None, :]
    if comonotone:
        bound = np.minimum(fused_grid, source_grid)
    else:
        bound = fused_grid + source_grid
        bound -= 1.0
        np.maximum(bound, 0.0, out=bound)
    # sum_ij F_i S_j of the independence copula factorises.
    independent_total = fused_cdf.sum(axis=1) * source_cdf.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound_correlation = (bound.sum(axis=(1, 2)) - independent_total) / (fused_sd * source_sd)
        degenerate = (source_sd == 0) | (fused_sd == 0) | (correlation == 0)
        mixing = np.where(degenerate, 0.0, correlation / bound_correlation)
    # Probability mass of each cell: the bound's 2-D difference, with H(0, j) = H(i, 0) = 0.
    cell_mass = bound.copy()
    cell_mass[:, 1:, :] -= bound[:, :-1, :]
    cell_mass[:, :, 1:] -= cell_mass[:, :, :-1].copy()
    cell_mass *= mixing[:, None, None]
    cell_mass += ((1.0 - mixing)[:, None] * fused_pdf)[:, :, None] * source_pdf[:, None, :]
    joint = cell_mass
    return _entropy(joint.reshape(joint.shape[0], -1))


def _window_fmi(source: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """Normalised MI of min-max normalised window pairs ``(M, 9)``."""
    source_pdf, fused_pdf = _pdf(source), _pdf(fused)
    source_cdf, fused_cdf = np.cumsum(source_pdf, axis=1), np.cumsum(fused_pdf, axis=1)
    correlation = _pearson(source_pdf, fused_pdf)
    source_sd, fused_sd = _spread(source_pdf), _spread(fused_pdf)
    joint_entropy = np.empty(source.shape[0])
    for comonotone, rows in ((True, correlation >= 0), (False, correlation < 0)):
        if rows.any():
            joint_entropy[rows] = _joint_entropy(
                source_pdf[rows],
                fused_pdf[rows],
                source_cdf[rows],
                fused_cdf[rows],
                correlation[rows],
                source_sd[rows],
                fused_sd[rows],
                comonotone=comonotone,
            )
    source_entropy, fused_entropy = _entropy(source_pdf), _entropy(fused_pdf)
    mutual_information = source_entropy + fused_entropy - joint_entropy
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mutual_information == 0, 0.0, 2.0 * mutual_information / (source_entropy + fused_entropy))


def _pass(source: np.ndarray, fused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One source's FMI per window, and the fused windows as this pass leaves them."""
    identical = np.all(source == fused, axis=1)
    values = np.ones(source.shape[0])
    todo = np.flatnonzero(~identical)
    fused_after = fused.copy()
    if todo.size:
        normalised_fused = _normalise(fused[todo])
        fused_after[todo] = normalised_fused
        values[todo] = _deduplicated(_normalise(source[todo]), normalised_fused)
    return values, fused_after


def _deduplicated(source: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """``_window_fmi`` computed once per distinct window pair (edge maps repeat a lot), in blocks."""
    pairs = np.concatenate([source, fused], axis=1)
    if np.all((pairs == 0) | (pairs == 1)):
        keys = pairs.astype(np.int64) @ (1 << np.arange(2 * TAPS, dtype=np.int64))
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return _blocked(source[first], fused[first])[inverse.reshape(-1)]
    return _blocked(source, fused)


_threads = 1


def set_threads(count: int | None) -> None:
    """Threads that share the window blocks of one FMI (``None``: all cores, the default).

    Processes that already run one pair per core (``evaluate_pairs``) set 1.
    """
    global _threads
    _threads = max(1, count or os.cpu_count() or 1)


set_threads(None)


def _blocked(source: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """``_window_fmi`` over blocks of windows; numpy releases the GIL, so threads share the cores.

    Each block is computed alone, so the result does not depend on the thread count.
    """
    starts = range(0, source.shape[0], _CHUNK)
    if not starts:
        return np.zeros(0)

    def block(start: int) -> np.ndarray:
        return _window_fmi(source[start : start + _CHUNK], fused[start : start + _CHUNK])

    if _threads == 1 or len(starts) == 1:
        return np.concatenate([block(start) for start in starts])
    with ThreadPoolExecutor(max_workers=min(_threads, len(starts))) as pool:
        return np.concatenate(list(pool.map(block, starts)))


def fmi(feature_a: np.ndarray, feature_b: np.ndarray, feature_f: np.ndarray) -> float:
    """FMI of two source feature maps and the fused one (window 3)."""
    windows_a, windows_b, windows_f = _windows(feature_a), _windows(feature_b), _windows(feature_f)
    values_a, fused_after_a = _pass(windows_a, windows_f)
    values_b, _ = _pass(windows_b, fused_after_a)
    return float(np.mean((values_a + values_b) / 2.0))


def fmi_edge(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """FMI_EDGE of ``fused``; all three are prepared 2-D float64 arrays."""
    return fmi(sobel_edges(source_a), sobel_edges(source_b), sobel_edges(fused))


def fmi_dct(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """FMI_DCT of ``fused``; all three are prepared 2-D float64 arrays."""
    return fmi(dct2(source_a), dct2(source_b), dct2(fused))
