"""Microscope files: Zeiss CZI, Nikon ND2, Leica LIF and OME-Zarr, as z-stacks.

Each format is read by the library the field maintains for it (pylibCZIrw, nd2,
liffile, zarr), installed with ``pip install 'focusfuse[formats]'``; without it, such
a file is refused with one line naming the extra. A file is known by its first bytes
(an OME-Zarr folder by its Zarr metadata), as image files are.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from focusfuse.errors import FocusFuseError
from focusfuse.io.filecheck import sniff_format
from focusfuse.io.microscope.ome_zarr import is_ome_zarr
from focusfuse.io.microscope.series import MicroscopeFile, Series, SeriesSelection, selected_stack

__all__ = [
    "MICROSCOPE_SUFFIXES",
    "MicroscopeFile",
    "Series",
    "SeriesSelection",
    "microscope_kind",
    "open_microscope_file",
    "open_microscope_stack",
]

# format -> (file suffix, the package that reads it)
READERS = {
    "CZI": (".czi", "pylibCZIrw"),
    "ND2": (".nd2", "nd2"),
    "LIF": (".lif", "liffile"),
    "OME-Zarr": (".zarr", "zarr"),
}
MICROSCOPE_SUFFIXES = tuple(suffix for suffix, _ in READERS.values())
EXTRA = "pip install 'focusfuse[formats]'"


def _kind_by_magic(head: bytes) -> str | None:
    if head.startswith(b"ZISRAWFILE"):
        return "CZI"
    if head.startswith(b"\xda\xce\xbe\x0a") or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        return "ND2"  # version 3 chunk map, or the JPEG 2000 container of NIS-Elements before 3
    if head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a":
        return "LIF"
    return None


def microscope_kind(path: Path) -> str | None:
    """``CZI``, ``ND2``, ``LIF`` or ``OME-Zarr`` when ``path`` is one (by content), else None.

    A file named as one of them that is neither (nor an image, which is read as one,
    whatever its name) is refused here, naming it.
    """
    if path.is_dir():
        return "OME-Zarr" if is_ome_zarr(path) else None
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    kind = _kind_by_magic(head)
    named = next((name for name, (suffix, _) in READERS.items() if path.suffix.lower() == suffix), None)
    if kind is None and named is not None and head and sniff_format(path) is None:
        raise FocusFuseError(f"{path}: not a {named} file (its first bytes are not a {named} header)")
    return kind


def _reader(kind: str) -> Callable[[Path], MicroscopeFile]:
    if kind == "CZI":
        from focusfuse.io.microscope.czi import read_czi

        return read_czi
    if kind == "ND2":
        from focusfuse.io.microscope.nd2 import read_nd2

        return read_nd2
    if kind == "LIF":
        from focusfuse.io.microscope.lif import read_lif

        return read_lif
    from focusfuse.io.microscope.ome_zarr import read_ome_zarr

    return read_ome_zarr


def open_microscope_file(path: Path, kind: str | None = None) -> MicroscopeFile:
    """What a microscope file holds; one FocusFuseError naming the file for a missing reader or a damaged file."""
    kind = kind or microscope_kind(path)
    if kind is None:
        raise FocusFuseError(f"{path}: not a CZI, ND2, LIF or OME-Zarr file")
    package = READERS[kind][1]
    if importlib.util.find_spec(package) is None:
        raise FocusFuseError(f"{path}: reading {kind} files needs {package}: {EXTRA}")
    try:
        return _reader(kind)(path)
    except FocusFuseError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # the library's own exceptions for a damaged or unusual file
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FocusFuseError(f"{path}: not a readable {kind} file ({first})") from error


def open_microscope_stack(path: Path, selection: SeriesSelection, kind: str | None = None):
    """The z-stack ``selection`` names in a microscope file, as a ``StackSource``."""
    return selected_stack(open_microscope_file(path, kind), selection)
