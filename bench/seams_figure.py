#!/usr/bin/env python3
"""README picture: the same crop fused with --composite select, with the pyramid default, and by enfuse.

Row 1: a 100% crop of ../shared/data/stacks/pcb10 (the SW1 lettering and the button's
edge). Row 2: a crop of bench/seams.py's synthetic stack with acquisition nuisances
(seed 0). Each stack is fused whole by ``fuse_stack`` (pyramid); ``select`` is the
same index map with every pixel copied from its slice; enfuse runs with its
focus-stacking flags when installed. Prints the seam measures of each crop.
Usage: python bench/seams_figure.py [--out docs/figures/seams.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from multislice_figure import GAP, panel
from peers import REAL_STACKS, run_peer
from seams import select, synthetic_stack

from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.reader import open_stack, read_image
from focusfuse.io.writer import write_image
from focusfuse.metrics.seams import seam_scores

REPO = Path(__file__).resolve().parent.parent


def row(files: list[Path], window: tuple[slice, slice], label: str, scratch: Path) -> np.ndarray:
    slices = [read_image(f) for f in files]
    result = fuse_stack(files, device="cpu")
    images = {"--composite select": select(slices, result.index_map), "pyramid (default)": result.fused}
    enfuse = run_peer("enfuse", files, scratch / "enfuse.png")
    if not isinstance(enfuse, str):
        images["enfuse --hard-mask"] = enfuse
    tiles = []
    for name, image in images.items():
        crop = np.ascontiguousarray(image[window])
        scores = seam_scores([s[window] for s in slices], crop)
        print(f"{label} {name}: {scores.row()}")
        tiles.append(panel(crop, f"{label}: {name}"))
    spacer = np.full((tiles[0].shape[0], GAP, 3), 255, np.uint8)
    return np.hstack([part for tile in tiles for part in (tile, spacer)][:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "seams.png")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        pcb = REAL_STACKS / "pcb10"
        if pcb.is_dir():
            files = [Path(p) for p in open_stack([pcb]).paths]
            rows.append(row(files, (slice(130, 430), slice(880, 1280)), "pcb10", scratch))
        files, _ = synthetic_stack(scratch / "nuisance", 512, 0, nuisances=True)
        rows.append(row(files, (slice(106, 406), slice(56, 456)), "synthetic", scratch))
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    figure = np.vstack(padded)[:-GAP]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.out, figure)
    print(f"{args.out}: {figure.shape[1]}x{figure.shape[0]}")


if __name__ == "__main__":
    main()
