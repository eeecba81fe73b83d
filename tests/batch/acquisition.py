"""A small acquisition tree as a microscope leaves one: nested stack folders, a multipage TIFF, strays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile

from conftest import step_depth_stack

FOLDER_STACKS = ("day1/pos1", "day1/pos2", "day2/sampleA/pos1")
TIFF_STACK = "day2/stack"


def write_folder_stack(folder: Path, seed: int, n_slices: int = 3, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    stack = step_depth_stack(n_slices=n_slices, size=size, seed=seed)
    paths = []
    for number, image in enumerate(stack.slices):
        path = folder / f"z{number}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def make_tree(root: Path) -> Path:
    """Three folder stacks, one ImageJ multipage TIFF, a folder with one image and a hidden folder."""
    for seed, name in enumerate(FOLDER_STACKS):
        write_folder_stack(root / name, seed)
    planes = np.stack(step_depth_stack(n_slices=4, size=64, seed=7).slices)
    tifffile.imwrite(root / f"{TIFF_STACK}.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    write_folder_stack(root / "day2" / "lonely", seed=8, n_slices=1)
    write_folder_stack(root / ".thumbnails", seed=9)
    return root


def age(root: Path, seconds: float = 3600) -> None:
    """Back-date every file's mtime, as an old acquisition has (ctimes stay: --settle 0 in tests that use this)."""
    past = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (past, past))
