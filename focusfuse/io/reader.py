"""Reading a z-stack: a directory, an explicit list of files, or one multipage TIFF.

Slices are read one at a time (``StackSource.read``), so memory does not grow with
the number of slices. Every problem with an input is a FocusFuseError that names
the file and what is wrong with it.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from focusfuse.errors import FocusFuseError
from focusfuse.io.color import SUPPORTED_DTYPES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
STACK_AXES = ("Z", "I", "Q")  # tifffile's names for the axis that runs through the slices


def natural_key(name: str) -> list:
    """Sort key that orders digits by value: z2 before z10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _check_array(image: np.ndarray, label: str) -> np.ndarray:
    if image.dtype not in SUPPORTED_DTYPES:
        raise FocusFuseError(f"{label}: unsupported pixel type {image.dtype} (use uint8, uint16 or float32)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] > 4):
        raise FocusFuseError(f"{label}: expected a 2-D gray or colour image, got shape {image.shape}")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise FocusFuseError(f"{label}: contains NaN or infinite values")
    return image


def read_image(path: Path) -> np.ndarray:
    """One 2-D image, ``(H, W)`` or ``(H, W, C)`` with channels in RGB(A) order."""
    label = str(path)
    if not path.is_file():
        raise FocusFuseError(f"{label}: no such file")
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            image = tifffile.imread(path)
        except Exception as error:  # tifffile raises many types for damaged files
            raise FocusFuseError(f"{label}: not a readable TIFF ({error})") from error
        if image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4):
            raise FocusFuseError(
                f"{label}: holds {image.shape[0]} planes; pass it alone to fuse it as a multipage stack"
            )
        return _check_array(image, label)
    decoded: np.ndarray | None = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if decoded is not None:
        image = decoded
    else:
        try:
            import imageio.v3 as iio

            image = np.asarray(iio.imread(path))
        except Exception as error:
            raise FocusFuseError(f"{label}: not a readable image (damaged file or unknown format)") from error
    if decoded is not None and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return _check_array(image, label)


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

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> np.ndarray:
        """Slice ``index``; checks it matches the first slice in shape and dtype."""
        image = self.reader(index)
        if self.shape is None:
            self.shape, self.dtype = image.shape, image.dtype
        elif image.shape != self.shape or image.dtype != self.dtype:
            raise FocusFuseError(
                f"{self.labels[index]}: shape {image.shape} {image.dtype} differs from the first slice "
                f"{self.labels[0]} ({self.shape} {self.dtype})"
            )
        return image


def _tiff_stack(path: Path) -> StackSource | None:
    """The multipage stack in a TIFF, or None when the file holds a single image."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            page_count = len(series.pages)
    except Exception as error:
        raise FocusFuseError(f"{path}: not a readable TIFF ({error})") from error
    image_axes = "YXS" if axes.endswith("S") else "YX"
    page_axes = axes[: len(axes) - len(image_axes)]
    if not axes.endswith(image_axes):
        raise FocusFuseError(f"{path}: unsupported TIFF axis order {axes!r}")
    stack_axis = next((a for a in STACK_AXES if a in page_axes and shape[page_axes.index(a)] > 1), None)
    if stack_axis is None:
        return None
    extra = [a for a in page_axes if a not in (stack_axis, "C") and shape[axes.index(a)] > 1]
    if extra:
        raise FocusFuseError(
            f"{path}: axes {axes!r} {shape}: only a Z stack (with optional channels C) is supported, "
            f"not {''.join(extra)}"
        )
    page_shape = shape[: len(page_axes)]
    stack_position = page_axes.index(stack_axis)
    depth = shape[stack_position]
    contiguous_pages = int(np.prod(page_shape)) == page_count
    image_shape = tuple(shape[len(page_axes) :])

    def read_plane(index: int) -> np.ndarray:
        label = f"{path}[z={index}]"
        try:
            if contiguous_pages:
                ranges = [range(n) for n in page_shape]
                ranges[stack_position] = range(index, index + 1)
                keys = [int(np.ravel_multi_index(combo, page_shape)) for combo in itertools.product(*ranges)]
                with tifffile.TiffFile(path) as tif:
                    plane = tif.asarray(key=keys, series=0)
            else:
                # Pages do not map one-to-one to planes: read the series, keep one plane.
                plane = np.take(tifffile.imread(path, series=0), index, axis=stack_position)
        except Exception as error:
            raise FocusFuseError(f"{label}: cannot read this plane ({error})") from error
        # Leading axes are the page axes other than Z (at most C), then Y, X (and S).
        plane = plane.reshape((-1,) + image_shape)
        if plane.shape[0] == 1:
            plane = plane[0]
        else:
            plane = np.moveaxis(plane, 0, -1).reshape(image_shape[:2] + (-1,))
        return _check_array(np.ascontiguousarray(plane), label)

    return StackSource(labels=[f"{path}[z={i}]" for i in range(depth)], paths=[path], reader=read_plane)


def open_stack(inputs: Sequence[str | os.PathLike]) -> StackSource:
    """Open a stack from a directory, a list of image files, or one multipage TIFF.

    A directory's images are ordered by natural sort; an explicit list keeps its order.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise FocusFuseError("no input given: pass a directory, image files or a multipage TIFF")
    for path in paths:
        if not path.exists():
            raise FocusFuseError(f"{path}: no such file or directory")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(
            (
                p
                for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            ),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise FocusFuseError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
        paths = files
    elif len(paths) == 1 and paths[0].suffix.lower() in TIFF_SUFFIXES:
        stack = _tiff_stack(paths[0])
        if stack is not None:
            return stack
    for path in paths:
        if path.is_dir():
            raise FocusFuseError(f"{path}: is a directory; pass either one directory or a list of image files")
    return StackSource(labels=[str(p) for p in paths], paths=paths, reader=lambda i: read_image(paths[i]))
