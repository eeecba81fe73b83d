#!/usr/bin/env python3
"""Microscope formats against the TIFF path: what reading a CZI, OME-Zarr or LIF adds to a fusion.

One synthetic z-stack (10 slices, 2 channels of 12-bit pixels in 16-bit words, 2048x1536,
pixel size 0.5 um, z-step 1.5 um, known depth) is written as a multipage TIFF (ImageJ
hyperstack), a CZI (pylibCZIrw's writer, zstd-compressed as ZEN can write it, and
uncompressed), an OME-Zarr (ome-zarr's writer, NGFF 0.5), and a LIF and an ND2 (tests/io's
writers).
(1) Each file is fused by `focusfuse stack FILE -o out.tif --device cpu` as its own
process, the formats in turn, ``--repeats`` times; the least wall seconds of each,
its peak RSS, its ratio to the TIFF's, and whether its index map equals the TIFF's.
(2) Reading every slice through focusfuse's reader alone (in this process; least of
three): the part of (1) that differs between formats.
Usage: python bench/formats.py [--repeats 3] [--size 2048x1536]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
from peers import run_measured

from focusfuse.io.reader import open_stack
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "io"))
from microscope_files import write_czi, write_lif, write_nd2, write_ome_zarr  # noqa: E402

PIXEL_UM, Z_STEP_UM, SLICES = 0.5, 1.5, 10
ZSTD = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"  # what ZEN writes for "compressed" 16-bit


def synthetic_zcyx(height: int, width: int) -> np.ndarray:
    """``(Z, C, Y, X)`` uint16 (12 bits used): two textures over one smooth surface in ``SLICES`` depths."""
    rng = np.random.default_rng(3)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = (SLICES - 1) * (0.5 + 0.35 * np.sin(columns / width * 5.0) * np.cos(rows / height * 4.0))
    channels = []
    for _ in range(2):
        sharp = (procedural_texture(height, width, rng) * 4095).astype(np.uint16)
        stack = make_depth_stack(sharp, depth.astype(np.float32), SLICES, blur_per_slice=1.5, rng=rng)
        channels.append(np.stack(stack.slices))
    return np.stack(channels, axis=1)


def write_all(zcyx: np.ndarray, folder: Path) -> dict[str, Path | str]:
    """Every format's file, or why it was not written."""
    files: dict[str, Path | str] = {}
    tiff = folder / "stack.tif"
    tifffile.imwrite(
        tiff, zcyx, imagej=True, resolution=(1 / PIXEL_UM, 1 / PIXEL_UM),
        metadata={"axes": "ZCYX", "unit": "um", "spacing": Z_STEP_UM},
    )  # fmt: skip
    files["TIFF (ImageJ)"] = tiff
    for name, compression in (("CZI", None), ("CZI zstd", ZSTD)):
        if importlib.util.find_spec("pylibCZIrw") is None:
            files[name] = "pylibCZIrw is not installed"
            continue
        path = folder / f"stack{'-zstd' if compression else ''}.czi"
        names = ["A", "B"]
        write_czi(path, [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=names, compression=compression)
        files[name] = path
    if importlib.util.find_spec("zarr") and importlib.util.find_spec("ome_zarr"):
        write_ome_zarr(folder / "stack.zarr", zcyx, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=["A", "B"])
        files["OME-Zarr 0.5"] = folder / "stack.zarr"
    else:
        files["OME-Zarr 0.5"] = "zarr or ome-zarr is not installed"
    if importlib.util.find_spec("liffile"):
        write_lif(folder / "stack.lif", {"stack": zcyx}, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
        files["LIF"] = folder / "stack.lif"
    else:
        files["LIF"] = "liffile is not installed"
    if importlib.util.find_spec("nd2"):
        write_nd2(folder / "stack.nd2", [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=["A", "B"])
        files["ND2"] = folder / "stack.nd2"
    else:
        files["ND2"] = "nd2 is not installed"
    return files


def read_seconds(path: Path) -> float:
    """Least of three: every slice read through focusfuse's reader."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        source = open_stack([path])
        for index in range(len(source)):
            source.read(index)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="2048x1536", help="WIDTHxHEIGHT of the slices")
    arguments = parser.parse_args()
    width, height = (int(side) for side in arguments.size.split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        files = write_all(synthetic_zcyx(height, width), folder)
        present = {name: path for name, path in files.items() if isinstance(path, Path)}
        runs: dict[str, list] = {name: [] for name in present}
        for _ in range(arguments.repeats):
            for number, (name, path) in enumerate(present.items()):
                output = folder / f"out{number}.tif"
                command = [sys.executable, "-m", "focusfuse", "stack", str(path), "-o", str(output)]
                runs[name].append(run_measured([*command, "--device", "cpu", "-q"]))
        truth = cv2.imread(str(folder / "out0.index.png"), cv2.IMREAD_UNCHANGED)
        print(f"(1) `focusfuse stack FILE -o out.tif --device cpu`, {SLICES} slices x 2 channels x {width}x{height}")
        print(f"    uint16; least of {arguments.repeats} runs, formats in turn; ratio = seconds / the TIFF's")
        print(f"{'format':<16} {'file MiB':>8} {'seconds':>8} {'peak MiB':>9} {'ratio':>6}  index map")
        baseline = None
        for name, path in files.items():
            if not isinstance(path, Path):
                print(f"{name:<16} skipped: {path}")
                continue
            failed = [run.error for run in runs[name] if run.error]
            if failed:
                print(f"{name:<16} failed: {failed[0]}")
                continue
            seconds = min(run.seconds for run in runs[name])
            peak = max(run.peak_mib for run in runs[name])
            baseline = baseline or seconds
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*"))
            produced = list(present).index(name)
            index_map = cv2.imread(str(folder / f"out{produced}.index.png"), cv2.IMREAD_UNCHANGED)
            same = "same as TIFF" if np.array_equal(index_map, truth) else "DIFFERS"
            print(f"{name:<16} {size / 2**20:>8.1f} {seconds:>8.2f} {peak:>9.0f} {seconds / baseline:>6.3f}  {same}")
        print("\n(2) every slice read through focusfuse's reader, in this process; least of three")
        for name, path in present.items():
            print(f"{name:<16} {read_seconds(path):>8.3f} s")
        record = json.loads((folder / "out0.timing.json").read_text())
        print(f"\n{record['threads']} threads, focusfuse {record['focusfuse_version']}")


if __name__ == "__main__":
    main()
