#!/usr/bin/env python3
"""How fast the network can possibly fuse a stack on this machine: its arithmetic against the CPU's.

Counts the floating-point operations of the GACN feature path (once per slice) and
decision path (once per group of ``SLICES_PER_DECISION`` slices in the calibrated
strategy) per pixel with torch's FlopCounterMode, times both paths on a tile, and
times a large matrix product, the most this CPU sustains. Prints, for a stack of
N slices of W x H, the network's total arithmetic and the seconds it takes at each
rate: a floor under any fusion that runs the whole network on every slice (reading,
decoding, tile halos, compositing and the flat-region fill come on top).
Usage: python bench/compute_bound.py [--slices 10] [--width 2048] [--height 1536] [--tile 512]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from focusfuse.fusion.strategies import SLICES_PER_DECISION
from focusfuse.model.network import FEATURE_CHANNELS, compare_activity
from focusfuse.model.weights import find_weights, load_model


def flops_per_pixel(run, side: int = 64) -> float:
    """Floating-point operations of ``run(side)`` per pixel, as torch counts them (convolutions and products)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(side)
    return counter.get_total_flops() / side**2


def best_seconds(run, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=512, help="side of the tile the paths are timed on")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = load_model(find_weights(None), torch.device("cpu"))
    tile = args.tile

    def gray(side: int) -> torch.Tensor:
        return torch.rand(1, 1, side, side).contiguous(memory_format=torch.channels_last)

    def energies(side: int) -> torch.Tensor:
        return torch.rand(1, FEATURE_CHANNELS, side, side).contiguous(memory_format=torch.channels_last)

    feature_flops = flops_per_pixel(lambda side: model.features(gray(side)))
    decision_flops = flops_per_pixel(lambda side: model.decision(compare_activity(energies(side), energies(side))))
    decisions = math.ceil((args.slices - 1) / SLICES_PER_DECISION)
    per_pixel = args.slices * feature_flops + decisions * decision_flops
    pixels = args.width * args.height
    total = per_pixel * pixels

    tile_gray, tile_energy_a, tile_energy_b = gray(tile), energies(tile), energies(tile)
    with torch.no_grad():
        feature_s = best_seconds(lambda: model.features(tile_gray), args.repeats)
        comparison = compare_activity(tile_energy_a, tile_energy_b)
        decision_s = best_seconds(lambda: model.decision(comparison), args.repeats)
    feature_rate = feature_flops * tile**2 / feature_s
    decision_rate = decision_flops * tile**2 / decision_s
    network_s = pixels * (args.slices * feature_flops / feature_rate + decisions * decision_flops / decision_rate)

    side = 2048
    a, b = torch.rand(side, side), torch.rand(side, side)
    matmul_rate = 2 * side**3 / best_seconds(lambda: a @ b, args.repeats)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    on_tile = f"GFLOP/s on {tile}x{tile}"
    print(f"feature path   {feature_flops / 1e3:8.1f} kFLOP/px per slice    {feature_rate / 1e9:6.1f} {on_tile}")
    print(f"decision path  {decision_flops / 1e3:8.1f} kFLOP/px per decision {decision_rate / 1e9:6.1f} {on_tile}")
    print(f"matrix product {matmul_rate / 1e9:6.1f} GFLOP/s ({side}x{side}, float32): this CPU's ceiling")
    paths = f"{args.slices} feature paths + {decisions} decision paths per pixel"
    size = f"{args.slices} x {args.width}x{args.height}"
    print(f"{size}: {paths} = {per_pixel / 1e3:.0f} kFLOP/px, {total / 1e12:.2f} TFLOP")
    print(f"  at the network's measured rates      {network_s:6.1f} s")
    print(f"  at the matrix-product ceiling        {total / matmul_rate:6.1f} s")


if __name__ == "__main__":
    main()
