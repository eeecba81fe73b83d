"""Reading a z-stack: a directory, an explicit list of files, or one multipage TIFF.

Slices are read one at a time (``StackSource.read``), so memory does not grow with
the number of slices. Every problem with an input is a FocusFuseError that names
the file and what is wrong with it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import cv2.utils.logging as cv2_logging
import numpy as np
import tifffile

from focusfuse.errors import FocusFuseError
from focusfuse.io.color import SUPPORTED_DTYPES
from focusfuse.io.filecheck import (
    Header,
    check_fits_memory,
    check_readable,
    declared_header,
    decoder_messages,
    sniff_format,
)
from focusfuse.io.icc import read_icc_profile
from focusfuse.io.metadata import PhysicalSize, read_physical_size
from focusfuse.io.microscope import MICROSCOPE_SUFFIXES, SeriesSelection, microscope_kind, open_microscope_stack
from focusfuse.io.ome_files import OmeDataset, multi_file_dataset, read_ome_plane

# OpenCV's own warnings and errors (a failed decode) would print library-worded lines
# beside ours: every failure is reported by the reader, naming the file.
cv2_logging.setLogLevel(cv2_logging.LOG_LEVEL_SILENT)

# The names cameras, microscopes and editors give image files; a file with another
# name is a slice when its first bytes say it is an image (``images_in_folder``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jfi", ".jif", ".tif", ".tiff", ".bmp", ".dib", ".webp")
# Files beside the slices that are never slices: sidecars, notes, thumbnails' databases.
NOT_IMAGE_SUFFIXES = (".txt", ".xml", ".json", ".csv", ".md", ".log", ".ome", ".db", ".ini", ".yaml", ".yml", ".py")
TIFF_SUFFIXES = (".tif", ".tiff")
STACK_AXES = ("Z", "I", "Q")  # tifffile's names for the axis that runs through the slices
AXIS_NAMES = {"T": "time series", "Z": "z-stack", "C": "channels", "R": "tile grid", "V": "views", "E": "lambda stack"}


def natural_key(name: str) -> list:
    """Sort key that orders digits by value: z2 before z10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_array(image: np.ndarray, label: str, *, channel_axis: bool = False) -> np.ndarray:
    """Supported dtype, 2-D gray or colour (up to 4 samples; any number of channels for a channel stack)."""
    if image.dtype not in SUPPORTED_DTYPES:
        raise FocusFuseError(f"{label}: unsupported pixel type {image.dtype} (use uint8, uint16 or float32)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.size == 0:
        raise FocusFuseError(f"{label}: declares an empty image (shape {image.shape})")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4 and not channel_axis):
        raise FocusFuseError(f"{label}: expected a 2-D gray or colour image, got shape {image.shape}")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise FocusFuseError(f"{label}: contains NaN or infinite values")
    return image


