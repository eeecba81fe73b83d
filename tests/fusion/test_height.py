"""Height maps: a tilted plane of known height, units from the metadata, NaN where flat, the preview."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile

from focusfuse import FocusFuseError, fuse_stack
from focusfuse.fusion.height import height_in_slices
from focusfuse.io.metadata import read_physical_size
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

Z_STEP_UM, PIXEL_UM = 2.0, 0.5


def tilted_plane(n_slices: int = 10, size: int = 192, seed: int = 3, dtype=np.uint16):
    """Slices of a textured plane tilted through the whole stack; the depth (slice units) is exact."""
    rng = np.random.default_rng(seed)
    full = 4095 if dtype == np.uint16 else 255  # a 12-bit camera in uint16
    sharp = (procedural_texture(size, size, rng) * full).round().astype(dtype)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    depth = (0.3 * yy / (size - 1) + 0.7 * xx / (size - 1)) * (n_slices - 1)
    stack = make_depth_stack(sharp.astype(np.float32) / full, depth, n_slices, blur_per_slice=1.5, rng=rng)
    slices = np.stack([np.rint(s * full).astype(dtype) for s in stack.slices])
    return slices, depth


def write_ome(path, slices, z_step=Z_STEP_UM, pixel=PIXEL_UM):
    tifffile.imwrite(
        path,
        slices,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeX": pixel, "PhysicalSizeY": pixel, "PhysicalSizeZ": z_step,
                  "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeZUnit": "µm"},
    )  # fmt: skip


def interior_rms(height_um: np.ndarray, depth: np.ndarray, z_step: float, margin: int = 16) -> float:
    inner = (slice(margin, -margin), slice(margin, -margin))
    error = height_um[inner] / z_step - depth[inner]
    return float(np.sqrt(np.nanmean(error**2)))


def test_a_tilted_plane_is_measured_to_well_under_a_quarter_slice(tmp_path):
    slices, depth = tilted_plane()
    source = tmp_path / "plane.ome.tif"
    write_ome(source, slices)
    result = fuse_stack([source], output=tmp_path / "fused.tif", height_map_path=tmp_path / "height.tif", device="cpu")
    height = tifffile.imread(tmp_path / "height.tif")
    assert height.dtype == np.float32 and height.shape == depth.shape
    assert np.isfinite(height[16:-16, 16:-16]).mean() > 0.9
    refined = interior_rms(height, depth, Z_STEP_UM)
    integer = interior_rms(result.index_map.astype(np.float32) * Z_STEP_UM, depth, Z_STEP_UM)
    assert refined < 0.25 and refined < 0.6 * integer, (refined, integer)
    record = json.loads((tmp_path / "fused.timing.json").read_text())
    assert record["height_map"]["unit"] == "um" and record["height_map"]["z_source"] == "OME-XML PhysicalSizeZ"
    assert record["physical"]["pixel_x_um"] == PIXEL_UM and record["outputs"]["height_map"] == str(
        tmp_path / "height.tif"
    )


def test_z_step_from_imagej_spacing_or_the_option_and_slices_without_either(tmp_path):
    slices, depth = tilted_plane(n_slices=6, size=128, dtype=np.uint8)
    imagej = tmp_path / "hyper.tif"
    tifffile.imwrite(imagej, slices, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 3.0, "unit": "micron"})  # fmt: skip
    from_spacing = fuse_stack([imagej], height_map_path=tmp_path / "h1.tif", device="cpu")
    by_option = fuse_stack([imagej], height_map_path=tmp_path / "h2.tif", z_step=1.5, device="cpu")
    assert from_spacing.timing["height_map"]["z_source"] == "ImageJ spacing"
    assert by_option.timing["height_map"]["z_source"] == "--z-step"
    assert np.allclose(from_spacing.height, 2 * by_option.height, equal_nan=True)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, slices, photometric="minisblack")
    in_slices = fuse_stack([plain], height_map_path=tmp_path / "h3.tif", device="cpu")
    assert in_slices.timing["height_map"]["unit"] == "slices"
    assert np.allclose(in_slices.height * 3.0, from_spacing.height, equal_nan=True)


def test_untextured_pixels_have_no_height_unless_filled(tmp_path):
    slices, _ = tilted_plane(n_slices=5, size=128, dtype=np.uint8)
    slices[:, 40:90, 40:90] = 120  # a flat patch no slice shows textured
    source = tmp_path / "flat.tif"
    tifffile.imwrite(source, slices, photometric="minisblack")
    holes = fuse_stack([source], height_map_path=tmp_path / "h.tif", device="cpu").height
    filled = fuse_stack([source], height_map_path=tmp_path / "f.tif", fill_height=True, device="cpu").height
    assert np.isnan(holes[55:75, 55:75]).all() and np.isfinite(holes[:20, :20]).all()
    assert np.isfinite(filled).all()


def test_the_refinement_finds_the_peak_between_slices():
    """Three slices whose focus measure peaks a quarter slice above the middle one."""
    rng = np.random.default_rng(0)
    texture = procedural_texture(64, 64, rng)
    depth = np.full((64, 64), 1.25, np.float32)
    stack = make_depth_stack(texture, depth, 3, blur_per_slice=1.5, rng=rng)
    index_map = np.ones((64, 64), np.uint8)
    height = height_in_slices(lambda j: stack.slices[j], 3, index_map)
    assert 1.1 < float(np.median(height[8:-8, 8:-8])) < 1.4


def test_the_preview_is_a_picture_with_a_colour_bar(tmp_path):
    slices, _ = tilted_plane(n_slices=5, size=128)
    source = tmp_path / "plane.ome.tif"
    write_ome(source, slices)
    fuse_stack([source], height_preview_path=tmp_path / "preview.png", device="cpu")
    preview = cv2.imread(str(tmp_path / "preview.png"), cv2.IMREAD_UNCHANGED)
    assert preview.dtype == np.uint8 and preview.shape[0] == 128 and preview.shape[1] > 128 + 30
    assert preview.shape[2] == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"height_map_path": "h.png"}, "the height map is a float32 TIFF; name it .tif"),
        ({"height_preview_path": "h.jpg"}, "the height preview is a PNG; name it .png"),
        ({"height_map_path": "h.tif", "strategy": "serial"}, "a height map needs --strategy calibrated"),
        ({"height_map_path": "h.tif", "z_step": -1.0}, "must be a positive number of micrometres"),
    ],
)
def test_height_settings_that_cannot_work_are_refused(tmp_path, options, message):
    slices, _ = tilted_plane(n_slices=3, size=48, dtype=np.uint8)
    source = tmp_path / "s.tif"
    tifffile.imwrite(source, slices, photometric="minisblack")
    for key in ("height_map_path", "height_preview_path"):
        if key in options:
            options[key] = tmp_path / options[key]
    with pytest.raises(FocusFuseError, match=message):
        fuse_stack([source], device="cpu", **options)


def test_physical_sizes_travel_to_the_fused_tiff_and_the_height_map(tmp_path):
    slices, _ = tilted_plane(n_slices=4, size=64)
    source = tmp_path / "plane.ome.tif"
    write_ome(source, slices, z_step=1.25, pixel=0.325)
    fuse_stack([source], output=tmp_path / "fused.tif", height_map_path=tmp_path / "height.tif", device="cpu")
    for written in ("fused.tif", "height.tif"):
        physical = read_physical_size(tmp_path / written)
        assert (physical.pixel_x_um, physical.pixel_y_um, physical.z_step_um) == (0.325, 0.325, 1.25), written
        with tifffile.TiffFile(tmp_path / written) as tif:
            assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
            numerator, denominator = tif.pages.first.tags["XResolution"].value
            assert abs(numerator / denominator - 1 / 0.325) < 1e-6
