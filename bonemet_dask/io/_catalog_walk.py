"""The listing walk behind :func:`bonemet_dask.io.catalog.scan_source`, and the per-stack checks.

Private: the data model and the public entry point live in :mod:`bonemet_dask.io.catalog`.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from bonemet_dask.io._tree_listing import Listing, Skipped
from bonemet_dask.io.catalog import (
    LAYOUT_HINT,
    ImageFile,
    Problem,
    Stack,
    expected_file_count,
    stack_sort_key,
)
from bonemet_dask.io.png_header import (
    COLOUR_TYPE_NAMES,
    CONVERTIBLE_COLOUR_TYPES,
    PngHeader,
    PngHeaderError,
    read_png_headers,
)
from bonemet_dask.io.skyscan_check import check_skyscan_log
from bonemet_dask.io.skyscan_log import SkyScanLog, parse_skyscan_log
from bonemet_dask.naming import (
    PER_TIBIA_COMPONENTS,
    invalid_week,
    parse_component,
    parse_index,
    parse_scan_folder,
    parse_week,
)

if TYPE_CHECKING:
    from bonemet_dask.selection import Selection

logger = logging.getLogger(__name__)

_MAX_LOG_BYTES: Final = 1 << 20
"""A ``.log`` larger than this is not read (real ones are a few KiB)."""

# (folder, component, scan folder name, week folder name): a stack found, not yet checked
_Pending = tuple[str, str, str, str]


class Walk:
    """Classifies the folders of one listing and assembles the stacks."""

    def __init__(self, fs: Any, root_path: str, listing: Listing) -> None:
        self.fs, self.root_path = fs, root_path
        self.problems = [Problem.of("zarr-store", f, marker=m) for f, m in listing.stores]
        self.left_out: list[Problem] = []  # the tree-level problems that lose image data
        self.files: dict[str, list[tuple[str, int]]] = defaultdict(list)
        self.skipped = [s for s in listing.skipped if self._inside(s.path)]
        dirs, records = {root_path, *filter(self._inside, listing.dirs)}, []
        for path, size in sorted(listing.files.items()):
            if not self._inside(path):
                continue
            parent = posixpath.dirname(path)
            self.files[parent].append((path, size))
            folder_name = "".join(posixpath.basename(parent).lower().split())
            if posixpath.basename(path).lower() == "record.csv" and "medirec" in folder_name:
                records.append(path)
        for path in [*self.files, *(posixpath.dirname(s.path) for s in self.skipped)]:
            while self._inside(path) and path not in dirs:
                dirs.add(path)
                path = posixpath.dirname(path)
        self.dirs = sorted(dirs)
        if len(records) > 1:
            logger.warning("several record.csv found, using %s: %s", min(records), records)
        self.records_path = min(records) if records else None

    def _inside(self, path: str) -> bool:
        return path != self.root_path and (
            self.root_path == "/" or path.startswith(self.root_path + "/")
        )

    def stacks(
        self, *, read_headers: bool, max_pixels: int, chosen: Selection | None = None
    ) -> tuple[Stack, ...]:
        pending: list[_Pending] = []
        broken: dict[str, int] = {}  # topmost folder that breaks the layout -> files skipped
        bad_weeks: dict[str, tuple[str, int]] = {}  # the same, for a week out of range
        found_component = False
        for folder in self.dirs:
            rel = folder[len(self.root_path) :].strip("/") if folder != self.root_path else ""
            segments = [posixpath.basename(self.root_path), *(rel.split("/") if rel else [])]
            hits = [(i, c) for i, seg in enumerate(segments) if (c := parse_component(seg))]
            if not hits:
                continue
            found_component = True
            position, component = hits[-1]
            after = segments[position + 1 :]
            level = _broken_level(after)
            files = self.files.get(folder, [])
            if level is not None:
                top = folder
                for _ in range(len(after) - level):
                    top = posixpath.dirname(top)
                reason = invalid_week(after[level - 1]) if level <= 2 else None
                if reason is not None:
                    bad_weeks[top] = (reason, bad_weeks.get(top, ("", 0))[1] + len(files))
                else:
                    broken[top] = broken.get(top, 0) + len(files)
            elif len(after) == 2:
                scan, week = after if parse_week(after[1]) is not None else after[::-1]
                pending.append((folder, component, scan, week))
            else:
                self._loose_files(folder, files)
        for top, n in broken.items():
            self._tree_problem(Problem.of("unparseable-path", top, n=n), lost=n > 0)
        for top, (reason, n) in bad_weeks.items():
            self._tree_problem(Problem.of("bad-week", top, reason=reason, n=n), lost=n > 0)
        slices = self._sort_skipped({p[0] for p in pending})
        if not found_component:
            self.problems.append(
                Problem(
                    "warning",
                    "unparseable-path",
                    self.root_path,
                    f"no component folder (e.g. '2. Recon-CT', 'Seg-CT') under {self.root_path!r}; "
                    "pass the folder that holds 'Imagery_Dataset'",
                )
            )
        if chosen is not None:  # before any file is opened: other scans cost their listing only
            pending = [p for p in pending if _chosen(chosen, p)]
        headers = self._read_headers(pending) if read_headers else {}
        logs = self._read_logs(pending)
        built = [
            _build_stack(p, self.files.get(p[0], []), headers, logs, max_pixels, slices.get(p[0]))
            for p in pending
        ]
        return tuple(sorted(_flag_duplicates(built), key=stack_sort_key))

    def _tree_problem(self, problem: Problem, *, lost: bool) -> None:
        """Report a tree-level problem; ``lost``: it leaves image data out (Catalog.left_out)."""
        self.problems.append(problem)
        if lost:
            self.left_out.append(problem)

    def _under_component(self, path: str) -> bool:
        rel = path[len(self.root_path) :].strip("/")
        segments = [posixpath.basename(self.root_path), *rel.split("/")]
        return any(parse_component(segment) for segment in segments)

    def _sort_skipped(self, stack_folders: set[str]) -> dict[str, list[Skipped]]:
        """Report the entries the listing left out; return those named like slices, by stack."""
        slices: dict[str, list[Skipped]] = defaultdict(list)
        for entry in self.skipped:
            folder = posixpath.dirname(entry.path)
            if folder in stack_folders and _is_png(entry.path):
                slices[folder].append(entry)
                continue
            field = {"not-regular-file": "what", "unreadable-entry": "reason"}.get(
                entry.kind, "target"
            )
            problem = Problem.of(entry.kind, entry.path, **{field: entry.detail})
            self._tree_problem(problem, lost=self._under_component(entry.path))
        return slices

    def _loose_files(self, folder: str, files: list[tuple[str, int]]) -> None:
        n_png = sum(_is_png(p) for p, _ in files)
        if n_png:
            problem = Problem(
                "warning",
                "unparseable-path",
                folder,
                f"folder {folder!r} holds {n_png} PNG file(s) outside a week folder; expected "
                f"{LAYOUT_HINT}: move them into one",
            )
            self._tree_problem(problem, lost=True)
        self.problems += [Problem.of("stray-file", p) for p, _ in files if not _is_png(p)]

    def _read_headers(self, pending: list[_Pending]) -> dict[str, PngHeader | PngHeaderError]:
        found = [
            (path, size)
            for p in pending
            for path, size in self.files.get(p[0], [])
            if _is_png(path) and parse_index(posixpath.basename(path)) is not None
        ]
        paths, sizes = [p for p, _ in found], [s for _, s in found]
        return dict(zip(paths, read_png_headers(self.fs, paths, sizes=sizes), strict=True))

    def _read_logs(self, pending: list[_Pending]) -> dict[str, bytes | Exception]:
        sizes = {path: size for p in pending for path, size in self.files.get(p[0], [])}
        paths = [path for p in pending for path in _logs_in(self.files.get(p[0], []), p[2])[:1]]
        out: dict[str, bytes | Exception] = {}
        for path in paths:
            if sizes[path] > _MAX_LOG_BYTES:
                out[path] = ValueError(f"is {sizes[path]} bytes, more than {_MAX_LOG_BYTES}")
        small = [path for path in paths if path not in out]
        for start in range(0, len(small), 1000):
            batch = small[start : start + 1000]
            try:
                out.update(self.fs.cat(batch, on_error="return"))
            except Exception as exc:  # a filesystem whose batched cat fails as a whole
                out.update(dict.fromkeys(batch, exc))
        return out


_SLICE_SKIPS: Final[dict[str, tuple[str, str]]] = {  # kind -> (why, with {} the detail; fix)
    "link-outside": ("is a symbolic link to {!r}, outside the source tree (not followed)",
                     "copy the file into the tree or scan with follow_symlinks=True"),
    "broken-link": ("is a symbolic link to {!r}, which does not exist",
                    "restore the file or remove the link"),
    "link-loop": ("is a symbolic link that loops ({!r})", "remove the link"),
    "not-regular-file": ("is a {}, not a regular file (never opened: reading it could block)",
                         "remove it or put the real slice in its place"),
    "unreadable-entry": ("could not be examined ({})", "check its permissions"),
}  # fmt: skip


def _is_png(path: str) -> bool:
    name = posixpath.basename(path)
    return name.lower().endswith(".png") and not name.startswith("._")


def _logs_in(files: list[tuple[str, int]], scan_name: str) -> list[str]:
    """Return the ``.log`` files of a folder, preferred first (stem equal to the mouse id)."""
    parsed = parse_scan_folder(scan_name)
    mouse = parsed.mouse if parsed else scan_name

    def rank(path: str) -> tuple[int, str]:
        stem = posixpath.basename(path)[:-4].lower()
        if stem == mouse or stem.strip("_ ") == mouse:
            return (0 if stem == mouse else 1, path)
        return (2 if stem.startswith(mouse) else 3, path)

    return sorted((p for p, _ in files if p.lower().endswith(".log")), key=rank)


def _broken_level(after: list[str]) -> int | None:
    """Return the depth (1-based) below the component where the layout breaks, or None."""
    if not after:
        return None
    first_is_week = parse_week(after[0]) is not None
    if not first_is_week and parse_scan_folder(after[0]) is None:
        return 1
    if len(after) >= 2:
        fits = parse_scan_folder(after[1]) if first_is_week else parse_week(after[1])
        if fits is None:
            return 2
    return 3 if len(after) >= 3 else None


def _mouse_of(scan_name: str) -> str | None:
    """The selection key of a scan folder's mouse (:func:`~bonemet_dask.selection.mouse_key`)."""
    from bonemet_dask.selection import SelectionError, mouse_key

    scan = parse_scan_folder(scan_name)
    if scan is None:
        return None
    try:
        return mouse_key(scan.mouse)
    except SelectionError:
        return None


