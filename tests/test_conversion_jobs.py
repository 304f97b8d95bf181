"""The SLURM job-array definitions in ``conversion/``: YAMLs, driver and sbatch script.

A tiny synthetic tree (3 mice, 2 weeks, Recon-CT only) is cut into array tasks of 2 mice; each
task is run as the driver's subprocess with ``--cluster none`` and the real ``bonemet-dask``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

REPO = Path(__file__).resolve().parents[1]
CONVERSION = REPO / "conversion"
DRIVER = CONVERSION / "array_task.py"
SBATCH = CONVERSION / "bonemet-array.sbatch"
MICE = ("851", "852", "853")
COMPONENT_YAMLS = ("rotation_xray", "recon_ct", "seg_ct", "regist_ct", "roi_ct")


def _driver_module():
    """``conversion/array_task.py`` imported in this process (it is a script, not a module)."""
    name = "bonemet_conversion_array_task"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DRIVER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses resolve their annotations through it
        spec.loader.exec_module(module)
    return sys.modules[name]


def _driver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRIVER), *args],
        capture_output=True, text=True, check=False, env=env, timeout=300,
    )  # fmt: skip


def _write_job(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def _groups(store: Path) -> dict[str, dict]:
    """Every scan group of the store (component/mouse/side/week) -> its ``bonemet`` attrs."""
    root = zarr.open_group(str(store), mode="r")
    found = {}
    for path, node in root.groups():
        if path == "medirec":
            continue
        for sub, group in node.members(max_depth=None):
            if isinstance(group, zarr.Group) and "bonemet" in group.attrs:
                found[f"{path}/{sub}"] = dict(group.attrs["bonemet"])
    return found


def _mice(groups) -> set[str]:
    return {path.split("/")[1] for path in groups}


def _files(store: Path) -> dict[str, int]:
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    from bonemet_dask.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("conversion")
    config = SynthConfig(mice=3, weeks=2, size="tiny", seed=0, components=("recon_ct",))
    generate(str(root / "src"), config)
    return root


@pytest.fixture(scope="module")
def run_job(tree) -> Path:
    """The chain from the published Recon-CT to registration, 2 mice per array task."""
    return _write_job(
        tree / "run.yaml",
        source=str(tree / "src"),
        store=str(tree / "chain.zarr"),
        logs=str(tree / "logs"),
        select={"mice": "851-899", "weeks": "0-1"},
        tasks={"mice_per_task": 2},
        cluster="none",
        run={"from": "recon_ct", "until": "register", "concurrency": 1},
    )


@pytest.fixture(scope="module")
def ran(tree, run_job):
    """Array index 0, then 1, each a subprocess of the driver; the store's groups after each."""
    store = tree / "chain.zarr"
    after = []
    for index in ("0", "1"):
        done = _driver(str(run_job), "--index", index)
        assert done.returncode == 0, done.stderr
        after.append(_groups(store))
    return store, after


