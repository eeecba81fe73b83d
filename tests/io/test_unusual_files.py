"""Valid files that cameras, microscopes and editors write, each a stack fused like the same pixels as plain PNGs.

Every case writes a 4-slice stack in its unusual form, decodes the same files with
OpenCV or tifffile on their own (upright by EXIF, palette expanded) into plain PNGs,
and fuses both: the fused images and index maps must be identical.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from focusfuse import fuse_stack
from focusfuse.io.reader import open_stack

from conftest import step_depth_stack

SLICES = 4


def slices(colour: bool = True) -> list[np.ndarray]:
    return step_depth_stack(n_slices=SLICES, size=64, colour=colour).slices


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1] if image.ndim == 3 else image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image[:, :, ::-1] if image.ndim == 3 else image)
    assert ok
    return data.tobytes()


def exif_orientation_segment(orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def as_plain_pngs(files: list[Path], folder: Path) -> list[Path]:
    """Each file decoded by OpenCV alone (EXIF orientation applied, palette expanded), written as a PNG."""
    folder.mkdir()
    plain = []
    for number, file in enumerate(files):
        pixels = cv2.imdecode(np.fromfile(file, np.uint8), cv2.IMREAD_COLOR)
        plain.append(folder / f"z{number}.png")
        assert cv2.imwrite(str(plain[-1]), pixels)
    return plain


def assert_fuses_like(inputs, plain: list[Path], **options) -> None:
    fused = fuse_stack(inputs, device="cpu", **options)
    reference = fuse_stack(plain, device="cpu", **options)
    np.testing.assert_array_equal(fused.index_map, reference.index_map)
    np.testing.assert_array_equal(fused.fused, reference.fused)


TRAILERS = {
    "microscope metadata": b"<AcquisitionInfo objective='20x' stage_z='1042.5'/>" * 40,
    "samsung seft": b"\x00\x00SEFH" + os.urandom(600) + b"SEFT",
    "zero padding": b"\x00" * 4096,
}


@pytest.mark.parametrize("trailer", sorted(TRAILERS))
def test_jpegs_with_a_trailer_after_the_end_of_image_marker_fuse(tmp_path, trailer):
    files = []
    for number, image in enumerate(slices()):
        files.append(tmp_path / f"z{number}.jpg")
        files[-1].write_bytes(jpeg(image) + TRAILERS[trailer])
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_jpegs_with_an_mpf_preview_then_a_trailer_fuse(tmp_path):
    files = []
    for number, image in enumerate(slices()):
        main = jpeg(image)
        preview = jpeg(cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA))
        mpf = b"\xff\xe2" + struct.pack(">H", 2 + 4 + 8) + b"MPF\x00" + b"II*\x00\x08\x00\x00\x00"
        files.append(tmp_path / f"z{number}.jpg")
        files[-1].write_bytes(main[:2] + mpf + main[2:] + preview + b"camera trailer" * 50)
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_pngs_with_bytes_after_iend_fuse(tmp_path):
    files = []
    for number, image in enumerate(slices()):
        files.append(tmp_path / f"z{number}.png")
        files[-1].write_bytes(png(image) + b"\x00" * 100 + b"editor metadata")
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_jpegs_of_mixed_exif_orientations_fuse_upright(tmp_path):
    """The camera turned between shots: stored 64x48 and 48x64, the same size upright."""
    turns = {1: 0, 6: 1, 8: 3, 3: 2}  # orientation -> quarter turns (anticlockwise) of the stored pixels
    files = []
    for number, (image, orientation) in enumerate(zip(slices(), turns, strict=True)):
        stored = np.ascontiguousarray(np.rot90(image[:, 8:56], turns[orientation]))
        data = jpeg(stored)
        files.append(tmp_path / f"z{number}.jpg")
        files[-1].write_bytes(data[:2] + exif_orientation_segment(orientation) + data[2:])
    assert open_stack([tmp_path]).declared_size == (64, 48)
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_a_folder_of_palette_and_truecolour_pngs_fuses(tmp_path):
    """A PNG optimiser stored some slices indexed: the same RGB pixels."""
    from PIL import Image

    files = []
    for number, image in enumerate(slices()):
        few_colours = (image // 32 * 32).astype(np.uint8)  # at most 512 colours -> quantise to 256 exactly below
        few_colours[..., 2] = few_colours[..., 1]
        files.append(tmp_path / f"z{number}.png")
        if number % 2:
            Image.fromarray(few_colours).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(files[-1])
        else:
            Image.fromarray(few_colours).save(files[-1])
    assert {Image.open(f).mode for f in files} == {"P", "RGB"}
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_a_folder_of_jfif_files_is_a_stack(tmp_path):
    files = []
    for number, (image, suffix) in enumerate(zip(slices(), (".jfif", ".JFIF", ".jpe", ".jfif"), strict=True)):
        files.append(tmp_path / f"z{number}{suffix}")
        files[-1].write_bytes(jpeg(image))
    (tmp_path / "notes.txt").write_text("objective 20x")
    assert len(open_stack([tmp_path])) == SLICES
    assert_fuses_like([tmp_path], as_plain_pngs(files, tmp_path / "plain"))


def test_images_without_a_known_suffix_are_found_by_content(tmp_path):
    for number, image in enumerate(slices()):
        (tmp_path / f"slice_{number:03d}.raw0").write_bytes(png(image))
    (tmp_path / "acquisition.log").write_text("done")
    (tmp_path / "settings").write_bytes(b"exposure=20ms\n")
    assert [Path(label).name for label in open_stack([tmp_path]).labels] == [
        f"slice_{number:03d}.raw0" for number in range(SLICES)
    ]


def multi_file_ome(folder: Path, planes: list[np.ndarray], *, companion: bool) -> list[Path]:
    """One plane per file, as Bio-Formats writes it: every file holds the whole set's OME-XML, or a
    BinaryOnly element pointing at a ``.companion.ome`` file; written in an order other than Z."""
    height, width = planes[0].shape
    names = [f"cells_T0_Z{z}.ome.tif" for z in range(len(planes))]
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in planes]
    tiff_data = "".join(
        f'<TiffData FirstZ="{z}" FirstC="0" FirstT="0" IFD="0" PlaneCount="1">'
        f'<UUID FileName="{names[z]}">{uuids[z]}</UUID></TiffData>'
        for z in range(len(planes))
    )
    namespace = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
    pixels = (
        f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="{width}" '
        f'SizeY="{height}" SizeZ="{len(planes)}" SizeC="1" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5" '
        f'PhysicalSizeZ="2.0"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tiff_data}</Pixels></Image>'
    )
    if companion:
        (folder / "cells.companion.ome").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{namespace}" UUID="urn:uuid:{uuid.uuid4()}">'
            f"{pixels}</OME>"
        )
    for z in (2, 0, 3, 1)[: len(planes)]:
        if companion:
            description = (
                f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{namespace}" UUID="{uuids[z]}">'
                f'<BinaryOnly MetadataFile="cells.companion.ome" UUID="urn:uuid:0"/></OME>'
            )
        else:
            description = (
                f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="{namespace}" UUID="{uuids[z]}">{pixels}</OME>'
            )
        tifffile.imwrite(folder / names[z], planes[z], description=description, metadata=None)
    return [folder / name for name in names]


@pytest.mark.parametrize("companion", [False, True], ids=["xml-in-every-file", "companion-file"])
def test_a_multi_file_ome_tiff_is_one_stack_in_z_order(tmp_path, capfd, companion):
    folder = tmp_path / "ome"
    folder.mkdir()
    planes = slices(colour=False)
    files = multi_file_ome(folder, planes, companion=companion)
    plain = tmp_path / "plain"
    plain.mkdir()
    for z, plane in enumerate(planes):
        cv2.imwrite(str(plain / f"z{z}.png"), plane)
    stack = open_stack([folder])
    assert [Path(label).name for label in stack.labels] == [f.name for f in files]
    assert (stack.physical.pixel_x_um, stack.physical.z_step_um) == (0.5, 2.0)
    assert_fuses_like([folder], sorted(plain.iterdir()))
    assert_fuses_like([files[1]], sorted(plain.iterdir()))  # one file names the whole set
    assert capfd.readouterr().err == "", "no tifffile warning escapes"


def test_a_gray_alpha_png_stack_stays_gray_alpha(tmp_path):
    from PIL import Image

    for number, image in enumerate(slices(colour=False)):
        alpha = np.full_like(image, 255)
        alpha[:4] = 0
        Image.fromarray(np.dstack([image, alpha]), "LA").save(tmp_path / f"z{number}.png")
    output = tmp_path / "out" / "fused.png"
    output.parent.mkdir()
    result = fuse_stack([tmp_path], device="cpu", output=output)
    assert result.fused.shape == (64, 64, 2)
    written = Image.open(output)
    assert written.mode == "LA"
    np.testing.assert_array_equal(np.asarray(written), result.fused)


LATIN1_FOLDER = b"Probe_m\xe4rz"  # "Probe_märz" as a Latin-1 name from an older Windows share


def test_names_that_are_not_utf8_are_read_and_printed_escaped(tmp_path):
    """Regression: OpenCV's imread crashed (SIGSEGV, no message) on such paths."""
    folder = os.fsencode(tmp_path) + b"/" + LATIN1_FOLDER
    os.mkdir(folder)
    for number, image in enumerate(slices()):
        with open(folder + b"/sch\xe4rfe_%d.jpg" % number, "wb") as handle:
            handle.write(jpeg(image))
    output = os.fsencode(tmp_path) + b"/fus\xe9.png"
    command = [sys.executable, "-m", "focusfuse", "stack", folder, "-o", output, "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert cv2.imdecode(np.fromfile(os.fsdecode(output), np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)

    with open(folder + b"/sch\xe4rfe_3.jpg", "r+b") as handle:
        handle.truncate(500)
    done = subprocess.run(command, capture_output=True, timeout=600)
    assert done.returncode == 1
    lines = done.stderr.decode("utf-8").splitlines()  # printable whatever the terminal's encoding
    assert len(lines) == 1 and "truncated JPEG" in lines[0], lines
    assert "Probe_m\\udce4rz" in lines[0] or "Probe_m\\xe4rz" in lines[0], lines


def test_a_truncated_file_is_still_refused_whatever_follows_its_header(tmp_path):
    """The structure walk, not the last bytes: a JPEG cut inside its scan with zero padding after it."""
    data = jpeg(slices()[0])
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2] + b"\x00" * 4096)
    from focusfuse.errors import FocusFuseError
    from focusfuse.io.reader import read_image

    with pytest.raises(FocusFuseError, match="truncated JPEG"):
        read_image(path)


def test_batch_finds_a_multi_file_ome_tiff_folder_as_one_stack(tmp_path):
    from focusfuse.batch.discovery import discover_stacks

    folder = tmp_path / "acquisition" / "well_B3"
    folder.mkdir(parents=True)
    multi_file_ome(folder, slices(colour=False), companion=False)
    found = discover_stacks([tmp_path / "acquisition"], tmp_path / "fused")
    assert [(job.name, job.n_slices) for job in found.jobs] == [("well_B3", SLICES)]
