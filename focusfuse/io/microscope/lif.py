"""Leica LIF (LAS X) through liffile: the file's images as scenes, Z, C, T, frame by frame.

A LIF file holds an XML description and one memory block per image. Its images
(LAS X's "series") are this reader's scenes, named as LAS X named them. Dimension
lengths are in the unit the XML gives (metres in LAS X files): the pixel size is a
dimension's length over its elements less one, as Bio-Formats reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.metadata import PhysicalSize, to_micrometres
from focusfuse.io.microscope.series import MicroscopeFile, Series

DIMENSION_LABELS = {1: "X", 2: "Y", 3: "Z", 4: "T", 5: "λ", 6: "A", 10: "M", 11: "N"}
FRAME_AXES = ("Y", "X", "S")


def _liffile():
    import liffile

    return liffile


def _physical(element) -> PhysicalSize:
    steps: dict[str, float | None] = {}
    for dimension in element.iterfind("./Data/Image/ImageDescription/Dimensions/DimensionDescription"):
        label = DIMENSION_LABELS.get(int(dimension.get("DimID", "0")))
        elements = int(dimension.get("NumberOfElements", "1"))
        if label in ("X", "Y", "Z") and elements > 1:
            length = abs(float(dimension.get("Length", "0")))
            steps[label] = to_micrometres(length / (elements - 1), dimension.get("Unit") or "m")
    x, y, z = steps.get("X"), steps.get("Y"), steps.get("Z")
    return PhysicalSize(x, y, z, "LIF dimensions" if x and y else None, "LIF dimensions" if z else None)


def read_lif(path: Path) -> MicroscopeFile:
    """Describe a LIF file: one ``Series`` per image."""
    liffile = _liffile()
    series = []
    file_size = path.stat().st_size
    with liffile.LifFile(str(path)) as lif:
        for number, image in enumerate(lif.images):
            try:
                block = image.memory_block
            except KeyError:
                raise FocusFuseError(f"{path}: cut short (image {image.name!r} has no pixels in the file)") from None
            if block.offset + block.size > file_size:
                raise FocusFuseError(
                    f"{path}: cut short (image {image.name!r} ends at byte {block.offset + block.size}, "
                    f"the file at {file_size})"
                )
            sizes = dict(image.sizes)
            channels = image.xml_element.findall("./Data/Image/ImageDescription/Channels/ChannelDescription")
            names = tuple(channel.get("LUTName") or f"C{index}" for index, channel in enumerate(channels))
            extra = {axis: size for axis, size in sizes.items() if axis not in "ZCT" + "".join(FRAME_AXES)}
            resolution = {int(channel.get("Resolution", "0")) for channel in channels}
            series.append(
                Series(
                    index=number,
                    name=image.name or None,
                    size_z=sizes.get("Z", 1),
                    size_c=sizes.get("C", 1),
                    size_t=sizes.get("T", 1),
                    height=sizes.get("Y", 1),
                    width=sizes.get("X", 1),
                    dtype=np.dtype(image.dtype),
                    samples=sizes.get("S", 1),
                    physical=_physical(image.xml_element),
                    channel_names=names if sizes.get("S", 1) == 1 else (),
                    significant_bits=resolution.pop() if len(resolution) == 1 else None,
                    extra=extra,
                )
            )
    axes_of = {entry.index: entry for entry in series}

    def read_plane(index: int, z: int, c: int, t: int) -> np.ndarray:
        wanted = axes_of[index]
        indices = {"Z": z, "C": c, "T": t}
        present = {"Z": wanted.size_z, "C": wanted.size_c, "T": wanted.size_t}
        with _liffile().LifFile(str(path)) as lif:
            frame = lif.images[index].frame(**{axis: at for axis, at in indices.items() if present[axis] > 1})
        return np.ascontiguousarray(frame)

    return MicroscopeFile(path, "LIF", "scene", series, read_plane)
