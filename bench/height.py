#!/usr/bin/env python3
"""Height maps against the truth: RMS error in slices, refined and as the integer index map.

Stacks: tilted textured planes from the synthetic generator (seeds 10-14, 10 slices of
256x256, blur 1.5 px per slice of defocus, depth spanning the whole stack), and the
bundled examples/stack8 (its true depth in examples/stack8_truth/depth.tif). RMS over
the pixels at least 16 px from the border that have a height (textured), with the
fraction of such pixels.
Usage: python bench/height.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tifffile

from focusfuse import fuse_stack
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

REPO = Path(__file__).resolve().parent.parent
MARGIN = 16


def rms(height: np.ndarray, depth: np.ndarray) -> tuple[float, float]:
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    error = (height - depth)[inner]
    finite = np.isfinite(error)
    return float(np.sqrt(np.mean(error[finite] ** 2))), float(finite.mean())


def plane(seed: int, n_slices: int = 10, size: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    texture = procedural_texture(size, size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi / 2)
    ramp = np.cos(angle) * xx / (size - 1) + np.sin(angle) * yy / (size - 1)
    depth = (ramp - ramp.min()) / (ramp.max() - ramp.min()) * (n_slices - 1)
    stack = make_depth_stack(texture, depth.astype(np.float32), n_slices, blur_per_slice=1.5, rng=rng)
    return [np.rint(s * 255).astype(np.uint8) for s in stack.slices], depth


def main() -> None:
    print(f"{'stack':<22} {'refined RMS':>12} {'index RMS':>10} {'with height':>12}")
    with tempfile.TemporaryDirectory() as work:
        for seed in range(10, 15):
            slices, depth = plane(seed)
            source = Path(work) / f"plane{seed}.tif"
            tifffile.imwrite(source, np.stack(slices), photometric="minisblack")
            result = fuse_stack([source], height_map_path=Path(work) / "h.tif", device="cpu")
            refined, kept = rms(result.height, depth)
            index, _ = rms(np.where(np.isfinite(result.height), result.index_map, np.nan), depth)
            print(f"{'tilted plane seed ' + str(seed):<22} {refined:12.3f} {index:10.3f} {kept:12.3f}")
        result = fuse_stack([REPO / "examples" / "stack8"], height_map_path=Path(work) / "h.tif", device="cpu")
        depth = tifffile.imread(REPO / "examples" / "stack8_truth" / "depth.tif")
        refined, kept = rms(result.height, depth)
        index, _ = rms(np.where(np.isfinite(result.height), result.index_map, np.nan), depth)
        print(f"{'examples/stack8':<22} {refined:12.3f} {index:10.3f} {kept:12.3f}")


if __name__ == "__main__":
    main()
