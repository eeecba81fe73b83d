#!/usr/bin/env python3
"""Seconds for the six fusion metrics on one 520x520 pair (the bundled Lytro pair, averaged).

Prints the best of --repeats runs per metric and for all six together, single process.
Usage: python bench/metrics_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from focusfuse.io.reader import read_image
from focusfuse.metrics import METRICS, prepare_image

PAIR = Path(__file__).resolve().parent.parent / "examples" / "pair"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    source_a, source_b = read_image(PAIR / "lytro_01_1.png"), read_image(PAIR / "lytro_01_2.png")
    fused = ((source_a.astype(np.uint16) + source_b + 1) // 2).astype(np.uint8)
    print(
        f"{source_a.shape[1]}x{source_a.shape[0]} colour pair, fused = average; "
        f"{os.cpu_count()} cores; best of {args.repeats}"
    )
    total_best = float("inf")
    per_metric = {name: float("inf") for name in METRICS}
    for _ in range(args.repeats):
        started = time.perf_counter()
        prepared = [prepare_image(image) for image in (source_a, source_b, fused)]
        for name, metric in METRICS.items():
            metric_started = time.perf_counter()
            metric(*prepared)
            per_metric[name] = min(per_metric[name], time.perf_counter() - metric_started)
        total_best = min(total_best, time.perf_counter() - started)
    print("  ".join(f"{name} {seconds:.3f} s" for name, seconds in per_metric.items()))
    print(f"all six (with preparation): {total_best:.3f} s per pair")


if __name__ == "__main__":
    main()
