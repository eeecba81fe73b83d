"""Which folders and files of an acquisition tree are stacks, and where their results go."""

from __future__ import annotations

import cv2
import numpy as np
import tifffile
from acquisition import FOLDER_STACKS, TIFF_STACK, make_tree, write_folder_stack

from focusfuse.batch.discovery import discover_stacks, stack_name


def test_folders_of_images_and_multipage_tiffs_are_stacks(tmp_path):
    root = make_tree(tmp_path / "acq")
    found = discover_stacks([root], tmp_path / "out")
    by_name = {job.name: job for job in found.jobs}
    assert sorted(by_name) == sorted([*FOLDER_STACKS, TIFF_STACK])
    pos = by_name["day2/sampleA/pos1"]
    assert pos.folder == root / "day2/sampleA/pos1" and pos.n_slices == 3
    assert [p.name for p in pos.inputs] == ["z0.png", "z1.png", "z2.png"]
    assert pos.fused == tmp_path / "out/day2/sampleA/pos1.png"
    assert pos.index_map == tmp_path / "out/day2/sampleA/pos1.index.png"
    assert pos.timing == tmp_path / "out/day2/sampleA/pos1.timing.json"
    tiff = by_name[TIFF_STACK]
    assert tiff.folder is None and tiff.n_slices == 4 and tiff.inputs == (root / f"{TIFF_STACK}.tif",)
    assert [(p.name, p.reason) for p in found.passed] == [("day2/lonely", "1 image, fewer than --min-slices 2")]


def test_output_root_inside_the_tree_is_never_searched(tmp_path):
    root = make_tree(tmp_path / "acq")
    out = root / "fused"
    write_folder_stack(out / "day1", seed=3)  # results of an earlier run look like a stack
    found = discover_stacks([root], out, output_format="tif")
    assert all(not job.name.startswith("fused") for job in found.jobs)
    assert all(job.fused.suffix == ".tif" for job in found.jobs)


def test_pattern_and_min_slices_select_and_say_why(tmp_path):
    root = make_tree(tmp_path / "acq")
    found = discover_stacks([root], tmp_path / "out", pattern="*/pos*", min_slices=4)
    assert [job.name for job in found.jobs] == []  # pos stacks have 3 slices, the TIFF's name does not match
    reasons = {p.name: p.reason for p in found.passed}
    assert reasons["day1/pos1"] == "3 images, fewer than --min-slices 4"
    assert reasons[TIFF_STACK] == "does not match --pattern */pos*"
    found = discover_stacks([root], tmp_path / "out", pattern="day1/*")
    assert [job.name for job in found.jobs] == ["day1/pos1", "day1/pos2"]


def test_a_folder_of_multipage_tiffs_holds_one_stack_per_file(tmp_path):
    folder = tmp_path / "acq" / "plate"
    folder.mkdir(parents=True)
    planes = np.zeros((3, 16, 16), np.uint8)
    for name in ("pos10.ome.tif", "pos2.ome.tif"):
        tifffile.imwrite(folder / name, planes, photometric="minisblack", metadata={"axes": "ZYX"})
    cv2.imwrite(str(folder / "overview.png"), planes[0])
    found = discover_stacks([tmp_path / "acq"], tmp_path / "out")
    assert [job.name for job in found.jobs] == ["plate/pos2", "plate/pos10"]
    assert [p.name for p in found.passed] == ["plate"]  # the overview image alone is no stack
    assert stack_name(folder / "pos2.ome.tif") == "pos2"


def test_an_unreadable_tiff_among_slices_fails_its_stack_instead_of_being_left_out(tmp_path):
    folder = tmp_path / "acq" / "pos1"
    write_folder_stack(folder, seed=0)
    (folder / "z3.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    found = discover_stacks([tmp_path / "acq"], tmp_path / "out")
    assert len(found.jobs) == 1 and [p.name for p in found.jobs[0].inputs][-1] == "z3.tif"


def test_two_stacks_with_the_same_results_are_refused(tmp_path):
    root = tmp_path / "acq"
    write_folder_stack(root / "pos1", seed=0)
    tifffile.imwrite(
        root / "pos1.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack", metadata={"axes": "ZYX"}
    )
    found = discover_stacks([root], tmp_path / "out")
    problems = [job.problem for job in found.jobs if job.problem]
    assert len(problems) == 1 and "would overwrite those of" in problems[0]
