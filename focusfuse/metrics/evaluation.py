"""Judging fused results: the six metrics over one triple or a folder of pairs.

The pairs layout is the one of the paper's test set: ``NAME_1.EXT`` and
``NAME_2.EXT`` are the sources, the fused result is found in another folder by a
pattern (``{name}.png`` unless told). Pairs are evaluated in parallel processes,
one per core, and come back in name order.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.reader import natural_key, read_image
from focusfuse.metrics import METRIC_NAMES, evaluate_fusion, feature_mi

SOURCE_PATTERN = re.compile(r"^(?P<name>.+)_(?P<index>[12])\.(?P<ext>png|tif|tiff|jpg|jpeg|bmp)$", re.IGNORECASE)
DEFAULT_FUSED_PATTERN = "{name}.png"

# Table 1 of Ma et al. 2022 (26 pairs): the GACN row and, per metric, the best of the 22 methods.
PAPER_GACN = {"Qg": 0.7169, "Qy": 0.97769, "Qncie": 0.8411, "Qcb": 0.7948, "FMI_EDGE": 0.897806, "FMI_DCT": 0.4058}
PAPER_BEST = {
    "Qg": (0.7169, "GACN"),
    "Qy": (0.97769, "GACN"),
    "Qncie": (0.8411, "GACN"),
    "Qcb": (0.7965, "SESF-Fuse"),
    "FMI_EDGE": (0.898504, "MWG"),
    "FMI_DCT": (0.4145, "SF"),
}


@dataclass(frozen=True)
class FusedPair:
    """One test pair and the fused result to judge."""

    name: str
    source_a: Path
    source_b: Path
    fused: Path


def _same_kind(images: list[np.ndarray], paths: list[Path]) -> None:
    """Validate once at the edge: equal sizes, and all gray or all colour."""
    first = images[0]
    for image, path in zip(images[1:], paths[1:], strict=True):
        if image.shape[:2] != first.shape[:2]:
            raise FocusFuseError(
                f"{path}: size {image.shape[1]}x{image.shape[0]} differs from {paths[0]} "
                f"({first.shape[1]}x{first.shape[0]})"
            )
        if (image.ndim == 3) != (first.ndim == 3):
            raise FocusFuseError(
                f"{path}: {'colour' if image.ndim == 3 else 'gray'} but {paths[0]} is "
                f"{'colour' if first.ndim == 3 else 'gray'}; the metrics compare like with like"
            )


def evaluate_files(
    source_a: str | os.PathLike, source_b: str | os.PathLike, fused: str | os.PathLike
) -> dict[str, float]:
    """The six metrics of a fused image file against two source files."""
    paths = [Path(source_a), Path(source_b), Path(fused)]
    images = [read_image(path) for path in paths]
    _same_kind(images, paths)
    return evaluate_fusion(*images)


def find_pairs(
    pairs_dir: str | os.PathLike, fused_dir: str | os.PathLike, pattern: str = DEFAULT_FUSED_PATTERN
) -> list[FusedPair]:
    """Every ``NAME_1``/``NAME_2`` pair in ``pairs_dir`` with its fused result ``fused_dir/pattern``.

    Raises:
        FocusFuseError: no pairs, a pair missing a half, or a missing fused result.
    """
    pairs_dir, fused_dir = Path(pairs_dir), Path(fused_dir)
    if not pairs_dir.is_dir():
        raise FocusFuseError(f"{pairs_dir}: not a directory")
    if not fused_dir.is_dir():
        raise FocusFuseError(f"{fused_dir}: not a directory")
    if "{name}" not in pattern:
        raise FocusFuseError(f"{pattern}: the fused-name pattern must contain {{name}}")
    halves: dict[str, dict[str, Path]] = {}
    for path in pairs_dir.iterdir():
        match = SOURCE_PATTERN.match(path.name)
        if match and path.is_file():
            halves.setdefault(match["name"], {})[match["index"]] = path
    if not halves:
        raise FocusFuseError(f"{pairs_dir}: no NAME_1 / NAME_2 source images")
    pairs = []
    for name in sorted(halves, key=natural_key):
        found = halves[name]
        if set(found) != {"1", "2"}:
            missing = "2" if "1" in found else "1"
            raise FocusFuseError(f"{next(iter(found.values()))}: its partner {name}_{missing}.* is missing")
        fused = fused_dir / pattern.format(name=name)
        if not fused.is_file():
            raise FocusFuseError(f"{fused}: no fused result for pair {name}")
        pairs.append(FusedPair(name, found["1"], found["2"], fused))
    return pairs


def _evaluate_pair(pair: FusedPair) -> dict[str, float]:
    return evaluate_files(pair.source_a, pair.source_b, pair.fused)


def evaluate_pairs(pairs: list[FusedPair], *, workers: int | None = None) -> list[dict[str, float]]:
    """The six metrics for each pair, in the order given, over ``workers`` processes (default: all cores)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(pairs)))
    if workers == 1:
        return [_evaluate_pair(pair) for pair in pairs]
    # One pair per process already fills the cores: FMI's window blocks stay on one thread there.
    with ProcessPoolExecutor(max_workers=workers, initializer=feature_mi.set_threads, initargs=(1,)) as pool:
        return list(pool.map(_evaluate_pair, pairs))


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([row[name] for row in rows])) for name in METRIC_NAMES}


def format_table(names: list[str], rows: list[dict[str, float]], *, compare_paper: bool = False) -> str:
    """Plain-text table: one row per pair, the means, and optionally the paper's Table 1 rows."""
    width = max([len(name) for name in names] + [len("paper best (method)")])
    header = f"{'pair':<{width}}  " + "  ".join(f"{name:>9}" for name in METRIC_NAMES)
    lines = [header, "-" * len(header)]
    for name, row in zip(names, rows, strict=True):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[metric]:>9.6f}" for metric in METRIC_NAMES))
    lines.append("-" * len(header))
    means = mean_scores(rows)
    lines.append(
        f"{f'mean ({len(rows)} pairs)':<{width}}  " + "  ".join(f"{means[metric]:>9.6f}" for metric in METRIC_NAMES)
    )
    if compare_paper:
        lines.append(f"{'paper GACN':<{width}}  " + "  ".join(f"{PAPER_GACN[metric]:>9.6f}" for metric in METRIC_NAMES))
        lines.append(
            f"{'paper best':<{width}}  " + "  ".join(f"{PAPER_BEST[metric][0]:>9.6f}" for metric in METRIC_NAMES)
        )
        lines.append(f"{'(method)':<{width}}  " + "  ".join(f"{PAPER_BEST[metric][1]:>9}" for metric in METRIC_NAMES))
        lines.append(
            f"{'mean >= GACN':<{width}}  "
            + "  ".join(f"{'yes' if means[metric] >= PAPER_GACN[metric] else 'no':>9}" for metric in METRIC_NAMES)
        )
    return "\n".join(lines)


def evaluation_record(pairs: list[FusedPair], rows: list[dict[str, float]], *, compare_paper: bool = False) -> dict:
    """The JSON form of an evaluation: per-pair values with their files, and the means."""
    record = {
        "metrics": list(METRIC_NAMES),
        "pairs": [
            {
                "name": pair.name,
                "source_a": str(pair.source_a),
                "source_b": str(pair.source_b),
                "fused": str(pair.fused),
                **row,
            }
            for pair, row in zip(pairs, rows, strict=True)
        ],
        "mean": mean_scores(rows),
    }
    if compare_paper:
        record["paper"] = {
            "GACN": PAPER_GACN,
            "best": {metric: {"value": value, "method": method} for metric, (value, method) in PAPER_BEST.items()},
        }
    return record
