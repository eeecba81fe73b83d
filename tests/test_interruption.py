"""A stop (Ctrl-C, SIGTERM) that arrives while a lock or temporary file is being set up waits for that step."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

import focusfuse.batch.locking as locking
import focusfuse.cli as cli
import focusfuse.io.writer as writer
from focusfuse.batch.locking import OutputLock
from focusfuse.interruption import critical_section, start_command, stop


@pytest.fixture
def sigterm_stops_like_the_cli():
    previous = signal.signal(signal.SIGTERM, cli.stop_like_ctrl_c)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_stop_inside_a_critical_section_is_raised_when_it_ends(sigterm_stops_like_the_cli):
    steps = []
    with pytest.raises(cli.Terminated):
        with critical_section():
            steps.append("before")
            signal.raise_signal(signal.SIGTERM)
            steps.append("after")  # the signal did not cut the step in half
    assert steps == ["before", "after"]
    start_command()  # a new command: the stop above was its one stop
    with pytest.raises(cli.Terminated):
        signal.raise_signal(signal.SIGTERM)  # outside one it stops at once
    with critical_section():
        pass  # and nothing is left pending


def test_a_second_stop_does_not_cut_the_first_ones_clean_up_short(sigterm_stops_like_the_cli):
    """Regression: Ctrl-C sent again and again raised inside the first stop's clean-up and, at exit,
    in the interpreter's own hooks (``Exception ignored in ... KeyboardInterrupt``)."""
    cleaned = []
    with pytest.raises(cli.Terminated):
        try:
            signal.raise_signal(signal.SIGTERM)
        finally:
            signal.raise_signal(signal.SIGTERM)  # the same request again, while cleaning up
            cleaned.append(True)
    assert cleaned == [True]


def test_nested_sections_raise_once_at_the_outermost_end():
    with pytest.raises(KeyboardInterrupt):
        with critical_section():
            with critical_section():
                stop(KeyboardInterrupt())
            reached = True
    assert reached


def test_sigterm_while_taking_a_stacks_lock_leaves_no_lock_file(tmp_path, monkeypatch, sigterm_stops_like_the_cli):
    """Regression: a batch worker stopped just as it locked its next stack left ``.pos2.lock`` behind."""
    real_flock = locking.fcntl.flock

    def flock_then_signal(descriptor, operation):
        real_flock(descriptor, operation)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(locking.fcntl, "flock", flock_then_signal)
    path = tmp_path / ".pos2.lock"
    with pytest.raises(cli.Terminated):
        with OutputLock(path) as lock:
            lock.acquire()
            pytest.fail("the stop must not wait past the lock's set-up")
    monkeypatch.undo()
    assert not path.exists()
    assert OutputLock(path).acquire()  # and nobody holds it


def test_sigterm_while_creating_an_outputs_temporary_leaves_no_file(tmp_path, monkeypatch, sigterm_stops_like_the_cli):
    real_mkstemp = writer.tempfile.mkstemp

    def mkstemp_then_signal(*arguments, **keywords):
        made = real_mkstemp(*arguments, **keywords)
        signal.raise_signal(signal.SIGTERM)
        return made

    monkeypatch.setattr(writer.tempfile, "mkstemp", mkstemp_then_signal)
    with pytest.raises(cli.Terminated):
        writer.write_image(tmp_path / "fused.png", np.zeros((4, 4), np.uint8))
    assert list(Path(tmp_path).iterdir()) == []


def tiny_stack(folder: Path) -> Path:
    import cv2

    from conftest import step_depth_stack

    folder.mkdir()
    for number, image in enumerate(step_depth_stack(n_slices=3, size=48).slices):
        cv2.imwrite(str(folder / f"z{number}.png"), image)
    return folder


def outputs_state(folder: Path) -> str:
    """``none`` or ``all`` (each output whole); anything else fails the test."""
    import json

    import cv2

    names = sorted(path.name for path in folder.iterdir())
    if not names:
        return "none"
    assert names == ["f.index.png", "f.png", "f.timing.json"], names  # no temporary, no missing output
    assert cv2.imread(str(folder / "f.png")).shape[:2] == (48, 48)
    assert cv2.imread(str(folder / "f.index.png"), cv2.IMREAD_UNCHANGED).shape == (48, 48)
    assert json.loads((folder / "f.timing.json").read_text())["n_slices"] == 3
    return "all"


