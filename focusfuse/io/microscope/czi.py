"""Zeiss CZI (ZEN) through pylibCZIrw, Zeiss's own reader: scenes, Z, C, T, plane by plane.

pylibCZIrw composes a plane from its subblocks (mosaic tiles included) and decodes
every compression ZEN writes (JPG-XR, zstd). Physical sizes come from the document's
``Scaling/Items/Distance`` (metres), channel and scene names from its ``Dimensions``.
Colour planes (Bgr24, Bgr48) come back blue first and are turned to RGB.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.metadata import PhysicalSize, to_micrometres
from focusfuse.io.microscope.series import MicroscopeFile, Series

PIXEL_TYPES = {  # CZI pixel type -> (dtype, samples)
    "Gray8": (np.uint8, 1),
    "Gray16": (np.uint16, 1),
    "Gray32Float": (np.float32, 1),
    "Bgr24": (np.uint8, 3),
    "Bgr48": (np.uint16, 3),
    "Bgr96Float": (np.float32, 3),
}


def _czi():
    from pylibCZIrw import czi

    return czi


def _text(root: ElementTree.Element | None, path: str) -> str | None:
    found = None if root is None else root.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _physical(metadata: ElementTree.Element | None) -> PhysicalSize:
    distances = {}
    for distance in [] if metadata is None else metadata.iterfind(".//Scaling/Items/Distance"):
        value = _text(distance, "Value")
        if value:
            try:
                distances[distance.get("Id")] = to_micrometres(float(value), "m")
            except ValueError:
                continue
    x, y, z = distances.get("X"), distances.get("Y"), distances.get("Z")
    return PhysicalSize(x, y, z, "CZI Scaling" if x and y else None, "CZI Scaling" if z else None)


def read_czi(path: Path) -> MicroscopeFile:
    """Describe a CZI file: one ``Series`` per scene (one for a file without scenes)."""
    czi = _czi()
    with czi.open_czi(str(path)) as document:
        box = document.total_bounding_box
        scenes = document.scenes_bounding_rectangle
        whole = document.total_bounding_rectangle
        pixel_types = document.pixel_types
        try:
            metadata: ElementTree.Element | None = ElementTree.fromstring(document.raw_metadata)
        except ElementTree.ParseError:
            metadata = None
    first = {axis: start for axis, (start, _) in box.items()}
    sizes = {axis: end - start for axis, (start, end) in box.items()}
    types = {pixel_types[channel] for channel in pixel_types}
    if len(types) > 1:
        raise FocusFuseError(f"{path}: its channels differ in pixel type ({', '.join(sorted(types))})")
    pixel_type = types.pop() if types else "Gray8"
    if pixel_type not in PIXEL_TYPES:
        raise FocusFuseError(f"{path}: CZI pixel type {pixel_type} is not read (gray or BGR, 8, 16 or 32-bit float)")
    dtype, samples = PIXEL_TYPES[pixel_type]
    physical = _physical(metadata)
    channels = [] if metadata is None else metadata.findall(".//Information/Image/Dimensions/Channels/Channel")
    channel_names = tuple(channel.get("Name") or f"C{number}" for number, channel in enumerate(channels))
    scene_names = {}
    for number, scene in enumerate([] if metadata is None else metadata.iterfind(".//Dimensions/S/Scenes/Scene")):
        scene_names[int(scene.get("Index", number))] = scene.get("Name")
    bits = _text(metadata, ".//Information/Image/ComponentBitCount")
    extra = {axis: size for axis, size in sizes.items() if axis not in "ZCTXY" and size > 1}
    rectangles = scenes or {0: whole}

    def one(index: int, rectangle) -> Series:
        return Series(
            index=index,
            name=scene_names.get(index),
            size_z=sizes.get("Z", 1),
            size_c=sizes.get("C", 1),
            size_t=sizes.get("T", 1),
            height=rectangle.h,
            width=rectangle.w,
            dtype=np.dtype(dtype),
            samples=samples,
            physical=physical,
            channel_names=channel_names,
            significant_bits=int(bits) if bits and bits.isdigit() else None,
            extra=extra,
        )

    series = [one(index, rectangle) for index, rectangle in sorted(rectangles.items())]
    has_scenes = bool(scenes)

    def read_plane(scene: int, z: int, c: int, t: int) -> np.ndarray:
        plane = {"Z": first.get("Z", 0) + z, "C": first.get("C", 0) + c, "T": first.get("T", 0) + t}
        with _czi().open_czi(str(path)) as document:
            pixels = document.read(plane=plane, scene=scene if has_scenes else None)
        if samples == 3:
            return np.ascontiguousarray(pixels[:, :, ::-1])
        return pixels[:, :, 0]

    return MicroscopeFile(path, "CZI", "scene", series, read_plane)
