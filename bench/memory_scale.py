#!/usr/bin/env python3
"""Peak memory of `focusfuse stack` at scale, against the number of slices, under one budget.

The same synthetic scene (bench/multislice.py's generator, noise std 0.01, the stacks
of bench/scale.py) in each number of slices, fused by the CLI in a fresh process with
its defaults and ``--max-memory``; the child's peak resident memory (getrusage), its
seconds, and the memory plan from the timing report (tiles, estimated peak).
Usage: python bench/memory_scale.py [--width 2000] [--height 1500] [--slices 16 64] [--max-memory 2G]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_rss_mib
from multislice import write_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--slices", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--max-memory", default="2G")
    args = parser.parse_args()
    focusfuse = str(Path(sys.executable).parent / "focusfuse")
    print(f"`focusfuse stack --max-memory {args.max_memory}` on {args.width}x{args.height} gray slices, device cpu")
    peaks = []
    with tempfile.TemporaryDirectory() as scratch:
        for n_slices in args.slices:
            folder = Path(scratch) / f"n{n_slices}"
            write_case(folder, args.height, n_slices, "noise", 0, width=args.width)
            output = Path(scratch) / f"fused{n_slices}.png"
            command = [focusfuse, "stack", str(folder), "-o", str(output), "--device", "cpu", "--quiet",
                       "--max-memory", args.max_memory]  # fmt: skip
            started = time.perf_counter()
            peak = peak_rss_mib(command)
            seconds = time.perf_counter() - started
            plan = json.loads(output.with_suffix(".timing.json").read_text())["memory_plan"]
            peaks.append(peak)
            planned = plan["estimated_peak_bytes"] / 2**20
            print(
                f"N={n_slices:>3}  {seconds:6.1f} s  peak {peak:6.0f} MiB  planned {planned:6.0f} MiB"
                f"  tiles {plan['tiles']:>2}  decoded slices in {plan['decoded_slices']}"
            )
    if len(peaks) > 1:
        print(f"largest peak / smallest: {max(peaks) / min(peaks):.3f}")


if __name__ == "__main__":
    main()