def _chosen(chosen: Selection, pending: _Pending) -> bool:
    """Whether a stack found is of the selected mice, weeks and components."""
    _, component, scan_name, week_name = pending
    return chosen.matches(component=component, week=parse_week(week_name)) and (
        chosen.mice is None or _mouse_of(scan_name) in chosen.mice
    )


def descend_rule(root_path: str, chosen: Selection) -> Callable[[str], bool]:
    """Whether to list a folder of a tree, for a selection pushed down to the listing.

    A component folder of another component, a scan folder of another mouse and a week
    folder of another week are not listed (at either nesting, ``<scan>/week <k>`` or
    ``week <k>/<scan>``); every other folder is, so the records, unknown folders and broken
    layouts under the selection are still found and reported.
    """
    root_name = posixpath.basename(root_path)

    def descend(path: str) -> bool:
        rel = path[len(root_path) :].strip("/")
        segments = [root_name, *(rel.split("/") if rel else [])]
        hits = [(i, c) for i, seg in enumerate(segments) if (c := parse_component(seg))]
        if not hits:
            return True
        position, component = hits[-1]
        after = segments[position + 1 :]
        if not after:
            return chosen.matches(component=component)
        if len(after) > 2:
            return True
        week = parse_week(after[-1])
        if week is not None:
            return chosen.matches(week=week)
        if chosen.mice is None:
            return True
        mouse = _mouse_of(after[-1])
        return mouse is None or mouse in chosen.mice

    return descend


