"""Nikon ND2 (NIS-Elements) through the nd2 package: positions, Z, C, T, frame by frame.

An ND2 file stores one frame per (T, P, Z) point of its experiment loops, every
channel of the point in the frame; ``loop_indices`` says which frame holds which
point. Voxel sizes come in micrometres from the file's calibration; positions are
named as the multipoint list named them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.metadata import PhysicalSize
from focusfuse.io.microscope.series import MicroscopeFile, Series

FRAME_AXES = ("C", "Y", "X", "S")
LOOP_AXES = ("T", "P", "Z")


def _nd2():
    import nd2

    return nd2


def _position_names(handle, count: int) -> list[str | None]:
    for loop in handle.experiment:
        if getattr(loop, "type", None) == "XYPosLoop":
            names = [point.name or None for point in loop.parameters.points]
            if len(names) == count:
                return names
    return [None] * count


def read_nd2(path: Path) -> MicroscopeFile:
    """Describe an ND2 file: one ``Series`` per multipoint position (one for a file without)."""
    nd2 = _nd2()
    with nd2.ND2File(str(path)) as handle:
        sizes = dict(handle.sizes)
        dtype = np.dtype(handle.dtype)
        samples = handle.components_per_channel
        voxel = handle.voxel_size()
        attributes = handle.attributes
        channel_names = tuple(channel.channel.name for channel in (handle.metadata.channels or []))
        positions = sizes.get("P", 1)
        position_names = _position_names(handle, positions)
        frames = {
            tuple(loop.get(axis, 0) for axis in LOOP_AXES): number for number, loop in enumerate(handle.loop_indices)
        }
    extra = {axis: size for axis, size in sizes.items() if axis not in FRAME_AXES + LOOP_AXES and size > 1}
    physical = PhysicalSize(
        voxel.x if voxel.x > 0 else None,
        voxel.y if voxel.y > 0 else None,
        voxel.z if sizes.get("Z", 1) > 1 and voxel.z > 0 else None,
        "ND2 calibration" if voxel.x > 0 and voxel.y > 0 else None,
        "ND2 z-step" if sizes.get("Z", 1) > 1 and voxel.z > 0 else None,
    )
    channels = sizes.get("C", 1)
    series = [
        Series(
            index=position,
            name=position_names[position],
            size_z=sizes.get("Z", 1),
            size_c=channels,
            size_t=sizes.get("T", 1),
            height=sizes["Y"],
            width=sizes["X"],
            dtype=dtype,
            samples=samples,
            physical=physical,
            channel_names=channel_names,
            significant_bits=getattr(attributes, "bitsPerComponentSignificant", None),
            extra=extra,
        )
        for position in range(positions)
    ]
    height, width = sizes["Y"], sizes["X"]
    last_frame: dict[int, np.ndarray] = {}  # a frame holds every channel: read once for all of them

    def read_plane(position: int, z: int, c: int, t: int) -> np.ndarray:
        number = frames.get((t, position, z))
        if number is None:
            raise FocusFuseError(f"{path}: holds no frame for t={t}, position={position}, z={z}")
        if number not in last_frame:
            with _nd2().ND2File(str(path)) as handle:
                pixels = np.array(handle.read_frame(number))  # a copy: the file's memory map closes with it
            last_frame.clear()
            last_frame[number] = pixels.reshape(channels, height, width, samples)
        frame = last_frame[number][c]
        return np.ascontiguousarray(frame if samples > 1 else frame[:, :, 0])

    return MicroscopeFile(path, "ND2", "position", series, read_plane)
