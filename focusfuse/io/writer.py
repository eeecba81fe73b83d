"""Writing results: images by extension, atomically and all together, never over an input.

Each file is written to a temporary name in the target directory; when every output
of a run is written, they are renamed into place together, in one step that a stop
(Ctrl-C, SIGTERM) waits for. A failed or interrupted run leaves either every output
whole or none of them, never a partial file or a fused image without its index map.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
import tifffile

from focusfuse.errors import FocusFuseError
from focusfuse.interruption import critical_section, record_written
from focusfuse.io.icc import embed_in_jpeg, embed_in_png, png_chunk
from focusfuse.io.metadata import PhysicalSize, tiff_physical_arguments

FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}
FORMAT_HINT = "use .png, .tif, .ome.tif or .jpg"
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")


def is_ome_tiff(path: Path) -> bool:
    """NAME.ome.tif or NAME.ome.tiff: written as OME-TIFF, with its OME-XML."""
    return path.name.lower().endswith(OME_TIFF_SUFFIXES)


def output_stem(path: Path) -> str:
    """The name without its image suffixes: ``fused.ome.tif`` -> ``fused``, ``fused.png`` -> ``fused``."""
    lowered = path.name.lower()
    for suffix in OME_TIFF_SUFFIXES:
        if lowered.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def check_output_path(
    path: Path, image: np.ndarray | None = None, *, inputs: Iterable[Path] = (), report: bool = False
) -> None:
    """Refuse, before any work, outputs that cannot be written or would replace an input.

    ``report``: the path is for a JSON report, whatever its name, not an image.
    """
    if path.is_dir():
        raise FocusFuseError(f"{path}: is a directory; name a file")
    suffix = path.suffix.lower()
    if not report and suffix not in FORMATS:
        raise FocusFuseError(f"{path}: unsupported output format {suffix or '(none)'} ({FORMAT_HINT})")
    if not path.parent.is_dir():
        raise FocusFuseError(f"{path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise FocusFuseError(f"{path}: directory {path.parent} is not writable (permission denied)")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(path.parent, os.W_OK):
        raise FocusFuseError(f"{path}: exists and cannot be replaced (permission denied)")
    resolved = path.resolve()
    for source in inputs:
        if source.resolve() == resolved:
            raise FocusFuseError(f"{path}: is one of the inputs; refusing to overwrite it")
    if image is not None:
        check_format_holds(path, image.dtype)


def check_format_holds(path: Path, dtype: np.dtype, channels: int | None = None) -> None:
    """Refuse an image format that cannot hold these pixels (checked before fusing, not after)."""
    kind = FORMATS.get(path.suffix.lower())
    dtype = np.dtype(dtype)
    if kind == "PNG" and dtype not in (np.uint8, np.uint16):
        raise FocusFuseError(f"{path}: PNG cannot hold {dtype} pixels; write a .tif instead")
    if kind == "JPEG" and dtype != np.uint8:
        raise FocusFuseError(f"{path}: JPEG holds only 8-bit pixels, not {dtype}; write a .tif or .png instead")
    if kind == "JPEG" and channels not in (None, 1, 3):
        raise FocusFuseError(f"{path}: JPEG holds 1 or 3 channels, not {channels}; write a .tif or .png instead")


def check_free_space(paths: Iterable[Path], nbytes: int) -> None:
    """Refuse to start when the outputs' file system has less than ``nbytes`` free."""
    for folder in {path.parent.resolve() for path in paths}:
        free = shutil.disk_usage(folder).free
        if free < nbytes:
            raise FocusFuseError(
                f"{folder}: {free / 2**20:.0f} MiB free, the outputs need up to {nbytes / 2**20:.0f} MiB"
            )


