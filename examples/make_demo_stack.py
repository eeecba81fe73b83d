#!/usr/bin/env python3
"""Regenerate examples/stack8/ (8 slices) and examples/stack8_truth/ from a BSDS500 test image.

Slice k (z1..z8) is in focus where the depth surface equals k - 1; blur grows by
sigma 1.5 px per slice of defocus, with slight noise. The truth folder holds the
sharp image, the depth (float32 TIFF) and the nearest-slice index (0-based PNG).
Usage: python examples/make_demo_stack.py [BSDS500_TEST_IMAGE]
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import tifffile

from focusfuse.io.writer import write_image
from focusfuse.training.synthetic import make_depth_stack, smooth_depth

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGE = HERE.parent.parent / "shared" / "data" / "bsds500" / "test" / "108004.jpg"
N_SLICES = 8
SEED = 8


def main(image_path: Path) -> None:
    sharp = np.ascontiguousarray(cv2.imread(str(image_path), cv2.IMREAD_COLOR)[:, :, ::-1])
    rng = np.random.default_rng(SEED)
    depth = smooth_depth(*sharp.shape[:2], N_SLICES, rng)
    stack = make_depth_stack(sharp, depth, N_SLICES, blur_per_slice=1.5, noise_sigma=0.004, rng=rng)
    slices_dir, truth_dir = HERE / "stack8", HERE / "stack8_truth"
    slices_dir.mkdir(exist_ok=True)
    truth_dir.mkdir(exist_ok=True)
    for k, image in enumerate(stack.slices, start=1):
        write_image(slices_dir / f"z{k}.png", image)
    write_image(truth_dir / "sharp.png", sharp)
    write_image(truth_dir / "index.png", stack.truth_index)
    tifffile.imwrite(truth_dir / "depth.tif", stack.depth)
    print(f"wrote {N_SLICES} slices to {slices_dir} and the truth to {truth_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_IMAGE)
