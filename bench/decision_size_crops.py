#!/usr/bin/env python3
"""Decisions at full size against the default's reduced decisions, on a real stack, at 100%.

Fuses the stack twice with ``fuse_stack`` in this process: with the default (slices over
1024 px decided shrunk, ``resolution.decision_size``) and with the decisions forced to
full size (the default's behaviour for images of at most 1024 px). Prints both times,
the decision sizes, the mean absolute difference of the fused images and the share of
pixels that differ by more than 8 levels, and draws the ``--crops`` regions where the
two differ most (box mean of the difference), full size on the left and the default on
the right, at 100%, into ``--out``. The regions are chosen by the difference, not by
looking, so the picture shows the worst of it.
Usage: python bench/decision_size_crops.py [--stack ../shared/data/stacks/pcb10] [--side 256]
       [--crops 3] [--out decision_size_pcb10.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np

import focusfuse.fusion.pipeline as pipeline
from focusfuse.io.reader import open_stack

STACKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stacks"
GAP = 6


def worst_regions(difference: np.ndarray, side: int, count: int) -> list[tuple[int, int]]:
    """(top, left) of ``count`` non-overlapping ``side`` squares with the largest mean difference."""
    score = cv2.boxFilter(difference, -1, (side, side))
    height, width = difference.shape
    regions = []
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(score)), score.shape)
        top, left = int(np.clip(y - side // 2, 0, height - side)), int(np.clip(x - side // 2, 0, width - side))
        regions.append((top, left))
        score[max(0, top - side) : top + 2 * side, max(0, left - side) : left + 2 * side] = -1
    return regions


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.rint(image.astype(np.float64) / np.iinfo(image.dtype).max * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, default=STACKS / "pcb10")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--crops", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = [Path(p) for p in open_stack([args.stack]).paths]
    started = time.perf_counter()
    default = pipeline.fuse_stack(files, device="cpu")
    default_s = time.perf_counter() - started
    with mock.patch.object(pipeline, "decision_size", lambda height, width, *rest, **named: (height, width)):
        started = time.perf_counter()
        full = pipeline.fuse_stack(files, device="cpu")
        full_s = time.perf_counter() - started
    a, b = to_uint8(full.fused), to_uint8(default.fused)
    difference = np.abs(a.astype(np.float32) - b.astype(np.float32))
    if difference.ndim == 3:
        difference = difference.max(axis=2)
    print(
        f"{args.stack.name}: {len(files)} slices {a.shape[1]}x{a.shape[0]}; decided at full size {full_s:.1f} s, "
        f"default (decided at {default.timing['decision_size'][1]}x{default.timing['decision_size'][0]}) "
        f"{default_s:.1f} s"
    )
    print(
        f"  fused images: mean absolute difference {difference.mean():.2f} levels, {(difference > 8).mean():.1%} "
        "of pixels differ by more than 8"
    )
    rows = []
    for top, left in worst_regions(difference, args.side, args.crops):
        print(
            f"  region x={left} y={top} {args.side}x{args.side}: mean difference "
            f"{difference[top : top + args.side, left : left + args.side].mean():.2f}"
        )
        cut = (slice(top, top + args.side), slice(left, left + args.side))
        gap = np.full((args.side, GAP, *a.shape[2:]), 255, np.uint8)
        rows.append(np.hstack([a[cut], gap, b[cut]]))
        rows.append(np.full((GAP, rows[-1].shape[1], *a.shape[2:]), 255, np.uint8))
    out = args.out or Path(f"decision_size_{args.stack.name}.png")
    picture = np.vstack(rows[:-1])
    cv2.imwrite(str(out), picture[..., ::-1] if picture.ndim == 3 else picture)
    print(f"  left: decided at full size, right: the default; written to {out}")


if __name__ == "__main__":
    main()