class _TiffWarnings(logging.Handler):
    """Collects what tifffile logs while a file is read: its warnings mean a damaged file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def tiff_errors(label: str, problem: str = "not a readable TIFF") -> Iterator[None]:
    """Everything tifffile objects to while a file is read, as one FocusFuseError naming the file.

    tifffile raises many types for damaged files (``problem``, with its message); a
    TIFF it reads only with warnings (cut short, bad offsets) is refused too, naming
    the damage.
    """
    logger = logging.getLogger("tifffile")
    handler = _TiffWarnings()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    except FocusFuseError:
        raise
    except Exception as error:
        raise FocusFuseError(f"{label}: {problem} ({error})") from error
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if handler.messages:
        first = handler.messages[0].splitlines()[0]
        raise FocusFuseError(f"{label}: damaged TIFF ({first})")


def _series_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _read_tiff_image(path: Path, label: str) -> np.ndarray:
    # One plane of a multi-file OME-TIFF is read as the plain TIFF it is: its OME
    # series spans the other files, and reading through it reads them too.
    with tiff_errors(label):
        plain = multi_file_dataset(path) is not None
    with tiff_errors(label), tifffile.TiffFile(path, is_ome=False if plain else None) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        check_fits_memory(label, _series_nbytes(shape, series.dtype), f"a {'x'.join(map(str, shape))} TIFF")
        image = series.asarray()
    if axes.endswith("SYX") and image.ndim == 3:  # planar configuration: one plane per colour
        image = np.ascontiguousarray(np.moveaxis(image, 0, -1))
    if image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4):
        raise FocusFuseError(f"{label}: holds {image.shape[0]} planes; pass it alone to fuse it as a multipage stack")
    return _check_array(image, label)


def check_file(path: Path) -> tuple[str | None, Header | None]:
    """Readable, whole and decodable within memory, from the file's structure, before decoding.

    Returns the format found in the first bytes and, for PNG and JPEG, what decoding
    will give. TIFFs are checked as tifffile opens them.
    """
    check_readable(path)
    kind = sniff_format(path)
    if kind == "tiff":
        return kind, None
    header = declared_header(path, kind)
    if header is not None:
        check_fits_memory(
            str(path), header.height * header.width * header.pixel_bytes, f"a {header.width}x{header.height} image"
        )
    return kind, header


def read_image(path: Path) -> np.ndarray:
    """One 2-D image, ``(H, W)`` or ``(H, W, C)`` with channels in RGB(A) order.

    The format is read from the file's first bytes, not its name. Truncated PNG and
    JPEG files and images too large for memory are refused before decoding; JPEGs are
    turned upright by their EXIF orientation, as viewers show them.
    """
    label = str(path)
    kind, header = check_file(path)
    if kind == "tiff":
        return _read_tiff_image(path, label)
    # Decoded from the bytes, not the path: OpenCV's path-taking calls crash on names
    # that are not UTF-8 (a Latin-1 name from an older Windows share).
    with open(path, "rb") as handle:
        encoded = np.frombuffer(handle.read(), np.uint8)
    # IMREAD_UNCHANGED keeps alpha and 16 bits but ignores EXIF orientation; JPEG has
    # neither alpha nor 16 bits, so it is read with orientation applied.
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if kind == "jpeg" else cv2.IMREAD_UNCHANGED
    with decoder_messages() as complaints:
        try:
            decoded: np.ndarray | None = cv2.imdecode(encoded, flags)
        except cv2.error:  # OpenCV refuses some headers by assertion (a height beyond its limit)
            decoded = None
    if complaints:
        raise FocusFuseError(f"{label}: damaged {(kind or 'image').upper()} file ({complaints[0]})")
    if decoded is not None:
        image = decoded
    else:
        try:
            import imageio.v3 as iio

            with warnings.catch_warnings():  # Pillow's warnings about a damaged file: the error below says it
                warnings.simplefilter("ignore")
                image = np.asarray(iio.imread(encoded.tobytes()))
        except Exception as error:
            what = f"damaged {kind.upper()} file" if kind else "unknown format"
            raise FocusFuseError(f"{label}: not a readable image ({what})") from error
    if decoded is not None and image.ndim == 3:
        if header is not None and header.channels == 2 and image.shape[2] == 4:
            image = np.ascontiguousarray(image[:, :, [0, 3]])  # OpenCV gives gray+alpha as BGRA: keep gray, alpha
        else:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return _check_array(image, label)


def _colour_samples(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else image.shape[2]


def same_pixels_as(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``image`` with the colour samples of ``shape`` where no pixel changes, else None.

    Gray becomes RGB(A) by repeating it; RGB whose samples are equal becomes gray; an
    alpha channel that is opaque everywhere is dropped, and an opaque one added.
    """
    if image.shape[:2] != shape[:2]:
        return None
    have, want = _colour_samples(image), 1 if len(shape) == 2 else shape[2]
    opaque = np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1.0
    if have in (2, 4):  # alpha: drop it only when it hides nothing
        if not (image[:, :, -1] == opaque).all():
            return None
        image = image[:, :, 0] if have == 2 else image[:, :, :3]
    if want in (2, 4):
        colour = same_pixels_as(image, shape[:2] + ((want - 1,) if want == 4 else ()))
        if colour is None:
            return None
        alpha = np.full(shape[:2], opaque, image.dtype)
        return np.dstack([colour, alpha])
    if _colour_samples(image) == want:
        return image
    if want == 3 and image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if want == 1 and image.ndim == 3 and (image[:, :, 0:1] == image).all():
        return np.ascontiguousarray(image[:, :, 0])
    return None