def _dry_run_tasks(output: str) -> dict[int, list[str]]:
    """``# task I: mice ...`` headers -> the command lines under each."""
    tasks: dict[int, list[str]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("# task "):
            current = int(line.split()[2].rstrip(":"))
            tasks[current] = []
        elif line.strip():
            tasks[current].append(line)
    return tasks


def test_dry_run_covers_every_mouse_once(run_job, tree):
    done = _driver(str(run_job), "--dry-run")
    assert done.returncode == 0, done.stderr
    tasks = _dry_run_tasks(done.stdout)
    assert sorted(tasks) == [0, 1]
    seen = []
    for commands in tasks.values():
        assert len(commands) == 1 and " run " in commands[0]
        words = commands[0].split()
        assert words[words.index("--cluster") + 1] == "none"
        assert words[words.index("--weeks") + 1] == "0-1"
        seen += words[words.index("--mice") + 1].split(",")
    assert sorted(seen) == list(MICE)  # every mouse, exactly once
    assert not (tree / "chain.zarr").exists() and not (tree / "logs").exists()  # ran nothing

    one = _driver(str(run_job), "--dry-run", "--index", "1")
    assert _dry_run_tasks(one.stdout) == {1: tasks[1]}
    narrow = _driver(str(run_job), "--dry-run", "--mice-per-task", "1")
    assert sorted(_dry_run_tasks(narrow.stdout)) == [0, 1, 2]


def test_print_sbatch_and_list_mice(run_job):
    done = _driver(str(run_job), "--print-sbatch")
    assert done.returncode == 0, done.stderr
    assert "--array=0-1%20" in done.stdout  # 3 mice, 2 per task
    assert "conversion/bonemet-array.sbatch" in done.stdout
    lines = done.stdout.splitlines()
    assert lines[-2].startswith("JOB=$(sbatch --parsable --array=0-1%20 ")
    # the finishing job consolidates the store once, whatever the tasks' exit codes
    assert lines[-1].startswith("sbatch --dependency=afterany:$JOB ")
    assert "consolidate" in lines[-1] and str(run_job.parent / "chain.zarr") in lines[-1]
    listed = _driver(str(run_job), "--list-mice")
    assert listed.stdout.split() == list(MICE)


def test_index_outside_the_array_names_the_range(run_job):
    done = _driver(str(run_job), "--dry-run", "--index", "2")
    assert done.returncode == 2
    assert "--index 2" in done.stderr and "--array=0-1" in done.stderr


def test_array_tasks_process_only_their_mice(ran):
    _, (after_0, after_1) = ran
    assert _mice(after_0) == {"851", "852"}
    assert _mice(after_1) == set(MICE)
    components = {path.split("/")[0] for path in after_1}
    assert components == {"recon_ct", "seg_ct", "regist_ct"}
    assert all(attrs["status"] == "complete" for attrs in after_1.values())
    # task 1 added mouse 853 and left the groups of task 0 as they were
    assert {p: a for p, a in after_1.items() if p in after_0} == after_0


def test_tasks_leave_consolidating_to_the_finishing_job(ran):
    """Tasks side by side do not rewrite the root; ``bonemet-dask consolidate`` does it once."""
    import xarray as xr

    store, (_, after_1) = ran
    root_doc = json.loads((store / "zarr.json").read_text())
    assert root_doc.get("consolidated_metadata") is None
    exe = Path(sys.executable).parent / "bonemet-dask"
    done = subprocess.run([str(exe), "consolidate", str(store)], capture_output=True, text=True,
                          check=False, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = json.loads((store / "zarr.json").read_text())["consolidated_metadata"]["metadata"]
    assert set(after_1) <= set(listed)
    tree = xr.open_datatree(store, engine="zarr")  # no warning: pytest errors on warnings
    assert {f"/{p}" for p in after_1} <= set(tree.groups)
    missing = subprocess.run([str(exe), "consolidate", str(store.parent / "none.zarr")],
                             capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert missing.returncode != 0 and "none.zarr" in missing.stdout + missing.stderr
    assert not (store.parent / "none.zarr").exists()


def test_rerun_writes_only_the_missing_group(ran, run_job):
    store, (_, complete) = ran
    lost = "regist_ct/852/left/week1"
    before = _files(store)
    shutil.rmtree(store / lost)
    done = _driver(str(run_job), "--index", "0")  # the index that owns mouse 852
    assert done.returncode == 0, done.stderr
    after = _files(store)
    assert _groups(store) == complete  # the same groups, same fingerprints, all complete
    changed = {p for p in after if before.get(p) != after[p]}
    rewritten = {p for p in changed if p.startswith(lost + "/")}
    assert rewritten == {p for p in after if p.startswith(lost + "/")}  # the lost group, whole
    # nothing else of any scan group changed (run rewrites the /medirec table on every call,
    # and the root's zarr.json: its consolidated metadata, dropped and written again)
    assert changed - rewritten <= {p for p in after if p.startswith("medirec/")} | {"zarr.json"}


def test_convert_job_converts_its_range(tree):
    job = _write_job(
        tree / "recon.yaml",
        source=str(tree / "src"),
        store=str(tree / "published.zarr"),
        logs=str(tree / "convert-logs"),
        tasks={"mice_per_task": 2},
        cluster="none",
        convert={"components": "recon_ct", "codec": "zstd", "level": 3, "slices_per_shard": 64},
    )
    done = _driver(str(job), "--index", "1")
    assert done.returncode == 0, done.stderr
    groups = _groups(tree / "published.zarr")
    assert set(groups) == {"recon_ct/853/both/week0", "recon_ct/853/both/week1"}
    report = json.loads((tree / "convert-logs" / "convert-task00001.json").read_text())
    assert report["counts"]["written"] == 2
    meta = (tree / "published.zarr" / "recon_ct/853/both/week0/0/zarr.json").read_text()
    assert '"zstd"' in meta and "blosc" not in meta  # the YAML's codec, not the default


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ("convert", {"components": "recon_ct", "codecs": "zstd"}, "convert.codecs"),
        ("run", {"from": "recon_ct", "untill": "register"}, "run.untill"),
        ("stores", "x.zarr", "stores"),
    ],
)
def test_bad_yaml_key_names_the_key(tree, section, key, message):
    data = {"source": str(tree / "src"), "store": str(tree / "bad.zarr"), section: key}
    if section == "stores":
        data["run"] = {"from": "recon_ct"}
    job = _write_job(tree / f"bad-{section}.yaml", **data)
    done = _driver(str(job), "--dry-run")
    assert done.returncode == 2
    assert message in done.stderr and "is not a known key" in done.stderr
    assert "Traceback" not in done.stderr


def test_sbatch_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = SBATCH.read_text()
    assert "#SBATCH --array=" in text and "SLURM_ARRAY_TASK_ID" in text


def test_sbatch_script_calls_the_driver(run_job):
    env = os.environ | {
        "SLURM_ARRAY_TASK_ID": "0",
        "SLURM_SUBMIT_DIR": str(REPO),
        "BONEMET_PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(SBATCH), str(run_job), "--dry-run"],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "bonemet array task 0" in done.stdout
    tasks = _dry_run_tasks(done.stdout.split("\n", 1)[1])
    assert list(tasks) == [0] and "--mice 851,852" in tasks[0][0]
    missing = subprocess.run(
        ["bash", str(SBATCH), str(run_job)],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "SLURM_ARRAY_TASK_ID"},
    )
    assert missing.returncode != 0 and "SLURM_ARRAY_TASK_ID" in missing.stderr


@pytest.mark.parametrize("name", [*COMPONENT_YAMLS, "run"])
def test_shipped_yamls_use_only_real_cli_options(name, monkeypatch):
    import typer.main

    from bonemet_dask.cli import app
    from bonemet_dask.cluster import parse_cluster_spec
    from bonemet_dask.io.store import CODECS

    monkeypatch.setenv("BONEMET_SOURCE", "/data/BoneMet")
    monkeypatch.setenv("BONEMET_OUT", "/scratch/bonemet")
    driver = _driver_module()
    job = driver.load_job(CONVERSION / f"{name}.yaml")
    assert job.source == "/data/BoneMet" and job.store.startswith("/scratch/bonemet/")
    parse_cluster_spec(job.cluster)  # a valid --cluster spec
    if name != "run":
        assert job.convert["components"] == name and job.convert["codec"] in CODECS
        depth = 8 if name == "rotation_xray" else 64
        assert job.convert["slices_per_shard"] % depth == 0
    cli = typer.main.get_command(app)
    for command in driver.task_commands(job, 0, {"convert": ["851"], "run": ["851"]}):
        sub = command[len(driver.bonemet_dask_command())]
        known = {o for p in cli.commands[sub].params for o in (*p.opts, *p.secondary_opts)}
        options = {w for w in command if w.startswith("--")}
        assert options <= known, options - known
    assert set(driver.RESOURCE_KEYS) >= set(job.resources)
    assert "--cpus-per-task=" in driver.sbatch_line(job, 10)
