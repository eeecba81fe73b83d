"""Bad and unusual inputs, each built for real: one clear line naming the file, or a correct read."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import focusfuse.io.filecheck as filecheck
from focusfuse.errors import FocusFuseError
from focusfuse.io.reader import open_stack, read_image
from focusfuse.training.synthetic import procedural_texture

from conftest import run_as_nobody


def texture(height=96, width=128, colour=True) -> np.ndarray:
    gray = np.rint(procedural_texture(height, width, np.random.default_rng(0)) * 255).astype(np.uint8)
    return np.dstack([gray, gray[::-1], gray[:, ::-1]]) if colour else gray


def encoded(image: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def refused(path: Path) -> str:
    with pytest.raises(FocusFuseError) as caught:
        read_image(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


@pytest.mark.parametrize(
    ("suffix", "keep"),
    [(".jpg", 0.3), (".jpg", 0.6), (".jpg", 0.95), (".png", 0.2), (".png", 0.7), (".png", 0.99)],
)
def test_a_truncated_jpeg_or_png_is_refused_not_fused_gray(tmp_path, suffix, keep):
    data = encoded(texture(), suffix)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    assert f"truncated {'JPEG' if suffix == '.jpg' else 'PNG'}" in refused(path)


def test_a_truncated_multipage_imagej_tiff_names_the_damage(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([texture(colour=False)] * 6), imagej=True, metadata={"axes": "ZYX"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FocusFuseError) as caught:
        source = open_stack([path])
        for index in range(len(source)):
            source.read(index)
    message = str(caught.value)
    assert "TIFF" in message and "at least 2 slices" not in message and str(path) in message


@pytest.mark.parametrize("compression", ["lzw", "zlib", "jpeg"])
def test_compressed_tiffs_from_acquisition_software_are_read(tmp_path, compression):
    image = texture()
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, image, photometric="rgb", compression=compression)
    back = read_image(path)
    assert back.shape == image.shape and back.dtype == np.uint8
    if compression != "jpeg":
        np.testing.assert_array_equal(back, image)


def test_a_planar_rgb_tiff_is_one_colour_image_not_three_slices(tmp_path):
    image = texture()
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), image)
    with pytest.raises(FocusFuseError, match="at least 2 slices, got 1"):
        from focusfuse import fuse_stack

        fuse_stack([path], device="cpu")


def test_a_tif_holding_png_data_is_read_by_its_content(tmp_path):
    image = texture()
    path = tmp_path / "really-a-png.tif"
    path.write_bytes(encoded(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), ".png"))
    np.testing.assert_array_equal(read_image(path), image)


def exif_orientation_segment(orientation: int) -> bytes:
    """An APP1 Exif segment whose IFD0 holds only the Orientation tag (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def test_a_jpeg_with_exif_orientation_is_read_upright(tmp_path):
    image = texture(64, 128)  # wide, so a turn shows in the shape
    data = encoded(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), ".jpg")
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])  # 6: turn 90 degrees clockwise to view
    upright = read_image(path)
    assert upright.shape == (128, 64, 3)
    plain = read_image_from_bytes(tmp_path / "plain.jpg", data)
    error = np.abs(upright.astype(int) - np.rot90(plain, -1).astype(int)).mean()
    assert error < 1.0


def read_image_from_bytes(path: Path, data: bytes) -> np.ndarray:
    path.write_bytes(data)
    return read_image(path)


