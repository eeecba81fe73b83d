#!/usr/bin/env python3
"""N-slice strategies on synthetic stacks with known depth: PSNR, oracle, index accuracy, time.

Each stack is a procedural texture with flat discs (regions with no focus cue), a
smooth random depth surface and Gaussian defocus growing 1.5 px per slice from it
(`focusfuse.training.synthetic.make_depth_stack`), written as PNGs and fused by `fuse_stack`.
Cases: N = 5, 10, 20 slices, each clean, with noise (std 0.01 of full range) and
with a 10% brightness drift from the first slice to the last. Printed per strategy
(`calibrated select`: the default with every pixel copied from its slice, no pyramid
blend; `calibrated no-fill`: the default without filling flat regions from their rims;
`calibrated dp-adj`: the default with the decision path also choosing between
adjacent slices; `calibrated 1/dp`: the default without its feature-sharpness
pre-selection, one decision path per slice; `calibrated 3/dp`: pre-selection among
three slices instead of four): PSNR of the fused image against the all-in-focus
truth, index accuracy (exact and within one slice) and seconds per slice (the timing
report's per-slice times: reading, features, decisions, assembling, filling; median
of --repeats rounds that run every strategy in turn, after one untimed round); the
oracle row takes, at every pixel, the
slice nearest to the true depth; the Laplacian row takes the slice with the highest
7x7 Laplacian energy. With --peers, enfuse (focus flags, --hard-mask) and focus-stack
(its defaults) fuse the same PNGs, when installed ($FOCUS_STACK or the PATH for
focus-stack), and their PSNR against the truth is printed. --rows keeps only the named
strategy rows (comma-separated labels, e.g. calibrated).
Usage: python bench/multislice.py [--size 256] [--slices 5,10,20] [--seed 0] [--repeats 5]
       [--rows calibrated] [--peers]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.color import to_gray
from focusfuse.io.writer import write_image
from focusfuse.training.baselines import laplacian_energy
from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth

# (row label, strategy, fuse_stack options that differ from the default).
STRATEGY_ROWS = (
    ("calibrated", "calibrated", {}),
    ("calibrated select", "calibrated", {"composite": "select"}),
    ("calibrated no-fill", "calibrated", {"fill_flat": False}),
    ("calibrated dp-adj", "calibrated", {"adjacent_by_sharpness": False}),
    ("calibrated 3/dp", "calibrated", {"slices_per_decision": 3}),
    ("calibrated 1/dp", "calibrated", {"slices_per_decision": 1}),
    ("calibrated-paper", "calibrated-paper", {}),
    ("serial", "serial", {}),
)


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    error = np.mean((image.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-12)))


def textured_with_flat_discs(size: int, rng: np.random.Generator, width: int | None = None) -> np.ndarray:
    """uint8 texture (``size`` x ``width``, square by default) with a few constant discs:
    regions where no slice is sharper."""
    width = width or size
    texture = procedural_texture(size, width, rng)
    yy, xx = np.mgrid[0:size, 0:width]
    for _ in range(3):
        (cy, cx), radius = rng.uniform(0.15, 0.85, 2) * (size, width), rng.uniform(0.06, 0.12) * min(size, width)
        texture[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.uniform(0.2, 0.8)
    return np.rint(texture * 255).astype(np.uint8)


def pick(slices: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(np.stack(slices), index[None].astype(np.int64), 0)[0]


def write_case(folder: Path, size: int, n_slices: int, variant: str, seed: int, width: int | None = None):
    """One benchmark stack (``size`` x ``width``, square by default) written as PNGs into a new
    ``folder``: (sharp image, SyntheticStack)."""
    rng = np.random.default_rng([seed, n_slices])
    sharp = textured_with_flat_discs(size, rng, width)
    depth = smooth_depth(size, width or size, n_slices, rng)
    stack = make_depth_stack(
        sharp,
        depth,
        n_slices,
        noise_sigma=0.01 if variant.startswith("noise") else 0.0,
        brightness_drift=0.1 if variant.startswith("drift") else 0.0,
        rng=rng,
    )
    folder.mkdir()
    for k, image in enumerate(stack.slices, start=1):
        write_image(folder / f"z{k:02d}.png", image)
    return sharp, stack


VARIANTS = ("clean", "noise 0.01", "drift 10%")


def written_cases(scratch: Path, size: int, slices: str, seed: int):
    """Every benchmark stack, N from ``slices`` ("5,10,20") x ``VARIANTS``, written under ``scratch``:
    (n_slices, variant, folder, sharp image, SyntheticStack) each."""
    for n_slices in (int(v) for v in slices.split(",") if v):
        for variant in VARIANTS:
            folder = scratch / f"n{n_slices}-{variant.split()[0]}"
            sharp, stack = write_case(folder, size, n_slices, variant, seed)
            yield n_slices, variant, folder, sharp, stack


def report(
    label: str, fused: np.ndarray, index: np.ndarray, truth_index: np.ndarray, sharp: np.ndarray, seconds: float | None
) -> str:
    exact = float((index == truth_index).mean())
    near = float((np.abs(index.astype(int) - truth_index.astype(int)) <= 1).mean())
    timing = f"{seconds:7.3f} s/slice" if seconds is not None else " " * 13
    return (
        f"  {label:<18} PSNR {psnr(fused, sharp):6.2f} dB   index exact {exact:.3f}, within one {near:.3f}   {timing}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--slices", default="5,10,20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=5, help="Timed rounds of every strategy; the median time is printed."
    )
    parser.add_argument("--rows", default=None, help="only these strategy rows (labels, comma-separated)")
    parser.add_argument("--peers", action="store_true", help="also enfuse and focus-stack, PSNR only")
    args = parser.parse_args()
    rows = STRATEGY_ROWS
    if args.rows:
        wanted = args.rows.split(",")
        rows = tuple(row for row in STRATEGY_ROWS if row[0] in wanted)
    with tempfile.TemporaryDirectory() as scratch:
        for n_slices, variant, folder, sharp, stack in written_cases(Path(scratch), args.size, args.slices, args.seed):
            print(f"N={n_slices} {args.size}x{args.size}, {variant}:")
            print(
                report(
                    "oracle", pick(stack.slices, stack.truth_index), stack.truth_index, stack.truth_index, sharp, None
                )
            )
            energies = np.stack([laplacian_energy(to_gray(s)) for s in stack.slices])
            laplacian_index = np.argmax(energies, axis=0)
            print(
                report(
                    "laplacian", pick(stack.slices, laplacian_index), laplacian_index, stack.truth_index, sharp, None
                )
            )
            if args.peers:
                from peers import run_peer  # peers imports this module

                for tool in ("enfuse", "focus-stack"):
                    fused = run_peer(tool, sorted(folder.iterdir()), Path(scratch) / f"{tool}.png")
                    if isinstance(fused, str):
                        print(f"  {tool:<18} skipped: {fused}")
                    else:
                        gray = to_gray(fused) * 255 if fused.ndim == 3 else fused
                        print(f"  {tool:<18} PSNR {psnr(np.rint(gray), sharp):6.2f} dB")
            seconds: dict[str, list[float]] = {label: [] for label, _, _ in rows}
            results = {}
            # Rounds of every strategy in turn, so a drift in the machine's speed falls on
            # all rows alike; round 0 warms allocators and caches and is not timed.
            for round_number in range(args.repeats + 1):
                for label, strategy, options in rows:
                    results[label] = fuse_stack([folder], strategy=strategy, device="cpu", **options)
                    if round_number:  # reading to filling; loading the weights excluded
                        seconds[label].append(sum(results[label].timing["per_slice_s"]) / n_slices)
            for label, _, _ in rows:
                result = results[label]
                print(
                    report(
                        label,
                        result.fused,
                        result.index_map,
                        stack.truth_index,
                        sharp,
                        statistics.median(seconds[label]),
                    )
                )
            if "calibrated" in seconds and "serial" in seconds:
                calibrated_ratio = statistics.median(seconds["calibrated"]) / statistics.median(seconds["serial"])
                print(f"  time per slice / serial's: calibrated {calibrated_ratio:.2f}")


if __name__ == "__main__":
    main()
