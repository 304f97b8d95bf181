"""Which scans a command works on: one selection type and one matching rule for every stage.

``Selection.of(mice="851,852", weeks="0,2-4", sides="left")`` parses what users type or pass
(strings, ints, lists, range text) once, and every consumer (the source catalog, ``convert``,
each store stage, ``run`` and the CLI) matches scans with :meth:`Selection.matches`.  A mouse
matches by its id: ``851``, ``"851"`` and ``"0851"`` are one animal; a non-numeric id matches
its store path segment (:func:`~bonemet_dask.naming.sanitize_segment`).  A selection that
matches nothing is an error, raised by :meth:`Selection.require`, that lists what exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from bonemet_dask.errors import UsageError
from bonemet_dask.naming import COMPONENTS, SIDES, parse_component, sanitize_segment

__all__ = ["NothingSelectedError", "Selection", "SelectionError", "mouse_key"]

MAX_WEEK: Final = 10_000
"""Weeks above this are refused as typing mistakes (BoneMet's studies last weeks, not years)."""
_RANGE_RE: Final = re.compile(r"^(\d+)\s*-\s*(\d+)$")


class SelectionError(UsageError):
    """A selector is malformed (``--weeks 5-2``, ``--sides up``); the message names the fix."""


class NothingSelectedError(SelectionError):
    """A well-formed selection that matches no scan; the message lists what exists."""


def mouse_key(mouse: str | int) -> str:
    """The one identity of an animal id: digits compare as numbers, other ids by path segment.

    >>> mouse_key("0851"), mouse_key(851), mouse_key(" 851L ")
    ('851', '851', '851L')
    """
    if isinstance(mouse, bool):
        raise SelectionError(f"mice={mouse!r}: pass animal ids such as 851 or '851'")
    text = str(mouse).strip()
    if text.isdigit():
        return str(int(text))
    try:
        return sanitize_segment(text)
    except ValueError:
        raise SelectionError(f"mice={mouse!r} is not an animal id, e.g. 851") from None


def _items(value: Any) -> list[Any]:
    """A scalar, comma-separated text or iterable as a flat list of stripped items."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, Iterable):
        out: list[Any] = []
        for item in value:
            out.extend(_items(item) if isinstance(item, str) else [item])
        return out
    raise SelectionError(f"{value!r} ({type(value).__name__}) is not a value or list of values")


_MAX_MICE_RANGE: Final = 100_000
"""A range of more animal ids than this is refused as a typing mistake."""


def _mouse_keys(item: Any) -> list[str]:
    """The keys of one mouse item: an id, or a range of numeric ids ``"851-860"``."""
    if isinstance(item, range):
        return [mouse_key(m) for m in item]
    if isinstance(item, str):
        match = _RANGE_RE.match(item.strip())
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise SelectionError(f"mice={item!r}: the range runs backwards; write {hi}-{lo}")
            if hi - lo >= _MAX_MICE_RANGE:
                raise SelectionError(
                    f"mice={item!r} spans {hi - lo + 1:,} ids; select at most "
                    f"{_MAX_MICE_RANGE:,} per range"
                )
            return [str(m) for m in range(lo, hi + 1)]
    return [mouse_key(item)]


def _parse_weeks(value: Any) -> tuple[int, ...]:
    weeks: list[int] = []
    for item in _items(value):
        if isinstance(item, bool) or not isinstance(item, int | str | range):
            raise SelectionError(
                f"weeks={value!r}: {item!r} is not a week number, e.g. 0 or '0,2-4'"
            )
        if isinstance(item, range):
            weeks.extend(item)
            continue
        if isinstance(item, int):
            weeks.append(item)
            continue
        text = item.lower().removeprefix("week").strip()
        match = _RANGE_RE.match(text)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise SelectionError(
                    f"weeks={value!r}: the range {item!r} runs backwards; write {hi}-{lo}"
                )
            weeks.extend(range(lo, hi + 1))
        elif text.isdigit():
            weeks.append(int(text))
        else:
            raise SelectionError(
                f"weeks={value!r}: {item!r} is not a week number or range, e.g. 0,2-4"
            )
    for week in weeks:
        if not 0 <= week <= MAX_WEEK:
            raise SelectionError(
                f"weeks={value!r}: week {week} is outside 0..{MAX_WEEK}; weeks count from 0"
            )
    if not weeks:
        raise SelectionError(f"weeks={value!r} names no week; e.g. 0,2-4, or leave it out")
    return tuple(sorted(set(weeks)))


def _parse_choice(argument: str, value: Any, allowed: tuple[str, ...], parse=None) -> tuple:
    chosen = []
    for item in _items(value):
        key = item if item in allowed else (parse(str(item)) if parse else None)
        if key is None or key not in allowed:
            raise SelectionError(
                f"{argument}={value!r}: {item!r} is not one of {', '.join(allowed)}"
            )
        chosen.append(key)
    if not chosen:
        raise SelectionError(f"{argument}={value!r} names nothing; leave it out to select all")
    return tuple(dict.fromkeys(chosen))


@dataclass(frozen=True)
class Selection:
    """Mice, weeks, sides and components to work on; ``None`` selects everything.

    Build it with :meth:`of`, which accepts what users write: ``mice="851"``, ``851``,
    ``["851", 852]``, ``"851,852"``, ``"851-860"``; ``weeks=0``, ``[0, 2]``, ``"0,2-4"``,
    ``range(3)``;
    ``sides="left"`` or ``["left", "right"]``; ``components="recon_ct"`` or folder spellings
    (``"2. Recon-CT"``).

    Attributes
    ----------
    mice : tuple of str or None
        :func:`mouse_key` of each animal.
    weeks : tuple of int or None
        Sorted week numbers.
    sides : tuple of str or None
        Values of :data:`~bonemet_dask.naming.SIDES`.
    components : tuple of str or None
        Values of :data:`~bonemet_dask.naming.COMPONENTS`.
    """

    mice: tuple[str, ...] | None = None
    weeks: tuple[int, ...] | None = None
    sides: tuple[str, ...] | None = None
    components: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls,
        selection: Selection | None = None,
        *,
        mice: Any = None,
        weeks: Any = None,
        sides: Any = None,
        components: Any = None,
    ) -> Selection:
        """Parse selectors (see the class docstring); keywords narrow ``selection`` if given.

        Raises
        ------
        SelectionError
            For a malformed selector; the message names it and shows a valid one.
        """
        base = selection or cls()
        if mice is not None:
            items = _items(mice)
            if not items:
                raise SelectionError(f"mice={mice!r} names no animal; leave it out to select all")
            keys = [key for item in items for key in _mouse_keys(item)]
            base = _with(base, mice=tuple(dict.fromkeys(keys)))
        if weeks is not None:
            base = _with(base, weeks=_parse_weeks(weeks))
        if sides is not None:
            base = _with(base, sides=_parse_choice("sides", sides, SIDES))
        if components is not None:
            parsed = _parse_choice("components", components, COMPONENTS, parse_component)
            base = _with(base, components=parsed)
        return base

    @property
    def everything(self) -> bool:
        """True when nothing is restricted."""
        return self == Selection()

    def matches(
        self,
        *,
        mouse: str | int | None = None,
        side: str | None = None,
        week: int | None = None,
        component: str | None = None,
    ) -> bool:
        """Whether a scan with these keys is selected (keys given as None are not tested)."""
        return (
            (self.mice is None or mouse is None or mouse_key(mouse) in self.mice)
            and (self.weeks is None or week is None or int(week) in self.weeks)
            and (self.sides is None or side is None or side in self.sides)
            and (self.components is None or component is None or component in self.components)
        )

    def narrowed(self, **selectors: Any) -> Selection:
        """A copy with some selectors replaced (parsed as in :meth:`of`)."""
        return Selection.of(self, **selectors)

    def to_kwargs(self) -> dict[str, Any]:
        """As keyword arguments (lists), e.g. for ``Catalog.select``."""
        return {
            name: None if value is None else list(value)
            for name, value in (
                ("components", self.components),
                ("mice", self.mice),
                ("weeks", self.weeks),
                ("sides", self.sides),
            )
        }

    def describe(self) -> str:
        """The selection as CLI options, e.g. ``--mice 853 --weeks 0-2`` (``all scans`` if none)."""
        parts = []
        if self.mice is not None:
            parts.append(f"--mice {','.join(self.mice)}")
        if self.weeks is not None:
            parts.append(f"--weeks {format_weeks(self.weeks)}")
        if self.sides is not None:
            parts.append(f"--sides {','.join(self.sides)}")
        if self.components is not None:
            parts.append(f"--components {','.join(self.components)}")
        return " ".join(parts) or "all scans"

    def require(
        self,
        matched: int,
        available: Iterable[tuple[str, str, int]],
        *,
        what: str,
        where: str,
    ) -> None:
        """Raise :class:`NothingSelectedError` when nothing matched, listing what exists.

        Parameters
        ----------
        matched : int
            Scans the selection matched.
        available : iterable of (mouse, side, week)
            Every scan that could have been selected.
        what : str
            What was looked for, e.g. ``"recon_ct scans"``.
        where : str
            Where, e.g. ``"store 'd.zarr'"``.
        """
        if matched:
            return
        scans = list(available)
        if not scans:
            raise NothingSelectedError(f"{where} holds no {what}")
        raise NothingSelectedError(
            f"{self.describe()} matches none of the {len(scans)} {what} in {where}; "
            f"it holds {summarize(scans)}"
        )


def _with(selection: Selection, **changes: Any) -> Selection:
    values = {name: getattr(selection, name) for name in ("mice", "weeks", "sides", "components")}
    return Selection(**(values | changes))


def format_weeks(weeks: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    ordered = sorted(set(weeks))
    runs: list[list[int]] = []
    for week in ordered:
        if runs and week == runs[-1][-1] + 1:
            runs[-1].append(week)
        else:
            runs.append([week])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def summarize(scans: Iterable[tuple[str, str, int]], *, limit: int = 12) -> str:
    """``mice 851, 852 (weeks 0-2; sides left, right)``: what a list of scan keys covers."""
    scans = list(scans)
    mice = sorted({str(m) for m, _, _ in scans}, key=lambda m: (not m.isdigit(), len(m), m))
    shown = ", ".join(mice[:limit]) + (
        f" and {len(mice) - limit} more" if len(mice) > limit else ""
    )
    sides = [s for s in SIDES if s in {side for _, side, _ in scans}]
    weeks = format_weeks(week for _, _, week in scans)
    return f"mice {shown} (weeks {weeks}; sides {', '.join(sides)})"
