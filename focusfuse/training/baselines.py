"""Non-learned reference methods, so every measurement shows what the network adds."""

from __future__ import annotations

import cv2
import numpy as np

LAPLACIAN_WINDOW = 7


def laplacian_energy(gray: np.ndarray, window: int = LAPLACIAN_WINDOW) -> np.ndarray:
    """Sum over a window of the squared 4-neighbour Laplacian (edge-replicated borders)."""
    laplacian = cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REPLICATE)
    return cv2.boxFilter(laplacian * laplacian, -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)


def laplacian_select_pair(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
    """Decision map: 1.0 where A's Laplacian energy is at least B's."""
    return (laplacian_energy(gray_a) >= laplacian_energy(gray_b)).astype(np.float32)
