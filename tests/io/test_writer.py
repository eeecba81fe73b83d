"""Writing outputs: formats, atomic replacement, refusing to touch inputs."""

from __future__ import annotations

import numpy as np
import pytest

from focusfuse.errors import FocusFuseError
from focusfuse.io.reader import read_image
from focusfuse.io.writer import check_output_path, write_image


@pytest.mark.parametrize(
    "suffix, dtype",
    [(".png", np.uint8), (".png", np.uint16), (".tif", np.float32), (".tif", np.uint16), (".jpg", np.uint8)],
)
def test_round_trip_keeps_dtype(tmp_path, suffix, dtype):
    image = (np.arange(5 * 6 * 3).reshape(5, 6, 3) * 3).astype(dtype)
    path = tmp_path / f"out{suffix}"
    write_image(path, image)
    back = read_image(path)
    assert back.dtype == dtype and back.shape == image.shape
    if suffix != ".jpg":
        np.testing.assert_array_equal(back, image)


def test_png_refuses_float_before_writing(tmp_path):
    path = tmp_path / "out.png"
    with pytest.raises(FocusFuseError, match=r"out\.png: PNG cannot hold float32"):
        write_image(path, np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.png"
    with pytest.raises(FocusFuseError):
        write_image(path, np.zeros((4, 4, 7), np.uint8))  # 7 channels: PNG cannot
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_replaced_whole(tmp_path):
    path = tmp_path / "out.png"
    write_image(path, np.zeros((4, 4), np.uint8))
    write_image(path, np.full((6, 6), 9, np.uint8))
    assert read_image(path).shape == (6, 6)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_output_over_an_input_is_refused(tmp_path):
    source = tmp_path / "slice.png"
    write_image(source, np.zeros((4, 4), np.uint8))
    with pytest.raises(FocusFuseError, match=r"slice\.png: is one of the inputs"):
        check_output_path(tmp_path / "." / "slice.png", inputs=[source])


def test_missing_directory_and_unknown_format_are_named(tmp_path):
    with pytest.raises(FocusFuseError, match="does not exist"):
        check_output_path(tmp_path / "nope" / "out.png")
    with pytest.raises(FocusFuseError, match=r"out\.gif: unsupported output format \.gif"):
        check_output_path(tmp_path / "out.gif")


@pytest.mark.parametrize("samples", [1, 2, 3, 4], ids=["gray", "gray-alpha", "rgb", "rgba"])
def test_ome_tiff_holds_every_kind_of_pixel_the_fusion_gives(tmp_path, samples):
    # Gray with alpha was written as RGB and refused by tifffile ("not enough samples").
    import tifffile

    rng = np.random.default_rng(samples)
    image = rng.integers(0, 65535, (20, 30) if samples == 1 else (20, 30, samples), dtype=np.uint16)
    write_image(tmp_path / "fused.ome.tif", image)
    with tifffile.TiffFile(tmp_path / "fused.ome.tif") as tif:
        assert tif.is_ome
        assert np.array_equal(tif.series[0].asarray(), image)
