"""The package's error classes that reach users: what the CLI turns into one line and an exit code.

A :class:`UsageError` is a user's mistake (a path that is not a store, a selection that matches
nothing, output groups that exist): the CLI prints its message, which names the fix, and exits
2.  Other failures exit 1.
"""

from __future__ import annotations

__all__ = ["StoreError", "StoreFullError", "UsageError"]


class UsageError(ValueError):
    """A mistake in what the user asked for; the message says what to do instead."""


class StoreError(UsageError):
    """A store path that does not exist, is not a Zarr store, or cannot be written."""


class StoreFullError(OSError):
    """The disk under a store filled (or a quota ran out) while writing it: exit 1, rerun resumes.

    ``errno`` is that of the original error (``ENOSPC`` or ``EDQUOT``); the message names the
    store and the fix.
    """

    def __init__(self, message: str, code: int = 28) -> None:  # 28: ENOSPC
        super().__init__(message)
        self.errno = code