def _build_stack(
    pending: _Pending,
    files: list[tuple[str, int]],
    headers: Mapping[str, PngHeader | PngHeaderError],
    logs: Mapping[str, bytes | Exception],
    max_pixels: int,
    skipped: list[Skipped] | None = None,
) -> Stack:
    folder, component, scan_name, week_name = pending
    scan, week = parse_scan_folder(scan_name), parse_week(week_name)
    assert scan is not None and week is not None  # guaranteed by _broken_level
    problems: list[Problem] = []
    images: list[ImageFile] = []
    n_png = 0
    for path, size in sorted(files):
        if not _is_png(path):
            if not path.lower().endswith(".log"):
                problems.append(Problem.of("stray-file", path))
            continue
        n_png += 1
        index = parse_index(posixpath.basename(path))
        if index is None:
            problems.append(Problem.of("no-index", path))
            continue
        found = headers.get(path)
        header = found if isinstance(found, PngHeader) else None
        # the IHDR, even of a file that is otherwise broken (truncated after a valid header)
        claimed = found.header if isinstance(found, PngHeaderError) else header
        if isinstance(found, PngHeaderError):
            problems.append(Problem.of("unreadable-header", path, reason=str(found)))
        if claimed is not None and claimed.n_pixels > max_pixels:
            w, h, n = claimed.width, claimed.height, claimed.n_pixels
            problems.append(Problem.of("pixel-limit", path, w=w, h=h, n=n, limit=max_pixels))
        elif header is not None and not header.fits_in(size):
            w, h, d = header.width, header.height, header.bit_depth
            problems.append(Problem.of("too-small", path, nbytes=size, w=w, h=h, d=d))
        images.append(ImageFile(path, index, size, header))
    for entry in skipped or ():
        why, fix = _SLICE_SKIPS[entry.kind]
        problems.append(
            Problem.of("skipped-slice", entry.path, why=why.format(entry.detail), fix=fix)
        )
    images.sort(key=lambda f: (f.index, f.path))
    if n_png == 0:
        problems.append(Problem.of("empty-stack", folder))
    problems += _index_problems(folder, images)
    problems += _header_problems(images, max_pixels)
    log, log_path, extra = None, None, ()
    candidates = _logs_in(files, scan_name)
    if candidates:
        log_path, extra = candidates[0], tuple(candidates[1:])
        log, problem = _load_log(log_path, logs.get(log_path))
        problems += [problem] if problem else []
        if log is not None and component == "rotation_xray":
            problems += _acquisition_problems(log_path, log)
        expected = expected_file_count(log) if log else None
        if expected is not None and expected != n_png:
            problems.append(
                Problem.of("count-mismatch", folder, n=n_png, log=log_path, expected=expected)
            )
    if component in PER_TIBIA_COMPONENTS and scan.side == "both":
        problems.append(
            Problem.of(
                "missing-side", folder, name=scan_name, component=component, mouse=scan.mouse
            )
        )
    return Stack(
        component,
        scan.mouse,
        scan.side,
        week,
        folder,
        scan_name,
        tuple(images),
        log,
        log_path,
        tuple(problems),
        extra,
    )


