"""Multi-file OME-TIFF: a z-stack written one plane per file, put back in Z order from its OME-XML.

Bio-Formats and many acquisition programs write a stack as one TIFF per plane. Every
file (or a ``.companion.ome`` file beside them, which the TIFFs name in a
``BinaryOnly`` element) holds the OME-XML of the whole set: its ``TiffData`` elements
say which file and which IFD hold each (Z, C, T) plane. The planes are read from
their own files by IFD, never through a series that spans files, so no file handle
is shared or read after it was closed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import tifffile

from focusfuse.errors import FocusFuseError
from focusfuse.io.metadata import PhysicalSize, physical_size_from_ome

PlaneKey = tuple[int, int, int]  # (z, c, t)


@dataclass(frozen=True)
class OmeDataset:
    """Where each plane of a multi-file OME-TIFF set lives.

    Attributes:
        planes: (z, c, t) -> (file, IFD within it).
        files: the set's TIFF files, in the order the OME-XML names them.
    """

    size_z: int
    size_c: int
    size_t: int
    planes: dict[PlaneKey, tuple[Path, int]] = field(repr=False)
    files: list[Path]
    physical: PhysicalSize
    described_in: Path  # the file whose OME-XML was read (a TIFF or the companion)


def _ome_xml(path: Path) -> tuple[str, Path] | None:
    """The OME-XML that describes ``path``'s set, and the file it was read from."""
    try:
        with tifffile.TiffFile(path, is_ome=False) as tif:
            description = tif.pages.first.description
    except Exception:  # not a TIFF tifffile can open: the reader's own checks say why
        return None
    if "<OME" not in description[:4096]:
        return None
    try:
        root = ElementTree.fromstring(description)
    except ElementTree.ParseError:
        return None
    binary_only = root.find("{*}BinaryOnly")
    if binary_only is None:
        return description, path
    companion = path.parent / binary_only.get("MetadataFile", "")
    if not companion.is_file():
        raise FocusFuseError(
            f"{path}: its OME metadata is in {companion.name}, which is not beside it (copy the companion file too)"
        )
    return companion.read_text(errors="replace"), companion


def _plane_keys(order: str, sizes: dict[str, int], first: PlaneKey, count: int) -> list[PlaneKey]:
    """``count`` planes from ``first`` on, in the DimensionOrder's sequence (XYZCT: Z fastest)."""
    axes = [axis for axis in order[2:] if axis in "ZCT"]
    position = {"Z": first[0], "C": first[1], "T": first[2]}
    keys: list[PlaneKey] = []
    for _ in range(count):
        keys.append((position["Z"], position["C"], position["T"]))
        for axis in axes:  # increment like an odometer, the first axis fastest
            position[axis] += 1
            if position[axis] < sizes[axis]:
                break
            position[axis] = 0
    return keys


def multi_file_dataset(path: Path) -> OmeDataset | None:
    """The multi-file OME-TIFF set ``path`` belongs to; None for any other file (a single-file OME-TIFF too)."""
    found = _ome_xml(path)
    if found is None:
        return None
    xml, described_in = found
    try:
        pixels = ElementTree.fromstring(xml).find(".//{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        return None
    if pixels is None:
        return None
    try:
        sizes = {axis: int(pixels.get(f"Size{axis}", "1")) for axis in "ZCT"}
        order = pixels.get("DimensionOrder", "XYZCT")
        planes: dict[PlaneKey, tuple[Path, int]] = {}
        files: list[Path] = []
        for tiff_data in pixels.findall("{*}TiffData"):
            uuid = tiff_data.find("{*}UUID")
            name = uuid.get("FileName") if uuid is not None else None
            file = described_in.parent / name if name else path
            if file not in files:
                files.append(file)
            ifd = int(tiff_data.get("IFD", "0"))
            default_count = 1 if tiff_data.get("IFD") is not None else sizes["Z"] * sizes["C"] * sizes["T"]
            count = int(tiff_data.get("PlaneCount", str(default_count)))
            first = tuple(int(tiff_data.get(f"First{axis}", "0")) for axis in "ZCT")
            for offset, key in enumerate(_plane_keys(order, sizes, first, count)):  # type: ignore[arg-type]
                planes[key] = (file, ifd + offset)
    except ValueError:
        return None
    if len(files) < 2:
        return None
    return OmeDataset(sizes["Z"], sizes["C"], sizes["T"], planes, files, physical_size_from_ome(xml), described_in)


def read_ome_plane(dataset: OmeDataset, key: PlaneKey, label: str):
    """Plane (z, c, t) from the file and IFD that hold it, read as a plain TIFF page."""
    location = dataset.planes.get(key)
    if location is None:
        raise FocusFuseError(f"{label}: the OME metadata in {dataset.described_in} names no file for this plane")
    file, ifd = location
    if not file.is_file():
        raise FocusFuseError(f"{label}: this plane is in {file}, which is missing (a multi-file OME-TIFF)")
    with tifffile.TiffFile(file, is_ome=False) as tif:
        if ifd >= len(tif.pages):
            raise FocusFuseError(f"{file}: has {len(tif.pages)} pages; the OME metadata puts a plane at IFD {ifd}")
        return tif.pages[ifd].asarray()
