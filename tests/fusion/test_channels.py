"""Multichannel stacks: one index map, from the channel with texture, fuses every channel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from test_height import tilted_plane

import focusfuse.cli as cli
from focusfuse import FocusFuseError, fuse_stack
from focusfuse.fusion.compositing import composite_pyramid, recorded_range


def three_channel_stack(n_slices: int = 5, size: int = 96) -> np.ndarray:
    """ZCYX uint16: channel 0 a textured tilted plane; channels 1 and 2 flat, a different level in every slice."""
    textured, _ = tilted_plane(n_slices=n_slices, size=size)
    flat_rising = np.stack([np.full((size, size), 100 * (k + 1), np.uint16) for k in range(n_slices)])
    flat_falling = np.stack([np.full((size, size), 3000 - 200 * k, np.uint16) for k in range(n_slices)])
    return np.stack([textured, flat_rising, flat_falling], axis=1)


@pytest.mark.parametrize("container", ["imagej", "ome"])
def test_channels_without_texture_are_fused_by_channel_0s_index_map_exactly(tmp_path, container):
    zcyx = three_channel_stack()
    source = tmp_path / "cells.tif"
    if container == "imagej":
        tifffile.imwrite(source, zcyx, imagej=True, metadata={"axes": "ZCYX"})
    else:
        tifffile.imwrite(source.with_suffix(".ome.tif"), zcyx, photometric="minisblack", metadata={"axes": "ZCYX"})
        source = source.with_suffix(".ome.tif")
    selected = fuse_stack([source], output=tmp_path / "select.tif", composite="select", device="cpu")
    assert selected.timing["channel_fusion"]["reference"] == 0
    assert selected.timing["channel_fusion"]["chosen_by"] == "most texture"
    index = selected.index_map.astype(np.intp)
    for channel in range(3):
        expected = np.take_along_axis(zcyx[:, channel], index[None], 0)[0]
        assert np.array_equal(selected.fused[..., channel], expected), channel
    blended = fuse_stack([source], output=tmp_path / "pyramid.tif", device="cpu")
    assert np.array_equal(blended.index_map, selected.index_map)
    for channel in (1, 2):
        range_ = recorded_range(zcyx[0, channel])  # what the fusion takes from its first slice, per channel
        alone = composite_pyramid(lambda j, c=channel: zcyx[j, c], blended.index_map, len(zcyx), full_range=range_)
        assert np.array_equal(blended.fused[..., channel], alone), channel
    with tifffile.TiffFile(tmp_path / "pyramid.tif") as tif:  # the channel axis is kept for Fiji
        assert tif.is_imagej and tif.series[0].axes == "CYX" and tif.series[0].shape == (3, 96, 96)


def channel_folders(tmp_path, zcyx: np.ndarray) -> list:
    """One folder of 16-bit PNG slices per channel of ``zcyx``: c0/, c1/, ..."""
    folders = []
    for channel in range(zcyx.shape[1]):
        folder = tmp_path / f"c{channel}"
        folder.mkdir()
        for k in range(len(zcyx)):
            cv2.imwrite(str(folder / f"z{k}.png"), zcyx[k, channel])
        folders.append(folder)
    return folders


def test_one_folder_per_channel_and_a_chosen_reference(tmp_path):
    zcyx = three_channel_stack(n_slices=4, size=64)
    folders = [str(folder) for folder in channel_folders(tmp_path, zcyx)]
    result = CliRunner().invoke(
        cli.main, ["stack", "--channels", *folders, "-o", str(tmp_path / "f.tif"), "--composite", "select",
                   "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fused = tifffile.imread(tmp_path / "f.tif")
    assert fused.shape == (3, 64, 64)
    index = cv2.imread(str(tmp_path / "f.index.png"), cv2.IMREAD_UNCHANGED).astype(np.intp)
    assert np.array_equal(fused[1], np.take_along_axis(zcyx[:, 1], index[None], 0)[0])
    forced = fuse_stack(folders, channel_folders=True, reference_channel=2, device="cpu")
    assert forced.timing["channel_fusion"]["chosen_by"] == "--reference-channel"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reference_channel": 3}, "--reference-channel 3: the slices have 3 channel"),
        ({"output": "fused.png"}, "a 3-channel stack keeps its channel axis in a TIFF; write a .tif"),
    ],
)
def test_channel_settings_that_cannot_work_are_refused(tmp_path, options, message):
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, three_channel_stack(n_slices=3, size=32), imagej=True, metadata={"axes": "ZCYX"})
    if "output" in options:
        options["output"] = tmp_path / options["output"]
    with pytest.raises(FocusFuseError, match=message):
        fuse_stack([source], device="cpu", **options)
    assert not (tmp_path / "fused.png").exists()


def test_folders_with_different_slice_counts_are_refused(tmp_path):
    for channel, count in ((0, 3), (1, 2)):
        (tmp_path / f"c{channel}").mkdir()
        for k in range(count):
            cv2.imwrite(str(tmp_path / f"c{channel}" / f"z{k}.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(FocusFuseError, match=r"c1: 2 images, but .*c0 has 3"):
        fuse_stack([tmp_path / "c0", tmp_path / "c1"], channel_folders=True, device="cpu")


def test_info_names_the_reference_channel(tmp_path):
    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, three_channel_stack(n_slices=3, size=48), imagej=True, metadata={"axes": "ZCYX"})
    result = CliRunner().invoke(cli.main, ["info", str(source)])
    assert result.exit_code == 0, result.output
    assert "fused by channel 0's index map (most texture; texture " in result.stdout
    assert "48 x 48, 3 channel(s), axes ZCYX" in result.stdout


def test_info_reads_channel_folders_and_plans_for_the_reference_channel_given(tmp_path):
    folders = channel_folders(tmp_path, three_channel_stack(n_slices=3, size=48))
    arguments = ["info", "--channels", *map(str, folders), "--reference-channel", "2", "--align", "none"]
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 0, result.output
    assert "48 x 48, 3 channel(s), axes CYX" in result.stdout
    assert "fused by channel 2's index map (--reference-channel;" in result.stdout
