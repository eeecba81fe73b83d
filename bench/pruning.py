#!/usr/bin/env python3
"""Candidate pruning against the unpruned run: agreement, slices run, time.

For every stack of bench/multislice.py's generator (N = 10, 20, 40; clean, noise,
drift; known depth), at --size px fused in tiles of about --tile px (as a large image
is under the default budget), once with pruning and once without (--no-prune): the
share of identical index-map pixels, both PSNRs against the all-in-focus truth, the
share of slice-tiles that ran the network, and the fusion seconds. --fraction
overrides KEEP_FRACTION (to choose it, on --seed 1).

With --real NAME (a stack in ../shared/data/stacks, e.g. pcb10), the screen's bound on
a real stack instead: the stack is fused once unpruned with the default budget, and for
that plan's tiles and a grid of screen settings (keep fraction, cell size) the bench
prints the slice-tiles the screen would run and the share of pixels whose unpruned
choice it would drop. A pruned run can agree with the unpruned one at most on the rest.
Usage: python bench/pruning.py [--size 768] [--tile 384] [--slices 10,20,40] [--seed 0] [--fraction F]
       python bench/pruning.py --real pcb10
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from focusfuse.fusion import pruning, tiling
from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.reader import open_stack

sys.path.insert(0, str(Path(__file__).parent))
from multislice import psnr, written_cases  # noqa: E402
from peers import REAL_STACKS  # noqa: E402
from tiling import budget_for_tile  # noqa: E402


def real_stack_bound(name: str) -> None:
    """What the focus screen would keep on a real stack, against the unpruned run's choices."""
    folder = REAL_STACKS / name
    if not folder.is_dir():
        print(f"{name}: skipped, {folder} not found")
        return
    unpruned = fuse_stack([folder], device="cpu", prune=False)
    choice = unpruned.index_map
    plan = unpruned.timing["memory_plan"]
    height, width = choice.shape
    tiles = (
        tiling.tile_grid(height, width, plan["tile_pixels"], plan["halo"])
        if plan["tile_pixels"] is not None
        else [tiling.Tile((0, height, 0, width), (0, height, 0, width))]
    )
    source = open_stack([folder])
    slices = [source.read(j) for j in range(len(source))]
    print(
        f"{name}: {len(slices)} slices, {len(tiles)} tiles of the default plan, "
        f"unpruned {unpruned.timing['total_s']:.1f} s"
    )
    for fraction in (0.3, 0.15, 0.08):
        for cell in (32, 16, 8):
            run = dropped = 0
            for tile in tiles:
                window = tile.window_slices()
                kept = pruning.candidate_slices((s[window] for s in slices), keep_fraction=fraction, cell=cell)
                run += len(kept)
                dropped += int((~np.isin(choice[tile.core_slices()], kept)).sum())
            print(
                f"  keep fraction {fraction:<5} cell {cell:>2} px   slice-tiles run {run}/{len(tiles) * len(slices)} "
                f"({100 * run / (len(tiles) * len(slices)):.0f}%)   "
                f"unpruned choice dropped on {100 * dropped / choice.size:5.2f}% of pixels",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--tile", type=int, default=384, help="Tile side, halo included, px.")
    parser.add_argument("--slices", default="10,20,40")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fraction", type=float, help=f"Keep fraction [default: {pruning.KEEP_FRACTION}].")
    parser.add_argument("--textured", type=float, help=f"Textured cell share [default: {pruning.TEXTURED_CELL}].")
    parser.add_argument("--scale", type=int, help=f"Screen downscaling [default: {pruning.SCREEN_SCALE}].")
    parser.add_argument("--real", help="A stack in ../shared/data/stacks: the screen's bound there instead.")
    args = parser.parse_args()
    if args.real:
        real_stack_bound(args.real)
        return
    if args.fraction is not None:
        pruning.KEEP_FRACTION = args.fraction
    if args.textured is not None:
        pruning.TEXTURED_CELL = args.textured
    if args.scale is not None:
        pruning.SCREEN_SCALE = args.scale
    print(
        f"keep fraction {pruning.KEEP_FRACTION}, textured cells {pruning.TEXTURED_CELL}, "
        f"screen at 1/{pruning.SCREEN_SCALE}, seed {args.seed}, "
        f"{args.size}x{args.size} in tiles of {args.tile} px"
    )
    agreements = []
    with tempfile.TemporaryDirectory() as scratch:
        for n_slices, variant, folder, sharp, _ in written_cases(Path(scratch), args.size, args.slices, args.seed):
            budget = budget_for_tile(args.tile, args.size, args.size, 1, n_slices)
            full = fuse_stack([folder], device="cpu", max_memory=budget, prune=False)
            pruned = fuse_stack([folder], device="cpu", max_memory=budget, prune=True)
            agreement = float((full.index_map == pruned.index_map).mean())
            agreements.append(agreement)
            run = pruned.timing["slice_tiles"]
            print(
                f"  N={n_slices:<3} {variant:<11} index identical {100 * agreement:6.2f}%   "
                f"PSNR unpruned {psnr(full.fused, sharp):6.2f} pruned {psnr(pruned.fused, sharp):6.2f}   "
                f"slice-tiles run {run['run']}/{run['in_all']} ({100 * run['run'] / run['in_all']:.0f}%)   "
                f"seconds {full.timing['total_s']:.1f} -> {pruned.timing['total_s']:.1f}",
                flush=True,
            )
    print(f"  lowest agreement {100 * min(agreements):.2f}%")


if __name__ == "__main__":
    main()
