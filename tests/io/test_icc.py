"""The source's ICC colour profile travels to the fused PNG, JPEG and TIFF."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from focusfuse import fuse_stack
from focusfuse.io.icc import read_icc_profile

Image = pytest.importorskip("PIL.Image", reason="Pillow (an imageio dependency) writes the test files")
ImageCms = pytest.importorskip("PIL.ImageCms")


@pytest.fixture(scope="module")
def profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def write_slices(folder, profile: bytes, suffix: str) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    for k in range(3):
        Image.fromarray(np.roll(base, 5 * k, axis=1)).save(folder / f"z{k}{suffix}", icc_profile=profile)


@pytest.mark.parametrize("source_suffix", [".png", ".jpg"])
@pytest.mark.parametrize("output_suffix", [".png", ".jpg", ".tif"])
def test_the_fused_image_keeps_the_sources_profile(tmp_path, profile, source_suffix, output_suffix):
    write_slices(tmp_path / "stack", profile, source_suffix)
    assert read_icc_profile(tmp_path / "stack" / f"z0{source_suffix}") == profile
    output = tmp_path / f"fused{output_suffix}"
    result = fuse_stack([tmp_path / "stack"], output=output, device="cpu")
    assert result.timing["icc_profile_bytes"] == len(profile)
    assert read_icc_profile(output) == profile
    if output_suffix == ".tif":
        with tifffile.TiffFile(output) as tif:
            assert bytes(tif.pages.first.tags["InterColorProfile"].value) == profile
    else:
        with Image.open(output) as written:  # another reader agrees the file is whole and the profile is there
            assert written.info.get("icc_profile") == profile
            written.load()


def test_no_profile_means_none_written(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((16, 16), 10 * k, np.uint8)).save(folder / f"z{k}.png")
    fuse_stack([folder], output=tmp_path / "fused.png", device="cpu")
    assert read_icc_profile(tmp_path / "fused.png") is None


def test_a_png_whose_profile_libpng_dislikes_is_still_read(tmp_path):
    """Regression: libpng's warning about a mismatched iCCP profile refused the file as damaged."""
    folder = tmp_path / "odd"
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not an RGB space
    write_slices(folder, lab, ".png")
    result = fuse_stack([folder], output=tmp_path / "fused.png", device="cpu")
    assert result.fused.shape == (48, 48, 3) and read_icc_profile(tmp_path / "fused.png") == lab
