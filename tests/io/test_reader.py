"""Reading stacks: directories, explicit lists, multipage TIFFs, and clear errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from focusfuse.errors import FocusFuseError
from focusfuse.io.reader import natural_key, open_stack, read_image


def write_png(path, image):
    cv2.imwrite(str(path), image)
    return path


def planes(n=3, shape=(10, 12), dtype=np.uint8):
    return [np.full(shape, 10 * (k + 1), dtype) for k in range(n)]


def test_natural_sort_puts_z2_before_z10():
    names = ["z10.png", "z2.png", "z1.png", "Z3.png"]
    assert sorted(names, key=natural_key) == ["z1.png", "z2.png", "Z3.png", "z10.png"]


def test_directory_is_read_in_natural_order(tmp_path):
    for k in (10, 2, 1):
        write_png(tmp_path / f"z{k}.png", np.full((4, 5), k, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    stack = open_stack([tmp_path])
    assert [int(stack.read(i)[0, 0]) for i in range(len(stack))] == [1, 2, 10]


def test_explicit_list_keeps_its_order(tmp_path):
    paths = [write_png(tmp_path / f"s{k}.png", np.full((4, 5), k, np.uint8)) for k in (1, 2, 3)]
    stack = open_stack([paths[2], paths[0], paths[1]])
    assert [int(stack.read(i)[0, 0]) for i in range(3)] == [3, 1, 2]


def test_colour_png_is_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's order
    image = read_image(write_png(tmp_path / "red.png", bgr))
    assert image[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize(
    "data, options",
    [
        (np.stack(planes(5)), {}),
        (np.stack(planes(4, (10, 12, 3))), {"photometric": "rgb"}),
        (np.stack(planes(6, dtype=np.uint16)), {"imagej": True, "metadata": {"axes": "ZYX"}}),
        (np.stack(planes(6, (3, 10, 12), np.uint16)), {"imagej": True, "metadata": {"axes": "ZCYX"}}),
        (np.stack(planes(7, dtype=np.float32)) / 100, {"ome": True, "metadata": {"axes": "ZYX"}}),
        (np.stack(planes(7, (2, 10, 12))), {"ome": True, "metadata": {"axes": "ZCYX"}}),
    ],
    ids=["multipage", "rgb-pages", "imagej-z", "imagej-zc", "ome-z", "ome-zc"],
)
def test_multipage_tiff_planes_come_back_exactly(tmp_path, data, options):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, **options)
    stack = open_stack([path])
    assert len(stack) == data.shape[0]
    for z in range(len(stack)):
        expected = data[z]
        if options.get("metadata", {}).get("axes") == "ZCYX":
            expected = np.moveaxis(expected, 0, -1)
        np.testing.assert_array_equal(stack.read(z), expected)
        assert stack.read(z).dtype == data.dtype


def test_time_series_tiff_is_refused_with_its_axes(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 10, 12), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(FocusFuseError, match=r"movie\.tif.*only a Z stack.*T"):
        open_stack([path])


def test_mismatched_slice_names_the_file(tmp_path):
    first = write_png(tmp_path / "a.png", np.zeros((4, 5), np.uint8))
    second = write_png(tmp_path / "b.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(FocusFuseError, match=r"b\.png: 5x6 differs from the first slice .*a\.png \(5x4\)"):
        open_stack([first, second])  # from the headers, before decoding
    deeper = write_png(tmp_path / "c.png", np.zeros((4, 5), np.uint16))
    with pytest.raises(FocusFuseError, match=r"c\.png: 5x4, 16-bit differs .*a\.png \(5x4, 8-bit\)"):
        open_stack([first, deeper])
    as_tiff = tmp_path / "d.tif"  # TIFF headers are not compared: the decoded slice is
    import tifffile

    tifffile.imwrite(as_tiff, np.zeros((4, 5), np.uint16))
    stack = open_stack([first, as_tiff])
    stack.read(0)
    with pytest.raises(FocusFuseError, match=r"d\.tif: shape \(4, 5\) uint16 differs from the first slice"):
        stack.read(1)


def test_unreadable_and_missing_files_are_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(FocusFuseError, match=r"broken\.png: not a readable image"):
        read_image(broken)
    with pytest.raises(FocusFuseError, match=r"nothere\.png: no such file or directory"):
        open_stack([tmp_path / "nothere.png", broken])


def test_unsupported_pixel_type_is_named(tmp_path):
    path = tmp_path / "signed.tif"
    tifffile.imwrite(path, np.zeros((4, 5), np.int16))
    with pytest.raises(FocusFuseError, match=r"signed\.tif: unsupported pixel type int16"):
        read_image(path)


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FocusFuseError, match="no images"):
        open_stack([tmp_path])


def test_decoding_in_many_threads_leaves_stderr_where_it_was(tmp_path):
    """Regression: concurrent decoders each redirected fd 2 and restored another's sink; stderr was lost."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    paths = []
    for number in range(24):
        path = tmp_path / f"z{number}.{'jpg' if number % 2 else 'png'}"
        cv2.imwrite(str(path), (rng.random((64, 64)) * 255).astype(np.uint8))
        paths.append(path)
    before = os.fstat(2)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(4):
            list(pool.map(read_image, paths))
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
