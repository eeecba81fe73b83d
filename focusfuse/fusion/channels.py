"""Multichannel stacks: one index map, chosen on one channel, applied to every channel.

A brightfield channel and its fluorescence channels must stay in register: each pixel
of the fused image takes all its channels from the same slice. The decisions (and the
alignment, the flat-region fill and the height) are made on one reference channel,
by default the one with the most texture; the composite then blends every channel
under that index map.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

TEXTURE_SIDE = 512  # slices are measured at most this large: texture is a ranking, not a measurement


class ChannelView:
    """Reads channel ``channel`` of every slice of ``read``: what the decisions see."""

    def __init__(self, read: Callable[[int], np.ndarray], channel: int) -> None:
        self._read = read
        self.channel = channel

    def read(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self._read(index)[:, :, self.channel])


def channel_texture(read: Callable[[int], np.ndarray], n_slices: int) -> list[float]:
    """Per channel: the mean squared Sobel gradient of its sharpest slice, relative to its mean intensity.

    Relative, so that a dim fluorescence channel with sharp detail ranks above a bright
    but smooth one; the sharpest slice, so that a channel in focus in one slice counts.
    """
    best: np.ndarray | None = None
    for index in range(n_slices):
        image: np.ndarray = read(index).astype(np.float32)
        factor = min(1.0, TEXTURE_SIDE / max(image.shape[:2]))
        if factor < 1.0:
            image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[:, :, None]
        scores = []
        for channel in range(image.shape[2]):
            plane = np.ascontiguousarray(image[:, :, channel])
            gradient_x = cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3)
            gradient_y = cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3)
            energy = float(np.mean(gradient_x * gradient_x + gradient_y * gradient_y))
            scores.append(energy / (float(np.mean(plane)) ** 2 + 1e-12))
        measured = np.array(scores, np.float64)
        best = measured if best is None else np.maximum(best, measured)
    assert best is not None
    return [round(float(score), 6) for score in best]


def select_by_index(read: Callable[[int], np.ndarray], index_map: np.ndarray, n_slices: int) -> np.ndarray:
    """Every pixel, all channels, copied from its slice (``--composite select``)."""
    fused: np.ndarray | None = None
    for j in np.unique(index_map).tolist():
        if j >= n_slices:
            continue
        image = read(j)
        if fused is None:
            fused = np.empty_like(image)
        take = index_map == j
        fused[take] = image[take]
    assert fused is not None
    return fused
