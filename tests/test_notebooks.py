"""The example notebooks run on the tiny synthetic dataset, and are committed without outputs.

Each notebook is executed with nbclient in a kernel of this interpreter (the venv); its
``tempfile.mkdtemp`` work folder lands in ``tmp_path`` (``TMPDIR``), so the test reads the store
and metrics CSV the notebook wrote and checks them against what the notebook showed.
"""

import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = ("quickstart.ipynb", "longitudinal.ipynb", "ml.ipynb")


def execute(name: str, tmp_path: Path, monkeypatch) -> dict:
    """Run ``examples/<name>`` in a kernel of this Python; return the executed notebook."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")

    # a kernel of this interpreter (the venv), whatever kernels the machine has registered
    kernels = tmp_path / "jupyter" / "kernels" / "bonemet-test"
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "bonemet-dask test", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's tempfile.mkdtemp work folder
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="bonemet-test",
        resources={"metadata": {"path": tmp_path}},
    )
    client.execute()
    return notebook


def outputs(notebook, kind: str) -> list:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream" and kind == "stdout" == output["name"]:
                found.append(output["text"])
            data = output.get("data", {})
            if kind in data:
                found.append(data[kind])
    return found


def written(tmp_path: Path, prefix: str):
    """The store and metrics table the notebook wrote, and the RoI scans in the store."""
    import pandas as pd
    import zarr

    (work,) = tmp_path.glob(f"{prefix}*")
    table = pd.read_csv(work / "roi_metrics.csv", dtype={"mouse": str})
    root = zarr.open_group(str(work / "bonemet.zarr"), mode="r")
    scans = {
        (mouse, side, int(week.removeprefix("week")))
        for mouse, g in root["roi_ct"].groups()
        for side, s in g.groups()
        for week, _ in s.groups()
    }
    return table, scans


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    notebook = execute("quickstart.ipynb", tmp_path, monkeypatch)
    stdout = "".join(outputs(notebook, "stdout"))
    assert "Dask dashboard: http://127.0.0.1:" in stdout
    assert len(outputs(notebook, "image/png")) == 1  # slice, mask and composite
    table, scans = written(tmp_path, "bonemet-quickstart-")
    # the metrics table has a row for every RoI scan of the store (1 mouse, 2 tibiae, 2 weeks)
    assert set(zip(table["mouse"], table["side"], table["week"], strict=True)) == scans
    assert len(scans) == 4 and table["Animal ID"].notna().all()  # joined with MiceMediRec
    shown = outputs(notebook, "text/html")[-1]  # the metrics table the notebook shows last
    assert shown.count("<tr") == len(table) + 1 and "bone_volume_mm3" in shown


@pytest.mark.slow
def test_longitudinal_runs(tmp_path, monkeypatch):
    notebook = execute("longitudinal.ipynb", tmp_path, monkeypatch)
    assert len(outputs(notebook, "image/png")) == 2  # weeks side by side; metrics by week
    table, scans = written(tmp_path, "bonemet-longitudinal-")
    assert set(zip(table["mouse"], table["side"], table["week"], strict=True)) == scans
    assert set(table["mouse"]) == {"851", "852"} and set(table["week"]) == {0, 1, 2}
    # injected tibiae and controls both present, from the MiceMediRec join
    assert set(table["injected_side"]) == {True, False}
    assert "(str, as in MiceMediRec)" in "".join(outputs(notebook, "stdout"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_have_no_outputs(name):
    notebook = json.loads((EXAMPLES / name).read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:60]


@pytest.mark.slow
def test_ml_runs(tmp_path, monkeypatch):
    from itertools import islice

    import numpy as np
    import pandas as pd

    import bonemet_dask as bm

    split, samples = bm.ml.split, bm.ml.samples  # the functions, before any submodule import
    from bonemet_dask.ml.split import read_split

    notebook = execute("ml.ipynb", tmp_path, monkeypatch)
    (work,) = tmp_path.glob("bonemet-ml-*")
    store = str(work / "bonemet.zarr")
    table = read_split(work / "split.csv")
    # the split shown and saved: every converted mouse once, test mice outside the folds
    tree = bm.open_store(store)
    assert sorted(table["mouse"]) == sorted(tree["roi_ct"].children)
    assert table["fold"].isna().equals(table["split"] == "test")
    pd.testing.assert_frame_equal(table, split(store, test=0.25, folds=3, seed=0))
    shown = outputs(notebook, "text/html")[0]
    assert shown.count("<tr") == len(table) + 1
    # the labels: the phantom's injected mice are the lesion-positive ones
    truth = json.loads((work / "BoneMet" / "synthetic_truth.json").read_text())["mice"]
    assert dict(zip(table["mouse"], table["lesion"], strict=True)) == {
        mouse: bool(t["injected_side"]) for mouse, t in truth.items()
    }
    # stratified: each fold holds one lesion mouse and one control
    folds = table.dropna(subset="fold").groupby("fold")["lesion"].agg(["sum", "count"])
    assert folds["sum"].tolist() == [1, 1, 1] and folds["count"].tolist() == [2, 2, 2]
    # the batches printed are the store's slices of fold 0's training mice, with their labels
    stream = samples(store, "roi_ct", unit="slice", split=table, subset="train", fold=0,
                     label="lesion", batch_size=8, seed=0)  # fmt: skip
    batches = list(islice(stream, 3))
    stream.close()
    stdout = "".join(outputs(notebook, "stdout"))
    train = table[(table["split"] == "train") & (table["fold"] != 0)].set_index("mouse")
    for k, batch in enumerate(batches):
        line = (f"batch {k}: image {batch.image.shape} {batch.image.dtype}, "
                f"mice {batch.mouse.tolist()}, labels {batch.label.tolist()}")  # fmt: skip
        assert line in stdout
        assert batch.label.tolist() == train.loc[batch.mouse, "lesion"].tolist()
        for image, mouse, side, week, index in zip(
            batch.image, batch.mouse, batch.side, batch.week, batch.index, strict=True
        ):
            scan = tree[f"roi_ct/{mouse}/{side}/week{week}"].dataset["image"]
            np.testing.assert_array_equal(image, scan.sel(slice=index).values)
    assert len(outputs(notebook, "image/png")) == 1  # one batch
    # scored per fold, on exactly that fold's mice
    scores = pd.read_csv(work / "fold_scores.csv")
    assert scores["fold"].tolist() == [0, 1, 2]
    for fold, mice in zip(scores["fold"], scores["mice"], strict=True):
        assert sorted(mice.split(",")) == sorted(table.loc[table["fold"] == fold, "mouse"])
    assert scores["balanced_accuracy"].between(0, 1).all()
