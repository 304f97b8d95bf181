"""The package's error classes that reach users: what the CLI turns into one line and an exit code.

A :class:`UsageError` is a user's mistake (a path that is not a store, a selection that matches
nothing, output groups that exist): the CLI prints its message, which names the fix, and exits
2.  Other failures exit 1.
"""

from __future__ import annotations

__all__ = ["StoreError", "UsageError"]


class UsageError(ValueError):
    """A mistake in what the user asked for; the message says what to do instead."""


class StoreError(UsageError):
    """A store path that does not exist, is not a Zarr store, or cannot be written."""
