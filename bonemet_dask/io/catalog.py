"""The source catalog: every image stack of a BoneMet tree, found in one listing walk.

:func:`scan_source` lists the tree once (``fs.find(root, detail=True)``, so sizes come free), groups
files by folder, reads the 33-byte PNG headers of all slices in one batched call and the ``.log``
beside each stack, and checks each stack (numbering, shapes, formats, decompression bombs, log file
counts). Problems are data (:class:`Problem`), never exceptions: the catalog of a damaged tree is
still a catalog, and ``convert`` decides what to quarantine from :attr:`Stack.ok` and
:attr:`Catalog.left_out`.

Nothing is opened before it is known to be a regular file: a local tree is walked with ``lstat``
(a FIFO named like a slice would block the first ``open`` forever), links are followed only where
they stay inside the tree, and whatever is left out is reported (see :data:`PROBLEM_KINDS`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from bonemet_dask import config
from bonemet_dask.io.png_header import PngHeader
from bonemet_dask.io.skyscan_log import SkyScanLog, SkyScanLogError
from bonemet_dask.naming import (
    COMPONENTS,
    MAX_WEEK,
    PER_TIBIA_COMPONENTS,
    SIDES,
    parse_component,
    parse_scan_folder,
    parse_week,
)
from bonemet_dask.selection import Selection

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LAYOUT_HINT",
    "LEFT_OUT_KINDS",
    "PROBLEM_KINDS",
    "PROBLEM_SEVERITY",
    "Catalog",
    "ImageFile",
    "Problem",
    "Stack",
    "expected_file_count",
    "scan_source",
    "stack_sort_key",
]

logger = logging.getLogger(__name__)

Severity = Literal["error", "warning", "info"]

LAYOUT_HINT: Final = (  # the layouts scan_source understands, quoted in problem messages
    "'<component>/<mouse id>[ side]/week <k>/' (e.g. '2. Recon-CT/851/week 0/', "
    "'3. Seg-CT/851 left tibia/week 2/') or '<component>/week <k>/<mouse id>/'"
)

# kind -> (severity, message template); the templates are filled in by Problem.of().
_KINDS: Final[dict[str, tuple[Severity, str]]] = {
    "unparseable-path": ("warning", "folder {path!r} does not fit the layout " + LAYOUT_HINT
                         + "; {n} file(s) under it skipped: rename or move it"),
    "stray-file": ("info", "{path!r} is neither a PNG slice nor a .log; ignored"),
    "no-index": ("error", "{path!r} has no digits in its name, so its position is unknown; "
                 "rename it with its index, e.g. '851_rec00000012.png'"),
    "duplicate-index": ("error", "index {index} is used by {names}; keep one of them"),
    "missing-index": ("error", "folder {path!r}: missing {ranges} ({n} of {lo}..{hi}); "
                      "copy the missing slices from the source"),
    "empty-stack": ("error", "folder {path!r} holds no PNG file; copy the slices in or remove it"),
    "unreadable-header": ("error", "{reason}"),
    "mixed-shape": ("error", "{path!r} is {w}x{h} (width x height) but most slices of its stack "
                    "are {tw}x{th}; replace it with a slice of the right size"),
    "mixed-format": ("error", "{path!r} has bit depth {d}, colour type {c} but most slices of its "
                     "stack have bit depth {td}, colour type {tc}; re-export it in that format"),
    "count-mismatch": ("warning", "folder {path!r} holds {n} PNG file(s) but {log!r} announces "
                       "{expected}; check for missing or extra files"),
    "unreadable-log": ("error", "{path!r} {reason}; the scan's voxel size and geometry are "
                       "unknown: replace it with the scanner's original .log"),
    "invalid-log": ("error", "{path!r}: {reason}"),
    "unsupported-scan": ("error", "{path!r}: {reason}"),
    "duplicate-scan": ("error", "scan {key} in {path!r} is also in {others}; keep one folder and "
                       "remove or rename the others"),
    "pixel-limit": ("error", "{path!r} claims {w}x{h} (width x height) = {n} pixels, more than "
                    "max_pixels={limit}; not decoded (possible decompression bomb): remove it or "
                    "raise max_pixels"),
    "missing-side": ("error", "scan folder {name!r} of component {component!r} names no side; "
                     "rename it, e.g. '{mouse} left tibia'"),
    "bad-week": ("warning", "folder {path!r} is named like a week folder but {reason}: weeks are "
                 f"whole numbers 0..{MAX_WEEK}; {{n}} file(s) under it skipped: rename it, "
                 "e.g. 'week 0'"),
    "link-outside": ("warning", "{path!r} is a symbolic link to {target!r}, outside the source "
                     "tree: not followed, so what it holds is left out; copy it into the tree "
                     "or scan with follow_symlinks=True"),
    "broken-link": ("warning", "{path!r} is a symbolic link to {target!r}, which does not exist: "
                    "skipped; restore the target or remove the link"),
    "link-loop": ("warning", "{path!r} is a symbolic link to {target!r}, a folder above it (a "
                  "loop): not followed; remove the link"),
    "not-regular-file": ("warning", "{path!r} is a {what}, not a regular file: never opened "
                         "(reading it could block); remove it"),
    "unreadable-entry": ("warning", "{path!r} could not be listed ({reason}): what it holds is "
                         "left out; check its permissions"),
    "skipped-slice": ("error", "{path!r} is named like a slice of this stack but {why}; the stack "
                      "would be converted without it: {fix}"),
    "zarr-store": ("info", "{path!r} is a Zarr store or group (it holds {marker!r}), not image "
                   "stacks: not scanned"),
    "unsupported-format": ("error", "folder {path!r}: {n} slice(s) are {what} PNGs (colour type "
                           "{c}, first {first!r}), which convert refuses: only single-channel "
                           "greyscale PNG is converted; convert them to greyscale first"),
    "too-small": ("error", "{path!r} is {nbytes} bytes, too few for the {w}x{h} {d}-bit image "
                  "its header claims (PNG compresses at most 1032:1): it is truncated or a "
                  "decompression bomb; re-copy it from the source or remove it"),
}  # fmt: skip

LEFT_OUT_KINDS: Final = frozenset({
    "unparseable-path", "bad-week", "link-outside", "broken-link", "link-loop",
    "not-regular-file", "unreadable-entry",
})  # fmt: skip
"""Tree-level kinds that can mean image data left out of the catalog (see Catalog.left_out)."""

PROBLEM_KINDS: Final = tuple(_KINDS)
"""Every problem kind :func:`scan_source` reports, with its severity (see PROBLEM_SEVERITY).

