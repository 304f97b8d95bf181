#!/usr/bin/env python3
"""One task of a SLURM job array: convert and process a range of BoneMet mice.

Reads a job YAML (``conversion/*.yaml``), lists the mice the job covers (from the source tree
with the package's catalog, or from ``--mice-file``), cuts them into consecutive ranges of
``mice_per_task`` and runs, for array index I, the real CLI on range I as subprocesses::

    bonemet-dask convert SRC STORE --mice <range I> ...   (when the YAML has ``convert:``)
    bonemet-dask run     SRC STORE --mice <range I> ...   (when the YAML has ``run:``)

Both commands are resumable (they skip complete groups and finish incomplete ones shard by
shard), so rerunning a failed index finishes only what is missing.

Usage::

    python conversion/array_task.py JOB.yaml --index I          # run array task I
    python conversion/array_task.py JOB.yaml --dry-run          # print every task's commands
    python conversion/array_task.py JOB.yaml --dry-run --index I
    python conversion/array_task.py JOB.yaml --list-mice > mice.txt
    python conversion/array_task.py JOB.yaml --print-sbatch     # the sbatch line, N computed

The index defaults to ``$SLURM_ARRAY_TASK_ID``.  Exit status: that of the first command that
failed (1 failure, 2 bad usage), else 3 when a command quarantined scans, else 0; 2 for a bad
YAML or option (the message names the key and the fix).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("bonemet_dask.conversion")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_QUARANTINED = 0, 1, 2, 3

TOP_KEYS = ("source", "store", "logs", "select", "tasks", "cluster", "resources", "convert", "run")
SELECT_KEYS = ("mice", "weeks", "sides")
TASK_KEYS = ("mice_per_task",)
RESOURCE_KEYS = ("cores", "memory", "walltime", "partition", "account", "max_running")
# YAML key -> option of `bonemet-dask convert` (None: a flag, handled below)
CONVERT_KEYS = {
    "components": "--components",
    "codec": "--codec",
    "level": "--level",
    "slices_per_shard": "--slices-per-shard",
    "on_error": "--on-error",
    "overwrite": None,
    "report": None,
}
# YAML key -> option of `bonemet-dask run`
RUN_KEYS = {
    "from": "--from",
    "until": "--until",
    "threshold": "--threshold",
    "filter": "--filter",
    "roll_starts": "--roll-starts",
    "length_um": "--length-um",
    "csv": "--csv",
    "backend": "--backend",
    "slices_per_shard": "--slices-per-shard",
    "concurrency": "--concurrency",
    "overwrite": None,
}
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


class JobError(ValueError):
    """A job YAML or driver option that cannot work; the message names it and the fix."""


@dataclass
class Job:
    """A parsed job YAML.

    Attributes
    ----------
    path : str
        The YAML file.
    source, store : str
        SRC and STORE of the CLI (environment variables expanded).
    logs : str
        Folder of the per-task reports and metrics (and of the SLURM logs, by --print-sbatch).
    mice : list of str or None
        Mouse filter: ids and ``LO-HI`` ranges, expanded by this driver (None: every mouse).
    weeks, sides : str or None
        Passed to the CLI as ``--weeks`` / ``--sides``.
    mice_per_task : int
        Consecutive mice per array task.
    cluster : str
        ``--cluster`` of every command.
    resources : dict
        One array task's SLURM allocation (``--print-sbatch``).
    convert, run : dict or None
        Options of ``bonemet-dask convert`` / ``run`` (None: that command is not run).
    """

    path: str
    source: str
    store: str
    logs: str
    mice: list[str] | None = None
    weeks: str | None = None
    sides: str | None = None
    mice_per_task: int = 1
    cluster: str = "none"
    resources: dict[str, Any] = field(default_factory=dict)
    convert: dict[str, Any] | None = None
    run: dict[str, Any] | None = None


def _check_keys(where: str, value: Any, allowed: Sequence[str], path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobError(f"{path}: {where} must be a mapping of {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise JobError(
                f"{path}: {name!s} is not a known key; {where or 'top-level'} keys are "
                f"{', '.join(allowed)} (see conversion/README.md)"
            )
    return value


def _text(path: str, name: str, value: Any) -> str | None:
    """A selector or option as CLI text (lists joined with commas), or None."""
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise JobError(f"{path}: {name}={value!r} must be text, a number or a list")
    return str(value)


def _expand(path: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise JobError(f"{path}: {name} must be a path or URL, e.g. {name}: /scratch/bonemet")
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise JobError(f"{path}: {name}={value!r} uses an unset environment variable; export it")
    return expanded


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read and check a job YAML.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML file.

    Returns
    -------
    Job

    Raises
    ------
    JobError
        For an unknown key, a missing ``source``/``store``, a YAML without ``convert`` or
        ``run``, or a malformed value; the message names the key.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise JobError(f"job YAML {path!r} cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise JobError(f"job YAML {path!r} is not valid YAML: {err}") from None
    data = _check_keys("", data, TOP_KEYS, path)
    for required in ("source", "store"):
        if required not in data:
            raise JobError(f"{path}: {required} is missing; e.g. {required}: /scratch/bonemet")
    select = _check_keys("select", data.get("select"), SELECT_KEYS, path)
    tasks = _check_keys("tasks", data.get("tasks"), TASK_KEYS, path)
    resources = _check_keys("resources", data.get("resources"), RESOURCE_KEYS, path)
    convert = data.get("convert")
    run = data.get("run")
    if convert is None and run is None:
        raise JobError(f"{path}: give a convert: or a run: section (or both)")
    convert = (
        None if convert is None else _check_keys("convert", convert, tuple(CONVERT_KEYS), path)
    )
    run = None if run is None else _check_keys("run", run, tuple(RUN_KEYS), path)
    if convert is not None and run is not None and ({"codec", "level"} & set(convert)):
        raise JobError(
            f"{path}: convert.codec/convert.level with a run: section: run converts with the "
            "default codecs and would refuse groups written with others; remove them"
        )
    for key, kind in (("cores", int), ("max_running", int), ("memory", str), ("walltime", str),
                      ("partition", str), ("account", str)):  # fmt: skip
        value = resources.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            hint = (
                ' (quote it: "24:00:00" unquoted is a number in YAML)' if key == "walltime" else ""
            )
            raise JobError(f"{path}: resources.{key}={value!r} must be {kind.__name__}{hint}")
    per_task = tasks.get("mice_per_task", 1)
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise JobError(f"{path}: tasks.mice_per_task={per_task!r} must be an integer >= 1")
    mice = select.get("mice")
    store = _expand(path, "store", data["store"])
    logs = data.get("logs")
    if logs is None and "://" in store:
        raise JobError(f"{path}: logs is missing; a URL store needs a local logs: folder")
    default_logs = os.path.join(os.path.dirname(store.rstrip("/")) or ".", "bonemet-logs")
    if logs is not None and "://" in str(logs):
        raise JobError(f"{path}: logs={logs!r} must be a local folder (SLURM writes there)")
    return Job(
        path=path,
        source=_expand(path, "source", data["source"]),
        store=store,
        logs=_expand(path, "logs", logs) if logs is not None else default_logs,
        mice=None if mice is None else (_text(path, "select.mice", mice) or "").split(","),
        weeks=_text(path, "select.weeks", select.get("weeks")),
        sides=_text(path, "select.sides", select.get("sides")),
        mice_per_task=per_task,
        cluster=_text(path, "cluster", data.get("cluster", "none")) or "none",
        resources=resources,
        convert=convert,
        run=run,
    )


def _mouse_filter(job: Job) -> set[str] | None:
    """The YAML's mice as ids (``mouse_key``), ``LO-HI`` ranges expanded."""
    from bonemet_dask.selection import mouse_key

    if job.mice is None:
        return None
    wanted: set[str] = set()
    for item in (m.strip() for m in job.mice):
        match = _RANGE.match(item)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise JobError(f"{job.path}: select.mice range {item!r} runs backwards")
            wanted.update(str(m) for m in range(lo, hi + 1))
        elif item:
            wanted.add(mouse_key(item))
    return wanted