def _index_problems(folder: str, images: list[ImageFile]) -> list[Problem]:
    problems = []
    by_index: dict[int, list[str]] = defaultdict(list)
    for image in images:
        by_index[image.index].append(image.path)
    for index, paths in by_index.items():
        if len(paths) > 1:
            names = ", ".join(repr(posixpath.basename(p)) for p in paths)
            problems.append(Problem.of("duplicate-index", paths[1], index=index, names=names))
    present = sorted(by_index)
    if present and (n := present[-1] - present[0] + 1 - len(present)):
        problems.append(
            Problem.of(
                "missing-index",
                folder,
                ranges=compact_gaps(present),
                n=n,
                lo=present[0],
                hi=present[-1],
            )
        )
    return problems


def compact_gaps(present: list[int], *, limit: int = 10) -> str:
    """Return the gaps of sorted unique ``present`` as ``"12-14, 20"`` (first ``limit`` ranges)."""
    gaps = [(a + 1, b - 1) for a, b in itertools.pairwise(present) if b - a > 1]
    parts = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in gaps[:limit]]
    if len(gaps) > limit:
        parts.append(f"and {len(gaps) - limit} more range(s)")
    return ", ".join(parts)


def _header_problems(images: list[ImageFile], max_pixels: int) -> list[Problem]:
    usable = [(f.path, f.header) for f in images if f.header and f.header.n_pixels <= max_pixels]
    problems = []
    shapes = Counter((h.width, h.height) for _, h in usable)
    if len(shapes) > 1:
        (tw, th), _ = shapes.most_common(1)[0]
        problems += [
            Problem.of("mixed-shape", path, w=h.width, h=h.height, tw=tw, th=th)
            for path, h in usable
            if (h.width, h.height) != (tw, th)
        ]
    unsupported: dict[int, list[str]] = defaultdict(list)
    for path, h in usable:
        if h.colour_type not in CONVERTIBLE_COLOUR_TYPES:
            unsupported[h.colour_type].append(path)
    for colour, paths in sorted(unsupported.items()):
        what = COLOUR_TYPE_NAMES[colour]
        folder = posixpath.dirname(paths[0])
        first = posixpath.basename(min(paths))
        problems.append(
            Problem.of("unsupported-format", folder, n=len(paths), what=what, c=colour, first=first)
        )
    formats = Counter((h.bit_depth, h.colour_type) for _, h in usable)
    if len(formats) > 1:
        (td, tc), _ = formats.most_common(1)[0]
        problems += [
            Problem.of("mixed-format", path, d=h.bit_depth, c=h.colour_type, td=td, tc=tc)
            for path, h in usable
            if (h.bit_depth, h.colour_type) != (td, tc)
        ]
    return problems


