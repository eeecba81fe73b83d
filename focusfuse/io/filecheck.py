"""File sanity before decoding: what a file really holds, whether it is whole, whether it fits.

Acquisition folders hold half-copied files, files whose name does not match their
content (a ``.png`` holding JPEG data), and files whose header declares far more
pixels than the machine has memory for. These checks run on the file's first and last
bytes, before any pixel is decoded, so a bad file fails in milliseconds with a line
that names it and the problem, instead of a decoder warning and a gray half-image or
a traceback after allocating tens of gigabytes.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from focusfuse.errors import FocusFuseError

MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)
# A decoded image may take at most this share of the memory available when it is read
# (the fusion needs several times a slice's size besides).
MEMORY_SHARE = 0.5


# What libjpeg and libpng print on stderr while they decode a damaged file anyway.
DECODER_COMPLAINT = re.compile(r"corrupt|premature|bad huffman|libpng|jpeg|warning|invalid|truncat", re.IGNORECASE)
# libpng's warnings about optional chunks (a colour profile that does not match the
# image, an odd gamma or text chunk): the pixels are whole, so the file is read and
# the warning, common in files from cameras and editors, is not printed.
ANCILLARY_CHUNK_WARNING = re.compile(r"libpng warning: (iCCP|sRGB|cHRM|gAMA|tEXt|zTXt|iTXt|pHYs|tIME|bKGD|eXIf)\b")


# fd 2 is one per process: two threads redirecting it at once would each restore the
# other's sink, and stderr would end in a deleted file (warnings and errors lost).
_STDERR_CAPTURE = threading.Lock()


@contextmanager
def decoder_messages() -> Iterator[list[str]]:
    """Collect what native decoders print to the process's stderr (fd 2) meanwhile.

    OpenCV's libjpeg decodes a corrupt JPEG into a partly gray image and only prints
    "Corrupt JPEG data: ..." on fd 2; here that line becomes the reason to refuse the
    file. Anything else written meanwhile (a progress bar) is passed on to stderr.
    One thread at a time: the background decoders take turns (decoding is a small
    part of a fusion's time), and each complaint belongs to the file that caused it.
    """
    with _STDERR_CAPTURE, _captured_stderr() as messages:
        yield messages


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    sys.stderr.flush()
    saved = os.dup(2)
    messages: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            others = []
            for line in sink.read().decode(errors="replace").splitlines(keepends=True):
                if ANCILLARY_CHUNK_WARNING.search(line):
                    continue
                if DECODER_COMPLAINT.search(line):
                    messages.append(line.strip())
                else:
                    others.append(line)
            if others:
                sys.stderr.write("".join(others))


def check_readable(path: Path) -> None:
    """A regular file that this process may read; else one line saying which it is not."""
    label = str(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FocusFuseError(f"{label}: no such file") from None
    except PermissionError:
        raise FocusFuseError(f"{label}: permission denied") from None
    if stat.S_ISDIR(info.st_mode):
        raise FocusFuseError(f"{label}: is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise FocusFuseError(f"{label}: not a regular file (a device, pipe or socket)")
    if not os.access(path, os.R_OK):
        raise FocusFuseError(f"{label}: permission denied")
    if info.st_size == 0:
        raise FocusFuseError(f"{label}: empty file (0 bytes)")


def sniff_format(path: Path) -> str | None:
    """``png``, ``jpeg``, ``tiff``, ``bmp``, ``webp`` or None, from the first bytes, whatever the name says."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _tail(path: Path, count: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - count))
        return handle.read()


def check_complete(path: Path, kind: str | None) -> None:
    """PNG must end with its IEND chunk, JPEG with its end-of-image marker: else it was cut short."""
    if kind == "png" and b"IEND" not in _tail(path, 16):
        raise FocusFuseError(f"{path}: truncated PNG (no IEND chunk at the end; the file was cut short)")
    if kind == "jpeg" and b"\xff\xd9" not in _tail(path, 64).rstrip(b"\x00\r\n "):
        raise FocusFuseError(f"{path}: truncated JPEG (no end-of-image marker; the file was cut short)")


def _png_size(path: Path) -> tuple[int, int, int] | None:
    """(height, width, bytes per pixel) from the IHDR chunk."""
    with open(path, "rb") as handle:
        head = handle.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
    return height, width, channels * max(1, depth // 8)


def _jpeg_size(path: Path) -> tuple[int, int, int] | None:
    """(height, width, bytes per pixel) from the first start-of-frame segment."""
    with open(path, "rb") as handle:
        data = handle.read(1 << 20)  # frames come early; a megabyte covers large EXIF blocks
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            channels = data[position + 9] if position + 9 < len(data) else 3
            return height, width, channels
        position += 2 + length
    return None


def declared_size(path: Path, kind: str | None) -> tuple[int, int, int] | None:
    """(height, width, bytes per pixel) that decoding will produce, from the header; None if unknown."""
    if kind == "png":
        return _png_size(path)
    if kind == "jpeg":
        return _jpeg_size(path)
    return None


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits_memory(label: str, nbytes: int, what: str) -> None:
    """Refuse to decode ``nbytes`` when that is more than ``MEMORY_SHARE`` of the memory available."""
    available = available_memory()
    if available is not None and nbytes > MEMORY_SHARE * available:
        raise FocusFuseError(
            f"{label}: {what} needs {nbytes / 2**30:.1f} GiB to decode, more than half of the "
            f"{available / 2**30:.1f} GiB available (a damaged header or a decompression bomb?)"
        )
