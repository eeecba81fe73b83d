"""``focusfuse info`` on real files written by tifffile: the facts ``stack`` would use."""

from __future__ import annotations

import json
import re

import numpy as np
import tifffile
from click.testing import CliRunner
from test_height import tilted_plane, write_ome

import focusfuse.cli as cli
from focusfuse.fusion.info import describe_stack


def info(*arguments: str):
    return CliRunner().invoke(cli.main, ["info", *arguments])


def test_an_ome_tiff_from_a_12_bit_camera(tmp_path):
    slices, _ = tilted_plane(n_slices=5, size=96)  # uint16 holding 12-bit values
    source = tmp_path / "cam.ome.tif"
    write_ome(source, slices, z_step=1.5, pixel=0.325)
    result = info(str(source))
    assert result.exit_code == 0, result.output
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines() if not line.startswith(" "))
    assert lines["slices"].strip().startswith("5 in this order: cam.ome.tif[z=0], cam.ome.tif[z=1]")
    assert lines["size"].strip() == "96 x 96, 1 channel(s), axes ZYX"
    assert lines["pixels"].strip().startswith("uint16, 12 bits used, values ")
    assert lines["pixel size"].strip() == "0.325 x 0.325 um (OME-XML PhysicalSizeX/Y)"
    assert lines["z-step"].strip() == "1.5 um (OME-XML PhysicalSizeZ)"
    assert "the whole image at once" in lines["memory"]
    facts = json.loads(info(str(source), "--json").stdout)
    assert facts["bits_used"] == 12 and facts["n_slices"] == 5 and facts["physical"]["z_step_um"] == 1.5


def test_an_imagej_hyperstack_with_spacing_and_a_small_budget(tmp_path):
    slices, _ = tilted_plane(n_slices=4, size=96, dtype=np.uint8)
    source = tmp_path / "hyper.tif"
    tifffile.imwrite(source, slices, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 0.8, "unit": "micron"})  # fmt: skip
    facts = describe_stack([source], max_memory=2**30)
    assert facts["physical"] == {
        "pixel_x_um": 0.25,
        "pixel_y_um": 0.25,
        "z_step_um": 0.8,
        "pixel_source": "ImageJ unit and resolution",
        "z_source": "ImageJ spacing",
    }
    assert facts["bits_used"] == 8 and facts["axes"] == "ZYX"
    overridden = describe_stack([source], z_step=2.0)
    assert overridden["physical"]["z_step_um"] == 2.0 and overridden["physical"]["z_source"] == "--z-step"


def test_a_folder_of_pngs_has_no_physical_size_and_alignment_is_listed_per_slice(tmp_path, demo_stack_dir):
    result = info(str(demo_stack_dir), "--align", "translation")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert re.search(r"^pixel size +unknown", text, re.M) and re.search(r"^z-step +unknown: height maps", text, re.M)
    assert re.search(r"^alignment +translation, to slice 3 \(z4.png\)$", text, re.M)
    assert sum(line.startswith("  ") and " px, scale " in line for line in text.splitlines()) == 8


def test_auto_alignment_is_the_default_and_says_why_the_stack_would_not_be_warped(demo_stack_dir):
    result = info(str(demo_stack_dir))
    assert result.exit_code == 0, result.output
    assert re.search(r"^alignment +auto, to slice 3 \(z4.png\)$", result.stdout, re.M)
    verdict = (
        r"^  auto +fused as read: at most slice \d moved 0\.\d\d px, \d\.\d standard errors "
        r"\(\d\.\d were its pairs' errors all of one sign\); warping needs 12 and 4"
    )
    assert re.search(verdict + "$", result.stdout, re.M), result.stdout
    assert sum(line.endswith(" standard errors") for line in result.stdout.splitlines()) == 7
    skipped = info(str(demo_stack_dir), "--align", "none")
    assert skipped.exit_code == 0 and "alignment" not in skipped.stdout


def test_info_refuses_what_stack_refuses(tmp_path):
    result = info(str(tmp_path / "missing"))
    assert (
        result.exit_code == 1
        and result.stderr.strip() == f"focusfuse: error: {tmp_path / 'missing'}: no such file or directory"
    )


def test_a_large_image_is_said_to_be_decided_shrunk(tmp_path):
    source = tmp_path / "wide.tif"
    rng = np.random.default_rng(2)
    tifffile.imwrite(source, rng.integers(0, 256, (3, 320, 1280), dtype=np.uint8), photometric="minisblack")
    result = info(str(source))
    assert result.exit_code == 0, result.output
    lines = dict(line.split("  ", 1) for line in result.stdout.splitlines() if not line.startswith(" "))
    assert "decided at 1024 x 256, the whole image at once" in lines["memory"]
    assert json.loads(info(str(source), "--json").stdout)["decision_size"] == [256, 1024]