@dataclass
class StackSource:
    """A z-stack that reads its slices on demand.

    Attributes:
        labels: one name per slice for messages and reports (``file`` or ``file[z=3]``).
        paths: every input file (to refuse to overwrite one).
    """

    labels: list[str]
    paths: list[Path]
    reader: Callable[[int], np.ndarray]
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    declared_size: tuple[int, int] | None = None  # (height, width) from the headers, before decoding
    physical: PhysicalSize = PhysicalSize()  # from the (first) TIFF's metadata
    axes: str = "YX"  # the TIFF series' axes, or YX / YXS for image files
    channel_axis: bool = False  # the last axis holds channels (TIFF C, one folder each), not RGB samples
    icc_profile: bytes | None = None  # the first file's colour profile, for the fused image
    channel_names: tuple[str, ...] = ()  # as the acquisition named them (microscope files), for OME-TIFF outputs
    source_format: str | None = None  # CZI, ND2, LIF or OME-Zarr for microscope files
    contents: tuple[str, ...] = ()  # a microscope file's series (``scene 0 (A1): 400x300 Z=4 C=2``), for info

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> np.ndarray:
        """Slice ``index``; checks it matches the first slice in shape and dtype.

        A slice stored with other colour samples but the same pixels (gray where the
        first is RGB, an opaque alpha channel beside it) is converted, losslessly, to
        the first slice's: PNG optimisers and cameras store the slices of one stack so.
        """
        image = self.reader(index)
        if self.shape is None:
            self.shape, self.dtype = image.shape, image.dtype
        elif image.shape != self.shape and image.dtype == self.dtype and not self.channel_axis:
            converted = same_pixels_as(image, self.shape)
            image = image if converted is None else converted
        if image.shape != self.shape or image.dtype != self.dtype:
            raise FocusFuseError(
                f"{self.labels[index]}: shape {image.shape} {image.dtype} differs from the first slice "
                f"{self.labels[0]} ({self.shape} {self.dtype})"
            )
        return image


def _tiff_stack(path: Path) -> StackSource | None:
    """The multipage stack in a TIFF, or None when the file holds a single image."""
    with tiff_errors(str(path)), tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        page_count = len(series.pages)
        dtype = series.dtype
    image_axes = "YXS" if axes.endswith("S") else "YX"
    page_axes = axes[: len(axes) - len(image_axes)]
    if not axes.endswith(image_axes):
        raise FocusFuseError(f"{path}: unsupported TIFF axis order {axes!r}")
    stack_axis = next((a for a in STACK_AXES if a in page_axes and shape[page_axes.index(a)] > 1), None)
    if stack_axis is None:
        others = {a: shape[page_axes.index(a)] for a in page_axes if a not in "CS" and shape[page_axes.index(a)] > 1}
        if others:
            named = ", ".join(f"{AXIS_NAMES.get(a, a)} ({a}={n})" for a, n in others.items())
            raise FocusFuseError(f"{path}: holds a {named}, not a z-stack (no Z axis)")
        return None
    check_fits_memory(
        f"{path}[z=0]", _series_nbytes(shape, dtype) // shape[page_axes.index(stack_axis)], "one plane of this TIFF"
    )
    extra = [a for a in page_axes if a not in (stack_axis, "C", "S") and shape[axes.index(a)] > 1]
    if extra:
        raise FocusFuseError(
            f"{path}: axes {axes!r} {shape}: only a Z stack (with optional channels C) is supported, "
            f"not {''.join(extra)}"
        )
    page_shape = shape[: len(page_axes)]
    if 0 in shape:
        raise FocusFuseError(f"{path}: declares an empty image (axes {axes!r}, shape {shape})")
    channel_axis = "C" in page_axes and shape[page_axes.index("C")] > 1
    stack_position = page_axes.index(stack_axis)
    depth = shape[stack_position]
    contiguous_pages = int(np.prod(page_shape)) == page_count
    image_shape = tuple(shape[len(page_axes) :])

    def read_plane(index: int) -> np.ndarray:
        label = f"{path}[z={index}]"
        with tiff_errors(label, "cannot read this plane"):
            if contiguous_pages:
                ranges = [range(n) for n in page_shape]
                ranges[stack_position] = range(index, index + 1)
                keys = [int(np.ravel_multi_index(combo, page_shape)) for combo in itertools.product(*ranges)]
                with tifffile.TiffFile(path) as tif:
                    plane = tif.asarray(key=keys, series=0)
            else:
                # Pages do not map one-to-one to planes: read the series, keep one plane.
                plane = np.take(tifffile.imread(path, series=0), index, axis=stack_position)
        # Leading axes are the page axes other than Z (at most C), then Y, X (and S).
        plane = plane.reshape((-1,) + image_shape)
        if plane.shape[0] == 1:
            plane = plane[0]
        else:
            plane = np.moveaxis(plane, 0, -1).reshape(image_shape[:2] + (-1,))
        return _check_array(np.ascontiguousarray(plane), label, channel_axis=channel_axis)

    return StackSource(
        labels=[f"{path}[z={i}]" for i in range(depth)],
        paths=[path],
        reader=read_plane,
        declared_size=(int(image_shape[0]), int(image_shape[1])),
        physical=read_physical_size(path),
        axes=axes,
        channel_axis=channel_axis,
        icc_profile=read_icc_profile(path),
    )


