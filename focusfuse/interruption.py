"""Stops (Ctrl-C, SIGTERM) that wait for the few steps which must not be cut in half.

A Python signal handler raises wherever the main thread happens to be. Between
creating a file and entering the code that removes it on failure, or between taking
a stack's lock and the code that releases it, such a stop would leave a stray
temporary or lock file behind. Those steps run inside ``critical_section()``; the
handlers call ``stop()``, which raises at once outside such a step and as soon as it
ends inside one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: BaseException | None = None


def stop(exception: BaseException) -> None:
    """From a signal handler: raise ``exception`` now, or when the running critical section ends."""
    global _pending
    if _depth:
        _pending = _pending or exception
        return
    raise exception


@contextmanager
def critical_section() -> Iterator[None]:
    """Run the block whole: a stop that arrives meanwhile is raised when it ends.

    Python runs signal handlers in the main thread only, so in other threads (a Dask
    worker's tasks) this defers nothing and needs nothing.
    """
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            exception, _pending = _pending, None
            raise exception


_written: list[str] = []


def record_written(paths) -> None:
    """Outputs now in place and whole: a stop that comes after them reports them as written."""
    _written.extend(str(path) for path in paths)


def written_outputs() -> list[str]:
    """Every output this process has put in place, in order."""
    return list(_written)


def forget_written() -> None:
    """A new command starts: what earlier ones wrote in this process is not its output."""
    _written.clear()