def _order(mouse: str) -> tuple[bool, int, str]:
    return (not mouse.isdigit(), int(mouse) if mouse.isdigit() else 0, mouse)


def discover_mice(job: Job) -> dict[str, list[str]]:
    """Mice of the source each command works on, in catalog order (listing only, no headers).

    Returns
    -------
    dict
        ``{"convert": [...], "run": [...]}`` for the commands the job runs.
    """
    from bonemet_dask.io.catalog import scan_source
    from bonemet_dask.ops.run import STARTS
    from bonemet_dask.selection import Selection

    catalog = scan_source(job.source, read_headers=False)
    selection = Selection.of(weeks=job.weeks, sides=job.sides)
    wanted = _mouse_filter(job)
    found: dict[str, list[str]] = {}
    if job.convert is not None:
        components = job.convert.get("components")
        chosen = selection.narrowed(components=components) if components else selection
        found["convert"] = _mice_of(catalog.select(chosen), wanted)
    if job.run is not None:
        start = job.run.get("from", "projections")
        if start not in STARTS:
            raise JobError(f"{job.path}: run.from={start!r} is not one of {', '.join(STARTS)}")
        found["run"] = _mice_of(catalog.select(selection), wanted, STARTS[start])
    for command, mice in found.items():
        if not mice:
            raise JobError(
                f"{job.path}: select matches no mouse for {command} in source {job.source!r}; "
                "check select.mice/weeks/sides and the source path"
            )
    return found


