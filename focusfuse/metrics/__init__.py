"""The six fusion-quality metrics of the GACN paper, reproducing the reference values.

Each metric takes two sources and a fused image as prepared 2-D float64 arrays
(:func:`prepare_image`) and returns a float; :func:`evaluate_fusion` computes all six
from images as read.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from focusfuse.metrics.common import prepare_image
from focusfuse.metrics.feature_mi import fmi_dct, fmi_edge
from focusfuse.metrics.gradient import qg
from focusfuse.metrics.information import qncie
from focusfuse.metrics.perceptual import qcb
from focusfuse.metrics.structural import qy

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]

METRICS: dict[str, Metric] = {
    "Qg": qg,
    "Qy": qy,
    "Qncie": qncie,
    "Qcb": qcb,
    "FMI_EDGE": fmi_edge,
    "FMI_DCT": fmi_dct,
}
METRIC_NAMES = tuple(METRICS)


def evaluate_fusion(source_a: np.ndarray, source_b: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """All six metrics of ``fused`` against two sources, images as read (RGB or gray)."""
    prepared = [prepare_image(image) for image in (source_a, source_b, fused)]
    return {name: metric(*prepared) for name, metric in METRICS.items()}


__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "evaluate_fusion",
    "prepare_image",
    "qg",
    "qy",
    "qncie",
    "qcb",
    "fmi_edge",
    "fmi_dct",
]
