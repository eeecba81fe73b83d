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

from focusfuse.errors import FocusFuseError
from focusfuse.fusion.height import tenengrad
from focusfuse.io.slice_cache import DecodedStack

TEXTURE_SIDE = 512  # slices are measured at most this large: texture is a ranking, not a measurement


class ChannelView:
    """Reads channel ``channel`` of every slice of ``store``: what the decisions see."""

    def __init__(self, store: DecodedStack, channel: int) -> None:
        self._store = store
        self.channel = channel

    def read(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self._store.read(index)[:, :, self.channel])

    def read_rows(self, index: int, rows: slice) -> np.ndarray:
        """Rows ``rows`` of the channel, read as rows (``DecodedStack.read_rows``)."""
        return np.ascontiguousarray(self._store.read_rows(index, rows)[:, :, self.channel])


def slice_texture(image: np.ndarray) -> np.ndarray:
    """Per channel of one slice: its mean Tenengrad relative to its squared mean intensity.

    Relative, so that a dim fluorescence channel with sharp detail ranks above a bright
    but smooth one.
    """
    planes: np.ndarray = image.astype(np.float32)
    factor = min(1.0, TEXTURE_SIDE / max(planes.shape[:2]))
    if factor < 1.0:
        planes = cv2.resize(planes, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    if planes.ndim == 2:
        planes = planes[:, :, None]
    scores = []
    for channel in range(planes.shape[2]):
        plane = np.ascontiguousarray(planes[:, :, channel])
        scores.append(float(np.mean(tenengrad(plane))) / (float(np.mean(plane)) ** 2 + 1e-12))
    return np.array(scores, np.float64)


def channel_texture(read: Callable[[int], np.ndarray], n_slices: int) -> np.ndarray:
    """Per channel, the texture of its sharpest slice (a channel in focus in one slice counts)."""
    return np.maximum.reduce([slice_texture(read(index)) for index in range(n_slices)])


def check_reference_channel(requested: int | None, channels: int, label: str) -> None:
    if requested is not None and not 0 <= requested < channels:
        raise FocusFuseError(
            f"{label}: --reference-channel {requested}: the slices have {channels} channel(s), numbered from 0"
        )


def reference_record(texture: np.ndarray, requested: int | None) -> dict:
    """The channel whose index map fuses all (``requested``, else the most textured) and why, for reports."""
    return {
        "channels": len(texture),
        "reference": int(np.argmax(texture)) if requested is None else requested,
        "chosen_by": "most texture" if requested is None else "--reference-channel",
        "texture": [round(float(score), 6) for score in texture],
    }


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
