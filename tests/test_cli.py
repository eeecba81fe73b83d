"""The command line in-process (CliRunner) and as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import focusfuse.cli as cli

from conftest import EXAMPLES, REPO


@pytest.fixture
def runner():
    return CliRunner()


def test_stack_directory_writes_three_outputs(runner, tmp_path, demo_stack_dir, demo_truth, monkeypatch):
    monkeypatch.setattr(cli, "has_controlling_terminal", lambda: True)
    output = tmp_path / "fused.tif"
    result = runner.invoke(
        cli.main, ["stack", str(demo_stack_dir), "-o", str(output), "--device", "cpu", "--strategy", "serial"]
    )
    assert result.exit_code == 0, result.output
    index = cv2.imread(str(tmp_path / "fused.index.png"), cv2.IMREAD_UNCHANGED)
    assert output.is_file() and index.dtype == np.uint8 and index.shape == demo_truth.shape
    assert (index == demo_truth).mean() >= 0.95
    record = json.loads((tmp_path / "fused.timing.json").read_text())
    assert record["strategy"] == "serial" and record["n_slices"] == 8
    # Controlling terminal, stderr not a terminal (a script's log): one summary line.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and lines[0].startswith("fused 8 slices 481x321 (serial, cpu)")
        and "fused.index.png" in lines[0]
    )


def test_explicit_paths_and_options(runner, tmp_path):
    pair = [str(EXAMPLES / "pair" / "lytro_01_1.png"), str(EXAMPLES / "pair" / "lytro_01_2.png")]
    index, timing = tmp_path / "depth.png", tmp_path / "t.json"
    result = runner.invoke(
        cli.main,
        [
            "stack",
            *pair,
            "-o",
            str(tmp_path / "f.png"),
            "--index-map",
            str(index),
            "--timing",
            str(timing),
            "--strategy",
            "serial",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output == "" and index.is_file() and json.loads(timing.read_text())["strategy"] == "pair"


def test_quoted_glob_is_expanded_in_natural_order(runner, tmp_path, demo_stack_dir, monkeypatch):
    monkeypatch.setattr(cli, "has_controlling_terminal", lambda: False)
    result = runner.invoke(cli.main, ["stack", str(demo_stack_dir / "z*.png"), "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert result.output == ""  # no terminal at all (cron): silent
    assert json.loads((tmp_path / "f.timing.json").read_text())["n_slices"] == 8


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing_dir/", "-o", "{tmp}/f.png"], "missing_dir: no such file or directory"),
        (["{demo}", "-o", "{tmp}/nowhere/f.png"], "f.png: directory {tmp}/nowhere does not exist"),
        (
            ["{demo}/z1.png", "{demo}/z2.png", "-o", "{demo}/z1.png"],
            "z1.png: is one of the inputs; refusing to overwrite it",
        ),
        (["{demo}/z1.png", "-o", "{tmp}/f.png"], "z1.png: a stack needs at least 2 slices, got 1"),
        (["{demo}", "-o", "{tmp}/f.png", "--weights", "{tmp}/none.pt"], "none.pt: weights file not found"),
        (["{demo}", "-o", "{tmp}/f.bmp"], "f.bmp: unsupported output format .bmp"),
        (["{tmp}/z*.png", "-o", "{tmp}/f.png"], "z*.png: the pattern matches no file"),
        (["{demo}", "-o", "{tmp}"], "{tmp}: is a directory; name a file"),
        (["/dev/null", "{demo}/z1.png", "-o", "{tmp}/f.png"], "/dev/null: not a regular file"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(runner, tmp_path, demo_stack_dir, arguments, message):
    fill = lambda text: text.format(tmp=tmp_path, demo=demo_stack_dir)  # noqa: E731
    before = sorted(p.name for p in demo_stack_dir.iterdir())
    result = runner.invoke(cli.main, ["stack", *map(fill, arguments)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("focusfuse: error: ")
    assert fill(message) in result.stderr
    assert not list(tmp_path.glob("f.*"))
    assert sorted(p.name for p in demo_stack_dir.iterdir()) == before


def test_corrupt_weights_are_refused(runner, tmp_path, demo_stack_dir):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"garbage")
    (tmp_path / "w.pt.sha256").write_text("0" * 64 + "  w.pt\n")
    result = runner.invoke(
        cli.main, ["stack", str(demo_stack_dir), "-o", str(tmp_path / "f.png"), "--weights", str(weights)]
    )
    assert result.exit_code == 1 and "w.pt: sha256" in result.stderr and "does not match" in result.stderr


def test_output_modes():
    assert cli.output_mode(quiet=True) == "silent"


def installed_entry_point() -> str:
    path = shutil.which("focusfuse", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("the focusfuse entry point is not installed in this environment (run `make test`)")
    return path


def test_installed_entry_point_runs_detached_like_cron(tmp_path):
    output = tmp_path / "pair.png"
    pair = [str(EXAMPLES / "pair" / "lytro_01_1.png"), str(EXAMPLES / "pair" / "lytro_01_2.png")]
    env = {key: value for key, value in os.environ.items() if key != "FOCUSFUSE_WEIGHTS"}
    completed = subprocess.run(
        [installed_entry_point(), "stack", *pair, "-o", str(output)],
        cwd="/",  # cron runs from /: the weights must not be looked up relative to it
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,  # no controlling terminal, as under cron
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "" and completed.stderr == ""
    fused = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (520, 520, 3) and fused.dtype == np.uint8


def test_python_dash_m_reports_errors_with_status_1(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "focusfuse", "stack", str(tmp_path / "nothing"), "-o", str(tmp_path / "f.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip() == f"focusfuse: error: {tmp_path / 'nothing'}: no such file or directory"


def test_composite_select_writes_source_pixels_and_says_so(runner, tmp_path, demo_stack_dir):
    output = tmp_path / "fused.png"
    result = runner.invoke(
        cli.main, ["stack", str(demo_stack_dir), "-o", str(output), "--device", "cpu", "--composite", "select", "-q"]
    )
    assert result.exit_code == 0, result.output
    fused = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
    index = cv2.imread(str(tmp_path / "fused.index.png"), cv2.IMREAD_UNCHANGED)
    slices = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(demo_stack_dir.iterdir())]
    picked = np.take_along_axis(np.stack(slices), index[None, ..., None].astype(np.int64), 0)[0]
    np.testing.assert_array_equal(fused, picked)
    assert json.loads((tmp_path / "fused.timing.json").read_text())["composite"] == "select"


def test_unknown_composite_is_refused(runner, tmp_path, demo_stack_dir):
    result = runner.invoke(cli.main, ["stack", str(demo_stack_dir), "-o", str(tmp_path / "f.png"), "--composite", "x"])
    assert result.exit_code != 0 and not (tmp_path / "f.png").exists()


def test_a_timing_report_may_have_any_name(runner, tmp_path, demo_stack_dir):
    result = runner.invoke(
        cli.main, ["stack", str(demo_stack_dir), "-o", str(tmp_path / "f.png"), "--timing", str(tmp_path / "t.txt")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "t.txt").read_text())["n_slices"] == 8


def test_a_format_that_cannot_hold_the_result_is_refused_before_fusing(runner, tmp_path, monkeypatch):
    import tifffile

    import focusfuse.fusion.pipeline as pipeline

    for k in range(3):
        tifffile.imwrite(tmp_path / f"z{k}.tif", np.full((32, 32, 2), 40 * k, np.uint8), photometric="minisblack")
    monkeypatch.setattr(pipeline, "running_best_choice", lambda *a, **k: pytest.fail("fused before refusing"))
    result = runner.invoke(
        cli.main, ["stack", *(str(tmp_path / f"z{k}.tif") for k in range(3)), "-o", str(tmp_path / "f.jpg")]
    )
    assert result.exit_code == 1 and "JPEG holds 1 or 3 channels, not 2" in result.stderr


def test_an_unexpected_error_is_one_line_with_its_own_status_and_debug_shows_it(runner, tmp_path, monkeypatch):
    import focusfuse.fusion.pipeline as pipeline

    def broken(*args, **kwargs):
        raise ValueError("something inside broke")

    monkeypatch.setattr(pipeline, "running_best_choice", broken)
    arguments = ["stack", str(EXAMPLES / "stack8"), "-o", str(tmp_path / "f.png")]
    result = runner.invoke(cli.main, arguments)
    assert result.exit_code == 4 and result.stderr.count("\n") == 1
    assert "internal error (ValueError: something inside broke); run with --debug" in result.stderr
    debug = runner.invoke(cli.main, ["--debug", *arguments])
    assert isinstance(debug.exception, ValueError)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("size", "expected"), [("1.5G", 3 * 2**29), ("800M", 800 * 2**20), ("123456", 123456)])
def test_max_memory_takes_sizes_with_units(runner, tmp_path, monkeypatch, size, expected):
    import focusfuse.fusion.pipeline as pipeline

    budgets = []
    real_plan = pipeline.stack_memory_plan
    monkeypatch.setattr(pipeline, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(
        pipeline, "stack_memory_plan", lambda *args, **named: budgets.append(args[-1]) or real_plan(*args, **named)
    )
    arguments = ["stack", str(EXAMPLES / "pair"), "-o", str(tmp_path / "f.png"), "--max-memory", size]
    result = runner.invoke(cli.main, arguments)
    assert budgets and set(budgets) == {expected}
    assert result.exit_code == (1 if expected < 2**28 else 0)  # 123456 bytes: not even the process fits


@pytest.mark.parametrize("size", ["lots", "-1G", "0", "2X"])
def test_a_max_memory_that_is_no_size_is_a_usage_error(runner, tmp_path, size):
    arguments = ["stack", str(EXAMPLES / "pair"), "-o", str(tmp_path / "f.png"), "--max-memory", size]
    result = runner.invoke(cli.main, arguments)
    assert result.exit_code == 2 and "is not a size such as 800M or 2G" in result.stderr
    assert not list(tmp_path.iterdir())


def test_sigterm_while_writing_leaves_nothing_behind(runner, tmp_path, monkeypatch):
    """A real SIGTERM arrives in the middle of writing the fused image: no output, no hidden temporary."""
    import signal

    import focusfuse.io.writer as writer

    real_imencode = cv2.imencode

    def imencode_then_terminated(*args):
        encoded = real_imencode(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        return encoded

    monkeypatch.setattr(writer.cv2, "imencode", imencode_then_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        result = runner.invoke(cli.main, ["stack", str(EXAMPLES / "stack8"), "-o", str(tmp_path / "f.png")])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 143 and "interrupted; no output written" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_are_readable_as_the_umask_allows(runner, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        result = runner.invoke(cli.main, ["stack", str(EXAMPLES / "stack8"), "-o", str(tmp_path / "f.png")])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    for name in ("f.png", "f.index.png", "f.timing.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
