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
from focusfuse.interruption import critical_section, stop


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
    with pytest.raises(cli.Terminated):
        signal.raise_signal(signal.SIGTERM)  # outside one it stops at once
    with critical_section():
        pass  # and nothing is left pending


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
