#!/usr/bin/env python3
"""Seconds per 520x520 pair and per slice of a 10-slice 1024x1024 stack (each strategy).

Ends with each strategy's time per slice as a fraction of serial's.

Runs ``fuse_stack`` (the code behind ``focusfuse stack``) on real files: the bundled
lytro_01 pair and a synthetic 10-slice stack written as PNGs. Each case runs
--repeats times after one warm-up; the median is printed. Fusion time excludes
loading the weights (done once per process) and includes reading and writing.
Usage: python bench/speed.py [--repeats 3] [--device cpu] [--size 1024] [--slices 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from multislice import STRATEGY_ROWS

from focusfuse import fuse_stack
from focusfuse.io.writer import write_image
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth

REPO = Path(__file__).resolve().parent.parent
PAIR = [REPO / "examples" / "pair" / "lytro_01_1.png", REPO / "examples" / "pair" / "lytro_01_2.png"]


def fusion_seconds(inputs, out_dir: Path, repeats: int, **options):
    """Median wall seconds of fuse_stack without the weights loading, and the last result."""
    times = []
    for run in range(repeats + 1):
        result = fuse_stack(inputs, output=out_dir / "fused.png", **options)
        if run:  # the first run warms up allocators and caches
            times.append(result.timing["total_s"] - result.timing["stages_s"].get("load_weights", 0.0))
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        seconds, result = fusion_seconds(PAIR, scratch, args.repeats, device=args.device)
        record = result.timing
        stages = ", ".join(f"{k} {v:.3f}" for k, v in record["stages_s"].items() if k != "load_weights")
        print(f"pair 520x520 (lytro_01): {seconds:.3f} s per pair  [{stages}]")

        rng = np.random.default_rng(0)
        sharp = (procedural_texture(args.size, args.size, rng) * 255).astype(np.uint8)
        stack = make_depth_stack(sharp, smooth_depth(args.size, args.size, args.slices, rng), args.slices)
        stack_dir = scratch / "stack"
        stack_dir.mkdir()
        for k, image in enumerate(stack.slices, start=1):
            write_image(stack_dir / f"z{k}.png", image)
        per_slice = {}
        for label, strategy, options in STRATEGY_ROWS:
            seconds, result = fusion_seconds(
                [stack_dir],
                scratch,
                args.repeats,
                device=args.device,
                strategy=strategy,
                batch_size=args.batch_size,
                **options,
            )
            per_slice[label] = seconds / args.slices
            record = result.timing
            exact = float((result.index_map == stack.truth_index).mean())
            stages = ", ".join(f"{k} {v:.2f}" for k, v in record["stages_s"].items() if k != "load_weights")
            print(
                f"stack {args.slices}x{args.size}x{args.size} {label:>16}: {seconds / args.slices:.3f} s per slice, "
                f"{seconds:.2f} s in all, index exact {exact:.3f}  [{stages}]"
            )
        print(
            "time per slice / serial's: "
            + ", ".join(f"{label} {t / per_slice['serial']:.2f}" for label, t in per_slice.items() if label != "serial")
        )


if __name__ == "__main__":
    main()