def multipage_depth(path: Path) -> int:
    """How many z-planes a TIFF holds: 1 for a single image (or a file that is not a TIFF inside)."""
    check_readable(path)
    if sniff_format(path) != "tiff":
        return 1
    with tiff_errors(str(path)):
        if multi_file_dataset(path) is not None:
            return 1  # one plane of a stack written one plane per file: its folder is the stack
    stack = _tiff_stack(path)
    return 1 if stack is None else len(stack)


def open_stack(inputs: Sequence[str | os.PathLike], selection: SeriesSelection | None = None) -> StackSource:
    """Open a stack from a directory, a list of image files, one multipage TIFF or one microscope file.

    A directory's images are ordered by natural sort; an explicit list keeps its order.
    A CZI, ND2, LIF or OME-Zarr input gives the z-stack ``selection`` names in it.
    """
    paths = [Path(p) for p in inputs]
    selection = selection or SeriesSelection()
    if not paths:
        raise FocusFuseError("no input given: pass a directory, image files or a multipage TIFF")
    for path in paths:
        if not path.exists():
            raise FocusFuseError(f"{path}: no such file or directory")
        if not path.is_dir():
            check_readable(path)
    kinds = [microscope_kind(path) for path in paths]
    if len(paths) == 1 and kinds[0] is not None:
        return open_microscope_stack(paths[0], selection, kinds[0])
    for path, kind in zip(paths, kinds, strict=True):
        if kind is not None:
            raise FocusFuseError(f"{path}: a {kind} file is a stack of its own; pass it alone")
    if selection.named:
        raise FocusFuseError(
            f"{paths[0]}: {selection.options()} names a scene, position or time point of a CZI, ND2, LIF "
            "or OME-Zarr file; these inputs are images"
        )
    if len(paths) == 1 and paths[0].is_dir():
        paths = _slices_in_folder(paths[0])
    dataset = _one_ome_dataset(paths)
    if dataset is not None:
        return _ome_dataset_stack(dataset)
    if len(paths) == 1 and sniff_format(paths[0]) == "tiff":
        stack = _tiff_stack(paths[0])
        if stack is not None:
            return stack
    for path in paths:
        if path.is_dir():
            raise FocusFuseError(f"{path}: is a directory; pass either one directory or a list of image files")
    size = precheck_files(paths)
    return StackSource(
        labels=[str(p) for p in paths],
        paths=paths,
        reader=lambda i: read_image(paths[i]),
        declared_size=size,
        physical=read_physical_size(paths[0]) if sniff_format(paths[0]) == "tiff" else PhysicalSize(),
        icc_profile=read_icc_profile(paths[0]),
    )


def _one_ome_dataset(paths: list[Path]) -> OmeDataset | None:
    """The multi-file OME-TIFF z-stack that ``paths`` are: one of its files, or all of them (a folder)."""
    if not paths or sniff_format(paths[0]) != "tiff":
        return None
    with tiff_errors(str(paths[0])):
        dataset = multi_file_dataset(paths[0])
    if dataset is None or dataset.size_z < 2:
        return None
    if len(paths) > 1 and {p.resolve() for p in paths} != {f.resolve() for f in dataset.files}:
        return None  # some of its planes, or other images beside them: slices in the order given
    if dataset.size_t > 1:
        raise FocusFuseError(
            f"{dataset.described_in}: a multi-file OME-TIFF holding a time series (T={dataset.size_t}) of "
            f"z-stacks; fuse one time point's files as a list"
        )
    return dataset


def _ome_dataset_stack(dataset: OmeDataset) -> StackSource:
    """Slice z of a multi-file OME-TIFF: its planes of every channel, from the files the OME-XML names."""
    channel_axis = dataset.size_c > 1
    labels = [str(dataset.planes.get((z, 0, 0), (dataset.described_in, 0))[0]) for z in range(dataset.size_z)]

    def read_slice(z: int) -> np.ndarray:
        planes = []
        for c in range(dataset.size_c):
            label = f"{labels[z]}[c={c}]" if channel_axis else labels[z]
            with tiff_errors(label, "cannot read this plane"):
                planes.append(read_ome_plane(dataset, (z, c, 0), label))
        image = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
        return _check_array(np.ascontiguousarray(image), labels[z], channel_axis=channel_axis)

    return StackSource(
        labels=labels,
        paths=list(dataset.files) + ([dataset.described_in] if dataset.described_in not in dataset.files else []),
        reader=read_slice,
        physical=dataset.physical,
        axes="ZCYX" if channel_axis else "ZYX",
        channel_axis=channel_axis,
        icc_profile=None,
    )


