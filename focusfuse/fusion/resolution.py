"""Decisions at reduced resolution (``--speed fast``): which slice is sharp, decided on smaller slices.

A focus stack's slices are often oversampled: a 20-megapixel microscope frame or a
macro shot resolves far less than a pixel, and which slice is in focus changes over
tens of pixels, not from one pixel to the next. The network's work grows with the
pixels it sees, so ``fast`` decides on the slices shrunk by area averaging to a long
side of ``FAST_DECISION_SIDE`` px, takes the index map back to full size, and makes
the fused image from the full-size slices under it (the pyramid composite, or
copying): every output keeps its full resolution, and every fused pixel still comes
from the slices at full resolution. Where the choice changes, the full-size boundary
is placed by ``refine_boundaries``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
import torch

from focusfuse.fusion.strategies import Precision

Speed = Literal["default", "fast"]
SPEEDS: tuple[str, ...] = ("default", "fast")
# The long side of the image the decisions see under ``fast``, in pixels, and the most
# the slices are shrunk for them (a 20-megapixel frame is decided at a quarter of its
# side, not at a tenth). The side was chosen for speed and checked on a selection stack
# that no benchmark table reports (docs/method.md); the cap is a guard, not tuned.
FAST_DECISION_SIDE = 512
MAX_REDUCTION = 4


def feature_precision(speed: Speed, device: torch.device, reduced: bool) -> Precision:
    """The feature path's precision: bfloat16 for ``fast`` decisions on shrunk slices
    (``reduced``), on a
    CPU with native bfloat16 convolutions (AVX512-BF16, AMX), where it takes the feature
    path in about 60% of the time; float32 everywhere else (the default always, and
    ``fast`` on an image small enough to be decided at full size).

    The decision path, the comparisons and the choice stay in float32. On a selection
    stack (synthetic, 16 slices of 2000x1500, seed 11) ``fast`` fused to the same PSNR
    (35.20 dB) either way; on pcb10 the index maps agreed on 99.4% of pixels.
    """
    if reduced and speed == "fast" and device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "float32"


def decision_size(height: int, width: int, speed: Speed, strategy: str = "calibrated") -> tuple[int, int]:
    """(height, width) of the image the decisions are made on: full size, or for ``fast`` (the
    ``calibrated`` strategy only) ``FAST_DECISION_SIDE`` on the long side, shrunk by at most
    ``MAX_REDUCTION`` (never enlarged)."""
    if speed == "default" or strategy != "calibrated" or max(height, width) <= FAST_DECISION_SIDE:
        return height, width
    scale = max(FAST_DECISION_SIDE / max(height, width), 1.0 / MAX_REDUCTION)
    return max(1, round(height * scale)), max(1, round(width * scale))


class ReducedStack:
    """The slices of ``read`` shrunk by area averaging to ``size`` (height, width), each once, kept in memory."""

    def __init__(self, read: Callable[[int], np.ndarray], n_slices: int, size: tuple[int, int]) -> None:
        self._read = read
        self._size = size
        self._slices: list[np.ndarray | None] = [None] * n_slices

    def read(self, index: int) -> np.ndarray:
        image = self._slices[index]
        if image is None:
            height, width = self._size
            image = cv2.resize(self._read(index), (width, height), interpolation=cv2.INTER_AREA)
            self._slices[index] = image
        return image

    def read_rows(self, index: int, rows: slice) -> np.ndarray:
        return self.read(index)[rows]


def enlarge_index_map(index_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The index map at ``size`` (height, width), each full-size pixel taking the nearest decision."""
    height, width = size
    return cv2.resize(index_map, (width, height), interpolation=cv2.INTER_NEAREST)


def enlarge_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean map at ``size``, nearest decision."""
    return enlarge_index_map(mask.astype(np.uint8), size).astype(bool)


# Focus measure of the boundary refinement: the Laplacian's energy over a window this wide.
FOCUS_WINDOW = 7


def focus_measure(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: local energy of the Laplacian of the luminance, over a ``FOCUS_WINDOW`` window."""
    gray = image
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (3, 4):
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY)
        else:  # gray+alpha, or a channel stack's first channel
            gray = np.ascontiguousarray(image[:, :, 0])
    laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    cv2.multiply(laplacian, laplacian, dst=laplacian)
    return cv2.boxFilter(laplacian, -1, (FOCUS_WINDOW, FOCUS_WINDOW), normalize=False)


def refine_boundaries(index_map: np.ndarray, read: Callable[[int], np.ndarray], scale: float) -> np.ndarray:
    """Place the full-size boundaries between slices by a full-resolution focus measure.

    ``index_map`` is the enlarged decision (full size); a decision pixel covers about
    ``1 / scale`` full-size pixels, so near a change of slice the decision cannot say
    on which full-size pixel it falls. There, within that distance of the boundary,
    each pixel takes whichever of the slices chosen around it is sharpest at full
    resolution (``focus_measure``); everywhere else the decision stands. Returns a
    new index map.
    """
    reach = max(1, math.ceil(1.0 / scale))
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    band = cv2.dilate(index_map, kernel) != cv2.erode(index_map, kernel)
    if not band.any():
        return index_map
    refined = index_map.copy()
    best = np.full(index_map.shape, -1.0, np.float32)
    for j in np.unique(index_map).tolist():
        near = cv2.dilate((index_map == j).astype(np.uint8), kernel).view(bool) & band
        sharpness = focus_measure(read(j))
        better = near & (sharpness > best)
        np.copyto(best, sharpness, where=better)
        np.copyto(refined, j, where=better)
    return refined