``unparseable-path`` (warning): a folder under a component that is not a ``<scan>/week <k>`` pair
(or PNGs outside a week folder), skipped; also the root when it holds no component folder.
``stray-file`` (info): neither PNG nor ``.log`` (``Thumbs.db``, ``._x.png``), ignored.
``no-index`` (error): a PNG whose stem has no digits. ``duplicate-index`` (error): two files with
one index (``x_0001.png``, ``x_001.png``). ``missing-index`` (error): gaps in min..max.
``empty-stack`` (error): a week folder with no PNG. ``unreadable-header`` (error): not a PNG,
truncated, bad IHDR CRC, invalid IHDR or unreadable. ``mixed-shape`` / ``mixed-format`` (error): a
slice whose size / bit depth and colour type differ from most of its stack. ``count-mismatch``
(warning): file count differs from the ``.log`` (see :func:`expected_file_count`).
``unreadable-log`` (error): not read, too big, empty or no ``Key=Value`` line. ``invalid-log``
(error): binary, or a value unphysical or malformed (``skyscan_log.check_skyscan_log``: pixel
size <= 0, Object to Source >= Camera to Source...). ``unsupported-scan`` (error): projections
whose acquisition this package refuses to reconstruct (``skyscan_geometry.unsupported``: a
connected oversize scan, a cropped detector of unknown width, ``Use 360 Rotation=YES`` short
of a turn...). ``duplicate-scan`` (error, on every copy):
one (component, mouse, side, week) in two folders. ``pixel-limit`` (error): IHDR width*height >
``max_pixels``, never decoded. ``missing-side`` (error): a per-tibia component's scan folder
names no side.
``bad-week`` (warning): a folder named like a week folder whose week is negative or above
:data:`~bonemet_dask.naming.MAX_WEEK` (``week -1``), skipped.
``link-outside`` / ``broken-link`` / ``link-loop`` (warning): a symbolic link not followed (its
target is outside the tree and ``follow_symlinks`` is False / does not exist / is a folder above
it). ``not-regular-file`` (warning): a FIFO, socket, device, or a folder named like a PNG; never
opened. ``unreadable-entry`` (warning): a folder or entry that could not be listed.
``skipped-slice`` (error): any of those five, named like a PNG, in a stack folder.
``zarr-store`` (info): a Zarr store or group inside the tree, not scanned.
``unsupported-format`` (error): slices of a colour type other than greyscale (RGB, palette,
grey+alpha, RGBA), which ``convert``'s decoder refuses; one problem per stack and colour type.
``too-small`` (error): a file too small to hold the image its header claims (``convert``'s
decoder refuses it as truncated).
"""

PROBLEM_SEVERITY: Final[Mapping[str, Severity]] = {k: v[0] for k, v in _KINDS.items()}
"""Severity of each kind: an ``error`` makes its stack not ok (quarantined by ``convert``)."""


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One slice or projection: its path (as the filesystem spells it), index, size and header."""

    path: str
    index: int
    nbytes: int
    header: PngHeader | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong or odd in the source tree.

    Attributes
    ----------
    severity : {"error", "warning", "info"}
        ``error`` makes the stack not ok.
    kind : str
        One of :data:`PROBLEM_KINDS`.
    path : str
        The file or folder concerned, as the filesystem spells it.
    message : str
        What is wrong and how to fix it.
    """

    severity: Severity
    kind: str
    path: str
    message: str

    @classmethod
    def of(cls, kind: str, path: str, **fields: object) -> Problem:
        """Make a problem of ``kind`` with its standard severity and message.

        Parameters
        ----------
        kind : str
            One of :data:`PROBLEM_KINDS`.
        path : str
            The file or folder concerned.
        **fields
            Values for the kind's message template (e.g. ``n=3`` for ``unparseable-path``).
        """
        if kind not in _KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(PROBLEM_KINDS)}")
        severity, template = _KINDS[kind]
        return cls(severity, kind, path, template.format(path=path, **fields))


@dataclass(frozen=True, slots=True)
class Stack:
    """One image stack: a scan of one mouse (and side) at one week, in one component.

    Attributes
    ----------
    component, mouse, side, week
        The canonical key (see :mod:`bonemet_dask.naming`); ``mouse`` is text.
    folder : str
        The folder holding the images.
    scan_folder_name : str
        The scan folder's name as found (``"851L proximal tibia"``).
    files : tuple of ImageFile
        PNG files with an index, sorted numerically by index (then name).
    log, log_path
        The parsed ``.log`` beside the stack and its path, or None.
    problems : tuple of Problem
        Problems of this stack.
    extra_logs : tuple of str
        Other ``.log`` files in the folder, not used.
    """

    component: str
    mouse: str
    side: str
    week: int
    folder: str
    scan_folder_name: str
    files: tuple[ImageFile, ...]
    log: SkyScanLog | None = None
    log_path: str | None = None
    problems: tuple[Problem, ...] = ()
    extra_logs: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, int]:
        """``(component, mouse, side, week)``."""
        return (self.component, self.mouse, self.side, self.week)

    @property
    def n_files(self) -> int:
        """Number of indexed PNG files."""
        return len(self.files)

    @property
    def nbytes(self) -> int:
        """Total size of the PNG files on disk."""
        return sum(f.nbytes for f in self.files)

    @property
    def indices(self) -> tuple[int, ...]:
        """File indices in file order."""
        return tuple(f.index for f in self.files)

    @property
    def slice_shape(self) -> tuple[int, int] | None:
        """Most common ``(height, width)`` among readable headers, or None."""
        shapes = Counter((f.header.height, f.header.width) for f in self.files if f.header)
        return shapes.most_common(1)[0][0] if shapes else None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        """``(n_files, height, width)`` when every file has a header and all agree, else None."""
        if not self.files or any(f.header is None for f in self.files):
            return None
        sizes = {(f.header.height, f.header.width) for f in self.files}  # type: ignore[union-attr]
        if len(sizes) != 1:
            return None
        height, width = sizes.pop()
        return (self.n_files, height, width)

    @property
    def dtype(self) -> str | None:
        """``"uint8"`` or ``"uint16"`` when every file has a header and all agree, else None."""
        if not self.files or any(f.header is None for f in self.files):
            return None
        dtypes = {f.header.dtype for f in self.files}  # type: ignore[union-attr]
        return dtypes.pop() if len(dtypes) == 1 else None

    @property
    def ok(self) -> bool:
        """True when no problem of this stack has severity ``error``."""
        return not any(p.severity == "error" for p in self.problems)


def stack_sort_key(stack: Stack) -> tuple[int, int, int, int, str]:
    """Return the catalog order of a stack: component (pipeline order), mouse number, side, week."""
    return (
        COMPONENTS.index(stack.component),
        int(stack.mouse),
        SIDES.index(stack.side),
        stack.week,
        stack.folder,
    )


@dataclass(frozen=True)
class Catalog:
    """All stacks of a source tree, with the problems found.

    Attributes
    ----------
    root : str
        The root as given (path or URL).
    stacks : tuple of Stack
        Sorted by component (pipeline order), mouse (as a number), side, week.
    problems : tuple of Problem
        Tree-level problems (folders that are not stacks, stray files outside stacks).
    records_path : str or None
        ``MiceMediRec Dataset/record.csv`` when found.
    root_path : str
        The root as the filesystem spells it; every path in the catalog starts with it.
    fs : fsspec.AbstractFileSystem or None
        The filesystem of the tree, to read the files with.
    left_out : tuple of Problem
        The tree-level problems (of :data:`LEFT_OUT_KINDS`) of paths under a component folder
        that hold, or may hold, image data the catalog could not take: a folder outside the
        layout with files, a week out of range, a link not followed, a special file, an
        unreadable folder.  ``convert`` reports each as quarantined and ``verify`` fails on
        them, so nothing under a component is dropped silently.  :meth:`select` keeps those
        whose scan (as far as the path names one) is selected.
    """

    root: str
    stacks: tuple[Stack, ...]
    problems: tuple[Problem, ...] = ()
    records_path: str | None = None
    root_path: str = ""
    fs: Any = field(default=None, repr=False, compare=False)
    left_out: tuple[Problem, ...] = ()

    def __len__(self) -> int:
        return len(self.stacks)

    def __iter__(self) -> Iterator[Stack]:
        return iter(self.stacks)

    def all_problems(self) -> tuple[Problem, ...]:
        """Tree-level problems, then each stack's, in stack order."""
        return self.problems + tuple(p for s in self.stacks for p in s.problems)

    def relpath(self, path: str) -> str:
        """``path`` relative to the root (unchanged when outside it)."""
        root = self.root_path.rstrip("/")
        if root and (path == root or path.startswith(root + "/")):
            return path[len(root) :].lstrip("/") or "."
        return path

    def select(
        self,
        selection: Selection | None = None,
        *,
        components: Iterable[str] | str | None = None,
        mice: Iterable[str | int] | str | int | None = None,
        sides: Iterable[str] | str | None = None,
        weeks: Iterable[int] | int | str | None = None,
    ) -> Catalog:
        """Return the catalog restricted to a selection (the package's one matching rule).

        Parameters
        ----------
        selection : Selection, optional
            A parsed :class:`~bonemet_dask.selection.Selection`; the keywords narrow it.
        components : str or iterable of str, optional
            Canonical keys (``"recon_ct"``) or folder spellings (``"2. Recon-CT"``).
        mice : str, int or iterable of them, optional
            Animal ids (``851`` and ``"0851"`` are the same mouse).
        sides : str or iterable of str, optional
            Values of :data:`~bonemet_dask.naming.SIDES`.
        weeks : int, str or iterable of int, optional
            Week numbers, or range text such as ``"0,2-4"``.

        Returns
        -------
        Catalog
            Same root and tree-level problems; only matching stacks and the matching entries of
            :attr:`left_out`. None means no restriction.

        Raises
        ------
        SelectionError
            If a selector is malformed; the message shows a valid one.
        """
        chosen = Selection.of(selection, components=components, mice=mice, sides=sides, weeks=weeks)
        kept = tuple(
            s
            for s in self.stacks
            if chosen.matches(mouse=s.mouse, side=s.side, week=s.week, component=s.component)
        )
        left_out = tuple(p for p in self.left_out if chosen.matches(**self.path_key(p.path)))
        return replace(self, stacks=kept, left_out=left_out)

    def path_key(self, path: str) -> dict[str, Any]:
        """Return what a path names of a scan: ``component``, ``mouse``, ``side``, ``week``.

        Parameters
        ----------
        path : str
            A path under the root, e.g. of a problem.

        Returns
        -------
        dict
            Keyword arguments for :meth:`~bonemet_dask.selection.Selection.matches`: only the
            keys the path's folders name (the last component folder and the two folders after
            it); empty when no component folder is on the path.
        """
        rel = self.relpath(path)
        root_name = self.root_path.rstrip("/").rsplit("/", 1)[-1]
        segments = [root_name, *([] if rel == "." else rel.split("/"))]
        found = [(i, c) for i, seg in enumerate(segments) if (c := parse_component(seg))]
        if not found:
            return {}
        position, component = found[-1]
        key: dict[str, Any] = {"component": component}
        for segment in segments[position + 1 : position + 3]:
            week = parse_week(segment)
            scan = None if week is not None or "mouse" in key else parse_scan_folder(segment)
            if week is not None and "week" not in key:
                key["week"] = week
            elif scan is not None:
                key |= {"mouse": scan.mouse, "side": scan.side}
        return key

    def to_dataframe(self) -> pd.DataFrame:
        """Return one row per stack: key, sizes, slice size, dtype, index range, problems."""
        import pandas as pd

        rows = [_stack_row(s) for s in self.stacks]
        frame = pd.DataFrame(rows, columns=_ROW_COLUMNS)
        for name in ("height", "width", "first_index", "last_index"):
            frame[name] = frame[name].astype("Int64")
        return frame

    def summary(self) -> pd.DataFrame:
        """Return per component: scans, subjects (tibiae or hindlimbs), files, bytes, problems."""
        import pandas as pd

        rows = []
        for component in COMPONENTS:
            stacks = [s for s in self.stacks if s.component == component]
            if stacks:
                per_tibia = component in PER_TIBIA_COMPONENTS
                subjects = {(s.mouse, s.side) if per_tibia else s.mouse for s in stacks}
                rows.append(
                    (
                        component,
                        len(stacks),
                        len(subjects),
                        "tibiae" if per_tibia else "hindlimbs",
                        sum(s.n_files for s in stacks),
                        sum(s.nbytes for s in stacks),
                        sum(len(s.problems) for s in stacks),
                        sum(not s.ok for s in stacks),
                    )
                )
        columns = ["component", "scans", "subjects", "subject_kind", "files", "bytes"]
        return pd.DataFrame(rows, columns=[*columns, "problems", "not_ok"])


