"""One writer per store: a lock beside the store that names its holder and outlives no process.

Every command that writes a store (``convert``, ``run``, the stage commands, ``pyramid``)
holds :func:`store_writer_lock` while it writes.  The lock is a folder beside the store,
``<store>.bonemet-lock`` (``out.zarr.bonemet-lock``, ``s3://bucket/out.zarr.bonemet-lock/``):
nothing is added inside the store, whose readers would otherwise list a stranger.  In it each
holder keeps one JSON record of its own, ``<section>.<host>.<pid>.<token>.json``::

    {"lock": 1, "section": "store", "mode": "exclusive", "store": "out.zarr",
     "token": "9f3c...", "host": "node7", "pid": 4242, "pidns": "pid:[4026531836]",
     "process_started": 1767.0e6, "user": "ana", "operation": "convert",
     "command": "bonemet-dask convert /data/BoneMet out.zarr", "since": "2026-01-05T10:00:00Z",
     "heartbeat": "2026-01-05T10:04:30Z", "heartbeat_epoch": 1767.6e6,
     "refresh_s": 30.0, "stale_after_s": 300.0}

Acquiring writes the record, then lists the folder: a live record of another process that
conflicts with this one (either of the two ``exclusive``) makes this one remove its record and
raise :class:`StoreLockedError`, which names the holder (command, host, pid, user, since when)
and the fix.  Two processes that start within the same instant both see each other and both
refuse: never do both proceed.  No conditional put is needed, only a strongly consistent
listing (local and network file systems, S3 and its look-alikes).

A record is stale, and removed by whoever finds it, when

* its host is this host (same host name and pid namespace) and its process is gone: the pid
  does not exist, is a zombie, or was reused by a process started at another time; or
* its host is another host and its ``heartbeat``, which the holder rewrites every
  ``refresh_s`` seconds (30) from a daemon thread, is older than ``stale_after_s`` (300):
  a run killed on another node blocks the store for at most five minutes, and the refusal says
  how old the heartbeat is.  Hosts must agree on the time within a minute or so (NTP).

Modes: ``exclusive`` (the default) for a command that writes the store alone, ``shared`` for
the commands run side by side into one store with ``--no-consolidate`` (the tasks of a job
array, ``conversion/``), which exclude an exclusive writer but not each other.  A section
other than ``"store"`` (``"medirec"``) is a short exclusive lock of one part of the store that
shared writers take in turn (``wait``).  Within one process the lock is re-entrant: ``run``
calls ``convert`` and the stages, which take it again, from any thread.

Where the folder beside the store cannot be written (permissions, a read-only parent) the store
is written without the lock, with a warning.  A store at the root of a bucket keeps the folder
inside (``s3://bucket/.bonemet-lock/``), which zarr's member listing warns about while held.

A disk that fills while the lock is held (``ENOSPC``, ``EDQUOT``) is re-raised as
:class:`~bonemet_dask.errors.StoreFullError`, naming the store: the groups being written keep
status ``incomplete`` and a rerun resumes them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import getpass
import inspect
import json
import logging
import os
import random
import re
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, ParamSpec, TypeVar

from bonemet_dask.errors import StoreError, StoreFullError
from bonemet_dask.io._lock_place import LOCK_SUFFIX, Place, place_of

__all__ = [
    "LOCK_SUFFIX",
    "MODES",
    "REFRESH_S",
    "STALE_AFTER_S",
    "StoreLockedError",
    "is_disk_full",
    "lock_records",
    "store_writer_lock",
    "writes_store",
]

logger = logging.getLogger(__name__)

STALE_AFTER_S: Final = 300.0
"""Seconds without a heartbeat after which another host's record is stale."""
REFRESH_S: Final = 30.0
"""Seconds between two heartbeats of a holder."""
MODES: Final = ("exclusive", "shared")
"""``exclusive``: the store's only writer; ``shared``: one of several side-by-side writers."""
_FULL: Final = (errno.ENOSPC, errno.EDQUOT)
_P = ParamSpec("_P")
_R = TypeVar("_R")


