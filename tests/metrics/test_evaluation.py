"""Evaluating folders of pairs: discovery, validation, the table, the JSON, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import focusfuse.cli as cli
from focusfuse.errors import FocusFuseError
from focusfuse.metrics import METRIC_NAMES
from focusfuse.metrics.evaluation import PAPER_GACN, evaluate_files, evaluate_pairs, find_pairs, format_table

from conftest import EXAMPLES

PAIR = EXAMPLES / "pair"


def _average(path_a: Path, path_b: Path, output: Path) -> None:
    a = cv2.imread(str(path_a), cv2.IMREAD_UNCHANGED).astype(np.uint16)
    b = cv2.imread(str(path_b), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(output), ((a + b + 1) // 2).astype(np.uint8))


@pytest.fixture
def pairs_and_fused(tmp_path) -> tuple[Path, Path]:
    """Two small pairs (crops of the bundled Lytro pair) and their averages."""
    pairs, fused = tmp_path / "pairs", tmp_path / "fused"
    pairs.mkdir()
    fused.mkdir()
    for name, (top, left) in {"crop_2": (0, 0), "crop_10": (200, 240)}.items():
        for index in (1, 2):
            image = cv2.imread(str(PAIR / f"lytro_01_{index}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(pairs / f"{name}_{index}.png"), image[top : top + 120, left : left + 140])
        _average(pairs / f"{name}_1.png", pairs / f"{name}_2.png", fused / f"{name}.png")
    return pairs, fused


def test_pairs_are_found_in_natural_order_and_evaluated_in_parallel_like_serially(pairs_and_fused):
    pairs = find_pairs(*pairs_and_fused)
    assert [pair.name for pair in pairs] == ["crop_2", "crop_10"]
    parallel = evaluate_pairs(pairs, workers=2)
    serial = [evaluate_files(pair.source_a, pair.source_b, pair.fused) for pair in pairs]
    assert parallel == serial
    table = format_table([pair.name for pair in pairs], parallel, compare_paper=True)
    assert "mean (2 pairs)" in table and f"{PAPER_GACN['FMI_EDGE']:.6f}" in table and "SESF-Fuse" in table


def test_missing_partner_and_missing_fused_are_named(pairs_and_fused):
    pairs, fused = pairs_and_fused
    (fused / "crop_10.png").unlink()
    with pytest.raises(FocusFuseError, match=r"crop_10\.png: no fused result for pair crop_10"):
        find_pairs(pairs, fused)
    (pairs / "crop_2_2.png").unlink()
    with pytest.raises(FocusFuseError, match=r"crop_2_1\.png: its partner crop_2_2\.\* is missing"):
        find_pairs(pairs, fused)


def test_mixed_gray_and_colour_or_sizes_are_refused(pairs_and_fused, tmp_path):
    pairs, fused = pairs_and_fused
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.imread(str(fused / "crop_2.png"), cv2.IMREAD_GRAYSCALE))
    with pytest.raises(FocusFuseError, match=r"gray\.png: gray but .*crop_2_1\.png is colour"):
        evaluate_files(pairs / "crop_2_1.png", pairs / "crop_2_2.png", gray)
    with pytest.raises(FocusFuseError, match=r"crop_2_2\.png: size 140x120 differs from .*small_1\.png \(140x100\)"):
        small = tmp_path / "small_1.png"
        cv2.imwrite(str(small), cv2.imread(str(pairs / "crop_2_1.png"))[:100])
        evaluate_files(small, pairs / "crop_2_2.png", fused / "crop_10.png")


def test_cli_evaluate_three_images_prints_six_values(tmp_path, pairs_and_fused):
    pairs, fused = pairs_and_fused
    output = tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli.main,
        [
            "evaluate",
            str(pairs / "crop_2_1.png"),
            str(pairs / "crop_2_2.png"),
            str(fused / "crop_2.png"),
            "--json",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(METRIC_NAMES)
    record = json.loads(output.read_text())
    for line in lines:
        name, value = line.split()
        assert abs(record[name] - float(value)) < 1e-6


def test_cli_evaluate_pairs_table_and_json(tmp_path, pairs_and_fused):
    pairs, fused = pairs_and_fused
    output = tmp_path / "table.json"
    result = CliRunner().invoke(
        cli.main,
        [
            "evaluate",
            "--pairs",
            str(pairs),
            "--fused",
            str(fused),
            "--compare",
            "paper",
            "--json",
            str(output),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "crop_10" in result.stdout and "paper GACN" in result.stdout
    record = json.loads(output.read_text())
    assert [row["name"] for row in record["pairs"]] == ["crop_2", "crop_10"]
    for name in METRIC_NAMES:
        assert np.isclose(record["mean"][name], np.mean([row[name] for row in record["pairs"]]))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["a.png", "b.png"], "expected SOURCE_A SOURCE_B FUSED (three images), got 2"),
        (["--pairs", "."], "--pairs and --fused go together"),
        (["x_1.png", "x_2.png", "missing.png"], "x_1.png: no such file"),
    ],
)
def test_cli_evaluate_errors_are_one_line(tmp_path, arguments, message):
    result = CliRunner().invoke(cli.main, ["evaluate", *arguments])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"focusfuse: error: {message}"]


def test_cli_evaluate_refuses_to_write_json_over_an_input(pairs_and_fused):
    pairs, fused = pairs_and_fused
    target = fused / "crop_2.png"
    before = target.read_bytes()
    copy = target.with_suffix(".json")
    shutil.copy(target, copy)
    result = CliRunner().invoke(
        cli.main, ["evaluate", str(pairs / "crop_2_1.png"), str(pairs / "crop_2_2.png"), str(copy), "--json", str(copy)]
    )
    assert result.exit_code == 1 and "is one of the inputs" in result.stderr
    assert target.read_bytes() == before
