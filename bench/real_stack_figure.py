#!/usr/bin/env python3
"""README picture: a region of a real z-stack, two slices, the fused image unaligned and aligned, the index map.

With ``--align`` (default similarity) the whole slices are aligned first (``estimate_alignment``
on the full frames, as ``focusfuse stack --align`` does); the region is then cut from
every slice, aligned and as read, each set of cut slices is fused by ``fuse_stack`` with the
default options, and five panels are drawn side by side at 100%: the first slice, the last
slice, the fused image of the slices as read (``--align none``), the fused image of the
aligned slices and its index map (viridis, slice 1 dark, slice N bright). The stack itself
is not changed.
Usage: python bench/real_stack_figure.py [--stack ../shared/data/stacks/plankton5]
       [--region X Y W H] [--align similarity] [--out docs/figures/plankton5.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from multislice_figure import GAP, colour_index, panel

from focusfuse.fusion.alignment import estimate_alignment
from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.reader import open_stack, read_image
from focusfuse.io.writer import write_image

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, default=REPO.parent / "shared" / "data" / "stacks" / "plankton5")
    parser.add_argument("--region", type=int, nargs=4, default=[3880, 1750, 400, 300], metavar=("X", "Y", "W", "H"))
    parser.add_argument("--align", default="similarity")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "plankton5.png")
    args = parser.parse_args()
    x, y, width, height = args.region
    source = open_stack([args.stack])
    alignment = estimate_alignment(source.read, len(source), args.align)
    for warning in alignment.warnings:
        print(f"warning: {warning}")
    with tempfile.TemporaryDirectory() as scratch:
        cut_paths: dict[str, list[Path]] = {"as read": [], "aligned": []}
        for index in range(len(source)):
            image = source.read(index)
            for name, slice_image in (("as read", image), ("aligned", alignment.warp(index, image))):
                cut = np.ascontiguousarray(slice_image[y : y + height, x : x + width])
                cut_paths[name].append(Path(scratch) / f"{name.replace(' ', '_')}_{index:03d}.png")
                write_image(cut_paths[name][-1], cut)
        first, last = read_image(cut_paths["as read"][0]), read_image(cut_paths["as read"][-1])
        unaligned = fuse_stack(cut_paths["as read"], device="cpu", align="none")
        started = time.perf_counter()
        result = fuse_stack(cut_paths["aligned"], device="cpu", align="none")  # warped above already
        seconds = time.perf_counter() - started
    tiles = [
        panel(first, "slice 1"),
        panel(last, f"slice {len(source)}"),
        panel(unaligned.fused, "fused, --align none"),
        panel(result.fused, f"fused, --align {args.align}"),
        panel(colour_index(result.index_map, len(source)), "index map"),
    ]
    spacer = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    figure = np.hstack([part for tile in tiles for part in (tile, spacer)][:-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.out, figure)
    counts = np.bincount(result.index_map.ravel(), minlength=len(source)) / result.index_map.size
    print(
        f"{args.out}: {args.stack.name}, region {width}x{height} at ({x}, {y}) of {len(source)} slices, "
        f"fused with --align {args.align} in {seconds:.2f} s; share of pixels per slice: "
        + " ".join(f"{share:.2f}" for share in counts)
    )
    for entry in alignment.report()["slices"]:
        print(
            f"  slice {entry['slice'] + 1}: shift {entry['shift_px']} px ({np.hypot(*entry['shift_px']):.2f} px), "
            f"scale {entry['scale']:.4f}"
        )


if __name__ == "__main__":
    main()