def _mice_of(catalog: Any, wanted: set[str] | None, component: str | None = None) -> list[str]:
    from bonemet_dask.selection import mouse_key

    mice: dict[str, None] = {}
    for stack in catalog.stacks:
        if component is not None and stack.component != component:
            continue
        key = mouse_key(stack.mouse)
        if wanted is None or key in wanted:
            mice.setdefault(key)
    return sorted(mice, key=_order)


def read_mice_file(path: str) -> list[str]:
    """Mouse ids, one per line (blank lines and ``#`` comments ignored)."""
    from bonemet_dask.selection import mouse_key

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise JobError(f"--mice-file {path!r} cannot be read: {err.strerror}") from None
    mice = [mouse_key(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    if not mice:
        raise JobError(f"--mice-file {path!r} lists no mouse; write one id per line")
    return list(dict.fromkeys(mice))


def split(mice: Sequence[str], per_task: int) -> list[list[str]]:
    """Consecutive ranges of ``per_task`` mice: array index I gets ``ranges[I]``."""
    return [list(mice[i : i + per_task]) for i in range(0, len(mice), per_task)]


def bonemet_dask_command() -> list[str]:
    """The ``bonemet-dask`` of this interpreter's environment (or ``python -m``)."""
    beside = Path(sys.executable).parent / "bonemet-dask"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("bonemet-dask")
    return [found] if found else [sys.executable, "-m", "bonemet_dask.cli"]


def _options(section: dict[str, Any], names: dict[str, str | None], path: str, where: str):
    out: list[str] = []
    for key, option in names.items():
        value = section.get(key)
        if value is None or option is None:
            continue
        out += [option, _text(path, f"{where}.{key}", value) or ""]
    if section.get("overwrite"):
        out.append("--overwrite")
    return out


def task_commands(job: Job, index: int, mice: dict[str, list[str]]) -> list[list[str]]:
    """The CLI commands of array task ``index`` (convert first, then run).

    Parameters
    ----------
    job : Job
    index : int
        Array index, 0-based.
    mice : dict
        ``{"convert": [...], "run": [...]}`` as from :func:`discover_mice` (one list may serve
        both).

    Raises
    ------
    JobError
        When ``index`` is outside the array.
    """
    order = sorted({m for ms in mice.values() for m in ms}, key=_order)
    ranges = split(order, job.mice_per_task)
    if not 0 <= index < len(ranges):
        raise JobError(
            f"--index {index} is outside the array: {len(order)} mice at "
            f"tasks.mice_per_task={job.mice_per_task} make tasks 0-{len(ranges) - 1}; "
            f"submit with --array=0-{len(ranges) - 1}"
        )
    mine = set(ranges[index])
    selectors = []
    if job.weeks is not None:
        selectors += ["--weeks", job.weeks]
    if job.sides is not None:
        selectors += ["--sides", job.sides]
    exe = bonemet_dask_command()
    commands = []
    tag = f"task{index:05d}"
    if job.convert is not None:
        chosen = [m for m in mice.get("convert", order) if m in mine]
        if chosen:
            cmd = [*exe, "convert", job.source, job.store, "--mice", ",".join(chosen), *selectors]
            cmd += _options(job.convert, CONVERT_KEYS, job.path, "convert")
            cmd += ["--cluster", job.cluster, "--no-consolidate"]  # once, after the array
            if job.convert.get("report", True):
                cmd += ["--report", os.path.join(job.logs, f"convert-{tag}.json")]
            commands.append(cmd)
    if job.run is not None:
        chosen = [m for m in mice.get("run", order) if m in mine]
        if chosen:
            cmd = [*exe, "run", job.source, job.store, "--mice", ",".join(chosen), *selectors]
            options = dict(job.run)
            if options.get("until", "composite") == "composite":  # one metrics CSV per task
                csv = options.get("csv") or os.path.join(job.logs, "roi_metrics.{index:05d}.csv")
                options["csv"] = str(csv).format(index=index)
            cmd += _options(options, RUN_KEYS, job.path, "run")
            cmd += ["--cluster", job.cluster, "--no-consolidate"]
            commands.append(cmd)
    return commands


def sbatch_line(
    job: Job,
    n_tasks: int,
    extra: Sequence[str] = (),
    script: str = "conversion/bonemet-array.sbatch",
) -> str:
    """The ``sbatch`` command that submits the whole array with the YAML's resources.

    Parameters
    ----------
    job : Job
    n_tasks : int
        Array tasks: ``--array=0-(n_tasks - 1)%max_running``.
    extra : sequence of str
        Driver options every task gets (``--mice-file``, ``--mice-per-task``).
    script : str
        The batch script, relative to the submit directory.
    """
    res = job.resources
    parts = ["sbatch", f"--array=0-{n_tasks - 1}%{res.get('max_running', 20)}"]
    parts.append(f"--job-name=bonemet-{Path(job.path).stem}")
    parts.append(f"--output={os.path.join(job.logs, '%x-%A_%a.out')}")
    for key, option in (("cores", "--cpus-per-task"), ("memory", "--mem"), ("walltime", "--time"),
                        ("partition", "--partition"), ("account", "--account")):  # fmt: skip
        if res.get(key) is not None:
            value = str(res[key])
            if key == "memory":  # sbatch spells GiB as G
                value = value.replace("GiB", "G").replace("MiB", "M").replace("TiB", "T")
            parts.append(f"{option}={value}")
    parts += [script, job.path, *extra]
    return shlex.join(parts)


def finish_line(job: Job) -> str:
    """The ``sbatch`` command of the job that runs once every array task has ended.

    The tasks leave the store without consolidated metadata (``--no-consolidate``: tasks side
    by side must not race to rewrite the root); this job consolidates it once, whatever the
    tasks' exit codes (``afterany``).  ``$JOB`` is the array's job id (``sbatch --parsable``).
    """
    wrap = shlex.join([*bonemet_dask_command(), "consolidate", job.store])
    name = f"--job-name=bonemet-{Path(job.path).stem}-finish"
    log = f"--output={os.path.join(job.logs, '%x-%j.out')}"
    parts = ["sbatch", "--dependency=afterany:$JOB", name, log, "--time=01:00:00"]
    if job.resources.get("partition"):
        parts.append(f"--partition={job.resources['partition']}")
    if job.resources.get("account"):
        parts.append(f"--account={job.resources['account']}")
    return " ".join([*(shlex.quote(p) if "$JOB" not in p else p for p in parts),
                     "--wrap", shlex.quote(wrap)])  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one task of a BoneMet SLURM job array (see conversion/README.md).",
    )
    parser.add_argument("job", help="Job YAML, e.g. conversion/run.yaml.")
    parser.add_argument(
        "--index", type=int, default=None,
        help="Array index (default $SLURM_ARRAY_TASK_ID; with --dry-run: every task).",
    )  # fmt: skip
    parser.add_argument("--mice-per-task", type=int, default=None,
                        help="Override tasks.mice_per_task of the YAML.")  # fmt: skip
    parser.add_argument(
        "--mice-file",
        default=None,
        help="Mouse ids, one per line, instead of listing the source tree.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the commands of each task (or of --index) and run nothing.",
    )
    action.add_argument(
        "--list-mice",
        action="store_true",
        help="Print the mice the job covers, one per line (for --mice-file).",
    )
    action.add_argument(
        "--print-sbatch",
        action="store_true",
        help="Print the sbatch command that submits the whole array.",
    )
    return parser


def _index(given: int | None) -> int | None:
    if given is not None:
        return given
    text = os.environ.get("SLURM_ARRAY_TASK_ID")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise JobError(f"SLURM_ARRAY_TASK_ID={text!r} is not an integer") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s array_task: %(message)s")
    args = _parser().parse_args(argv)
    try:
        job = load_job(args.job)
        if args.mice_per_task is not None:
            if args.mice_per_task < 1:
                raise JobError(f"--mice-per-task {args.mice_per_task} must be >= 1")
            job.mice_per_task = args.mice_per_task
        if args.mice_file is not None:
            listed = read_mice_file(args.mice_file)
            wanted = _mouse_filter(job)
            listed = [m for m in listed if wanted is None or m in wanted]
            mice = {name: listed for name in ("convert", "run") if getattr(job, name) is not None}
        else:
            mice = discover_mice(job)
        order = sorted({m for ms in mice.values() for m in ms}, key=_order)
        n_tasks = len(split(order, job.mice_per_task))
        if args.list_mice:
            print("\n".join(order))
            return EXIT_OK
        if args.print_sbatch:
            extra = [] if args.mice_file is None else ["--mice-file", args.mice_file]
            if args.mice_per_task is not None:
                extra += ["--mice-per-task", str(args.mice_per_task)]
            print(f"# {len(order)} mice, {job.mice_per_task} per task: {n_tasks} array tasks")
            print(shlex.join(["mkdir", "-p", job.logs]))  # SLURM does not create --output's folder
            array = sbatch_line(job, n_tasks, extra).replace("sbatch ", "sbatch --parsable ", 1)
            print(f"JOB=$({array})")
            print(finish_line(job))
            return EXIT_OK
        index = _index(args.index)
        if args.dry_run:
            for i in range(n_tasks) if index is None else [index]:
                commands = task_commands(job, i, mice)
                print(f"# task {i}: mice {','.join(split(order, job.mice_per_task)[i])}")
                for command in commands:
                    print(shlex.join(command))
            return EXIT_OK
        if index is None:
            raise JobError("no array index: pass --index I or run under sbatch --array")
        commands = task_commands(job, index, mice)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        # a malformed selector (SelectionError), a source that cannot be listed
        print(f"error: {args.job}: {err}", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(job.logs, exist_ok=True)
    status = EXIT_OK
    for command in commands:
        logger.info("task %d: %s", index, shlex.join(command))
        code = subprocess.run(command, check=False).returncode
        if code == EXIT_QUARANTINED:
            status = EXIT_QUARANTINED  # bad inputs: reported, go on with the rest
        elif code != EXIT_OK:
            logger.error("task %d: exit %d from %s; rerun this index to finish", index, code,
                         command[len(bonemet_dask_command())])  # fmt: skip
            return code
    return status


if __name__ == "__main__":
    sys.exit(main())