class StoreLockedError(StoreError):
    """Another live process writes the store; ``holders`` are the records of those processes."""

    def __init__(self, message: str, holders: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.holders = holders


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or an exceeded quota (``ENOSPC``, ``EDQUOT``)."""
    return isinstance(err, OSError) and err.errno in _FULL


# --------------------------------------------------------------------------------------------
# Records: who holds the lock, and whether that process is still there
# --------------------------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    program = os.path.basename(argv[0]) or "python"
    if program.startswith("bonemet-dask"):
        program = "bonemet-dask"
    text = shlex.join([program, *argv[1:]])
    return text if len(text) <= 400 else text[:397] + "..."


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return None


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _new_record(store: Any, *, section: str, mode: str, operation: str | None,
                refresh: float, stale_after: float) -> dict[str, Any]:  # fmt: skip
    now = _now()
    return {
        "lock": 1,
        "section": section,
        "mode": mode,
        "store": os.fspath(store) if isinstance(store, str | os.PathLike) else repr(store),
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pidns": _pid_namespace(),
        "process_started": _process_started(os.getpid()),
        "user": _user(),
        "operation": operation,
        "command": _command_line(),
        "since": _iso(now),
        "heartbeat": _iso(now),
        "heartbeat_epoch": now,
        "refresh_s": refresh,
        "stale_after_s": stale_after,
    }


def _record_name(record: dict[str, Any]) -> str:
    host = re.sub(r"[^A-Za-z0-9-]+", "-", str(record["host"]))[:40] or "host"
    return f"{record['section']}.{host}.{record['pid']}.{record['token'][:12]}.json"


def _same_host(record: dict[str, Any]) -> bool:
    return record.get("host") == socket.gethostname() and record.get("pidns") == _pid_namespace()


def _stale(record: dict[str, Any] | None, default_after: float) -> str | None:
    """Why a record is stale, or None while its process may still be writing."""
    if record is None:
        return "its record is unreadable"
    pid = record.get("pid")
    if _same_host(record) and isinstance(pid, int):
        import psutil

        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return f"pid {pid} has exited"
            started = record.get("process_started")
            if started is not None and abs(process.create_time() - float(started)) > 1.0:
                return f"pid {pid} is now another process"
        except psutil.NoSuchProcess:
            return f"pid {pid} is no longer running on {record.get('host')}"
        except psutil.AccessDenied:  # exists, owned by someone else: alive
            return None
        if pid == os.getpid() and record.get("token") not in _held_tokens():
            return "it is a leftover of this process"  # which no longer holds it
        return None
    after = float(record.get("stale_after_s") or default_after)
    age = _now() - float(record.get("heartbeat_epoch") or 0.0)
    if age > after:
        return f"no heartbeat from {record.get('host')} for {age:.0f} s (stale after {after:.0f} s)"
    return None


def _holder(record: dict[str, Any]) -> str:
    age = _now() - float(record.get("heartbeat_epoch") or 0.0)
    user = f", user {record['user']}" if record.get("user") else ""
    return (
        f"{record.get('command')!r} ({record.get('mode')}, pid {record.get('pid')} on host "
        f"{record.get('host')}{user}, since {record.get('since')}, last heartbeat {age:.0f} s ago)"
    )


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "token" in record else None


def _scan(place, section: str, stale_after: float, own: str | None) -> list[dict[str, Any]]:
    """The live records of ``section`` other than ``own``; stale ones are removed on the way."""
    live = []
    for name in place.names():
        if not name.endswith(".json") or name.startswith(".") or name == own:
            continue
        if name.split(".", 1)[0] != section:
            continue
        data = place.read(name)
        if data is None:  # removed meanwhile
            continue
        record = _parse(data)
        reason = _stale(record, stale_after)
        if reason is None and record is not None:
            live.append(record | {"record": place.where(name)})
            continue
        logger.warning("removing the stale writer lock %s (%s): %s", place.where(name),
                       _holder(record) if record else "unreadable", reason)  # fmt: skip
        place.delete(name)
    return live


def lock_records(
    store: Any, storage_options: Mapping[str, Any] | None = None, *, section: str = "store"
) -> list[dict[str, Any]]:
    """The live holders of a store's writer lock (stale records are removed, not returned).

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        Local path, fsspec URL or store.
    storage_options : mapping, optional
        fsspec options for a URL.
    section : str
        ``"store"`` or the section of a part of it (``"medirec"``).

    Returns
    -------
    list of dict
        Each holder's record (see the module's docstring), with ``record``: where it lies.
    """
    place = place_of(store, storage_options)
    return [] if place is None else _scan(place, section, STALE_AFTER_S, None)


# --------------------------------------------------------------------------------------------
# Holding: acquire, heartbeat, release; re-entrant within a process
# --------------------------------------------------------------------------------------------


@dataclass
class _Held:
    place: Place
    name: str
    record: dict[str, Any]
    count: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    pid: int = field(default_factory=os.getpid)


_HELD: dict[tuple[str, str], _Held] = {}
"""The locks this process holds, by (lock folder, section): the process state re-entrancy
needs (forked children ignore their parent's entries by ``pid``)."""
_GUARDS: dict[tuple[str, str], threading.RLock] = {}
"""One lock per key: the threads of this process acquire and release it one at a time."""
_HELD_GUARD = threading.Lock()


def _held_tokens() -> set[str]:
    with _HELD_GUARD:
        return {h.record["token"] for h in _HELD.values() if h.pid == os.getpid()}


def _beat(held: _Held, refresh: float) -> None:
    """Rewrite the holder's record every ``refresh`` seconds until released."""
    while not held.stop.wait(refresh):
        try:
            if held.place.read(held.name) is None:
                where = held.place.where(held.name)
                logger.error("the writer lock %s of this process was removed by another one "
                             "(judged stale); writing it again", where)  # fmt: skip
            now = _now()
            held.record.update(heartbeat=_iso(now), heartbeat_epoch=now)
            held.place.write(held.name, json.dumps(held.record).encode())
        except Exception as err:  # a missed beat is not fatal: the lease allows several
            logger.warning("could not refresh the writer lock %s: %s: %s",
                           held.place.where(held.name), type(err).__name__, err)  # fmt: skip


def _refusal(store: Any, place, live: list[dict[str, Any]], mode: str, section: str) -> str:
    first = live[0]
    others = f" and {len(live) - 1} more" if len(live) > 1 else ""
    what = "store" if section == "store" else f"/{section} of store"
    after = float(first.get("stale_after_s") or STALE_AFTER_S)
    side = (
        "; tasks side by side into one store (job arrays) pass --no-consolidate (consolidate="
        "False), then consolidate once after them"
        if mode == "exclusive" or first.get("mode") == "exclusive"
        else ""
    )
    shown = os.fspath(store) if isinstance(store, str | os.PathLike) else repr(store)
    return (
        f"{what} {shown!r} is being written by another process: {_holder(first)}{others}. "
        "One process writes a store at a time: wait for it to end (or stop it), then rerun, "
        f"which resumes{side}. A lock whose process has died is taken over by the next run: at "
        f"once on host {first.get('host')} when pid {first.get('pid')} is gone, from another "
        f"host {after:.0f} s after its last heartbeat; if you are sure that process is gone, "
        f"delete {first['record']}"
    )


def _acquire(store, place, *, section, mode, operation, wait, stale_after, refresh) -> _Held:
    deadline = _now() + wait
    while True:
        record = _new_record(store, section=section, mode=mode, operation=operation,
                             refresh=refresh, stale_after=stale_after)  # fmt: skip
        name = _record_name(record)
        for attempt in range(3):  # a holder tidying the empty folder may remove it under us
            try:
                place.write(name, json.dumps(record).encode())
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            live = _scan(place, section, stale_after, name)
        except BaseException:
            place.delete(name)
            raise
        conflicts = [r for r in live if mode == "exclusive" or r.get("mode") == "exclusive"]
        if not conflicts:
            held = _Held(place, name, record)
            held.thread = threading.Thread(target=_beat, args=(held, refresh), daemon=True,
                                           name=f"bonemet-lock-{section}")  # fmt: skip
            held.thread.start()
            logger.info("holding the %s writer lock of %s (%s)", mode, store, place.where(name))
            return held
        place.delete(name)
        if _now() >= deadline:
            place.tidy()
            raise StoreLockedError(_refusal(store, place, conflicts, mode, section), conflicts)
        time.sleep(min(random.uniform(0.05, 0.5), max(deadline - _now(), 0.0)))


def _release(held: _Held) -> None:
    held.stop.set()
    if held.thread is not None:
        held.thread.join(timeout=60)
    try:
        held.place.delete(held.name)
        held.place.tidy()
    except OSError as err:
        logger.warning("could not remove the writer lock %s (%s); the next run removes it, as "
                       "its process has ended", held.place.where(held.name), err)  # fmt: skip


@contextlib.contextmanager
def store_writer_lock(
    store: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    operation: str | None = None,
    mode: str = "exclusive",
    section: str = "store",
    wait: float = 0.0,
    stale_after: float = STALE_AFTER_S,
    refresh: float = REFRESH_S,
) -> Iterator[dict[str, Any] | None]:
    """Hold a store's writer lock for the block (see the module's docstring for the design).

    Parameters
    ----------
    store : str, os.PathLike or zarr Store
        The store written: local path, fsspec URL (``s3://bucket/a.zarr``) or zarr store.  A
        :class:`zarr.storage.MemoryStore` (only this process reaches it) is not locked.
    storage_options : mapping, optional
        fsspec options for a URL.
    operation : str, optional
        What this process does (``"convert"``), recorded beside its command line.
    mode : {"exclusive", "shared"}
        ``exclusive`` excludes every other writer; ``shared`` only exclusive ones (side-by-side
        tasks with ``--no-consolidate``).
    section : str
        ``"store"``, or the name of a part written by one process at a time (``"medirec"``).
    wait : float
        Seconds to keep trying while another process holds it (default: refuse at once).
    stale_after, refresh : float
        This holder's lease: seconds between heartbeats, and without one before another host
        may take the lock over.

    Yields
    ------
    dict or None
        This holder's record (the outermost holder's when re-entered), None when not locked.

    Raises
    ------
    StoreLockedError
        When another live process holds it; the message names that process and the fix.
    StoreError
        When the local store path is a regular file or lies under one, or the lock cannot be
        written next to the store (permissions).
    StoreFullError
        When the disk fills while the block writes (or while the lock is written).
    StoreError
        When the store refuses a write while the block runs (``PermissionError``).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(map(repr, MODES))}")
    try:
        with _holding(store, storage_options, operation=operation, mode=mode, section=section,
                      wait=wait, stale_after=stale_after, refresh=refresh) as record:  # fmt: skip
            yield record
    except OSError as err:
        shown = os.fspath(store) if isinstance(store, str | os.PathLike) else repr(store)
        if isinstance(err, PermissionError):
            # an object store that stops accepting writes mid-run (a revoked key, a policy)
            raise StoreError(
                f"writing {shown!r}: permission denied ({err}); check the credentials and the "
                "bucket policy or folder permissions (storage_options), then rerun: the groups "
                "already complete are kept and the others resume"
            ) from err
        if isinstance(err, StoreFullError) or not is_disk_full(err):
            raise
        what = "no space left on device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        raise StoreFullError(
            f"{what} writing {shown!r}: free space or choose another store; rerun resumes",
            err.errno,
        ) from err


@contextlib.contextmanager
def _holding(store, storage_options, *, operation, mode, section, wait, stale_after,
             refresh) -> Iterator[dict[str, Any] | None]:  # fmt: skip
    place = place_of(store, storage_options)
    if place is None:
        yield None
        return
    key = (place.where(), section)
    with _HELD_GUARD:
        guard = _GUARDS.setdefault(key, threading.RLock())
    # the store's lock is shared by the process's threads; a section's serialises them too
    with guard if section != "store" else contextlib.nullcontext():
        with guard:  # one thread acquires; the others then re-enter
            held = _enter(key)
            if held is None:
                try:
                    held = _acquire(store, place, section=section, mode=mode,
                                    operation=operation, wait=wait, stale_after=stale_after,
                                    refresh=refresh)  # fmt: skip
                except OSError as err:
                    if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
                        raise
                    logger.warning(  # where the store is writable but its folder is not
                        "writing %s without its writer lock: %s cannot be made (%s); do not "
                        "run two commands into this store at once", store, place.where(),
                        err.strerror or err,
                    )  # fmt: skip
                else:
                    with _HELD_GUARD:
                        _HELD[key] = held
        if held is None:
            yield None
            return
        try:
            yield held.record
        finally:
            with guard:
                with _HELD_GUARD:
                    held.count -= 1
                    last = held.count == 0
                    if last:
                        _HELD.pop(key, None)
                if last:
                    _release(held)


def _enter(key: tuple[str, str]) -> _Held | None:
    """The holding of ``key`` by this process, counted once more; None when it holds none."""
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():  # a forked child holds nothing
            return None
        held.count += 1
        return held


def writes_store(*arguments: str, operation: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Make a function hold the writer lock of the store it writes, for its whole call.

    Parameters
    ----------
    *arguments : str
        Names of the parameters that give the store written; the first one not None wins
        (``"out", "store"`` for a stage).  ``storage_options`` is read from the call as well,
        and ``consolidate=False`` (side-by-side tasks) makes the lock ``shared``.
    operation : str
        Recorded in the lock (``"convert"``).

    Notes
    -----
    With ``compute=False`` (:func:`~bonemet_dask.ops.engine.run_stage`) the lock covers the
    planning and the groups created then, not the later computation of the returned object.
    """

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                given = signature.bind(*args, **kwargs).arguments
            except TypeError:
                return function(*args, **kwargs)  # let the function report its own misuse
            store = next((given[a] for a in arguments if given.get(a) is not None), None)
            if store is None:
                return function(*args, **kwargs)
            mode = "shared" if given.get("consolidate") is False else "exclusive"
            with store_writer_lock(store, given.get("storage_options"), operation=operation,
                                   mode=mode):  # fmt: skip
                return function(*args, **kwargs)

        return locked

    return decorate
