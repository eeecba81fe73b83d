"""Stops (Ctrl-C, SIGTERM) that wait for the few steps which must not be cut in half.

A Python signal handler raises wherever the main thread happens to be. Between
creating a file and entering the code that removes it on failure, or between taking
a stack's lock and the code that releases it, such a stop would leave a stray
temporary or lock file behind. Those steps run inside ``critical_section()``; the
handlers call ``stop()``, which raises at once outside such a step and as soon as it
ends inside one.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending: BaseException | None = None
# A stop has been raised (or is pending) in this command: later signals (Ctrl-C held
# down, a batch system's repeated SIGTERM) ask for the same stop, and raising again
# would cut short the clean-up and the message of the first one. Also set once a
# command's outputs are all in place when they end it (``outputs_end_the_command``):
# a stop then has nothing left to stop.
_stopping = False
_raised: tuple[BaseException, int] | None = None  # the stop raised, and the signal that asked for it
_outputs_end_the_command = False
REDELIVERY_DELAY_S = 0.01  # after the finalizer that dropped a stop has returned


def stop(exception: BaseException, signum: int = signal.SIGINT) -> None:
    """From a signal handler: raise ``exception`` now, or when the running critical section ends.

    Only the first stop of a command is raised; the ones after it are the same request.
    """
    global _pending, _stopping, _raised
    if _stopping:
        return
    _stopping = True
    _raised = (exception, signum)
    if _depth:
        _pending = exception
        return
    raise exception


def _ignored_as_asked(error: BaseException | None) -> bool:
    """CPython's report of a signal that arrived as its handler was being set to SIG_IGN.

    The C handler had already noted it, so Python finds it with no handler to run and
    reports it as "ignored due to race condition". Ignoring it is what was asked.
    """
    if not isinstance(error, OSError):
        return False
    found = re.fullmatch(r"Signal (\d+) ignored due to race condition", str(error))
    return found is not None and signal.getsignal(int(found[1])) is signal.SIG_IGN


def _stop_swallowed(unraisable) -> None:
    """sys.unraisablehook: a stop raised while Python ran a finalizer or a weakref callback is
    printed and dropped there, not propagated; it is delivered again, to stop the program.
    A signal that arrived as it was being ignored is not reported."""
    global _stopping
    if _ignored_as_asked(unraisable.exc_value):
        return
    if _raised is not None and unraisable.exc_value is _raised[0]:
        _stopping = False
        # Sent again from another thread, a moment later: raised here (signal.raise_signal
        # and _thread.interrupt_main run the handler at once), it would be dropped again.
        main, signum = threading.main_thread().ident, _raised[1]
        assert main is not None
        threading.Timer(REDELIVERY_DELAY_S, signal.pthread_kill, (main, signum)).start()
        return
    _previous_unraisable_hook(unraisable)


_previous_unraisable_hook = sys.unraisablehook
sys.unraisablehook = _stop_swallowed


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
    global _stopping
    _written.extend(str(path) for path in paths)
    if _outputs_end_the_command:
        _stopping = True


def outputs_end_the_command() -> None:
    """The running command (``focusfuse stack``) is done once its outputs are in place: stops after
    that are ignored (a stop already pending is still raised, and says the outputs were written)."""
    global _outputs_end_the_command
    _outputs_end_the_command = True


def written_outputs() -> list[str]:
    """Every output this process has put in place, in order."""
    return list(_written)


def start_command() -> None:
    """A new command starts: what earlier ones in this process wrote is not its output, and it
    has not been stopped."""
    global _stopping, _pending, _raised, _outputs_end_the_command
    _written.clear()
    _stopping, _pending, _raised, _outputs_end_the_command = False, None, None, False
