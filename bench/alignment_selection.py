#!/usr/bin/env python3
"""Alignment on selection stacks (never reported as results): what the blur probe was chosen by.

1. ``--margins``: still stacks of the drifting generator (seeds 11-22; 32 x 512 gathered and
   scattered, 65 x 256, 32 x 256, 10 x 512, 8 x 128 and 6 x 160 gathered, 16 x 256 scattered)
   under ``--align auto``: per kind, the largest significance, the largest plain-sum ratio
   (coherence), and the largest of each stack's smaller ratio to auto's two thresholds
   (a stack warps at 1).
2. ``--psnr``: drifting stacks (seeds 11-13), fused with their true transforms (Lanczos), with
   the estimated similarity, and under ``--align auto`` (which keeps its screen's estimate up
   to 512 px): fused PSNR against the all-in-focus truth.
3. ``--reference``: where the deep stacks' loss comes from. The same drifting stacks, each
   slice registered (similarity, started from the chain's estimate) not to its neighbour
   but to one reference for all: the all-in-focus truth, and a proxy of it made of the
   chain-aligned slices (each pixel from the slice with the most detail energy around it),
   the transforms then taken relative to the middle slice: fused PSNR.

1 and 2 for every ``--probe`` given (px² of the blur probe, ``BLUR_PROBE``).
Usage: python bench/alignment_selection.py [--margins] [--psnr] [--reference] [--probe 2 6]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from alignment import INNER, realigned, write_slices
from multislice import psnr

from focusfuse.fusion import alignment
from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.training.synthetic import DriftingStack, make_drifting_stack

STILL_KINDS = [
    (512, 32, "gather"), (512, 32, "scatter"), (256, 65, "gather"), (256, 32, "gather"),
    (512, 10, "gather"), (128, 8, "gather"), (160, 6, "gather"), (256, 16, "scatter"),
]  # fmt: skip
MOVED = [
    (512, 32, 12, "gather"), (512, 32, 13, "scatter"), (512, 32, 11, "gather"), (512, 10, 11, "gather"),
    (512, 10, 12, "scatter"), (256, 16, 11, "gather"), (256, 16, 12, "scatter"), (256, 6, 13, "gather"),
    (1024, 16, 11, "scatter"),
]  # fmt: skip


def margins(probe: float) -> None:
    alignment.BLUR_PROBE = probe
    for size, n_slices, render in STILL_KINDS:
        significance, coherence, both = [], [], []
        for seed in range(11, 23):
            rng = np.random.default_rng([size, n_slices, seed])
            stack = make_drifting_stack(size, n_slices, rng, max_shift=0.0, scale_span=0.0, jitter=0.0, render=render)
            estimate = estimated(stack, "auto")
            significance.append(max(t.significance for t in estimate.transforms))
            coherence.append(max(t.coherence for t in estimate.transforms))
            both.append(
                max(
                    min(t.significance / alignment.AUTO_MIN_SIGNIFICANCE, t.coherence / alignment.AUTO_MIN_COHERENCE)
                    for t in estimate.transforms
                )
            )
        print(
            f"  probe {probe:g} px², still {n_slices}x{size} {render}: significance max {max(significance):.1f}, "
            f"coherence max {max(coherence):.1f}, smaller ratio max {max(both):.2f} (warps at 1)",
            flush=True,
        )


class MovedStack(NamedTuple):
    name: str  # as printed
    key: str  # its slices' folders are named by this
    stack: DriftingStack


def moved_stacks() -> Iterator[MovedStack]:
    """The ``MOVED`` stacks."""
    for size, n_slices, seed, render in MOVED:
        rng = np.random.default_rng([size, n_slices, seed])
        stack = make_drifting_stack(size, n_slices, rng, max_shift=10.0, scale_span=0.015, render=render)
        yield MovedStack(f"{n_slices}x{size} {render}, seed {seed}", f"{n_slices}x{size}-{render}-{seed}", stack)


def estimated(stack: DriftingStack, mode: str) -> alignment.StackAlignment:
    return alignment.estimate_alignment(lambda j: stack.slices[j], len(stack.slices), mode)


def fused_psnr_of(moved: MovedStack, transforms: list[np.ndarray], scratch: Path, label: str) -> float:
    """The slices re-aligned by ``transforms`` (written under ``scratch``, by ``label``), fused, against
    the all-in-focus truth (``INNER``: its border left out)."""
    paths = write_slices(scratch / f"{moved.key}-{label}", realigned(moved.stack.slices, transforms))
    return psnr(fuse_stack(paths, device="cpu", align="none").fused[INNER], moved.stack.sharp[INNER])


def fused_psnr(probes: list[float], scratch: Path) -> None:
    for moved in moved_stacks():
        cells = [f"true {fused_psnr_of(moved, moved.stack.transforms, scratch, 'true'):.2f}"]
        for probe in probes:
            alignment.BLUR_PROBE = probe
            matrices = [t.matrix for t in estimated(moved.stack, "similarity").transforms]
            similarity = fused_psnr_of(moved, matrices, scratch, f"p{probe:g}")
            warps = [t.matrix if t.applied else np.eye(2, 3) for t in estimated(moved.stack, "auto").transforms]
            auto = fused_psnr_of(moved, warps, scratch, f"a{probe:g}")
            cells.append(f"{probe:g} px² {similarity:.2f} (auto {auto:.2f})")
        print(f"  drifting {moved.name}: " + ", ".join(cells), flush=True)


PROXY_ENERGY_SIGMA = 4.0  # px: the neighbourhood whose detail energy picks the proxy's slice


def proxy_all_in_focus(images: list[np.ndarray], matrices: list[np.ndarray]) -> np.ndarray:
    """The registration images aligned by ``matrices``, each pixel from the one with the most detail around it."""
    height, width = images[0].shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = np.stack(
        [
            cv2.warpAffine(image, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
            for image, matrix in zip(images, matrices, strict=True)
        ]
    )
    energy = np.stack([cv2.GaussianBlur(layer * layer, (0, 0), PROXY_ENERGY_SIGMA) for layer in warped])
    return np.take_along_axis(warped, energy.argmax(axis=0)[None], axis=0)[0]


def to_one_reference(reference: np.ndarray, images: list[np.ndarray], starts: list[np.ndarray]) -> list[np.ndarray]:
    """Each image registered to ``reference`` from its start, then relative to the middle image."""
    matrices = []
    for image, start in zip(images, starts, strict=True):
        pair = alignment.register_pair(reference, image, "similarity", start=start)
        matrices.append(start if pair is None else pair.matrix)
    middle = np.linalg.inv(np.vstack([matrices[(len(images) - 1) // 2], [0, 0, 1]]))
    return [(np.vstack([matrix, [0, 0, 1]]) @ middle)[:2] for matrix in matrices]


def one_reference(scratch: Path) -> None:
    for moved in moved_stacks():
        stack = moved.stack
        chain = [t.matrix for t in estimated(stack, "similarity").transforms]
        images = [alignment._registration_image(image) for image in stack.slices]
        truth = to_one_reference(alignment._registration_image(stack.sharp), images, chain)
        proxy = to_one_reference(proxy_all_in_focus(images, chain), images, chain)
        cells = {"true": stack.transforms, "chain": chain, "to the truth": truth, "to the proxy": proxy}
        print(
            f"  drifting {moved.name}: "
            + ", ".join(f"{label} {fused_psnr_of(moved, m, scratch, label):.2f}" for label, m in cells.items()),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", action="store_true")
    parser.add_argument("--psnr", action="store_true")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--probe", type=float, nargs="+", default=[alignment.BLUR_PROBE])
    args = parser.parse_args()
    shipped = alignment.BLUR_PROBE
    try:
        if args.psnr:
            print("fused PSNR, dB, by blur probe: the true transforms, the estimated similarity (auto's):")
            with tempfile.TemporaryDirectory() as scratch:
                fused_psnr(args.probe, Path(scratch))
        if args.reference:
            print("fused PSNR, dB: the true transforms, the chain's, each slice registered to one reference:")
            with tempfile.TemporaryDirectory() as scratch:
                one_reference(Path(scratch))
        if args.margins:
            print("still selection stacks, seeds 11-22, under --align auto:")
            for probe in args.probe:
                margins(probe)
    finally:
        alignment.BLUR_PROBE = shipped


if __name__ == "__main__":
    main()
