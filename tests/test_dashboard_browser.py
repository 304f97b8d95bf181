"""The Dask dashboard in a real browser: headless Chromium shows our stages' task names.

A LocalCluster runs two stages on the tiny dataset (FDK reconstruction and segmentation) while
the dashboard's status and task-stream pages are open in Debian's ``chromium`` (headless, driven
over the DevTools protocol with tornado's websocket client: no selenium).  The pages draw on a
canvas, so the test reads the strings of the pages' Bokeh data sources (what the task stream
and the progress bars draw) and requires the stages' task prefixes among them; a screenshot of
each page is kept under ``test-artifacts/`` (ignored by git) and its path printed (the
compute-time-per-task page writes the prefixes on screen; the others show them on hover).

The pages are opened before the stages run, as a user does: the scheduler records the task
stream only once a dashboard page asked for it.  ``.ci/run`` installs chromium when it is
missing; without it the test is skipped, saying so.
"""

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PAGES = {
    "status": "status",
    "task-stream": "individual-task-stream",
    # the one page that writes the prefixes on screen after the run (the others on hover)
    "compute-time": "individual-compute-time-per-key",
}
STAGE_TASKS = ("fdk-backproject", "segment-write")
BOKEH_STRINGS = """(() => { const out = new Set();
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    const models = doc.all_models ? doc.all_models : doc._all_models.values();
    for (const model of models) {
      const data = model.data; if (!data) continue;
      const columns = data instanceof Map ? data.values() : Object.values(data);
      for (const column of columns)
        if (column && typeof column !== "string" && column.length !== undefined)
          for (const value of column) if (typeof value === "string") out.add(value); } }
  return Array.from(out).join("\\n"); })()"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


async def visit(page_ws: str, url: str, *, wait: float) -> tuple[str, bytes]:
    """Open ``url`` in the page, wait, return the Bokeh data strings and a PNG screenshot."""
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(page_ws, max_message_size=256 * 2**20)
    counter = 0

    async def call(method: str, **params) -> dict:
        nonlocal counter
        counter += 1
        await ws.write_message(json.dumps({"id": counter, "method": method, "params": params}))
        while True:
            message = json.loads(await ws.read_message())
            if message.get("id") == counter:
                assert "error" not in message, message
                return message["result"]

    try:
        await call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait)
        found = await call("Runtime.evaluate", expression=BOKEH_STRINGS, returnByValue=True)
        shot = await call("Page.captureScreenshot", format="png")
    finally:
        ws.close()
        with contextlib.suppress(TimeoutError):  # let the closing handshake close the socket
            while await asyncio.wait_for(ws.read_message(), 5) is not None:
                pass
    return found["result"].get("value", ""), base64.b64decode(shot["data"])


@pytest.mark.slow
def test_dashboard_shows_stage_names_in_chromium(tiny_published, tmp_path, capsys):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    from distributed import Client, LocalCluster

    import bonemet_dask as bm

    store = str(tiny_published / "published.zarr")
    profile = tmp_path / "chromium"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-proxy-server", "--hide-scrollbars", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
    ]  # fmt: skip
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        # the dashboard listens on 127.0.0.1; the link may name the host's address
        base = f"http://127.0.0.1:{urlsplit(client.dashboard_link).port}"
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            active = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (active.exists() and len(active.read_text().split()) >= 2):
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.1)
            port = active.read_text().split()[0]
            with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.load(response)
            page_ws = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            for page in PAGES.values():  # the user opens the dashboard, then runs
                asyncio.run(visit(page_ws, f"{base}/{page}", wait=2))
            bm.reconstruct_store(store, out=str(tmp_path / "recon.zarr"))
            bm.segment_store(store, out=str(tmp_path / "seg.zarr"))
            ARTIFACTS.mkdir(exist_ok=True)
            for label, page in PAGES.items():
                text, png = asyncio.run(visit(page_ws, f"{base}/{page}", wait=5))
                shot = ARTIFACTS / f"dashboard-{label}.png"
                shot.write_bytes(png)
                with capsys.disabled():
                    print(f"\ndashboard screenshot: {shot}")
                missing = [name for name in STAGE_TASKS if name not in text]
                assert not missing, f"{base}/{page} does not name {missing}: {text[:500]}"
                assert len(png) > 10_000
        finally:
            process.terminate()
            process.wait(timeout=30)
