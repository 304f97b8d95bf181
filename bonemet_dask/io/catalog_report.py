"""Rich tables of a source catalog, printed by ``bonemet-dask plan``."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Final

from rich.filesize import decimal
from rich.table import Table

from bonemet_dask.naming import COMPONENTS, PER_TIBIA_COMPONENTS

if TYPE_CHECKING:
    from bonemet_dask.io.catalog import Catalog, Stack

__all__ = ["catalog_tables"]

_SEVERITY_ORDER: Final = {"error": 0, "warning": 1, "info": 2}
_SEVERITY_STYLE: Final = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def catalog_tables(catalog: Catalog, *, max_problems: int = 50) -> list[Table]:
    """Build the summary and problem tables of a catalog.

    Parameters
    ----------
    catalog : Catalog
        From :func:`bonemet_dask.io.catalog.scan_source`.
    max_problems : int, default 50
        Rows of the problem table; the rest are counted in a final ``... and N more`` row.

    Returns
    -------
    list of rich.table.Table
        ``[summary, problems]``: per component scans, subjects, files, size, typical stack shape,
        dtype and problems, with a totals row and a caption counting the scans that would be
        quarantined and the paths left out (:attr:`~bonemet_dask.io.catalog.Catalog.left_out`);
        then the problems, errors first, each with its severity (coloured), kind, path relative
        to the root and message.

    Raises
    ------
    ValueError
        If ``max_problems`` is negative.
    """
    if max_problems < 0:
        raise ValueError(f"max_problems={max_problems} must be >= 0, e.g. 50")
    return [_summary_table(catalog), _problem_table(catalog, max_problems)]


def _problem_counts(stacks: list[Stack]) -> str:
    counts = Counter(p.severity for s in stacks for p in s.problems)
    return _format_counts(counts)


def _format_counts(counts: Counter) -> str:
    parts = [
        f"[{_SEVERITY_STYLE[sev]}]{counts[sev]} {sev}{'s' if counts[sev] != 1 else ''}[/]"
        for sev in _SEVERITY_ORDER
        if counts[sev]
    ]
    return ", ".join(parts) or "[green]none[/]"


def _summary_table(catalog: Catalog) -> Table:
    table = Table(title=f"Source {catalog.root}", show_footer=False)
    for name in ("Component", "Scans", "Subjects", "Files", "Size"):
        table.add_column(name, justify="left" if name == "Component" else "right")
    table.add_column("Typical shape (n, y, x)", justify="right")
    table.add_column("Dtype")
    table.add_column("Problems")
    for component in COMPONENTS:
        stacks = [s for s in catalog.stacks if s.component == component]
        if not stacks:
            continue
        per_tibia = component in PER_TIBIA_COMPONENTS
        subjects = {(s.mouse, s.side) if per_tibia else s.mouse for s in stacks}
        shapes = Counter(s.shape for s in stacks if s.shape is not None)
        shape = " x ".join(map(str, shapes.most_common(1)[0][0])) if shapes else "-"
        dtypes = sorted({s.dtype for s in stacks if s.dtype})
        table.add_row(
            component,
            f"{len(stacks):,}",
            f"{len(subjects):,} {'tibiae' if per_tibia else 'hindlimbs'}",
            f"{sum(s.n_files for s in stacks):,}",
            decimal(sum(s.nbytes for s in stacks)),
            shape,
            ", ".join(dtypes) or "-",
            _problem_counts(stacks),
        )
    stacks = list(catalog.stacks)
    tree_counts = Counter(p.severity for p in catalog.problems)
    all_counts = tree_counts + Counter(p.severity for s in stacks for p in s.problems)
    table.add_section()
    table.add_row(
        "[bold]Total[/]",
        f"{len(stacks):,}",
        "",
        f"{sum(s.n_files for s in stacks):,}",
        decimal(sum(s.nbytes for s in stacks)),
        "",
        "",
        _format_counts(all_counts),
    )
    n_bad = sum(not s.ok for s in stacks)
    n_out = len(catalog.left_out)
    table.caption = (
        f"{len(stacks) - n_bad} of {len(stacks)} scans ok"
        + (f"; {n_bad} would be quarantined" if n_bad else "")
        + (f"; {n_out} path(s) under a component left out (see Problems)" if n_out else "")
        + (f"; records: {catalog.relpath(catalog.records_path)}" if catalog.records_path else "")
    )
    return table


def _problem_table(catalog: Catalog, max_problems: int) -> Table:
    problems = sorted(
        enumerate(catalog.all_problems()), key=lambda ip: (_SEVERITY_ORDER[ip[1].severity], ip[0])
    )
    table = Table(title=f"Problems ({len(problems)})")
    table.add_column("Severity")
    table.add_column("Kind")
    table.add_column("Path", overflow="fold")
    table.add_column("Message", overflow="fold")
    for _, problem in problems[:max_problems]:
        style = _SEVERITY_STYLE[problem.severity]
        table.add_row(
            f"[{style}]{problem.severity}[/]",
            problem.kind,
            catalog.relpath(problem.path),
            problem.message,
            style=None,
        )
    if len(problems) > max_problems:
        table.add_row("...", "", "", f"... and {len(problems) - max_problems} more")
    if not problems:
        table.add_row("[green]-[/]", "", "", "no problems found")
    return table