def _readable_as_umask_allows(path: Path) -> None:
    """mkstemp creates 0600; an output should get the mode any new file gets here (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class OutputSet:
    """Outputs written to temporaries, then put in place together: every one whole, or none.

    Use as a context manager: on a clean exit the files are committed, on an
    exception (a stop included) the temporaries are removed and nothing is placed.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final path)

    def _stage(self, path: Path, write: Callable[[Path], None]) -> None:
        try:
            with critical_section():  # a stop between creating the file and recording it would leave it behind
                handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
                os.close(handle)
                temporary = Path(name)
                self._staged.append((temporary, path))
                _unplaced.add(temporary)
            write(temporary)
            _readable_as_umask_allows(temporary)
        except OSError as error:
            raise FocusFuseError(f"{path}: cannot write ({error.strerror or error})") from error

    def image(self, path: Path, image: np.ndarray, physical: PhysicalSize | None = None, **options) -> None:
        """Stage an image (see ``image_writer`` for ``options``)."""
        self._stage(path, image_writer(path, image, physical, **options))

    def json(self, path: Path, record: dict) -> None:
        self.text(path, json.dumps(record, indent=2) + "\n")

    def text(self, path: Path, text: str) -> None:
        def write(temporary: Path) -> None:
            temporary.write_text(text)

        self._stage(path, write)

    def commit(self) -> list[Path]:
        """Rename every staged file into place, in one step a stop waits for; returns the paths."""
        placed: list[Path] = []
        with critical_section():
            try:
                for temporary, path in self._staged:
                    os.replace(temporary, path)
                    _unplaced.discard(temporary)
                    placed.append(path)
            except OSError as error:
                for done in placed:  # the set is whole or absent
                    done.unlink(missing_ok=True)
                self.discard()
                raise FocusFuseError(f"{path}: cannot write ({error.strerror or error})") from error
            self._staged.clear()
            record_written(placed)
        return placed

    def discard(self) -> None:
        """Remove every staged temporary; nothing is placed."""
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
            _unplaced.discard(temporary)
        self._staged.clear()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.discard()  # nothing left to discard after a commit


# Temporaries staged and not yet placed or removed, in this process: a stop that lands
# on the very first instruction of a clean-up (before its ``finally`` is entered)
# leaves them to ``discard_unplaced``, which the command line calls on every failure.
_unplaced: set[Path] = set()


def discard_unplaced() -> None:
    """Remove every staged temporary not yet put in place (after an error or a stop)."""
    for temporary in list(_unplaced):
        temporary.unlink(missing_ok=True)
        _unplaced.discard(temporary)


def write_image(
    path: Path,
    image: np.ndarray,
    physical: PhysicalSize | None = None,
    *,
    channel_axis: bool = False,
    icc_profile: bytes | None = None,
) -> None:
    """Write ``(H, W)`` or ``(H, W, C)`` (RGB(A) order) by the file's extension, atomically.

    A TIFF records ``physical``'s pixel size: as ImageJ metadata where ImageJ can hold
    the image (gray 8/16/32-bit, RGB 8-bit), else as resolution tags in centimetres.
    With ``channel_axis`` the last axis holds channels, not colour samples: the TIFF is
    an ImageJ hyperstack ``CYX``, which Fiji opens as channels. ``icc_profile`` (the
    source's colour profile) is embedded in PNG, JPEG and colour TIFF outputs.
    """
    with OutputSet() as outputs:
        outputs.image(path, image, physical, channel_axis=channel_axis, icc_profile=icc_profile)


def png_gray_alpha(image: np.ndarray) -> bytes:
    """A PNG of gray+alpha pixels ``(H, W, 2)``, 8 or 16 bits (colour type 4), which OpenCV cannot write."""
    height, width = image.shape[:2]
    depth = 16 if image.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(image, dtype=">u2" if depth == 16 else np.uint8).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, depth, 4, 0, 0, 0)
    idat = zlib.compress(raw, 6)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def ome_tiff_arguments(
    image: np.ndarray,
    physical: PhysicalSize | None,
    *,
    channel_axis: bool,
    channel_names: tuple[str, ...] = (),
    name: str | None = None,
    description: str | None = None,
) -> tuple[np.ndarray, dict]:
    """The pixels as stored and the tifffile.imwrite arguments of an OME-TIFF: sizes, channels, its source.

    Channels are stored as planes (``CYX``); colour samples interleaved (``YXS``): RGB(A)
    as RGB, gray with alpha as gray.
    """
    metadata: dict = {}
    arguments: dict = {"ome": True, "photometric": "minisblack", "metadata": metadata}
    if channel_axis and image.ndim == 3:
        pixels, metadata["axes"] = np.moveaxis(image, -1, 0), "CYX"
        if len(channel_names) == image.shape[2]:
            metadata["Channel"] = {"Name": list(channel_names)}
    elif image.ndim == 3:
        pixels, metadata["axes"], arguments["planarconfig"] = image, "YXS", "contig"
        if image.shape[2] in (3, 4):
            arguments["photometric"] = "rgb"
    else:
        pixels, metadata["axes"] = image, "YX"
    if physical is not None and physical.has_pixel_size:
        metadata.update(
            PhysicalSizeX=physical.pixel_x_um,
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=physical.pixel_y_um,
            PhysicalSizeYUnit="µm",
        )
    if name:
        metadata["Name"] = name
    if description:
        metadata["Description"] = description
    return pixels, arguments


