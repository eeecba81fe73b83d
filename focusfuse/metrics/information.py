"""Qncie (Wang et al.): nonlinear correlation information entropy of sources and fused image.

Follows Zheng Liu's metricWang with the conventions of
``../shared/metric_vectors/README.md``: images stretched to 0..255 and rounded,
nonlinear correlation coefficients from 256x256 joint histograms (log base 256),
and the entropy of the eigenvalues of the 3x3 correlation matrix.
"""

from __future__ import annotations

import numpy as np

from focusfuse.metrics.common import stretch_to_8bit

LEVELS = 256


def _entropy(probabilities: np.ndarray) -> float:
    """Entropy in base-256 units of a probability array (zeros skipped)."""
    nonzero = probabilities[probabilities > 0]
    return float(-np.sum(nonzero * np.log2(nonzero)) / np.log2(LEVELS))


def nonlinear_correlation(levels_x: np.ndarray, levels_y: np.ndarray) -> float:
    """NCC of two images of integer levels 0..255: H(X) + H(Y) - H(X, Y) in base 256."""
    joint_index = levels_x.astype(np.int64).ravel() * LEVELS + levels_y.astype(np.int64).ravel()
    joint = np.bincount(joint_index, minlength=LEVELS * LEVELS).reshape(LEVELS, LEVELS) / joint_index.size
    return _entropy(joint.sum(axis=1)) + _entropy(joint.sum(axis=0)) - _entropy(joint)


def qncie(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> float:
    """Qncie of ``fused`` against two sources; all three are prepared 2-D float64 arrays."""
    a, b, f = (stretch_to_8bit(image) for image in (source_a, source_b, fused))
    ncc_ab, ncc_af, ncc_bf = nonlinear_correlation(a, b), nonlinear_correlation(a, f), nonlinear_correlation(b, f)
    correlation = np.array([[1.0, ncc_ab, ncc_af], [ncc_ab, 1.0, ncc_bf], [ncc_af, ncc_bf, 1.0]])
    eigenvalues = np.linalg.eigvalsh(correlation) / 3.0
    eigenvalues = eigenvalues[eigenvalues > 0]
    return float(1.0 + np.sum(eigenvalues * np.log2(eigenvalues)) / np.log2(LEVELS))
