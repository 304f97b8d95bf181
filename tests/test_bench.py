"""``bonemet-dask bench`` at tiny size, through the CLI: the suite cannot rot unnoticed.

Speed is never asserted here (BENCHMARKS.md holds the figures); what is checked is that every
stage runs, keeps every sample with its median and spread, states its ratios against their
targets, names each peer it skipped with the reason, and draws its figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

STAGES = ("convert", "fdk", "fbp", "resample", "composite", "register", "chain")


@pytest.mark.bench
def test_bench_suite_runs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bonemet_dask.cli", "bench", "--size", "tiny", "--repeat", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert results["size"] == "tiny" and set(results["stages"]) == set(STAGES)
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["versions"]["bonemet-dask"]
    for name, stage in results["stages"].items():
        assert stage["rows"], name
        for row in stage["rows"]:
            assert len(row["samples_s"]) >= 1 and row["median_s"] > 0 and row["rate"] > 0
            spread = max(row["samples_s"]) - min(row["samples_s"])
            assert row["spread_s"] == pytest.approx(spread, abs=2e-6)  # rounded to 1 us
        for ratio in stage["ratios"]:
            assert ratio["value"] is None or ratio["value"] > 0
            if ratio["target"] is not None and ratio["value"] is not None:
                assert ratio["met"] == (ratio["value"] >= ratio["target"])
        for peer, why in stage["skipped"].items():
            assert why, peer
    chain = results["stages"]["chain"]
    assert set(chain["scaling"]["by_stage"]) == {"convert", "reconstruct", "segment", "register",
                                                 "composite"}  # fmt: skip
    assert chain["scans_per_core_hour"]["2 workers"] > 0
    assert chain["exit_codes"]["convert, 2 worker(s)"] == 0  # tiny blurs the fibula away later
    register = results["stages"]["register"]
    assert set(register["worst"]) >= {"ours"}  # seconds and pose errors of each method
    convert = results["stages"]["convert"]
    assert convert["memory"]["budget_bytes"] > 0
    assert convert["scaling"]["1_to_2"] > 0
    assert {r["name"] for r in convert["ratios"]} >= {"convert per core / raw decode, 2 workers"}
    assert chain["memory"]["peak_per_worker_bytes"] > 0
    assert set(chain["memory"]["by_stage"]) == set(chain["scaling"]["by_stage"])
    # plan --profile full reads these results: the chain's measured rates, the rest packaged
    from bonemet_dask.ops.plan_chain import load_rates

    rates, packaged = load_rates(out), load_rates()
    measured = chain["rates"]["cpu"]
    assert measured["fdk_gups"] > 0 and measured["segment_core_s_per_mvox"] > 0
    for key, value in rates.cpu.items():
        assert value == measured.get(key, packaged.cpu[key]), key
    assert rates.convert_mb_per_core_s["ct"] == pytest.approx(convert["png_mb_per_core_s"])
    assert rates.gpu_fdk_gups == packaged.gpu_fdk_gups and "bench" in rates.measured["cpu"]
    figure = out.with_suffix(".png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table names every stage and where the results went
    for name in STAGES:
        assert name in done.stdout
    assert str(out) in done.stdout.replace("\n", "")