def png_bomb(path: Path, width: int, height: int) -> None:
    """A valid PNG of a few hundred bytes whose header declares width x height RGBA 16-bit."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def tiff_bomb(path: Path, width: int, height: int, pages: int) -> None:
    """A small TIFF whose pages each declare width x height RGB 16-bit, with one tiny strip each."""
    entries_per_page = 8
    ifd_size = 2 + entries_per_page * 12 + 4
    data = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for page in range(pages):
        offset = 8 + page * (ifd_size + 6)
        bits_offset = offset + ifd_size
        next_ifd = offset + ifd_size + 6 if page < pages - 1 else 0
        tags = [
            (256, 4, 1, width),
            (257, 4, 1, height),
            (258, 3, 3, bits_offset),
            (259, 3, 1, 1),
            (262, 3, 1, 2),
            (273, 4, 1, 0),
            (277, 3, 1, 3),
            (279, 4, 1, 16),
        ]
        ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags)
        data += ifd + struct.pack("<I", next_ifd) + struct.pack("<HHH", 16, 16, 16)
    path.write_bytes(bytes(data))


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(filecheck, "available_memory", lambda: 2 * 2**30)  # the same on every machine
    png = tmp_path / "bomb.png"
    png_bomb(png, 60000, 60000)
    assert "60000x60000 image needs 26.8 GiB" in refused(png)
    tif = tmp_path / "bomb.tif"
    tiff_bomb(tif, 16000, 16000, 2)
    with pytest.raises(FocusFuseError, match="needs .* GiB to decode"):
        source = open_stack([tif])
        source.read(0)


def test_special_files_and_empty_files_say_what_they_are(tmp_path):
    with pytest.raises(FocusFuseError, match="not a regular file"):
        read_image(Path("/dev/null"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "empty file" in refused(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all, just some text" * 10)
    assert "not a readable image (unknown format)" in refused(junk)


def test_an_imagej_time_series_is_not_taken_for_a_stack(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.stack([texture(colour=False)] * 4), imagej=True, metadata={"axes": "TYX"})
    with pytest.raises(FocusFuseError, match=r"holds a time series \(T=4\), not a z-stack"):
        open_stack([path])


def test_an_unreadable_file_says_permission_denied(shared_tmp):
    path = shared_tmp / "secret.png"
    path.write_bytes(encoded(texture(), ".png"))
    path.chmod(0o000)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        assert refused(path).endswith("permission denied")
        return
    code = f"from pathlib import Path; from focusfuse.io.reader import read_image; read_image(Path({str(path)!r}))"
    completed = run_as_nobody(["-c", code])
    assert completed.returncode != 0 and "secret.png: permission denied" in completed.stderr


def test_a_read_only_output_folder_is_refused_before_fusing(shared_tmp):
    from conftest import EXAMPLES

    output = shared_tmp / "results"
    output.mkdir()
    output.chmod(0o555)
    arguments = ["-m", "focusfuse", "stack", str(EXAMPLES / "stack8"), "-o", str(output / "f.png")]
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        import subprocess

        completed = subprocess.run([sys.executable, *arguments], capture_output=True, text=True)
    else:
        completed = run_as_nobody(arguments)
    assert completed.returncode == 1, completed.stderr
    assert (
        completed.stderr.strip()
        == f"focusfuse: error: {output / 'f.png'}: directory {output} is not writable (permission denied)"
    )
    assert list(output.iterdir()) == []


def test_a_cut_off_last_slice_fails_the_run_before_anything_is_fused(tmp_path, monkeypatch):
    import focusfuse.fusion.pipeline as pipeline
    from focusfuse import fuse_stack

    paths = []
    for k in range(4):
        paths.append(tmp_path / f"z{k}.jpg")
        paths[-1].write_bytes(encoded(np.roll(texture(), 3 * k, axis=1), ".jpg"))
    data = paths[-1].read_bytes()
    paths[-1].write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(pipeline, "shared_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    with pytest.raises(FocusFuseError, match=r"z3\.jpg: truncated JPEG"):
        fuse_stack(paths, device="cpu")


def test_slices_of_another_size_are_refused_before_decoding(tmp_path):
    for k, width in enumerate((128, 128, 120)):
        (tmp_path / f"z{k}.png").write_bytes(encoded(texture(96, width), ".png"))
    with pytest.raises(FocusFuseError, match=r"z2\.png: 120x96 differs from the first slice .*z0\.png \(128x96\)"):
        open_stack([tmp_path])


def test_a_jpeg_damaged_inside_is_refused_though_it_would_decode(tmp_path, capfd):
    """libjpeg decodes it with a gray patch and a warning on stderr: that warning refuses the file."""
    data = bytearray(encoded(texture(), ".jpg"))
    middle = len(data) // 2
    data[middle : middle + 40] = bytes([0xFF, 0x00] * 20)
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    assert "damaged JPEG file (Corrupt JPEG data" in refused(path)
    assert "Corrupt JPEG" not in capfd.readouterr().err, "the decoder's own line is not passed on"


def test_a_stack_declaring_huge_slices_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    """Each file alone would decode (2.5 GiB in 64), but the image-wide arrays of such slices cannot fit the budget."""
    import focusfuse.fusion.pipeline as pipeline
    import focusfuse.io.reader as reader
    from focusfuse import fuse_stack

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # RGB, 8 bits
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"z{k}.png")
        paths[-1].write_bytes(data + chunk(b"IEND", b""))
    monkeypatch.setattr(filecheck, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(pipeline, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(reader.cv2, "imread", lambda *a: pytest.fail("decoded before refusing"))
    with pytest.raises(
        FocusFuseError,
        match=r"z0\.png: fusing 30000x30000 slices needs a budget of at least \d+\.\d GiB; the budget is 2\.0 GiB",
    ):
        fuse_stack(paths, device="cpu")


def test_a_progressive_jpeg_with_an_inconsistent_progression_is_refused_silently(capfd):
    # Found by the fuzzer: libjpeg decodes it, warning on stderr; the warning is the reason to refuse it.
    path = Path(__file__).parent / "data" / "inconsistent-progression.jpg"
    with pytest.raises(FocusFuseError, match=r"damaged JPEG file \(Inconsistent progression sequence"):
        read_image(path)
    assert capfd.readouterr().err == ""


def test_a_tiff_declaring_zero_rows_is_refused(tmp_path):
    # Found by the fuzzer: a bit flip set an ImageJ stack's ImageLength to 0, and reading it raised a traceback.
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.ones((3, 40, 48), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.tags["ImageLength"].valueoffset
    data[offset : offset + 2] = struct.pack("<H", 0)
    path.write_bytes(bytes(data))
    with pytest.raises(FocusFuseError, match=r"stack\.tif: declares an empty image \(axes 'ZYX', shape \(3, 0, 48\)\)"):
        open_stack([path])