def open_channel_stack(folders: Sequence[str | os.PathLike]) -> StackSource:
    """One folder of gray slices per channel (``--channels``): slice j is the j-th image of every folder.

    The folders must hold the same number of images, in natural order; the first
    folder's images name the slices.
    """
    paths = [Path(folder) for folder in folders]
    if len(paths) < 2:
        raise FocusFuseError("--channels: give one folder per channel, at least two")
    per_channel: list[list[Path]] = []
    sizes: list[tuple[int, int] | None] = []
    for folder in paths:
        if not folder.is_dir():
            raise FocusFuseError(f"{folder}: --channels takes folders, one per channel; this is not a folder")
        files = _slices_in_folder(folder)
        if per_channel and len(files) != len(per_channel[0]):
            raise FocusFuseError(
                f"{folder}: {len(files)} images, but {paths[0]} has {len(per_channel[0])}; "
                "every channel needs one image per slice"
            )
        sizes.append(precheck_files(files))
        per_channel.append(files)

    def read_slice(index: int) -> np.ndarray:
        planes = []
        for files in per_channel:
            plane = read_image(files[index])
            if plane.ndim != 2:
                raise FocusFuseError(f"{files[index]}: --channels needs gray images, one channel each")
            planes.append(plane)
        shapes = {(plane.shape, plane.dtype) for plane in planes}
        if len(shapes) > 1:
            raise FocusFuseError(
                f"{per_channel[0][index]}: its channels differ in size or type ({sorted(map(str, shapes))})"
            )
        return np.stack(planes, axis=-1)

    first = per_channel[0]
    return StackSource(
        labels=[str(path) for path in first],
        paths=[path for files in per_channel for path in files],
        reader=read_slice,
        declared_size=sizes[0],
        physical=read_physical_size(first[0]) if sniff_format(first[0]) == "tiff" else PhysicalSize(),
        axes="CYX",
        channel_axis=True,
    )


def is_image_file(path: Path) -> bool:
    """An image by its name (``IMAGE_SUFFIXES``), or, under another name, by its first bytes."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix in NOT_IMAGE_SUFFIXES:
        return False
    try:
        return sniff_format(path) is not None
    except OSError:
        return False


def images_in_folder(folder: Path) -> list[Path]:
    """The folder's image files (hidden ones left out) in natural order: a stack's slices."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def _slices_in_folder(folder: Path) -> list[Path]:
    files = images_in_folder(folder)
    if not files:
        microscope = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in MICROSCOPE_SUFFIXES)
        if microscope:
            raise FocusFuseError(
                f"{folder}: no images, but {len(microscope)} microscope file(s) ({', '.join(microscope[:3])}"
                f"{', ...' if len(microscope) > 3 else ''}): each is a stack; pass one, or use focusfuse batch"
            )
        raise FocusFuseError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return files


def precheck_files(paths: list[Path]) -> tuple[int, int] | None:
    """Every slice file readable, whole and of the first one's declared size, before any is decoded.

    Reads a few bytes at each file's start and end, so a cut-off last slice fails the
    run in milliseconds instead of after the slices before it were fused. Returns the
    first slice's (height, width) where its header tells it.
    """
    first: Header | None = None
    first_kind: str | None = None  # the format of paths[0]: headers are compared within one format
    for number, path in enumerate(paths):
        kind, header = check_file(path)
        if number == 0:
            first_kind = kind
        if header is None:
            continue
        if first is None:
            first = header
        elif kind == first_kind and (header.height, header.width, header.sample_bytes) != (
            first.height,
            first.width,
            first.sample_bytes,
        ):
            # Colour samples are compared after decoding (``StackSource.read``): a palette
            # slice and an RGB one, or gray and RGB, may hold the same pixels.
            depth = f", {8 * header.sample_bytes}-bit" if header.sample_bytes != first.sample_bytes else ""
            first_depth = f", {8 * first.sample_bytes}-bit" if depth else ""
            raise FocusFuseError(
                f"{path}: {header.width}x{header.height}{depth} differs from the first slice {paths[0]} "
                f"({first.width}x{first.height}{first_depth})"
            )
    return None if first is None else (first.height, first.width)
