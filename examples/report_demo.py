#!/usr/bin/env python3
"""Print what `make demo` wrote, and how the 8-slice index maps compare with their truth.

Usage: python examples/report_demo.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent


def main(out_dir: Path) -> None:
    for name in ("pair", "stack8", "stack8-serial"):
        timing = json.loads((out_dir / f"{name}.timing.json").read_text())
        print(
            f"{name}: {timing['n_slices']} slices {timing['width']}x{timing['height']}, {timing['strategy']} on "
            f"{timing['device']}, {timing['total_s']:.2f} s"
        )
        for kind, path in timing["outputs"].items():
            print(f"  {kind:>9}: {path}")
    truth = cv2.imread(str(HERE / "stack8_truth" / "index.png"), cv2.IMREAD_UNCHANGED)
    for name in ("stack8", "stack8-serial"):
        index = cv2.imread(str(out_dir / f"{name}.index.png"), cv2.IMREAD_UNCHANGED)
        exact = float((index == truth).mean())
        near = float((np.abs(index.astype(int) - truth) <= 1).mean())
        print(f"{name} index map vs truth: {exact:.3f} exact, {near:.3f} within one slice")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
