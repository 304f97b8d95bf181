"""PNG previews of a store's scans: orthogonal slices, composites colour-coded, metrics per week.

matplotlib with the Agg backend (no display needed, nothing shown); a figure is written to a
file and closed.  Only the three displayed planes of a volume are read from the store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from bonemet_dask.kernels.composite import FORMED, KEPT, RESORBED
from bonemet_dask.naming import COMPONENTS, SIDES

__all__ = ["COMPOSITE_COLOURS", "preview"]

logger = logging.getLogger(__name__)

COMPOSITE_COLOURS: Final = {
    KEPT: ("kept (bone in both)", "#d9d9d9"),
    FORMED: ("formed (follow-up only)", "#1a9850"),
    RESORBED: ("resorbed (baseline only)", "#d73027"),
}
"""Label and colour of each composite code in previews (0 is transparent)."""
METRICS_PLOTTED: Final = (
    ("bone_volume_mm3", "bone volume"),
    ("formed_volume_mm3", "formed"),
    ("resorbed_volume_mm3", "resorbed"),
)


def _figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a bare Figure on an Agg canvas, no pyplot: no global backend switch, no GUI, no plt.show
    figure = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _composite_rgba(codes: np.ndarray) -> np.ndarray:
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*codes.shape, 4), dtype=np.float32)
    for code, (_, colour) in COMPOSITE_COLOURS.items():
        rgba[codes == code] = to_rgba(colour)
    return rgba


def _planes(array: Any, index: tuple[int, int, int]) -> list[np.ndarray]:
    k, j, i = index
    return [np.asarray(array[k]), np.asarray(array[:, j]), np.asarray(array[:, :, i])]


def preview(
    store: Any,
    out: str | os.PathLike[str],
    *,
    component: str = "roi_ct",
    mouse: str,
    week: int,
    side: str | None = None,
    index: tuple[int | None, int | None, int | None] = (None, None, None),
    metrics: bool | None = None,
    size_in: tuple[float, float] = (12.0, 4.0),
    dpi: int = 100,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a PNG of one scan's orthogonal slices (and, for roi_ct, its metrics per week).

    Parameters
    ----------
    store : str or zarr Store
        The store.
    out : str or os.PathLike
        PNG file to write.
    component : str, optional
        One of :data:`~bonemet_dask.naming.COMPONENTS`.
    mouse : str
        Animal id.
    week : int
        Week.
    side : str, optional
        Default: the first side the store holds for this mouse and week (left, right, both).
    index : (int or None, int or None, int or None), optional
        Slice, row and column of the three planes; None: the middle.
    metrics : bool, optional
        Add a panel of bone, formed and resorbed volume per week for this tibia (roi_ct only;
        default: on for roi_ct).  Metrics come from the groups' attributes (written by
        ``composite``), else are computed from the composites.
    size_in : (float, float), optional
        Figure width and height in inches; the PNG is ``size_in * dpi`` pixels.
    dpi : int, optional
        Pixels per inch.
    storage_options : mapping, optional
        fsspec options of the store.

    Returns
    -------
    str
        ``out``.

    Raises
    ------
    KeyError
        If the scan is not in the store (the message lists what the store holds for the mouse).
    ValueError
        For an unknown component or side.
    """
    import zarr

    from bonemet_dask.io.store import get_bonemet_attrs, open_zarr_store, scan_group_path
    from bonemet_dask.ops.composite_store import GREYSCALE_ARRAY

    if component not in COMPONENTS:
        raise ValueError(f"component={component!r} is not one of {', '.join(COMPONENTS)}")
    if side is not None and side not in SIDES:
        raise ValueError(f"side={side!r} is not one of {', '.join(SIDES)}")
    root = zarr.open_group(
        open_zarr_store(store, mode="r", storage_options=storage_options), mode="r",
        use_consolidated=False,  # what is on disk now, not the last consolidation
    )  # fmt: skip
    side = side or _default_side(root, component, mouse, week)
    path = scan_group_path(component, mouse, side, week)
    try:
        group = root[path]
    except KeyError:
        raise KeyError(
            f"{path!r} is not in the store; it holds {_listing(root, component, mouse)} for "
            f"mouse={mouse!r} (try --side/--week)"
        ) from None
    attrs = get_bonemet_attrs(group)
    image = group["0"]
    centre = tuple(
        s // 2 if i is None else int(np.clip(i, 0, s - 1))
        for s, i in zip(image.shape, index, strict=True)
    )
    is_composite = component == "roi_ct"
    show_metrics = is_composite if metrics is None else bool(metrics and is_composite)
    fig = _figure(*size_in, dpi)
    columns = 4 if show_metrics else 3
    axes = fig.subplots(1, columns, gridspec_kw={"width_ratios": [1] * columns})
    names = (f"slice {centre[0]}", f"y = {centre[1]}", f"x = {centre[2]}")
    planes = _planes(image, centre)
    grey = _planes(group[GREYSCALE_ARRAY], centre) if GREYSCALE_ARRAY in group else None
    for ax, plane, name, k in zip(axes, planes, names, range(3), strict=False):
        if is_composite:
            if grey is not None:
                ax.imshow(grey[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.imshow(_composite_rgba(plane), alpha=0.6, interpolation="nearest")
            else:
                ax.set_facecolor("black")
                ax.imshow(_composite_rgba(plane), interpolation="nearest")
        else:
            ax.imshow(plane, cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if is_composite:
        from matplotlib.patches import Patch

        handles = [
            Patch(facecolor=c, edgecolor="black", label=lab)
            for lab, c in COMPOSITE_COLOURS.values()
        ]
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    if show_metrics:
        _metrics_panel(axes[-1], root, mouse, side)
    title = f"{path}"
    if "junction_slice" in attrs:
        title += (
            f"  (junction: regist slice {attrs['junction_slice']}, "
            f"confidence {attrs.get('junction_confidence')})"
        )
    fig.suptitle(title, fontsize=10)
    fig.savefig(os.fspath(out), dpi=dpi, format="png")
    logger.info("wrote preview of %s to %s", path, out)
    return os.fspath(out)


def _default_side(root: Any, component: str, mouse: str, week: int) -> str:
    from bonemet_dask.io.store import scan_group_path

    for side in SIDES:
        if scan_group_path(component, mouse, side, week) in root:
            return side
    raise KeyError(
        f"no {component} scan of mouse={mouse!r} week={week} in the store; it holds "
        f"{_listing(root, component, mouse)}"
    )


def _listing(root: Any, component: str, mouse: str) -> list[str]:
    from bonemet_dask.naming import sanitize_segment

    try:
        node = root[f"{component}/{sanitize_segment(str(mouse))}"]
    except KeyError:
        return []
    return sorted(f"{side}/{week}" for side, group in node.groups() for week, _ in group.groups())


def _week_metrics(root: Any, mouse: str, side: str) -> dict[int, dict[str, float]]:
    from bonemet_dask.io.store import get_bonemet_attrs, parse_week_segment
    from bonemet_dask.naming import sanitize_segment

    out: dict[int, dict[str, float]] = {}
    try:
        tibia = root[f"roi_ct/{sanitize_segment(str(mouse))}/{side}"]
    except KeyError:
        return out
    for name, group in tibia.groups():
        week = parse_week_segment(name)
        if week is None:
            continue
        values = get_bonemet_attrs(group).get("metrics")
        if values is None:  # a converted RoI-CT: compute from its composite
            values = _computed_metrics(group)
        out[week] = values
    return dict(sorted(out.items()))


def _computed_metrics(group: Any) -> dict[str, float]:
    import xarray as xr

    from bonemet_dask.io.store import read_ome_scale
    from bonemet_dask.ops.metrics import bone_metrics

    scale = read_ome_scale(group) or (1.0, 1.0, 1.0)
    data = xr.DataArray(np.asarray(group["0"]), dims=("slice", "y", "x"))
    ds = bone_metrics(data, kind="composite", voxel_size=tuple(scale)).compute()
    return {name: float(ds[name]) for name, _ in METRICS_PLOTTED}


def _metrics_panel(ax: Any, root: Any, mouse: str, side: str) -> None:
    per_week = _week_metrics(root, mouse, side)
    weeks = list(per_week)

    def series(name: str) -> list[float]:
        values = [per_week[w].get(name) for w in weeks]
        return [np.nan if v is None else float(v) for v in values]

    (name, label), *changes = METRICS_PLOTTED
    ax.plot(weeks, series(name), marker="o", color="black", label=label)
    ax.set_xlabel("week")
    ax.set_ylabel("bone volume in RoI (mm$^3$)", fontsize=8)
    change_ax = ax.twinx()  # formation and resorption are ~1% of the bone: their own scale
    for (name, label), (_, colour) in zip(
        changes, (COMPOSITE_COLOURS[FORMED], COMPOSITE_COLOURS[RESORBED]), strict=True
    ):
        change_ax.plot(weeks, series(name), marker="s", color=colour, label=label)
    change_ax.set_ylabel("formed / resorbed (mm$^3$)", fontsize=8)
    ax.set_title(f"mouse {mouse} {side}: per week", fontsize=9)
    if weeks:
        ax.set_xticks(weeks)
    lines = ax.get_legend_handles_labels()
    more = change_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="center left")
