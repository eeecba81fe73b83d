#!/usr/bin/env python3
"""Seams by compositing mode: spurious-edge ratio, seam_px and edge_kept, with enfuse beside.

Stacks: synthetic 10-slice stacks with known depth (bench/multislice.py's texture with
flat discs; a smooth depth surface with a raised plateau, so there are depth edges
where a blurred near layer spreads over the far one), rendered with the nuisances of
real acquisitions added per slice: brightness flicker (gain within +-3%), a vignetting
that changes with focus (up to 12% darker corners by the last slice), sub-pixel jitter
(up to 0.3 px in x and y) and sensor noise (std 0.01); the same stack without
nuisances; and ../shared/data/stacks/pcb10 (real, no truth). Each stack is fused once
by ``fuse_stack`` with the ``pyramid`` default and ``--align none`` (the measures compare
the result with the slices as read, whose frame an aligned result is not in; pcb10 moves,
so the default would align it); ``select`` is the same index map with
every pixel copied from its slice (what ``--composite select`` writes), and once more
with ``--speed fast``. Printed per mode: the three seam measures
(focusfuse/metrics/seams.py), PSNR against the all-in-focus truth on the synthetic
stacks, and for pyramid the compositing time as a share of the whole fusion (the
timing report's ``composite`` stage, which includes reading the used slices a second
time). enfuse (focus
flags, --hard-mask) runs on the same files when installed, focus-stack when
$FOCUS_STACK or the PATH has it.
Usage: python bench/seams.py [--stacks nuisance,clean,pcb10] [--size 512] [--seed 0] [--levels 7]
(``--stacks`` also takes any other folder of ../shared/data/stacks, e.g. plankton5.)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from multislice import psnr, textured_with_flat_discs
from peers import REAL_STACKS, run_peer

from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.color import to_gray
from focusfuse.io.reader import open_stack, read_image
from focusfuse.io.writer import write_image
from focusfuse.metrics.seams import SeamMeter
from focusfuse.training.synthetic import make_depth_stack, smooth_depth

REPO = Path(__file__).resolve().parent.parent
N_SLICES = 10


def depth_with_plateau(size: int, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth depth with a disc raised by a third of the stack: sharp depth edges around it."""
    depth = smooth_depth(size, size, n_slices, rng)
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    plateau = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.2 * size) ** 2
    depth[plateau] = np.clip(depth[plateau] + n_slices / 3, 0, n_slices - 1)
    return depth


def add_nuisances(slices: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Flicker, a vignetting that grows with focus, sub-pixel jitter and noise, per slice (uint8)."""
    height, width = slices[0].shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius2 = ((yy - height / 2) ** 2 + (xx - width / 2) ** 2) / ((height / 2) ** 2 + (width / 2) ** 2)
    out = []
    for k, image in enumerate(slices):
        value = image.astype(np.float32) / 255.0
        value *= 1.0 + rng.uniform(-0.03, 0.03)
        value *= 1.0 - 0.12 * (k / max(len(slices) - 1, 1)) * radius2
        shift = np.float32([[1, 0, rng.uniform(-0.3, 0.3)], [0, 1, rng.uniform(-0.3, 0.3)]])
        value = cv2.warpAffine(value, shift, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        value += rng.normal(0.0, 0.01, value.shape).astype(np.float32)
        out.append(np.rint(np.clip(value, 0.0, 1.0) * 255).astype(np.uint8))
    return out


def synthetic_stack(folder: Path, size: int, seed: int, nuisances: bool) -> tuple[list[Path], np.ndarray]:
    """The slices written as PNGs into ``folder``, and the all-in-focus truth."""
    rng = np.random.default_rng([seed, 19])
    sharp = textured_with_flat_discs(size, rng)
    stack = make_depth_stack(sharp, depth_with_plateau(size, N_SLICES, rng), N_SLICES, rng=rng)
    slices = add_nuisances(stack.slices, rng) if nuisances else stack.slices
    folder.mkdir(parents=True)
    paths = []
    for k, image in enumerate(slices, start=1):
        paths.append(folder / f"z{k:02d}.png")
        write_image(paths[-1], image)
    return paths, sharp


def peer_outputs(files: list[Path], scratch: Path) -> dict[str, np.ndarray | str]:
    """enfuse's and focus-stack's fused images, or why there is none."""
    return {tool: run_peer(tool, files, scratch / f"{tool}.png") for tool in ("enfuse", "focus-stack")}


def select(slices: list[np.ndarray], index_map: np.ndarray) -> np.ndarray:
    """Every pixel from its slice: what ``--composite select`` writes."""
    fused = slices[0].copy()
    for j in range(1, len(slices)):
        chosen = index_map == j
        fused[chosen] = slices[j][chosen]
    return fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default="nuisance,clean,pcb10")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, default=None, help="pyramid levels (default: the shipped default)")
    args = parser.parse_args()
    options: dict = {"align": "none"} if args.levels is None else {"align": "none", "pyramid_levels": args.levels}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for name in args.stacks.split(","):
            truth = None
            if name in ("nuisance", "clean"):
                label = f"synthetic {name} {N_SLICES}x{args.size}x{args.size}"
                files, truth = synthetic_stack(scratch / name, args.size, args.seed, name == "nuisance")
            else:
                folder = REAL_STACKS / name
                if not folder.is_dir():
                    print(f"{name}: skipped, {folder} not found")
                    continue
                files = [Path(p) for p in open_stack([folder]).paths]
                label = f"{name} ({len(files)} slices)"
            slices = [read_image(f) for f in files]
            meter = SeamMeter()
            for image in slices:
                meter.add_slice(image)
            result = fuse_stack(files, device="cpu", **options)
            stages = result.timing["stages_s"]
            selected = select(slices, result.index_map)
            fused_by_mode: dict[str, np.ndarray | str] = {"select": selected, "pyramid": result.fused}
            fused_by_mode["--speed fast"] = fuse_stack(files, device="cpu", speed="fast", **options).fused
            fused_by_mode.update(peer_outputs(files, scratch))
            print(
                f"{label}: fusion {result.timing['total_s']:.2f} s, compositing {stages['composite']:.2f} s "
                f"({stages['composite'] / result.timing['total_s']:.1%}), levels {result.timing['pyramid_levels']}"
            )
            for mode, fused in fused_by_mode.items():
                if isinstance(fused, str):
                    print(f"  {mode:<12} skipped: {fused}")
                    continue
                quality = ""
                if truth is not None:
                    quality = f"  PSNR {psnr(np.rint(to_gray(fused) * 255), truth):6.2f} dB"
                print(f"  {mode:<12} {meter.score(fused).row()}{quality}")
            del slices


if __name__ == "__main__":
    main()