def test_ctrl_c_at_any_point_of_the_writing_leaves_every_output_or_none_and_says_which(tmp_path, monkeypatch):
    """Ctrl-C is raised at one line after another of the write and of the command's end (the lines run
    in the writer, the stop handling and the CLI, counted by a tracer); each run ends in one of the two
    states, and the message names the state."""
    import sys

    from click.testing import CliRunner

    stack = tiny_stack(tmp_path / "stack")
    real_init = writer.OutputSet.__init__
    trigger: dict = {}

    def tracer(frame, event, argument):
        if frame.f_code.co_filename.endswith(("io/writer.py", "focusfuse/cli.py", "focusfuse/interruption.py")):
            trigger["lines"] += 1
            if trigger["lines"] == trigger["at"]:
                signal.raise_signal(signal.SIGINT)
            return tracer
        return None

    def start_tracing(self):
        real_init(self)
        frame = sys._getframe(1)
        while frame is not None:  # the frames already running (the pipeline, the CLI) are traced from here on
            frame.f_trace = tracer
            frame = frame.f_back
        sys.settrace(tracer)

    monkeypatch.setattr(writer.OutputSet, "__init__", start_tracing)

    def run(at: int) -> tuple[int, str, str]:
        out = tmp_path / f"out{at}"
        out.mkdir()
        trigger.update(lines=0, at=at)
        try:
            result = CliRunner().invoke(cli.main, ["stack", str(stack), "-o", str(out / "f.png"), "--device", "cpu"])
        finally:
            sys.settrace(None)
        return result.exit_code, result.stderr, outputs_state(out)

    exit_code, _, state = run(at=0)  # never: count the lines
    total = trigger["lines"]
    assert exit_code == 0 and state == "all" and total > 50
    seen = set()
    for at in sorted({1, 2, total - 1, total, *range(3, total, max(1, total // 14))}):
        exit_code, stderr, state = run(at)
        seen.add(state)
        if state == "none":
            assert exit_code == 130 and stderr == "focusfuse: interrupted; no output written\n", (at, stderr)
        elif exit_code == 130:
            assert stderr.startswith("focusfuse: interrupted; every output was written whole first: "), (at, stderr)
            assert stderr.count("\n") == 1
        else:
            assert exit_code == 0 and stderr == "", (at, exit_code, stderr)  # the command had ended
    assert seen == {"none", "all"}


def test_ctrl_c_as_the_command_exits_is_quiet(tmp_path):
    """SIGINT sent again and again from the moment the last output is in place until the process ends:
    no traceback (an exit hook's ``Exception ignored ... KeyboardInterrupt``), outputs whole."""
    import os
    import subprocess
    import sys

    stack = tiny_stack(tmp_path / "stack")
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "focusfuse", "stack", str(stack), "-o", str(out / "f.png"), "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (out / "f.timing.json").exists() and process.poll() is None:
            pass  # the timing report is put in place last
        while process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGINT)
            except ProcessLookupError:
                break
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    text = stderr.decode()
    assert "Traceback" not in text and "Exception ignored" not in text, text
    assert outputs_state(out) == "all"
    if process.returncode == 130:
        assert text.startswith("focusfuse: interrupted; every output was written whole first: "), text
    else:
        assert process.returncode == 0 and text == "", (process.returncode, text)


def test_a_stop_that_lands_in_a_finalizer_is_delivered_again_without_a_traceback(capfd, monkeypatch):
    """Python drops an exception raised in a finalizer or weakref callback, printing ``Exception ignored``:
    a Ctrl-C handled there would be lost. It is delivered again, in the program's own code."""
    import sys

    import focusfuse.interruption as interruption

    # focusfuse installs its hook when imported; pytest puts its own in place around each test.
    monkeypatch.setattr(sys, "unraisablehook", interruption._stop_swallowed)
    signal.signal(signal.SIGINT, cli.stop_on_ctrl_c)

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the finalizer

    import time

    with pytest.raises(KeyboardInterrupt):
        Finalized()
        time.sleep(60)  # the stop, delivered again, ends this sleep; 60 s only if it never comes
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_signal_that_arrives_as_it_is_being_ignored_is_not_reported(capfd, monkeypatch):
    """A Ctrl-C that lands while SIGINT is being set to SIG_IGN is reported by CPython as
    ``OSError: Signal 2 ignored due to race condition`` with a traceback; it was ignored, as asked."""
    import sys

    import focusfuse.interruption as interruption

    class Reported:  # CPython's report goes through the same hook as an exception in a finalizer
        def __del__(self):
            raise OSError(f"Signal {signal.SIGINT} ignored due to race condition")

    monkeypatch.setattr(sys, "unraisablehook", interruption._stop_swallowed)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        Reported()
        assert capfd.readouterr().err == ""
        signal.signal(signal.SIGINT, cli.stop_on_ctrl_c)  # not ignored: a real problem, still reported
        Reported()
        assert "ignored due to race condition" in capfd.readouterr().err
    finally:
        signal.signal(signal.SIGINT, previous)
