#!/usr/bin/env python3
"""Peak memory of `focusfuse stack` against the number of slices (calibrated and serial).

Each case runs the installed CLI in a fresh process on a synthetic stack of 512x512
RGB slices written as PNGs, and reads the child's peak resident memory. A streaming
strategy shows the same peak for 4, 8 and 16 slices.
Usage: python bench/memory.py [--size 512] [--slices 4 8 16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from focusfuse.io.writer import write_image
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth


def peak_rss_mib(command: list[str]) -> float:
    """Run a command to completion and return the peak RSS of the process, MiB."""
    script = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    completed = subprocess.run([sys.executable, "-c", script, *command], check=True, capture_output=True, text=True)
    return int(completed.stdout.strip()) / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    focusfuse = str(Path(sys.executable).parent / "focusfuse")
    rng = np.random.default_rng(0)
    texture = procedural_texture(args.size, args.size, rng)
    sharp = (np.dstack([texture, texture[::-1], texture[:, ::-1]]) * 255).astype(np.uint8)
    print(f"peak resident memory of `focusfuse stack` on {args.size}x{args.size} RGB slices")
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.slices:
            stack_dir = Path(scratch) / f"n{n}"
            stack_dir.mkdir()
            stack = make_depth_stack(sharp, smooth_depth(args.size, args.size, n, rng), n)
            for k, image in enumerate(stack.slices, start=1):
                write_image(stack_dir / f"z{k}.png", image)
            row = [f"N={n:>3}"]
            for strategy in ("calibrated", "calibrated-paper", "serial"):
                command = [
                    focusfuse,
                    "stack",
                    str(stack_dir),
                    "-o",
                    str(Path(scratch) / "f.png"),
                    "--strategy",
                    strategy,
                    "--quiet",
                    "--device",
                    "cpu",
                ]
                row.append(f"{strategy} {peak_rss_mib(command):7.0f} MiB")
            print("  ".join(row))


if __name__ == "__main__":
    main()
