"""OME-Zarr (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3) through zarr: the full-resolution level, plane by plane.

An OME-Zarr image is a folder whose group attributes hold ``multiscales``: named axes
(t, c, z, y, x, in any subset, in that order) with their units, and one array per
resolution level with its scale. The first level is the full-size image; its scale
gives the pixel size and z-step. A bioformats2raw folder (what Bio-Formats' converter
writes) holds one such image per series, in subfolders 0, 1, ...: they are its scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.metadata import PhysicalSize, to_micrometres
from focusfuse.io.microscope.series import MicroscopeFile, Series

METADATA_FILES = ("zarr.json", ".zattrs", ".zgroup")


def is_ome_zarr(path: Path) -> bool:
    """A folder that is a Zarr group (OME-Zarr is one): by its metadata files, not its name."""
    return path.is_dir() and any((path / name).is_file() for name in METADATA_FILES)


def _zarr():
    import zarr

    return zarr


def _ome_attributes(group) -> dict:
    attributes = dict(group.attrs)
    return dict(attributes.get("ome", attributes))  # 0.5 nests the OME keys under "ome"


def _image_series(path: Path, group, index: int) -> tuple[Series, Any, list[str]]:
    """One multiscales image: its ``Series``, its full-resolution array and the array's axis names."""
    attributes = _ome_attributes(group)
    multiscales = attributes.get("multiscales")
    if not multiscales:
        raise FocusFuseError(f"{path}: a Zarr group without OME multiscales metadata (not an OME-Zarr image)")
    image = multiscales[0]
    axes = [axis["name"].lower() if isinstance(axis, dict) else str(axis).lower() for axis in image.get("axes", [])]
    units = {
        axis["name"].lower(): axis.get("unit") for axis in image.get("axes", []) if isinstance(axis, dict)
    }  # fmt: skip
    dataset = image["datasets"][0]
    array = group[dataset["path"]]
    if not axes:  # NGFF 0.3 and before: always 5-D
        axes = ["t", "c", "z", "y", "x"][-array.ndim :]
    if len(axes) != array.ndim or axes[-2:] != ["y", "x"]:
        raise FocusFuseError(f"{path}: OME-Zarr axes {''.join(axes)} do not end in y, x for an array of {array.ndim}")
    unknown = [axis for axis in axes if axis not in "tczyx"]
    if unknown:
        raise FocusFuseError(f"{path}: OME-Zarr axes {', '.join(unknown)} are not read (t, c, z, y, x are)")
    scale = [1.0] * array.ndim
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = [float(value) for value in transform["scale"]]

    def micrometres(axis: str) -> float | None:
        if axis not in axes or units.get(axis) is None:
            return None
        return to_micrometres(scale[axes.index(axis)], units[axis])

    x, y, z = micrometres("x"), micrometres("y"), micrometres("z")
    physical = PhysicalSize(x, y, z, "OME-Zarr scale" if x and y else None, "OME-Zarr scale" if z else None)
    channels = attributes.get("omero", {}).get("channels", [])
    names = tuple(str(channel.get("label", f"C{number}")) for number, channel in enumerate(channels))

    def size(axis: str) -> int:
        return int(array.shape[axes.index(axis)]) if axis in axes else 1

    series = Series(
        index=index,
        name=image.get("name") or None,
        size_z=size("z"),
        size_c=size("c"),
        size_t=size("t"),
        height=size("y"),
        width=size("x"),
        dtype=np.dtype(array.dtype),
        physical=physical,
        channel_names=names,
    )
    return series, array, axes


def read_ome_zarr(path: Path) -> MicroscopeFile:
    """Describe an OME-Zarr image, or a bioformats2raw folder of them (one ``Series`` each)."""
    zarr = _zarr()
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as error:
        raise FocusFuseError(f"{path}: not a readable Zarr group ({error})") from error
    attributes = _ome_attributes(root)
    if "plate" in attributes or "well" in attributes:
        raise FocusFuseError(
            f"{path}: an OME-Zarr {'plate' if 'plate' in attributes else 'well'}; fuse one field's image "
            f"(a folder such as {path}/A/1/0)"
        )
    if "bioformats2raw.layout" in attributes:
        numbers = sorted(int(name) for name in root.group_keys() if name.isdigit())
        found = [_image_series(path, root[str(number)], number) for number in numbers]
    else:
        found = [_image_series(path, root, 0)]
    if not found:
        raise FocusFuseError(f"{path}: a bioformats2raw folder with no images")
    arrays = {series.index: (array, axes) for series, array, axes in found}

    def read_plane(index: int, z: int, c: int, t: int) -> np.ndarray:
        array, axes = arrays[index]
        where = {"t": t, "c": c, "z": z}
        key = tuple(where[axis] if axis in where else slice(None) for axis in axes)
        return np.asarray(array[key])

    return MicroscopeFile(path, "OME-Zarr", "scene", [series for series, _, _ in found], read_plane)