_ROW_COLUMNS: Final = (
    "component", "mouse", "side", "week", "n_files", "nbytes", "height", "width", "dtype",
    "first_index", "last_index", "n_problems", "ok", "folder",
)  # fmt: skip


def _stack_row(s: Stack) -> tuple:
    height, width = s.slice_shape or (None, None)
    first, last = (s.files[0].index, s.files[-1].index) if s.files else (None, None)
    return (
        s.component,
        s.mouse,
        s.side,
        s.week,
        s.n_files,
        s.nbytes,
        height,
        width,
        s.dtype,
        first,
        last,
        len(s.problems),
        s.ok,
        s.folder,
    )


def expected_file_count(log: SkyScanLog) -> int | None:
    """Return the number of images a ``.log`` announces for the stack beside it, or None.

    A reconstruction log (one with a ``[Reconstruction]`` section) announces ``Sections Count``
    slices; its ``Number of Files`` counts the projections it was made from, so it is not used. An
    acquisition log announces ``Number of Files`` projections.
    """
    try:
        if "reconstruction" in log.sections:
            return log.get_int("Sections Count", "reconstruction")
        return log.get_int("Number of Files")
    except SkyScanLogError as exc:
        logger.warning("cannot check the file count: %s", exc)
        return None


def scan_source(
    root: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    read_headers: bool = True,
    max_pixels: int = 2**31,
    mice: Any = None,
    follow_symlinks: bool | None = None,
    weeks: Any = None,
    components: Any = None,
    selection: Any = None,
) -> Catalog:
    """Find and check every image stack of a BoneMet tree.

    Parameters
    ----------
    root : str or os.PathLike
        Local path or fsspec URL (``memory://...``, ``s3://...``) of any folder that holds
        component folders (``2. Recon-CT``...) at any depth, or of a component folder itself.
    storage_options : dict, optional
        Passed to fsspec for remote URLs (credentials, endpoint).
    read_headers : bool, default True
        Read the 33-byte PNG header of every slice (one batched fetch) and check shapes and formats.
    max_pixels : int, default 2**31
        A slice whose header claims more pixels is reported as ``pixel-limit`` (never decoded).
    mice, weeks, components : optional
        Only these animals', weeks' and components' stacks (the
        :class:`~bonemet_dask.selection.Selection` rules: ``mice="851-860"``,
        ``weeks="0,2-4"``, ``components="recon_ct"``...): only their headers and ``.log``
        files are read, and only their stacks are in the catalog.  A local tree is listed
        whole; any other (``hf://``, ``s3://``) is listed folder by folder, never into the
        folder of another mouse, week or component, so a cohort is read from the Hugging Face
        hub without listing the other thousand mice.  What a job-array task of a few mice needs.
    selection : Selection, optional
        The same as a parsed selection (its ``sides`` are not pushed down: a side's scans need
        the hindlimb scans of side ``both``).
    follow_symlinks : bool, optional
        Also follow symbolic links whose target lies outside the tree.  Links that stay inside
        are always followed (their contents are cataloged under the link's path); a link not
        followed, a broken link and a link loop are reported (``link-outside``, ``broken-link``,
        ``link-loop``) and never silently dropped.
        Default: the ``bonemet.follow-symlinks`` config (False; ``--follow-symlinks`` on the
        CLI).

    Returns
    -------
    Catalog
        Stacks and problems; see :data:`PROBLEM_KINDS`.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or cannot be listed.
    NotADirectoryError
        If ``root`` is a file.
    ValueError
        If ``max_pixels`` is not positive.
    """
    import fsspec

    if max_pixels <= 0:
        raise ValueError(f"max_pixels={max_pixels} must be > 0, e.g. 2**31")
    from bonemet_dask.selection import Selection

    chosen: Selection | None = Selection.of(selection, mice=mice, weeks=weeks,
                                            components=components)  # fmt: skip
    chosen = Selection(chosen.mice, chosen.weeks, None, chosen.components)
    if chosen.everything:
        chosen = None
    root_str = os.fspath(root)
    try:
        fs, root_path = fsspec.core.url_to_fs(root_str, **(storage_options or {}))
    except ImportError as exc:  # the protocol's package is not installed
        extra = " (pip install 'bonemet-dask[hub]')" if root_str.startswith("hf://") else ""
        raise ImportError(f"root={root_str!r}: {exc}{extra}") from exc
    root_path = root_path.rstrip("/") or "/"
    hint = "check the path (and storage_options for a remote URL)"
    try:
        if not fs.exists(root_path):
            raise FileNotFoundError(f"root={root_str!r} does not exist; {hint}")
        if fs.isfile(root_path):
            raise NotADirectoryError(
                f"root={root_str!r} is a file; pass the folder holding 'Imagery_Dataset' "
                "or a component folder such as '2. Recon-CT'"
            )
        from bonemet_dask.io._catalog_walk import descend_rule
        from bonemet_dask.io._tree_listing import list_tree

        if follow_symlinks is None:
            follow_symlinks = bool(config.get("follow-symlinks", False))
        descend = None if chosen is None else descend_rule(root_path, chosen)
        listing = list_tree(fs, root_path, follow_symlinks=follow_symlinks, descend=descend)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as exc:
        raise FileNotFoundError(f"root={root_str!r} could not be listed ({exc}); {hint}") from exc
    from bonemet_dask.io._catalog_walk import Walk  # the walk imports this module's data model

    walk = Walk(fs, root_path, listing)
    stacks = walk.stacks(read_headers=read_headers, max_pixels=max_pixels, chosen=chosen)
    return Catalog(
        root_str,
        stacks,
        tuple(walk.problems),
        walk.records_path,
        root_path,
        fs,
        left_out=tuple(walk.left_out),
    )
