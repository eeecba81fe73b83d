#!/usr/bin/env python3
"""The paper's 26 test pairs: fuse them by each method, then judge with the six metrics.

Methods (no parameter tuned per image):
- network:          `focusfuse stack A B` through the library (final decision map p);
- network-initial:  the same network's initial map p0 (no boundary band, no guided filter);
- laplacian:        7x7 Laplacian-energy max-select;
- laplacian-guided: the same decision refined by the band + guided filter the network uses;
- average:          (A + B) / 2.
Prints one row of 26-pair means per method beside the paper's Table 1 rows and writes
every fused image under OUT/<method>/NAME.png and the values to OUT/summary.json.
--swap fuses (NAME_2, NAME_1) instead of (NAME_1, NAME_2): the metrics are symmetric
in the sources, so any change is the method's dependence on input order.
--score-sigma S runs the network with its score pooled over a Gaussian of sigma S
instead of the sigma it was trained with (an analysis of the weights, not a setting
of focusfuse): the weights are re-saved with that sigma as OUT/weights-sigma-S.pt and
fused through `fuse_stack` like any other weights file.
Usage: python bench/pairs26.py [--pairs ../shared/data/pairs26] [--out out/pairs26]
       [--weights PATH] [--methods network,average,...] [--workers N] [--swap]
       [--score-sigma S]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.color import cast_like, to_gray
from focusfuse.io.reader import natural_key, read_image
from focusfuse.io.writer import write_image
from focusfuse.metrics import METRIC_NAMES
from focusfuse.metrics.evaluation import PAPER_BEST, PAPER_GACN, SOURCE_PATTERN, evaluate_pairs, find_pairs, mean_scores
from focusfuse.model.refinement import refine_decision_map
from focusfuse.model.weights import find_weights, load_model, save_weights
from focusfuse.training.baselines import laplacian_select_pair

REPO = Path(__file__).resolve().parent.parent
METHODS = ("network", "network-initial", "laplacian", "laplacian-guided", "average")


def blend(weight: np.ndarray, source_a: np.ndarray, source_b: np.ndarray) -> np.ndarray:
    """p A + (1 - p) B in the sources' dtype."""
    if source_a.ndim == 3:
        weight = weight[:, :, None]
    return cast_like(
        weight * source_a.astype(np.float32) + (1.0 - weight) * source_b.astype(np.float32), source_a.dtype
    )


def gray_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_gray(image)[None, None])


def decision_map(method: str, model, source_a: np.ndarray, source_b: np.ndarray) -> np.ndarray:
    """Weight of A per pixel for the non-pipeline methods."""
    gray_a, gray_b = gray_tensor(source_a), gray_tensor(source_b)
    if method == "average":
        return np.full(source_a.shape[:2], 0.5, np.float32)
    if method.startswith("laplacian"):
        selected = torch.from_numpy(laplacian_select_pair(to_gray(source_a), to_gray(source_b))[None, None])
        if method == "laplacian":
            return selected[0, 0].numpy()
        return refine_decision_map(selected, gray_a, gray_b)[0, 0].numpy()
    with torch.inference_mode():
        energies = model.activity(torch.cat((gray_a, gray_b), 0))
        return model.decide(energies[0:1], energies[1:2], gray_a, gray_b).initial_map[0, 0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=str(REPO.parent / "shared" / "data" / "pairs26"))
    parser.add_argument("--out", default=str(REPO / "out" / "pairs26"))
    parser.add_argument("--weights")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workers", type=int)
    parser.add_argument("--swap", action="store_true", help="Fuse NAME_2 with NAME_1 (input order reversed).")
    parser.add_argument(
        "--score-sigma", type=float, help="Pool the network's score with this sigma instead of the trained one."
    )
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    pairs_dir, out = Path(args.pairs), Path(args.out)
    weights = find_weights(args.weights)
    model = load_model(weights)
    if args.score_sigma is not None:
        trained_sigma, model.score_sigma = model.score_sigma, args.score_sigma
        payload = torch.load(weights, map_location="cpu", weights_only=True)
        weights = out / f"weights-sigma-{args.score_sigma:g}.pt"
        save_weights(model, weights, {**payload["metadata"], "score_sigma_trained": trained_sigma})
        print(f"score pooled with sigma {args.score_sigma:g} (trained with {trained_sigma:g})")
    names = sorted(
        {SOURCE_PATTERN.match(p.name)["name"] for p in pairs_dir.iterdir() if SOURCE_PATTERN.match(p.name)},
        key=natural_key,
    )
    print(
        f"{len(names)} pairs from {pairs_dir}; weights {weights}"
        + ("; fused in reversed order (NAME_2, NAME_1)" if args.swap else "")
    )
    summary = {"pairs": str(pairs_dir), "weights": str(weights), "swapped": args.swap, "methods": {}}
    for method in methods:
        folder = out / method
        folder.mkdir(parents=True, exist_ok=True)
        seconds = []
        for name in names:
            path_a, path_b = (next(pairs_dir.glob(f"{name}_{i}.*")) for i in ((2, 1) if args.swap else (1, 2)))
            target = folder / f"{name}.png"
            started = time.perf_counter()
            if method == "network":
                fuse_stack(
                    [path_a, path_b],
                    output=target,
                    index_map_path=folder / f"{name}.index.png",
                    timing_path=folder / f"{name}.timing.json",
                    weights=weights,
                    device="cpu",
                )
            else:
                source_a, source_b = read_image(path_a), read_image(path_b)
                write_image(target, blend(decision_map(method, model, source_a, source_b), source_a, source_b))
            seconds.append(time.perf_counter() - started)
        rows = evaluate_pairs(find_pairs(pairs_dir, folder), workers=args.workers)
        means = mean_scores(rows)
        summary["methods"][method] = {
            "mean": means,
            "seconds_per_pair": float(np.mean(seconds)),
            "pairs": dict(zip(names, rows, strict=True)),
        }
    header = f"{'method':<18}" + "".join(f"{name:>10}" for name in METRIC_NAMES) + f"{'s/pair':>9}"
    print(header)
    for method, result in summary["methods"].items():
        print(
            f"{method:<18}"
            + "".join(f"{result['mean'][name]:>10.6f}" for name in METRIC_NAMES)
            + f"{result['seconds_per_pair']:>9.3f}"
        )
    print(f"{'paper GACN':<18}" + "".join(f"{PAPER_GACN[name]:>10.6f}" for name in METRIC_NAMES))
    print(f"{'paper best':<18}" + "".join(f"{PAPER_BEST[name][0]:>10.6f}" for name in METRIC_NAMES))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
