"""The one exception type a user sees: a one-line message naming the file and the problem."""

from __future__ import annotations


class FocusFuseError(Exception):
    """A bad input or setting; the CLI prints the message and exits non-zero."""
