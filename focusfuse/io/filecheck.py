"""File sanity before decoding: what a file really holds, whether it is whole, whether it fits.

Acquisition folders hold half-copied files, files whose name does not match their
content (a ``.png`` holding JPEG data), and files whose header declares far more
pixels than the machine has memory for. These checks walk the file's structure (PNG
chunks, JPEG segments and scans) before any pixel is decoded, so a bad file fails in
milliseconds with a line that names it and the problem, instead of a decoder warning
and a gray half-image or a traceback after allocating tens of gigabytes. A file is
whole when its structure reaches its end marker; what cameras append after that
marker (metadata trailers, previews, padding) is ignored, as the decoders ignore it.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
DECODER_COMPLAINT = re.compile(
    r"corrupt|premature|bad huffman|libpng|jpeg|warning|invalid|truncat|inconsistent progression", re.IGNORECASE
)
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


@dataclass(frozen=True)
class Header:
    """What decoding a PNG or JPEG will give, read from its structure.

    ``channels`` counts what focusfuse's reader returns: a palette expanded to RGB
    (RGBA with a transparency chunk), gray+alpha kept as two channels.
    """

    height: int
    width: int
    channels: int
    sample_bytes: int  # 1 for 8-bit samples, 2 for 16-bit

    @property
    def pixel_bytes(self) -> int:
        return self.channels * self.sample_bytes


@contextmanager
def mapped(path: Path) -> Iterator[mmap.mmap]:
    """The file's bytes, mapped read-only: a walk over a large JPEG's scans copies nothing."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        yield data


PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples; 3 (palette) is RGB or RGBA


def png_header(path: Path) -> Header | None:
    """Walk the PNG's chunks to IEND: truncated when they end first; bytes after IEND are ignored."""
    truncated = FocusFuseError(f"{path}: truncated PNG (its chunks end before the IEND chunk; the file was cut short)")
    with mapped(path) as data:
        size = len(data)
        position, header, transparency = 8, None, False
        while True:
            if position + 12 > size:
                raise truncated
            length, kind = struct.unpack_from(">I4s", data, position)
            if length > 2**31 - 1:
                raise FocusFuseError(f"{path}: damaged PNG file (a chunk declares {length} bytes)")
            if position + 12 + length > size:
                raise truncated
            if kind == b"IHDR" and length >= 13:
                width, height, depth, colour = struct.unpack_from(">IIBB", data, position + 8)
                header = (height, width, depth, colour)
            elif kind == b"tRNS":
                transparency = True
            elif kind == b"IEND":
                break
            position += 12 + length
    if header is None:
        return None
    height, width, depth, colour = header
    channels = (4 if transparency else 3) if colour == 3 else PNG_CHANNELS.get(colour, 4)
    return Header(height, width, channels, 2 if depth == 16 else 1)


# In a JPEG's entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart
# marker; any other byte after one or more 0xFF is the next real marker. Written with a
# literal first byte, which Python's regex engine finds by a fast scan: \xff+ first walked
# the scan byte by byte (7.3 against 0.6 ms for a 0.9 MB pcb10 JPEG).
JPEG_MARKER_IN_SCAN = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")
EXIF_ROTATED = (5, 6, 7, 8)  # orientations that turn the image by 90 degrees: width and height swap


def jpeg_header(path: Path) -> Header | None:
    """Walk the JPEG's segments and scans to its end-of-image marker: truncated when the data ends first.

    What follows the marker (camera trailers, an MPF preview, zero padding) is
    ignored, as libjpeg ignores it. The size is the upright one, after the EXIF
    orientation that the reader applies.
    """
    truncated = FocusFuseError(
        f"{path}: truncated JPEG (the image data ends before its end-of-image marker; the file was cut short)"
    )
    frame, orientation = None, 1
    with mapped(path) as data:
        size, position = len(data), 2
        while True:
            marker_start = data.find(b"\xff", position)  # past stray bytes: libjpeg's decoder judges them
            position = size if marker_start < 0 else marker_start
            while position + 1 < size and data[position + 1] == 0xFF:  # fill bytes before a marker
                position += 1
            if position + 2 > size:
                raise truncated
            marker = data[position + 1]
            if marker == 0xD9:
                break
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                position += 2
                continue
            if position + 4 > size:
                raise truncated
            (length,) = struct.unpack_from(">H", data, position + 2)
            segment_end = position + 2 + length
            if segment_end > size:
                raise truncated
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and length >= 8 and frame is None:
                height, width = struct.unpack_from(">HH", data, position + 5)
                frame = (height, width, data[position + 9])
            elif marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
                orientation = _exif_orientation(data[position + 10 : segment_end]) or orientation
            if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
                found = JPEG_MARKER_IN_SCAN.search(data, segment_end)
                if found is None:
                    raise truncated
                position = found.end() - 2
            else:
                position = segment_end
    if frame is None:
        return None
    height, width, components = frame
    if orientation in EXIF_ROTATED:
        height, width = width, height
    return Header(height, width, 1 if components == 1 else 3, 1)


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of an Exif block's IFD0, or None."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for entry in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, offset + 2 + 12 * entry)
            if tag == 0x0112 and kind == 3:
                return value
    except (KeyError, struct.error):
        return None
    return None


def declared_header(path: Path, kind: str | None) -> Header | None:
    """What decoding will produce, from the file's structure (None if unknown); refuses a file cut short."""
    if kind == "png":
        return png_header(path)
    if kind == "jpeg":
        return jpeg_header(path)
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
