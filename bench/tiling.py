#!/usr/bin/env python3
"""Fusion in tiles against the whole image at once: how far the results agree.

For every stack of bench/multislice.py (N = 5, 10, 20; clean, noise, drift; known
depth), fused once whole and once in tiles (a --max-memory small enough for tiles of
about --tile px): the share of identical index-map pixels, and both fused images'
PSNR against the all-in-focus truth. With --pcb10, ../shared/data/stacks/pcb10 too
(no truth: agreement, the PSNR of the tiled result against the whole one, time and
the memory plan). --halo overrides the tile halo (to choose it, on --seed 1).
Usage: python bench/tiling.py [--size 512] [--tile 256] [--slices 5,10,20] [--seed 0] [--halo PX] [--pcb10]
(--slices "" --pcb10: pcb10 alone)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from focusfuse.fusion import tiling
from focusfuse.fusion.pipeline import DEFAULT_BATCH_SIZE, fuse_stack

sys.path.insert(0, str(Path(__file__).parent))
from multislice import psnr, written_cases  # noqa: E402

PCB10 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stacks" / "pcb10"
WHOLE = 64 * 2**30  # a budget every stack here fits whole


def budget_for_tile(side: int, height: int, width: int, channels: int, n_slices: int) -> int:
    """The --max-memory that gives tiles of about ``side`` px (the inverse of ``plan_memory``)."""
    kept = tiling.BASE_BYTES + height * width * (tiling.KEPT_BYTES_PER_PIXEL + channels)
    kept += n_slices * height * width * channels
    work = tiling.work_bytes_per_pixel("calibrated", DEFAULT_BATCH_SIZE)
    return int((kept + side * side * work) / tiling.PLAN_SHARE)


def compare(label: str, whole, tiled, truth: np.ndarray | None) -> None:
    agreement = float((whole.index_map == tiled.index_map).mean())
    plan = tiled.timing["memory_plan"]
    tiles = f"{plan['tiles']:3d} tiles of {plan['tile_pixels'] / 1e6:.2f} Mpx"
    line = f"  {label:<22} {tiles}   index identical {100 * agreement:6.2f}%"
    if truth is not None:
        whole_psnr, tiled_psnr = psnr(whole.fused, truth), psnr(tiled.fused, truth)
        line += f"   PSNR whole {whole_psnr:6.2f} tiled {tiled_psnr:6.2f} (diff {tiled_psnr - whole_psnr:+.3f} dB)"
    else:
        line += f"   PSNR tiled vs whole {psnr(tiled.fused, whole.fused):6.2f} dB"
        line += f"   time whole {whole.timing['total_s']:.1f} s, tiled {tiled.timing['total_s']:.1f} s"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256, help="Tile side, halo included, px.")
    parser.add_argument("--slices", default="5,10,20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--halo", type=int, help=f"Tile halo in px [default: {tiling.TILE_HALO}].")
    parser.add_argument("--pcb10", action="store_true", help="Also pcb10 (whole: about 7 GB of memory).")
    args = parser.parse_args()
    if args.halo is not None:
        tiling.TILE_HALO = args.halo
    print(f"halo {tiling.TILE_HALO} px, seed {args.seed}")
    agreements = []
    with tempfile.TemporaryDirectory() as scratch:
        for n_slices, variant, folder, sharp, _ in written_cases(Path(scratch), args.size, args.slices, args.seed):
            budget = budget_for_tile(args.tile, args.size, args.size, 1, n_slices)
            whole = fuse_stack([folder], device="cpu", max_memory=WHOLE)
            tiled = fuse_stack([folder], device="cpu", max_memory=budget)
            compare(f"N={n_slices} {variant}", whole, tiled, sharp)
            agreements.append(float((whole.index_map == tiled.index_map).mean()))
    if agreements:
        print(f"  lowest agreement {100 * min(agreements):.2f}%")
    if args.pcb10:
        if not PCB10.is_dir():
            print(f"pcb10: skipped, {PCB10} not found")
            return
        whole = fuse_stack([PCB10], device="cpu", max_memory=WHOLE)
        tiled = fuse_stack([PCB10], device="cpu")
        compare("pcb10 (default budget)", whole, tiled, None)


if __name__ == "__main__":
    main()
