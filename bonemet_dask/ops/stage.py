"""A store stage as a declaration: what it reads, what it writes, how one output is built.

A stage (``reconstruct``, ``segment``, ``register``, ``composite``) subclasses :class:`Stage`
and says three things:

* ``reads`` / ``writes``: the input and output components;
* :meth:`Stage.outputs`: the output groups one unit of input gives (a unit is one input scan,
  or every week of one tibia for stages that compare weeks);
* :meth:`Stage.build`: the lazy :class:`Product` of one output (layout, arrays, attributes).

Everything else is the engine's (:mod:`bonemet_dask.ops.engine`): the selection, the parameter
fingerprint, skip and resume shard by shard (the ``slice_hash`` done-marker ``convert`` uses),
one writer per shard, provenance, the group status and the :class:`StageReport`.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np

from bonemet_dask.io.scans import ScanRef

if TYPE_CHECKING:
    import dask.array as da
    import pandas as pd

    from bonemet_dask.io.store import ImageLayout
    from bonemet_dask.ops.engine import UnitContext

__all__ = [
    "OUTCOMES",
    "Outcome",
    "Output",
    "Product",
    "Stage",
    "StageFailure",
    "StageReport",
    "setting",
]

OUTCOMES: Final = ("written", "resumed", "up to date", "refused", "failed", "quarantined")
"""What became of one output group: written whole, finished after an interrupted run, already
complete, refused (another stage or other settings wrote it; ``overwrite`` replaces it), failed
(the reason says why), or left out because an input was quarantined."""


class StageFailure(Exception):
    """One output cannot be built (no bone, no baseline week...); the run goes on without it."""


@dataclass
class Output:
    """One output group a stage will write, known before any pixel is read.

    Attributes
    ----------
    path : str
        Group path in ``OUT``, e.g. ``seg_ct/851/left/week0``.
    mouse, side, week
        Its keys (``mouse`` is the original id).
    inputs : dict of str to ScanRef
        The input scans by role (``"input"``, or ``"baseline"`` and ``"followup"``).
    fingerprint : str
        Set by the engine: hash of the stage, its parameters and the inputs' fingerprints.
    resume : dict or None
        Set by the engine: the ``bonemet`` attributes of an unfinished group with the same
        fingerprint, whose complete shards are kept (a stage may reuse what it recorded there,
        e.g. a registration's transform).
    """

    path: str
    mouse: str
    side: str
    week: int
    inputs: dict[str, ScanRef]
    fingerprint: str = ""
    resume: dict[str, Any] | None = None
    replace: bool = False


@dataclass
class Product:
    """The lazy content of one output group.

    Attributes
    ----------
    layout : ImageLayout
        Layout of the image array ``0`` (and of every extra array).
    arrays : dict of str to dask.array.Array
        ``"0"`` and the extra arrays (``"mask"``, ``"greyscale"``...), each of ``layout.shape``
        and dtype; the engine gives each shard exactly one writing task.
    attrs : dict
        The stage's ``bonemet`` attributes; a ``provenance`` entry is merged into the engine's.
    slice_index : numpy.ndarray, optional
        Source index of each slice (default ``0..n-1``).
    extras : dict
        ``{"mask": {"dtype": "uint8", "attributes": {...}}}`` for each extra array.
    measures : dict of str to lazy scalar
        Computed in the same graph as the writes; stored under ``bonemet.metrics``.
    """

    layout: ImageLayout
    arrays: dict[str, da.Array]
    attrs: dict[str, Any]
    slice_index: np.ndarray | None = None
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    measures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What became of one output group (one of :data:`OUTCOMES`), with the stage's details."""

    path: str
    status: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    shards: int = 0

    @property
    def done(self) -> bool:
        """Written, resumed or already up to date."""
        return self.status in ("written", "resumed", "up to date")


@dataclass
class StageReport:
    """What one stage run did, output by output (the same type for every stage and ``run``).

    Attributes
    ----------
    stage : str
        The stage's name.
    outcomes : list of Outcome
        One per output group considered, in store order.
    seconds : float
        Wall time.
    table : pandas.DataFrame or None
        A stage's table (``composite``: the per-scan metrics).
    csv : str or None
        Where that table was written.
    shards_written, bytes_read : int
        Shards this run wrote; source bytes it read (``convert``).
    max_graph_tasks : int
        Tasks of the largest graph one unit submitted (the scheduler's load per unit).
    """

    stage: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    table: pd.DataFrame | None = None
    csv: str | None = None
    shards_written: int = 0
    bytes_read: int = 0
    max_graph_tasks: int = 0

    def _with(self, *statuses: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in statuses]

    @property
    def written(self) -> list[str]:
        """Groups this run wrote or finished."""
        return [o.path for o in self._with("written", "resumed")]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of groups left as they were (up to date, or refused)."""
        return [(o.path, o.reason) for o in self._with("up to date", "refused")]

    @property
    def refused(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of groups another stage or other settings wrote."""
        return [(o.path, o.reason) for o in self._with("refused")]

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of outputs that could not be built."""
        return [(o.path, o.reason) for o in self._with("failed")]

    @property
    def quarantined(self) -> dict[str, list[tuple[str, str]]]:
        """Scan folder (or group) -> ``[(file or input, reason)]`` of quarantined scans."""
        return {
            o.details.get("folder", o.path): [tuple(p) for p in o.details.get("problems", [])]
            or [(o.path, o.reason)]
            for o in self._with("quarantined")
        }

    @property
    def flagged(self) -> list[tuple[str, str]]:
        """``(path, flag)`` of outputs written with a quality warning (e.g. a poor registration)."""
        return [(o.path, o.details["flag"]) for o in self.outcomes if o.details.get("flag")]

    def counts(self) -> dict[str, int]:
        """Outputs per outcome, e.g. ``{"written": 4, "up to date": 2, ...}``."""
        return {status: len(self._with(status)) for status in OUTCOMES}

    @property
    def exit_code(self) -> int:
        """1 when an output failed, else 3 when a scan was quarantined, else 0 (the CLI's)."""
        if self.failed:
            return 1
        return 3 if self.quarantined else 0

    def extend(self, other: StageReport) -> None:
        """Add another report's outcomes and counters (one stage over several units)."""
        self.outcomes.extend(other.outcomes)
        self.shards_written += other.shards_written
        self.bytes_read += other.bytes_read
        self.max_graph_tasks = max(self.max_graph_tasks, other.max_graph_tasks)


PRODUCERS: Final = {
    "rotation_xray": "convert the projections (bonemet-dask convert SRC STORE --components "
    "rotation_xray)",
    "recon_ct": "reconstruct the projections (bonemet-dask reconstruct STORE) or convert the "
    "published Recon-CT (bonemet-dask convert SRC STORE --components recon_ct)",
    "seg_ct": "segment the reconstructions (bonemet-dask segment STORE) or convert the published "
    "Seg-CT (bonemet-dask convert SRC STORE --components seg_ct)",
    "regist_ct": "register the tibiae (bonemet-dask register STORE) or convert the published "
    "Regist-CT (bonemet-dask convert SRC STORE --components regist_ct)",
}
"""What makes each input component, for the error when a store holds none of it."""


def setting(
    default: Any, help: str, *, cli: str | bool | None = None, fingerprint: bool = True
) -> Any:
    """A stage setting: a dataclass field that carries its CLI option and help text.

    Parameters
    ----------
    default : Any
        Default value.
    help : str
        One line for ``--help`` and the docs.
    cli : str or bool, optional
        The option's spelling (default ``--field-name``); False keeps it off the CLI (Python
        objects, lists).
    fingerprint : bool
        Part of every output's fingerprint (False for settings that change no voxel: where a
        CSV goes, which backend computes).
    """
    metadata = {"help": help, "cli": cli, "fingerprint": fingerprint}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A store stage, declared; :func:`bonemet_dask.ops.engine.run_stage` does the rest.

    A subclass is a frozen dataclass whose fields are its settings (:func:`setting`); its
    class keywords say what it is, e.g.
    ``class Register(Stage, name="register", reads="seg_ct", writes="regist_ct",
    per_tibia=True, chained=True)``:

    * ``name``: provenance, task names (``segment-write``), messages;
    * ``reads`` / ``writes``: the input and output components;
    * ``per_tibia``: a unit is every week of one (mouse, side), not one input scan;
    * ``chained``: a unit's outputs are written one after the other (a later one reads an
      earlier one);

    and it implements :meth:`build` (and :meth:`outputs` when one input does not give one
    output of the same keys).
    """

    name: ClassVar[str]
    reads: ClassVar[str]
    writes: ClassVar[str]
    per_tibia: ClassVar[bool] = False
    chained: ClassVar[bool] = False

    def __init_subclass__(
        cls, *, name: str, reads: str, writes: str, per_tibia: bool = False,
        chained: bool = False, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init_subclass__(**kwargs)
        cls.name, cls.reads, cls.writes = name, reads, writes
        cls.per_tibia, cls.chained = per_tibia, chained

    def __post_init__(self) -> None:
        """Hold numbers as their declared type.

        ``threshold=75`` and ``75.0`` are one setting with one fingerprint: the CLI and Python
        must not disagree on whether a group is up to date.
        """
        hints = typing.get_type_hints(type(self))
        for item in fields(self):
            value, kind = getattr(self, item.name), hints.get(item.name)
            if kind in (int, float) and isinstance(value, int | float | np.number):
                if isinstance(value, bool) or (kind is int and value != int(value)):
                    raise ValueError(f"{item.name}={value!r} must be a whole number")
                object.__setattr__(self, item.name, kind(value))

    @property
    def produced_by(self) -> str:
        """How a user makes this stage's input, for the message when a store has none."""
        return PRODUCERS[self.reads]

    slices_per_shard: int | None = setting(
        None,
        "Slices per shard = per writing task (default: 256 MiB of slices, a multiple of 64; "
        "the reconstruction: 64, its slab).",
    )

    def output_layout(self, shape: tuple[int, ...], voxel_size_um: Any) -> ImageLayout:
        """The store layout of a uint8 output: ``slices_per_shard``, else about 256 MiB a shard.

        Shards as large as the conversion's keep a store of small crops within the object
        budget of DESIGN.md (one object per 64 MB of source; 64-slice shards of a Regist-CT
        crop hold 0.7 MB stored).
        """
        from bonemet_dask.io.store import ImageLayout
        from bonemet_dask.ops.convert import default_slices_per_shard

        shape3 = tuple(int(n) for n in shape)
        per_shard = self.slices_per_shard or default_slices_per_shard("ct", shape3, "uint8")
        return ImageLayout.default_for(
            "ct", shape3, "uint8", voxel_size_um=voxel_size_um, slices_per_shard=per_shard
        )

    @property
    def parameters(self) -> dict[str, Any]:
        """The fingerprinted settings, JSON-able (recorded in every output's provenance)."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in fields(self)
            if f.metadata.get("fingerprint", True)
        }

    @classmethod
    def cli_defaults(cls, store: Any, out: Any) -> dict[str, Any]:
        """Settings the CLI fills in from the stores when the user left them out (default none)."""
        return {}

    def unit_key(self, scan: ScanRef) -> tuple:
        """Which unit an input scan belongs to."""
        return (scan.segment, scan.side) if self.per_tibia else (scan.path,)

    def outputs(self, scans: list[ScanRef]) -> list[Output]:
        """The output groups of one unit (default: one per input scan, same keys)."""
        return [self.output_for(scan, side=scan.side) for scan in scans]

    def output_for(self, scan: ScanRef, *, side: str, **inputs: ScanRef) -> Output:
        """The output of this stage at ``scan``'s mouse and week (``inputs`` default: scan)."""
        path = f"{self.writes}/{scan.segment}/{side}/week{scan.week}"
        return Output(path, scan.mouse, side, scan.week, inputs or {"input": scan})

    def identity(self, output: Output, context: UnitContext) -> dict[str, Any]:
        """More fingerprint content of one output beyond parameters and inputs (default none)."""
        return {}

    def build(self, output: Output, context: UnitContext) -> Product:
        """The lazy product of one output; raise :class:`StageFailure` when it cannot be made."""
        raise NotImplementedError

    def finish(self, report: StageReport, context: UnitContext) -> None:
        """After every unit: stage-wide results (a table, a CSV).  Default: nothing."""

    def note(self, outcome: Outcome) -> str:
        """One line of details for the CLI's table (default: the reason a group was not made)."""
        return "" if outcome.done else outcome.reason


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def plain(value: Any) -> Any:
    """A numpy scalar as a JSON-able Python value (NaN and inf as None)."""
    value = value.item() if isinstance(value, np.generic | np.ndarray) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value