def _load_log(
    path: str, blob: bytes | Exception | None
) -> tuple[SkyScanLog | None, Problem | None]:
    if not isinstance(blob, bytes | bytearray):
        reason = f"{type(blob).__name__}: {blob}" if blob is not None else "was not fetched"
        return None, Problem.of("unreadable-log", path, reason=f"could not be read ({reason})")
    log = parse_skyscan_log(bytes(blob), source=path)
    if len(log) == 0:
        reason = "is empty" if not bytes(blob).strip() else "holds no 'Key=Value' line"
        return None, Problem.of("unreadable-log", path, reason=reason)
    issues = check_skyscan_log(log)  # unphysical values: this scan only is quarantined
    if issues:
        return None, Problem.of("invalid-log", path, reason="; ".join(i.reason for i in issues))
    return log, None


def _acquisition_problems(path: str, log: SkyScanLog) -> list[Problem]:
    """What of a projection scan's acquisition the reconstruction refuses (this scan only)."""
    from bonemet_dask.io.skyscan_geometry import unsupported

    issues = unsupported(log)
    if not issues:
        return []
    return [Problem.of("unsupported-scan", path, reason="; ".join(i.reason for i in issues))]


def _flag_duplicates(stacks: list[Stack]) -> list[Stack]:
    groups: dict[tuple[str, int, str, int], list[int]] = defaultdict(list)
    for i, s in enumerate(stacks):
        groups[(s.component, int(s.mouse), s.side, s.week)].append(i)
    out = list(stacks)
    for members in (m for m in groups.values() if len(m) > 1):
        for i in members:
            s = stacks[i]
            others = ", ".join(repr(stacks[j].folder) for j in members if j != i)
            key = f"({s.component}, mouse {s.mouse}, {s.side}, week {s.week})"
            problem = Problem.of("duplicate-scan", s.folder, key=key, others=others)
            out[i] = replace(s, problems=(*s.problems, problem))
    return out
