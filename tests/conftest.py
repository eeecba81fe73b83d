"""Shared fixtures: the shipped model, the bundled demo stacks, synthetic stacks with truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from focusfuse.io.color import unit_scale
from focusfuse.model.weights import find_weights, load_model
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def model():
    return load_model(find_weights())


@pytest.fixture(scope="session")
def demo_stack_dir() -> Path:
    return EXAMPLES / "stack8"


@pytest.fixture(scope="session")
def demo_truth() -> np.ndarray:
    return cv2.imread(str(EXAMPLES / "stack8_truth" / "index.png"), cv2.IMREAD_UNCHANGED)


def step_depth_stack(dtype=np.uint8, n_slices: int = 4, size: int = 96, seed: int = 0, colour: bool = False):
    """Procedural texture in vertical bands, band k in focus in slice k (blur 2.5 px per slice).

    Returns the SyntheticStack; its truth is exact away from band borders.
    """
    rng = np.random.default_rng(seed)
    texture = procedural_texture(size, size, rng)
    if colour:
        texture = np.stack([texture, np.roll(texture, 7, axis=0), np.roll(texture, 13, axis=1)], axis=2)
    full = unit_scale(dtype)
    sharp = (texture * full).round().astype(dtype) if dtype != np.float32 else texture.astype(np.float32)
    depth = np.zeros((size, size), np.float32)
    band = size // n_slices
    for k in range(n_slices):
        depth[:, k * band : (k + 1) * band] = k
    depth[:, n_slices * band :] = n_slices - 1
    return make_depth_stack(sharp, depth, n_slices, blur_per_slice=2.5, rng=rng)


def interior(mask_shape, n_slices: int, margin: int = 8) -> np.ndarray:
    """Pixels at least ``margin`` from a band border and the image edge."""
    height, width = mask_shape
    keep = np.zeros(mask_shape, bool)
    band = width // n_slices
    for k in range(n_slices):
        keep[margin:-margin, k * band + margin : (k + 1) * band - margin] = True
    return keep
