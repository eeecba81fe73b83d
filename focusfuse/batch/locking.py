"""One lock per stack's outputs, so that overlapping runs never fuse a stack twice at once.

The lock is an advisory ``flock`` on a hidden file beside the outputs
(``OUTROOT/day1/.pos3.lock``). The kernel drops it when its holder exits, however it
exits (a killed cron run, a node lost from a cluster), so a stale lock is taken over
by the next run without any guessing from ages or process ids. Linux's NFS client
carries ``flock`` to the server as a POSIX lock, so workers on several machines
writing to one shared tree exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from focusfuse.interruption import critical_section


class OutputLock:
    """Held from ``acquire`` until ``release``; the lock file is removed on release.

    Enter the ``with`` block before ``acquire``, so that a stop arriving while the lock
    is being taken still releases it (and removes the file).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.descriptor: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting: False when another process holds it."""
        with critical_section():
            return self._acquire()

    def _acquire(self) -> bool:
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                return False
            # The holder before us may have removed the file after we opened it: then
            # our lock is on a file nobody else will open, so start again on the new one.
            try:
                same_file = os.path.samestat(os.fstat(descriptor), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if same_file:
                self.descriptor = descriptor
                return True
            os.close(descriptor)

    def release(self) -> None:
        with critical_section():
            if self.descriptor is None:
                return
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
