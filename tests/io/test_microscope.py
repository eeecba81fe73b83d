"""Microscope files in (CZI and OME-Zarr by their libraries' writers, LIF and ND2 by tests/io's) and OME-TIFF out.

Each reader's tests skip, saying why, when its package (focusfuse[formats]) is absent.
"""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from microscope_files import write_bioformats2raw, write_czi, write_lif, write_nd2, write_ome_zarr

from focusfuse.batch.discovery import discover_stacks
from focusfuse.cli import main
from focusfuse.errors import FocusFuseError
from focusfuse.fusion.info import describe_stack
from focusfuse.fusion.pipeline import fuse_stack
from focusfuse.io.metadata import read_physical_size
from focusfuse.io.microscope import SeriesSelection
from focusfuse.io.reader import open_stack

from conftest import step_depth_stack

PIXEL_UM, Z_STEP_UM = 0.5, 1.5
CHANNELS = ["DAPI", "GFP"]


def needs(package: str):
    absent = importlib.util.find_spec(package) is None
    return pytest.mark.skipif(absent, reason=f"{package} is not installed (pip install 'focusfuse[formats]')")


needs_czi = needs("pylibCZIrw")
needs_lif = needs("liffile")
needs_nd2 = needs("nd2")
needs_zarr = pytest.mark.skipif(
    importlib.util.find_spec("zarr") is None or importlib.util.find_spec("ome_zarr") is None,
    reason="zarr and ome-zarr are not installed (pip install 'focusfuse[formats]' ome-zarr)",
)


def two_channel_stack(size: int = 96) -> np.ndarray:
    """``(Z, C, Y, X)`` uint16 with 12 bits used: two textures in the same bands of focus, slice k sharp in band k."""
    channels = [step_depth_stack(np.uint16, n_slices=4, size=size, seed=seed).slices for seed in (0, 1)]
    return (np.stack([np.stack(slices) for slices in channels], axis=1) >> 4).astype(np.uint16)


@pytest.fixture(scope="module")
def zcyx() -> np.ndarray:
    return two_channel_stack()


@pytest.fixture(scope="module")
def as_tiff(zcyx, tmp_path_factory):
    """The same slices as an ImageJ hyperstack, fused: what every reader must match."""
    folder = tmp_path_factory.mktemp("tiff")
    path = folder / "stack.tif"
    tifffile.imwrite(
        path, zcyx, imagej=True, resolution=(1 / PIXEL_UM, 1 / PIXEL_UM),
        metadata={"axes": "ZCYX", "unit": "um", "spacing": Z_STEP_UM},
    )  # fmt: skip
    return fuse_stack([path], output=folder / "fused.tif", device="cpu")


