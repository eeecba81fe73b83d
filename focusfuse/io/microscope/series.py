"""What a microscope file holds, and one z-stack of it picked by scene, position and time.

CZI, ND2, LIF and OME-Zarr files hold one or more images ("series": CZI scenes, ND2
multipoint positions, LIF images), each with Z, C and T axes. Every format's module
describes its file as ``Series`` and reads planes; this module picks the series and
time point the user named (or refuses, listing what the file holds) and turns it into
the ``StackSource`` the TIFF path gives: one slice per Z plane, channels on the last
axis, read plane by plane.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.io.color import SUPPORTED_DTYPES
from focusfuse.io.filecheck import check_fits_memory
from focusfuse.io.metadata import PhysicalSize


@dataclass(frozen=True)
class SeriesSelection:
    """Which stack of a microscope file to fuse; None where the user named nothing.

    Attributes:
        scene: a CZI scene or LIF image, by index (from 0) or name.
        position: an ND2 multipoint position, by index (from 0) or name.
        time: the time point (from 0) of a time series.
    """

    scene: int | str | None = None
    position: int | str | None = None
    time: int | None = None

    @property
    def named(self) -> bool:
        return self.scene is not None or self.position is not None or self.time is not None

    def options(self) -> str:
        """The options as typed: ``--scene 1 --time 0``."""
        given = {"--scene": self.scene, "--position": self.position, "--time": self.time}
        return " ".join(f"{option} {value}" for option, value in given.items() if value is not None)


@dataclass(frozen=True)
class Series:
    """One image of a microscope file: its sizes, pixel type and physical sizes.

    Attributes:
        index: its place in the file (scene, position or image number, from 0).
        name: the name the acquisition software gave it, if any.
        samples: colour samples per channel: 1 (gray) or 3 (RGB, brightfield cameras).
        significant_bits: bits the pixels use (12 for a 12-bit camera in 16-bit words).
    """

    index: int
    name: str | None
    size_z: int
    size_c: int
    size_t: int
    height: int
    width: int
    dtype: np.dtype
    samples: int = 1
    physical: PhysicalSize = PhysicalSize()
    channel_names: tuple[str, ...] = ()
    significant_bits: int | None = None
    extra: dict[str, int] = field(default_factory=dict)  # other axes of size > 1 (mosaic tiles are composed)

    def describe(self) -> str:
        sizes = f"Z={self.size_z} C={self.size_c}" + (f" T={self.size_t}" if self.size_t > 1 else "")
        return f"{self.index}" + (f" ({self.name})" if self.name else "") + f": {self.width}x{self.height} {sizes}"


PlaneReader = Callable[[int, int, int, int], np.ndarray]  # (series, z, c, t) -> (H, W) or (H, W, 3) RGB


@dataclass
class MicroscopeFile:
    """A microscope file as its format module describes it.

    Attributes:
        kind: the format's name in messages (``CZI``).
        series_word: what the format calls its series (``scene``, ``position``, ``image``).
        read_plane: reads one plane; it opens the file itself, so a slice can be read
            whenever the fusion asks for it.
        check_stack: where a format's library may crash on a damaged file, decodes the
            chosen series' planes at a time point once, away from this process, before
            the first is read here (a FocusFuseError if they do not decode): after the
            fusion's memory plan, so that slices too large for the budget are refused
            without being decoded.
    """

    path: Path
    kind: str
    series_word: str
    series: list[Series]
    read_plane: PlaneReader
    check_stack: Callable[[Series, int], None] | None = None
    working_planes: int = 1  # memory the library takes to decode one plane, in planes (libCZI: 3)

    @property
    def option(self) -> str:
        """The option that picks a series: ``--position`` for ND2, ``--scene`` for the others."""
        return "--position" if self.series_word == "position" else "--scene"


def _held(file: MicroscopeFile) -> str:
    shown = "; ".join(series.describe() for series in file.series[:8])
    more = f"; and {len(file.series) - 8} more" if len(file.series) > 8 else ""
    count = f"{len(file.series)} {file.series_word}" + ("s" if len(file.series) != 1 else "")
    return f"{count} ({shown}{more})"


def _wanted_series(file: MicroscopeFile, selection: SeriesSelection) -> tuple[Series, bool]:
    """The series the user named (or the only one) and whether the file holds several."""
    other = "--scene" if file.option == "--position" else "--position"
    named_other = selection.position if other == "--position" else selection.scene
    if named_other is not None:
        raise FocusFuseError(
            f"{file.path}: {other} {named_other}: this {file.kind} file has no {other[2:]}s; it holds {_held(file)}: "
            f"name one with {file.option}"
        )
    wanted = selection.scene if file.option == "--scene" else selection.position
    if wanted is None:
        if len(file.series) > 1:
            raise FocusFuseError(f"{file.path}: holds {_held(file)}; name one with {file.option}")
        return file.series[0], False
    for series in file.series:
        if str(wanted) == str(series.index) or (series.name is not None and str(wanted) == series.name):
            return series, len(file.series) > 1
    raise FocusFuseError(f"{file.path}: {file.option} {wanted}: no such {file.series_word}; it holds {_held(file)}")


def _wanted_time(file: MicroscopeFile, series: Series, time: int | None) -> int:
    if time is None:
        if series.size_t > 1:
            raise FocusFuseError(
                f"{file.path}: holds a time series of {series.size_t} time points (T={series.size_t}); "
                f"name one with --time (0 to {series.size_t - 1})"
            )
        return 0
    if not 0 <= time < series.size_t:
        held = "one time point (0)" if series.size_t == 1 else f"time points 0 to {series.size_t - 1}"
        raise FocusFuseError(f"{file.path}: --time {time}: it holds {held}")
    return time


def check_series(file: MicroscopeFile, series: Series) -> None:
    """A series focusfuse can fuse: a supported pixel type, gray channels or one RGB image, no extra axes."""
    if series.height < 1 or series.width < 1:
        raise FocusFuseError(f"{file.path}: declares an empty image ({series.width}x{series.height} pixels)")
    if series.dtype not in SUPPORTED_DTYPES:
        raise FocusFuseError(f"{file.path}: unsupported pixel type {series.dtype} (uint8, uint16 or float32 are read)")
    if series.samples not in (1, 3):
        raise FocusFuseError(f"{file.path}: {series.samples} samples per pixel (gray or RGB are read)")
    if series.samples == 3 and series.size_c > 1:
        raise FocusFuseError(f"{file.path}: {series.size_c} channels of RGB pixels (gray channels or one RGB are read)")
    if series.extra:
        named = ", ".join(f"{axis}={size}" for axis, size in series.extra.items())
        raise FocusFuseError(f"{file.path}: axes beyond Z, C and T ({named}) are not read")


def selected_stack(file: MicroscopeFile, selection: SeriesSelection):
    """The ``StackSource`` of the series and time point ``selection`` names in ``file``."""
    from focusfuse.io.reader import StackSource

    series, several = _wanted_series(file, selection)
    check_series(file, series)
    time = _wanted_time(file, series, selection.time)
    if series.size_z < 2:
        where = f"{file.series_word} {series.index}" if several else "it"
        raise FocusFuseError(f"{file.path}: {where} holds a single plane (Z=1), not a z-stack")
    plane_bytes = series.height * series.width * series.samples * np.dtype(series.dtype).itemsize
    # The slice, and what the library takes to decode one of its planes into it.
    slice_bytes = plane_bytes * ((series.size_c if series.size_c > 1 else 0) + file.working_planes)
    check_fits_memory(f"{file.path}[z=0]", slice_bytes, f"one {series.width}x{series.height} slice")
    unchecked = [file.check_stack] if file.check_stack is not None else []
    checking = threading.Lock()  # background decoders read slices from other threads
    place = [f"{file.series_word}={series.index}"] if several else []
    place += [f"t={time}"] if series.size_t > 1 else []
    labels = [f"{file.path}[{','.join([*place, f'z={z}'])}]" for z in range(series.size_z)]
    channel_axis = series.size_c > 1

    expected = (series.height, series.width) + ((3,) if series.samples == 3 else ())

    def read_plane(z: int, channel: int) -> np.ndarray:
        try:
            plane = file.read_plane(series.index, z, channel, time)
        except FocusFuseError:
            raise
        except Exception as error:  # the format library's own errors: a damaged file
            raise FocusFuseError(f"{labels[z]}: cannot read this plane ({error})") from error
        if plane.shape != expected or plane.dtype != series.dtype:
            raise FocusFuseError(
                f"{labels[z]}: plane is {plane.shape} {plane.dtype}, the metadata says {expected} {series.dtype}"
            )
        if plane.dtype == np.float32 and not np.isfinite(plane).all():
            raise FocusFuseError(f"{labels[z]}: contains NaN or infinite values")
        return plane

    def read_slice(z: int) -> np.ndarray:
        with checking:
            if unchecked:
                unchecked[0](series, time)
                unchecked.clear()
        if not channel_axis:
            return np.ascontiguousarray(read_plane(z, 0))
        # Filled one channel at a time: a slice takes its own size and one plane's, not twice its size.
        image = np.empty(expected + (series.size_c,), series.dtype)
        for channel in range(series.size_c):
            image[..., channel] = read_plane(z, channel)
        return image

    axes = "Z" + ("C" if channel_axis else "") + "YX" + ("S" if series.samples == 3 else "")
    return StackSource(
        labels=labels,
        paths=[file.path],
        reader=read_slice,
        declared_size=(series.height, series.width),
        physical=series.physical,
        axes=axes,
        channel_axis=channel_axis,
        channel_names=series.channel_names if len(series.channel_names) == series.size_c else (),
        source_format=file.kind,
        contents=tuple(f"{file.series_word} {entry.describe()}" for entry in file.series),
    )
