#!/usr/bin/env python3
"""Initial-DM accuracy of the shipped weights on held-out synthetic pairs (BSDS500 test images).

One pair per test image, made by the training generator without rotation, so the
pairs are never seen in training (train + val images only). Accuracy counts textured
pixels: all-in-focus gradient magnitude (Sobel / 8) >= 0.02. Printed for aligned
pairs with realistic noise (the acceptance case), for pairs with B shifted by up to
2 px (the truth, aligned to A, is then ill-defined near borders) and for the full
training noise, beside a 7x7 Laplacian-energy max-select on the same pairs.
--score-sigma S pools the network's score with sigma S instead of the trained one
(an analysis of the weights, as in bench/pairs26.py).
Usage: python bench/synthetic_pairs.py [--data ../shared/data/bsds500] [--pairs 200] [--weights PATH]
       [--score-sigma S]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from focusfuse.model.weights import find_weights, load_model
from focusfuse.training.synthetic import TEXTURE_THRESHOLD, make_training_pair
from focusfuse.training.trainer import BORDER_MARGIN, VALIDATION_SETTINGS, evaluate_pairs, load_split

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bsds500"))
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--weights")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--score-sigma", type=float, help="Pool the network's score with this sigma instead of the trained one."
    )
    args = parser.parse_args()
    weights = find_weights(args.weights)
    model = load_model(weights)
    if args.score_sigma is not None:
        print(f"score pooled with sigma {args.score_sigma:g} (trained with {model.score_sigma:g})")
        model.score_sigma = args.score_sigma
    images = load_split(Path(args.data), "test")
    print(
        f"weights {weights}; {args.pairs} held-out pairs from {args.data}/test; texture: |grad| >= {TEXTURE_THRESHOLD}"
    )
    cases = (
        ("aligned, noise std <= 0.02", 0.02, 0),
        ("shifted <= 2 px, noise <= 0.02", 0.02, 2),
        ("aligned, noise std <= 0.1", 0.1, 0),
    )
    for label, noise, shift in cases:
        settings = replace(VALIDATION_SETTINGS, noise_max=noise, max_shift=shift)
        rng = np.random.default_rng([args.seed, 104729])
        pairs = [make_training_pair(*images[i % len(images)], rng, settings) for i in range(args.pairs)]
        metrics = evaluate_pairs(model, pairs, torch.device("cpu"))
        print(
            f"{label:>32}: network {metrics['accuracy_textured']:.4f} textured "
            f"({metrics['accuracy_textured_interior']:.4f} >= {BORDER_MARGIN} px from borders), "
            f"{metrics['accuracy_all']:.4f} all pixels; "
            f"Laplacian max-select {metrics['laplacian_accuracy_textured']:.4f} textured; "
            f"Qg (loss form) {metrics['qg']:.4f}"
        )


if __name__ == "__main__":
    main()
