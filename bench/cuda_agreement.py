#!/usr/bin/env python3
"""How often a GPU picks the same slice as the CPU, per strategy, on the demo stack.

Runs ``fuse_stack`` on examples/stack8 on the CPU and on CUDA and prints the share of
pixels whose index map agrees, with seconds per run. ``--tf32`` also runs CUDA with
cuDNN's TF32 convolutions allowed (what the pipeline turns off; pipeline.full_float32).
Usage: python bench/cuda_agreement.py [--tf32]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch

from focusfuse import fuse_stack
from focusfuse.fusion import pipeline

STACK = Path(__file__).resolve().parent.parent / "examples" / "stack8"
STRATEGIES = ("calibrated", "calibrated-paper", "serial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf32", action="store_true", help="also run CUDA with TF32 convolutions allowed")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/cuda_agreement.py: no CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; {STACK}")
    modes = [("float32", pipeline.full_float32)] + ([("tf32", contextlib.nullcontext)] if args.tf32 else [])
    for strategy in STRATEGIES:
        on_cpu = fuse_stack([STACK], strategy=strategy, device="cpu", batch_size=4)
        for name, precision in modes:
            original = pipeline.full_float32
            pipeline.full_float32 = precision
            try:
                fuse_stack([STACK], strategy=strategy, device="cuda", batch_size=4)  # warm-up
                on_cuda = fuse_stack([STACK], strategy=strategy, device="cuda", batch_size=4)
            finally:
                pipeline.full_float32 = original
            agreement = float((on_cuda.index_map == on_cpu.index_map).mean())
            print(
                f"{strategy:<17} cuda {name:<8} agrees on {agreement:.5f} of pixels; "
                f"{on_cuda.timing['total_s']:.3f} s (cpu {on_cpu.timing['total_s']:.3f} s)"
            )


if __name__ == "__main__":
    main()