def write_as(kind: str, path_base, zcyx: np.ndarray):
    if kind == "czi":
        path = path_base.with_suffix(".czi")
        write_czi(path, [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=CHANNELS)
    elif kind == "lif":
        path = path_base.with_suffix(".lif")
        write_lif(path, {"stack": zcyx}, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    elif kind == "nd2":
        path = path_base.with_suffix(".nd2")
        write_nd2(path, [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=CHANNELS)
    else:
        path = path_base.with_suffix(".zarr")
        version = kind.rsplit("-", 1)[1]
        write_ome_zarr(path, zcyx, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=CHANNELS, version=version)
    return path


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("czi", marks=needs_czi),
        pytest.param("lif", marks=needs_lif),
        pytest.param("nd2", marks=needs_nd2),
        pytest.param("ome-zarr-0.4", marks=needs_zarr),
        pytest.param("ome-zarr-0.5", marks=needs_zarr),
    ],
)
def test_a_microscope_file_fuses_as_the_same_slices_in_a_multipage_tiff(tmp_path, zcyx, as_tiff, kind):
    path = write_as(kind, tmp_path / "cells", zcyx)
    source = open_stack([path])
    assert len(source) == 4 and source.channel_axis
    assert (source.physical.pixel_x_um, source.physical.pixel_y_um, source.physical.z_step_um) == (
        PIXEL_UM,
        PIXEL_UM,
        Z_STEP_UM,
    )
    assert np.array_equal(source.read(2), np.moveaxis(zcyx[2], 0, -1))  # 16-bit values kept as stored
    result = fuse_stack([path], output=tmp_path / "fused.tif", device="cpu")
    assert np.array_equal(result.index_map, as_tiff.index_map)
    assert np.array_equal(result.fused, as_tiff.fused)
    assert result.fused.dtype == np.uint16
    written = read_physical_size(tmp_path / "fused.tif")
    assert (written.pixel_x_um, written.pixel_y_um) == (PIXEL_UM, PIXEL_UM)
    assert result.timing["source_format"] == {"czi": "CZI", "lif": "LIF", "nd2": "ND2"}.get(kind, "OME-Zarr")


@needs_czi
def test_a_file_of_several_scenes_fuses_the_one_named_or_is_refused_listing_them(tmp_path, zcyx):
    path = tmp_path / "plate.czi"
    write_czi(path, [zcyx, zcyx[:, :, :, ::-1].copy()], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    with pytest.raises(FocusFuseError, match=r"plate\.czi: holds 2 scenes \(0: 96x96 Z=4 C=2; 1: 96x96 Z=4 C=2\); "):
        open_stack([path])
    second = open_stack([path], SeriesSelection(scene="1"))
    assert second.labels[3] == f"{path}[scene=1,z=3]"
    assert np.array_equal(second.read(3), np.moveaxis(zcyx[3, :, :, ::-1], 0, -1))
    with pytest.raises(FocusFuseError, match=r"--scene 2: no such scene"):
        open_stack([path], SeriesSelection(scene=2))
    with pytest.raises(FocusFuseError, match=r"--position 0: this CZI file has no positions"):
        open_stack([path], SeriesSelection(position=0))


@needs_nd2
def test_nd2_positions_are_picked_by_index_or_name(tmp_path, zcyx):
    path = tmp_path / "multipoint.nd2"
    right = zcyx[:, :, ::-1].copy()
    write_nd2(path, [zcyx, right], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=CHANNELS,
              position_names=["left", "right"])  # fmt: skip
    listed = r"holds 2 positions \(0 \(left\): 96x96 Z=4 C=2; 1 \(right\): 96x96 Z=4 C=2\); name one with --position"
    with pytest.raises(FocusFuseError, match=listed):
        open_stack([path])
    with pytest.raises(FocusFuseError, match=r"--scene 0: this ND2 file has no scenes; it holds 2 positions"):
        open_stack([path], SeriesSelection(scene=0))
    by_name = open_stack([path], SeriesSelection(position="right"))
    assert by_name.labels[0] == f"{path}[position=1,z=0]" and by_name.channel_names == tuple(CHANNELS)
    assert np.array_equal(by_name.read(2), np.moveaxis(right[2], 0, -1))


@needs_lif
def test_lif_images_are_scenes_named_as_las_x_named_them(tmp_path, zcyx):
    path = tmp_path / "experiment.lif"
    single = zcyx[:3, :1].astype(np.uint8)
    write_lif(path, {"Series001": zcyx, "Series002 gray": single}, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    gray = open_stack([path], SeriesSelection(scene="Series002 gray"))
    assert len(gray) == 3 and not gray.channel_axis
    assert np.array_equal(gray.read(1), single[1, 0])
    facts = describe_stack([path], scene="Series002 gray", align="none")
    assert facts["source_format"] == "LIF"
    assert facts["file_holds"] == ["scene 0 (Series001): 96x96 Z=4 C=2", "scene 1 (Series002 gray): 96x96 Z=3 C=1"]


@needs_zarr
def test_a_bioformats2raw_folder_holds_one_scene_per_series(tmp_path, zcyx):
    path = tmp_path / "converted.zarr"
    write_bioformats2raw(path, [zcyx, zcyx[:3]], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    with pytest.raises(FocusFuseError, match=r"converted\.zarr: holds 2 scenes \(0 \(image\): 96x96 Z=4 C=2; 1 "):
        open_stack([path])
    second = open_stack([path], SeriesSelection(scene=1))
    assert len(second) == 3 and second.channel_names == ("A", "B")
    assert np.array_equal(second.read(2), np.moveaxis(zcyx[2], 0, -1))


@needs_czi
def test_a_time_series_needs_a_time_point(tmp_path, zcyx):
    path = tmp_path / "timelapse.czi"
    series = np.stack([zcyx, zcyx // 2])
    write_czi(path, [series], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, times=2)
    with pytest.raises(FocusFuseError, match=r"holds a time series of 2 time points \(T=2\); name one with --time"):
        open_stack([path])
    later = open_stack([path], SeriesSelection(time=1))
    assert later.labels[0] == f"{path}[t=1,z=0]"
    assert np.array_equal(later.read(0), np.moveaxis(zcyx[0] // 2, 0, -1))
    with pytest.raises(FocusFuseError, match=r"--time 2: it holds time points 0 to 1"):
        open_stack([path], SeriesSelection(time=2))


@needs_czi
def test_a_single_plane_and_a_selection_of_image_files_are_refused(tmp_path, zcyx):
    path = tmp_path / "snapshot.czi"
    write_czi(path, [zcyx[:1]], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    with pytest.raises(FocusFuseError, match=r"snapshot\.czi: it holds a single plane \(Z=1\), not a z-stack"):
        open_stack([path])
    tiff = tmp_path / "stack.tif"
    tifffile.imwrite(tiff, zcyx[:, 0], photometric="minisblack")
    with pytest.raises(FocusFuseError, match=r"stack\.tif: --scene 1 names a scene, position or time point"):
        open_stack([tiff], SeriesSelection(scene=1))


def cut_short(whole, name: str, keep: int):
    """``whole``'s first ``keep`` bytes (negative: all but the last) as ``name`` beside it; ``whole`` removed."""
    cut = whole.with_name(name)
    cut.write_bytes(whole.read_bytes()[:keep])
    whole.unlink()
    return cut


def damaged_czi(tmp_path, zcyx):
    whole = write_as("czi", tmp_path / "whole", zcyx)
    message = "cut.czi: not a readable CZI file (Not enough data read"
    return cut_short(whole, "cut.czi", whole.stat().st_size // 2), message


def damaged_lif(tmp_path, zcyx):
    whole = write_as("lif", tmp_path / "whole", zcyx)
    return cut_short(whole, "cut.lif", -1000), "cut.lif: cut short (image 'stack' ends at byte"


def damaged_nd2(tmp_path, zcyx):
    whole = write_as("nd2", tmp_path / "whole", zcyx)
    return cut_short(whole, "cut.nd2", -300), "cut.nd2: not a readable ND2 file ("


def damaged_zarr_chunk(tmp_path, zcyx):
    path = write_as("ome-zarr-0.5", tmp_path / "cells", zcyx)
    chunk = next(p for p in sorted((path / "s0").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:100])
    return path, "cells.zarr[z=0]: cannot read this plane ("


def zarr_with_unknown_axes(tmp_path, zcyx):
    path = write_as("ome-zarr-0.5", tmp_path / "cells", zcyx)
    metadata = json.loads((path / "zarr.json").read_text())
    metadata["attributes"]["ome"]["multiscales"][0]["axes"][1]["name"] = "q"
    (path / "zarr.json").write_text(json.dumps(metadata))
    return path, "cells.zarr: OME-Zarr axes q are not read (t, c, z, y, x are)"


def named_czi_holding_text(tmp_path, zcyx):
    path = tmp_path / "notes.czi"
    path.write_text("acquired on the old scope; see the lab book\n")
    return path, "notes.czi: not a CZI file (its first bytes are not a CZI header)"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(damaged_czi, marks=needs_czi),
        pytest.param(damaged_lif, marks=needs_lif),
        pytest.param(damaged_nd2, marks=needs_nd2),
        pytest.param(damaged_zarr_chunk, marks=needs_zarr),
        pytest.param(zarr_with_unknown_axes, marks=needs_zarr),
        named_czi_holding_text,
    ],
)
def test_a_damaged_microscope_file_gets_one_line_and_no_output(tmp_path, zcyx, make):
    path, message = make(tmp_path, zcyx)
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(main, ["stack", str(path), "-o", str(out / "fused.png"), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("focusfuse: error: ") and message in lines[0], result.output
    assert not list(out.iterdir())


def test_a_missing_reader_names_the_extra_to_install(tmp_path, zcyx, monkeypatch):
    path = tmp_path / "cells.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(200))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pylibCZIrw" else real(name, *a))
    needed = r"cells\.czi: reading CZI files needs pylibCZIrw: pip install 'focusfuse\[formats\]'"
    with pytest.raises(FocusFuseError, match=needed):
        open_stack([path])


@needs_czi
def test_ome_tiff_out_carries_sizes_channel_names_and_source(tmp_path, zcyx):
    path = tmp_path / "cells.czi"
    write_czi(path, [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, channel_names=CHANNELS)
    arguments = ["stack", str(path), "-o", str(tmp_path / "fused.ome.tif"), "--device", "cpu", "-q"]
    result = CliRunner().invoke(main, [*arguments, "--height-map", str(tmp_path / "height.ome.tif")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fused.index.png").is_file() and (tmp_path / "fused.timing.json").is_file()
    with tifffile.TiffFile(tmp_path / "fused.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "CYX" and tif.series[0].shape == (2, 96, 96)
        fused = tif.series[0].asarray()
        pixels = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Pixels")
        description = ElementTree.fromstring(tif.ome_metadata).find(".//{*}Description").text
    assert fused.dtype == np.uint16
    sizes = [pixels.get(name) for name in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeXUnit")]
    assert sizes == ["0.5", "0.5", "µm"]
    assert [channel.get("Name") for channel in pixels.findall("{*}Channel")] == CHANNELS
    assert str(path) in description
    assert read_physical_size(tmp_path / "fused.ome.tif").pixel_x_um == PIXEL_UM
    with tifffile.TiffFile(tmp_path / "height.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].dtype == np.float32
        assert "micrometres" in ElementTree.fromstring(tif.ome_metadata).find(".//{*}Description").text


@needs_czi
@needs_zarr
def test_batch_finds_one_stack_per_scene_and_each_ome_zarr_folder(tmp_path, zcyx):
    root = tmp_path / "acquisition"
    (root / "day1").mkdir(parents=True)
    write_czi(root / "day1/plate.czi", [zcyx, zcyx[:, :, ::-1].copy()], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
    write_czi(root / "day1/timelapse.czi", [np.stack([zcyx, zcyx])], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, times=2)
    write_as("ome-zarr-0.5", root / "day1/cells", zcyx)
    found = discover_stacks([root], tmp_path / "out")
    jobs = {job.name: job for job in found.jobs}
    assert sorted(jobs) == ["day1/cells", "day1/plate.scene0", "day1/plate.scene1", "day1/timelapse"]
    assert jobs["day1/plate.scene1"].selection == SeriesSelection(scene=1)
    assert jobs["day1/cells"].n_slices == 4 and jobs["day1/cells"].problem is None
    assert "holds a time series (T=2)" in jobs["day1/timelapse"].problem
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["batch", str(root), "-o", str(out), "--format", "tif", "--settle", "0", "--device", "cpu", "-q"]
    )
    assert result.exit_code == 5, result.output  # the time series failed, the rest fused
    fused = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tif"))
    assert fused == ["day1/cells.tif", "day1/plate.scene0.tif", "day1/plate.scene1.tif"]
    alone = fuse_stack([root / "day1/plate.czi"], scene=1, device="cpu")  # what `stack --scene 1` gives
    assert np.array_equal(tifffile.imread(out / "day1/plate.scene1.tif"), np.moveaxis(alone.fused, -1, 0))


@needs_czi
def test_a_czi_that_crashes_libczi_is_one_error_line(tmp_path):
    # Found by the fuzzer: a bit flipped in a zstd-compressed subblock made libCZI crash focusfuse (SIGSEGV).
    path = Path(__file__).parent / "data" / "libczi-crash.czi"
    result = CliRunner().invoke(main, ["stack", str(path), "-o", str(tmp_path / "fused.png"), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"focusfuse: error: {path}: damaged CZI file (its reader, libCZI, crashed with SIGSEGV decoding 6 planes)"
    )
    assert list(tmp_path.iterdir()) == []


@needs_czi
def test_a_czi_declaring_absurd_channels_is_refused_at_once():
    # Found by the fuzzer: a bit flip made the channel range end at 2**64 - 2**31 + 1, and listing the
    # channels' pixel types never ended.
    path = Path(__file__).parent / "data" / "absurd-channels.czi"
    with pytest.raises(
        FocusFuseError, match=r"absurd-channels\.czi: damaged CZI file \(its subblocks declare channels 0 to 1844"
    ):
        open_stack([path])


@needs_czi
def test_a_colour_czi_is_read_as_rgb_and_fuses_as_the_same_slices_in_pngs(tmp_path):
    import cv2
    from pylibCZIrw import czi

    rgb = np.stack(step_depth_stack(np.uint8, n_slices=4, size=64, colour=True).slices)
    path = tmp_path / "brightfield.czi"
    with czi.create_czi(str(path), exist_ok=True) as document:
        for z, plane in enumerate(rgb):
            document.write(np.ascontiguousarray(plane[:, :, ::-1]), plane={"Z": z, "C": 0, "T": 0})  # CZI is BGR
        document.write_metadata("rgb", scale_x=PIXEL_UM * 1e-6, scale_y=PIXEL_UM * 1e-6, scale_z=Z_STEP_UM * 1e-6)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for z, plane in enumerate(rgb):
        cv2.imwrite(str(folder / f"z{z}.png"), plane[:, :, ::-1])
    from_czi = fuse_stack([path], device="cpu")
    from_pngs = fuse_stack([folder], device="cpu")
    assert from_czi.fused.shape == (64, 64, 3) and from_czi.timing["channel_fusion"] is None
    assert np.array_equal(from_czi.index_map, from_pngs.index_map)
    assert np.array_equal(from_czi.fused, from_pngs.fused)


@needs_zarr
def test_an_ome_zarr_time_series_fuses_the_time_point_named(tmp_path, zcyx):
    import zarr
    from ome_zarr.writer import write_image

    tczyx = np.stack([np.moveaxis(zcyx, 1, 0), np.moveaxis(zcyx // 2, 1, 0)])
    path = tmp_path / "timelapse.zarr"
    root = zarr.open_group(str(path), mode="w")
    write_image(image=tczyx, group=root, axes="tczyx", scale_factors=[2], storage_options={"chunks": (1, 1, 1, 96, 96)})
    with pytest.raises(FocusFuseError, match=r"timelapse\.zarr: holds a time series of 2 time points"):
        open_stack([path])
    later = open_stack([path], SeriesSelection(time=1))
    assert later.labels[3] == f"{path}[t=1,z=3]"
    assert np.array_equal(later.read(3), np.moveaxis(zcyx[3] // 2, 0, -1))
