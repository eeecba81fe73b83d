"""Zeiss CZI (ZEN) through pylibCZIrw, Zeiss's own reader: scenes, Z, C, T, plane by plane.

pylibCZIrw composes a plane from its subblocks (mosaic tiles included) and decodes
every compression ZEN writes (JPG-XR, zstd). Physical sizes come from the document's
``Scaling/Items/Distance`` (metres), channel and scene names from its ``Dimensions``.
Colour planes (Bgr24, Bgr48) come back blue first and are turned to RGB.

libCZI crashes the process (SIGSEGV) on some damaged files (a bit flipped in a
zstd-compressed subblock): a file is first opened, and the planes of the stack to
fuse decoded, in a child process (``probe``); a crash there is one error line naming
the file, and the same bytes are then read here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
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


# What the child process runs: open the file, and decode the planes it is given, one at a time.
PROBE_SCRIPT = """
import json, sys
from pylibCZIrw import czi
path, scene, planes = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
with czi.open_czi(path) as document:
    document.total_bounding_box, document.scenes_bounding_rectangle, document.raw_metadata
    for plane in planes:
        document.read(plane=plane, scene=scene)
"""
# More channels than any instrument records: a damaged header (pylibCZIrw lists pixel types channel by channel).
MAX_CHANNELS = 4096


def _czi():
    from pylibCZIrw import czi

    return czi


def probe(path: Path, scene: int | None = None, planes: list[dict[str, int]] | None = None) -> None:
    """Open ``path`` and decode ``planes`` of ``scene`` in a child process: a crash or error is a FocusFuseError."""
    import json

    command = [sys.executable, "-c", PROBE_SCRIPT, str(path), json.dumps(scene), json.dumps(planes or [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return
    what = f"decoding {len(planes)} planes" if planes else "opening it"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        raise FocusFuseError(f"{path}: damaged CZI file (its reader, libCZI, crashed with {name} {what})")
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    last = lines[-1].split(": ", 1)[-1] if lines else f"exit status {done.returncode}"
    raise FocusFuseError(f"{path}: not a readable CZI file ({last})")


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
    probe(path)
    with czi.open_czi(str(path)) as document:
        box = document.total_bounding_box
        first_channel, channel_end = box.get("C", (0, 1))
        if not 0 <= first_channel < channel_end <= MAX_CHANNELS:
            raise FocusFuseError(
                f"{path}: damaged CZI file (its subblocks declare channels {first_channel} to {channel_end})"
            )
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

    def plane_at(z: int, c: int, t: int) -> dict[str, int]:
        return {"Z": first.get("Z", 0) + z, "C": first.get("C", 0) + c, "T": first.get("T", 0) + t}

    def read_plane(scene: int, z: int, c: int, t: int) -> np.ndarray:
        with _czi().open_czi(str(path)) as document:
            pixels = document.read(plane=plane_at(z, c, t), scene=scene if has_scenes else None)
        if samples == 3:
            return np.ascontiguousarray(pixels[:, :, ::-1])
        return pixels[:, :, 0]

    def check_stack(chosen: Series, t: int) -> None:
        planes = [plane_at(z, c, t) for z in range(chosen.size_z) for c in range(chosen.size_c)]
        probe(path, chosen.index if has_scenes else None, planes)

    # libCZI composes a plane in its own bitmap before numpy copies it: a read adds 2.2 planes, 2.9 from zstd
    # (bench/format_candidates.py).
    return MicroscopeFile(path, "CZI", "scene", series, read_plane, check_stack, working_planes=3)