def image_writer(
    path: Path,
    image: np.ndarray,
    physical: PhysicalSize | None = None,
    *,
    channel_axis: bool = False,
    icc_profile: bytes | None = None,
    channel_names: tuple[str, ...] = (),
    description: str | None = None,
) -> Callable[[Path], None]:
    """What writes ``image`` as ``path``'s format to a given file (see ``write_image``).

    NAME.ome.tif is an OME-TIFF whose OME-XML holds the pixel size, ``channel_names``
    and ``description`` (what it was made from), for OMERO, QuPath and napari.
    """
    check_format_holds(path, image.dtype)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise FocusFuseError(f"{path}: unsupported output format {path.suffix or '(none)'} ({FORMAT_HINT})")

    def write(temporary: Path) -> None:
        if is_ome_tiff(path):
            pixels, arguments = ome_tiff_arguments(
                image,
                physical,
                channel_axis=channel_axis,
                channel_names=channel_names,
                name=output_stem(path),
                description=description,
            )
            if icc_profile is not None and not channel_axis:
                arguments["iccprofile"] = icc_profile
            tifffile.imwrite(temporary, pixels, **arguments)
            return
        if kind == "TIFF" and channel_axis and image.ndim == 3:
            arguments = tiff_physical_arguments(physical, imagej=True) or {"imagej": True, "metadata": {}}
            arguments["metadata"] = {**arguments["metadata"], "axes": "CYX"}
            tifffile.imwrite(temporary, np.moveaxis(image, -1, 0), photometric="minisblack", **arguments)
            return
        if kind == "TIFF":
            rgb = image.ndim == 3 and image.shape[2] in (3, 4)
            imagej = image.ndim == 2 or (image.shape[2] == 3 and image.dtype == np.uint8)
            physical_arguments = tiff_physical_arguments(physical, imagej)
            if icc_profile is not None:
                physical_arguments["iccprofile"] = icc_profile
            tifffile.imwrite(temporary, image, photometric="rgb" if rgb else "minisblack", **physical_arguments)
            return
        if kind == "PNG" and image.ndim == 3 and image.shape[2] == 2:
            temporary.write_bytes(png_gray_alpha(image))
        else:
            pixels = image
            if image.ndim == 3 and image.shape[2] in (3, 4):
                pixels = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
            elif image.ndim == 3:
                raise FocusFuseError(f"{path}: {kind} cannot hold {image.shape[2]} channels; write a .tif instead")
            # Encoded in memory, written by Python: OpenCV's path-taking calls crash on names that are not UTF-8.
            ok, encoded = cv2.imencode(".png" if kind == "PNG" else ".jpg", pixels)
            if not ok:
                raise FocusFuseError(f"{path}: could not write the {kind} file")
            temporary.write_bytes(encoded.tobytes())
        if icc_profile is not None:
            (embed_in_png if kind == "PNG" else embed_in_jpeg)(temporary, icc_profile)

    return write


def write_json(path: Path, record: dict) -> None:
    """A JSON record, atomically."""
    with OutputSet() as outputs:
        outputs.json(path, record)


def write_text(path: Path, text: str) -> None:
    """A text file, atomically."""
    with OutputSet() as outputs:
        outputs.text(path, text)
