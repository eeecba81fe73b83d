"""Candidate pruning: in each tile, only the slices that can still win somewhere run the network.

In a deep stack most slices are far from focus everywhere in a tile: their blur makes
them lose every comparison, yet each costs a full feature extraction. A cheap focus
screen (the squared Laplacian of the gray image, averaged over cells of
``SCREEN_CELL`` px) finds them first: a slice is kept for the tile when, in some cell,
its energy reaches ``KEEP_FRACTION`` of the best slice's there. Cells with no texture
have about equal (noise) energy in every slice, so every slice is kept where nothing
tells them apart, and the network decides as it would without pruning.

Off by default (``--prune``): leaving slices out changes which slices form each group
of ``SLICES_PER_DECISION``, and so part of the result; on pcb10 11% of the index map
(docs/benchmarks.md, Pruning), against under 0.05% on synthetic stacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import cv2
import numpy as np

from focusfuse.io.color import to_gray

SCREEN_CELL = 32
# Chosen on bench/pruning.py --seed 1 --slices 40 (synthetic stacks, not the ones reported):
# the share of slice-tiles run was 80-82% with every cell counted, at a keep fraction of 0.3
# or 0.5 (flat cells keep every slice); 54% / 77% / 54% (clean / noise / drift) with flat
# cells left out; 54-55% with the screen at half resolution too; the index maps stayed
# 99.96-99.98% identical to the unpruned ones throughout, PSNR within 0.01 dB.
SCREEN_SCALE = 2
KEEP_FRACTION = 0.3
# Cells whose best energy is below this share of the tile's 90th percentile count as flat: no
# slice is kept for them alone, since flat regions take their slice from the textured ground
# around them afterwards (the flat-region fill), whatever the decisions there said.
TEXTURED_CELL = 0.1


def cell_focus_energy(image: np.ndarray, cell: int = SCREEN_CELL) -> np.ndarray:
    """``(ceil(H / cell), ceil(W / cell))``: mean squared Laplacian of the gray image per cell.

    The Laplacian is taken at 1 / ``SCREEN_SCALE`` of full resolution: a quarter of the
    work, and pixel noise, which would lift every defocused slice to the noise floor,
    averaged down.
    """
    gray = to_gray(image)
    height, width = gray.shape
    if SCREEN_SCALE > 1:
        reduced = (max(1, width // SCREEN_SCALE), max(1, height // SCREEN_SCALE))
        gray = cv2.resize(gray, reduced, interpolation=cv2.INTER_AREA)
    laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    size = (math.ceil(width / cell), math.ceil(height / cell))
    return cv2.resize(laplacian * laplacian, size, interpolation=cv2.INTER_AREA)


def candidate_slices(
    images: Iterable[np.ndarray], *, keep_fraction: float | None = None, cell: int = SCREEN_CELL
) -> list[int]:
    """The slices (positions in ``images``) that reach ``keep_fraction`` (default ``KEEP_FRACTION``) of
    the best focus energy in some textured cell (``TEXTURED_CELL``)."""
    fraction = KEEP_FRACTION if keep_fraction is None else keep_fraction
    energies = np.stack([cell_focus_energy(image, cell) for image in images])
    best = energies.max(axis=0)
    textured = best >= TEXTURED_CELL * np.percentile(best, 90)
    return np.flatnonzero(((energies >= fraction * best) & textured).any(axis=(1, 2))).tolist()
