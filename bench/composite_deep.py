#!/usr/bin/env python3
"""The composite on a deep stack textured in every pixel, under its true index map.

A 20-slice 160x160 stack (procedural texture, no flat regions, a smooth depth surface,
1.5 px more blur per slice of defocus), the stack of tests/fusion/test_compositing.py's
blur test, seeds 3 and 4. PSNR against the all-in-focus image for copying every pixel
from its slice (``select``), the shipped composite (``pyramid``), and the pyramid blend
kept everywhere (the seam need forced to full). Neighbouring slices differ only in blur
here, the case where any blending loses detail.
Usage: python bench/composite_deep.py
"""

from __future__ import annotations

import numpy as np
from multislice import pick, psnr

from focusfuse.fusion import compositing
from focusfuse.fusion.compositing import composite_pyramid
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth


def main() -> None:
    shipped_need = compositing.SEAM_FULL_NEED
    for seed in (3, 4):
        rng = np.random.default_rng(seed)
        sharp = np.rint(procedural_texture(160, 160, rng) * 255).astype(np.uint8)
        stack = make_depth_stack(sharp, smooth_depth(160, 160, 20, rng), 20)
        index = stack.truth_index
        compositing.SEAM_FULL_NEED = shipped_need
        shipped = composite_pyramid(lambda j, s=stack: s.slices[j], index, 20)
        compositing.SEAM_FULL_NEED = 1e-9  # any difference asks for the blend
        blend_only = composite_pyramid(lambda j, s=stack: s.slices[j], index, 20)
        compositing.SEAM_FULL_NEED = shipped_need
        print(
            f"seed {seed}: select {psnr(pick(stack.slices, index), sharp):.2f} dB   "
            f"pyramid (default) {psnr(shipped, sharp):.2f} dB   blend everywhere {psnr(blend_only, sharp):.2f} dB"
        )


if __name__ == "__main__":
    main()
