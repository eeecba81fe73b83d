"""ICC colour profiles: read from a stack's first file, written into the fused PNG, JPEG or TIFF.

OpenCV neither reads nor writes them, so they are taken from the files' own
structure: a PNG's ``iCCP`` chunk, a JPEG's ``APP2 ICC_PROFILE`` segments, a TIFF's
InterColorProfile tag. A fused image is made of the source's pixels, so it is in the
source's colour space, and a viewer needs the same profile to show it the same.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import tifffile

from focusfuse.io.filecheck import sniff_format

JPEG_ICC_MARKER = b"ICC_PROFILE\x00"
JPEG_ICC_CHUNK = 65519  # a segment holds 65535 bytes: less its length, marker name, sequence and count


def read_icc_profile(path: Path) -> bytes | None:
    """The embedded ICC profile of a PNG, JPEG or TIFF, or None (also for unreadable structure)."""
    try:
        kind = sniff_format(path)
        if kind == "png":
            return _png_profile(path)
        if kind == "jpeg":
            return _jpeg_profile(path)
        if kind == "tiff":
            with tifffile.TiffFile(path) as tif:
                tag = tif.pages.first.tags.get("InterColorProfile")
                return bytes(tag.value) if tag is not None else None
    except (OSError, ValueError, zlib.error, struct.error, tifffile.TiffFileError):
        return None
    return None


def _png_profile(path: Path) -> bytes | None:
    with open(path, "rb") as handle:
        handle.seek(8)
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind in (b"IDAT", b"IEND"):  # iCCP must come before the image data
                return None
            data = handle.read(length)
            handle.seek(4, 1)  # CRC
            if kind == b"iCCP":
                name_end = data.index(b"\x00")
                return zlib.decompress(data[name_end + 2 :])


def _jpeg_profile(path: Path) -> bytes | None:
    chunks: dict[int, bytes] = {}
    with open(path, "rb") as handle:
        handle.seek(2)
        while True:
            marker = handle.read(2)
            if len(marker) < 2 or marker[0] != 0xFF or marker[1] in (0xDA, 0xD9):  # start of scan, end
                break
            (length,) = struct.unpack(">H", handle.read(2))
            data = handle.read(length - 2)
            if marker[1] == 0xE2 and data.startswith(JPEG_ICC_MARKER):
                chunks[data[12]] = data[14:]
    return b"".join(chunks[number] for number in sorted(chunks)) if chunks else None


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC of type and payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def embed_in_png(path: Path, profile: bytes) -> None:
    """Insert an ``iCCP`` chunk right after IHDR (any earlier one is replaced)."""
    content = path.read_bytes()
    position = 8
    kept = [content[:8]]
    while position < len(content):
        (length,) = struct.unpack(">I", content[position : position + 4])
        kind = content[position + 4 : position + 8]
        end = position + 12 + length
        if kind != b"iCCP":
            kept.append(content[position:end])
        if kind == b"IHDR":
            kept.append(png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile)))
        position = end
    path.write_bytes(b"".join(kept))


def embed_in_jpeg(path: Path, profile: bytes) -> None:
    """Insert ``APP2 ICC_PROFILE`` segments after SOI and any APP0 (JFIF) segment."""
    content = path.read_bytes()
    position = 2
    if content[2:4] == b"\xff\xe0":
        (length,) = struct.unpack(">H", content[4:6])
        position = 4 + length
    pieces = [profile[i : i + JPEG_ICC_CHUNK] for i in range(0, len(profile), JPEG_ICC_CHUNK)]
    segments = b"".join(
        b"\xff\xe2" + struct.pack(">H", 2 + 14 + len(piece)) + JPEG_ICC_MARKER + bytes([number, len(pieces)]) + piece
        for number, piece in enumerate(pieces, start=1)
    )
    path.write_bytes(content[:position] + segments + content[position:])
