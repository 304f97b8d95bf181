"""What a real viewer reads from one scan group: run by ``bench_viewer.py`` in the viewer's env.

Needs only the viewer (``ome-zarr`` or ``napari`` with ``napari-ome-zarr``), not bonemet-dask,
so it runs with whichever interpreter has them.  One case per process, so every count starts
clean.  The counts are the operating system's, whatever store class the client uses: chunk
files opened (Python's ``open`` audit events under the group; metadata documents, ``zarr.json``
and the Zarr v2 names clients probe for, excluded) and bytes
read (``rchar`` of ``/proc/self/io``: every ``read`` call of the process, so an upper bound).
The client is warmed up first on a throwaway copy of the group's metadata and coarsest level, so
lazy imports and shader builds do not count.  Prints one JSON line.

    python viewer_reads.py ome-zarr-coarsest GROUP
    xvfb-run -a python viewer_reads.py napari-3d GROUP --screenshot 3d.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

CASES = ("ome-zarr-coarsest", "ome-zarr-plane", "napari-3d", "napari-plane")


class Reads:
    """Chunk files opened under ``root`` and bytes read by the process, from a start point."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.files: list[str] = []
        self.counting = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if not self.counting or event != "open" or not isinstance(args[0], str | bytes):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        name = os.path.basename(path)
        metadata = name == "zarr.json" or name.startswith(".")  # v3 and v2 (probed) documents
        if path.startswith(self.root) and not metadata and os.path.isfile(path):
            self.files.append(os.path.relpath(path, self.root))

    @staticmethod
    def rchar() -> int:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))

    def start(self) -> None:
        self.files.clear()
        self.counting = True
        self._rchar = self.rchar()
        self._t = time.perf_counter()

    def stop(self) -> dict:
        seconds = time.perf_counter() - self._t
        self.counting = False
        read = self.rchar() - self._rchar
        distinct = sorted(set(self.files))
        return {"chunk_files": len(self.files), "distinct": len(distinct),
                "bytes_read": read, "seconds": round(seconds, 2),
                "files": distinct[:40]}  # fmt: skip


def warm_copy(group: str, into: str) -> str:
    """A throwaway copy of the group: every ``zarr.json``, and the coarsest level's chunks."""
    with open(os.path.join(group, "zarr.json")) as f:
        datasets = json.load(f)["attributes"]["ome"]["multiscales"][0]["datasets"]
    coarsest = datasets[-1]["path"]
    copy = os.path.join(into, os.path.basename(group.rstrip("/")))
    for folder, _, files in os.walk(group):
        rel = os.path.relpath(folder, group)
        if "zarr.json" in files:
            os.makedirs(os.path.join(copy, rel), exist_ok=True)
            shutil.copy(os.path.join(folder, "zarr.json"), os.path.join(copy, rel))
    shutil.copytree(os.path.join(group, coarsest, "c"), os.path.join(copy, coarsest, "c"))
    return copy


def _ome_zarr(group: str, case: str, reads: Reads) -> dict:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    def open_levels():
        nodes = list(Reader(parse_url(group))())
        return nodes[0].data

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports and dask
        nodes = list(Reader(parse_url(warm_copy(group, tmp)))())
        nodes[0].data[-1].compute()
    reads.start()
    levels = open_levels()
    if case == "ome-zarr-coarsest":
        shown = levels[-1].compute()
    else:
        shown = levels[0][levels[0].shape[0] // 2].compute()
    out = reads.stop()
    out.update(levels=[list(map(int, level.shape)) for level in levels], shown=list(shown.shape))
    return out


def _settle(viewer, layer, seconds: float = 120.0) -> None:
    """Let Qt run until the layer's data for the current view has loaded."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QApplication.processEvents()
        if getattr(layer, "loaded", True):
            break
        time.sleep(0.02)
    for _ in range(20):  # the draw after the load
        QApplication.processEvents()
        time.sleep(0.02)


def _napari(group: str, case: str, reads: Reads, screenshot: str | None) -> dict:
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1200, 900)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    if case == "napari-3d":
        viewer.dims.ndisplay = 3  # before the layer exists: napari renders 3D at the coarsest
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: lazy imports, shaders
        warm = viewer.open(warm_copy(group, tmp), plugin="napari-ome-zarr")
        _settle(viewer, warm[0])
        viewer.layers.clear()
    reads.start()
    layers = viewer.open(group, plugin="napari-ome-zarr")
    layer = layers[0]
    if case == "napari-3d":
        _settle(viewer, layer)
    else:
        _settle(viewer, layer)  # the opening view: the whole middle plane, a coarse level
        opening = reads.stop()
        opening_level = int(layer.data_level)
        reads.start()
        # one screen pixel per voxel at the plane's centre: napari shows level 0, the view only
        z, y, x = (n // 2 for n in layer.data[0].shape)
        viewer.dims.set_current_step(0, z)
        camera.center = (y * layer.scale[1], x * layer.scale[2])
        camera.zoom = 1.0 / layer.scale[1]
        _settle(viewer, layer)
    out = reads.stop()
    out.update(level=int(layer.data_level), levels=[list(map(int, d.shape)) for d in layer.data],
               layers=[type(lyr).__name__ for lyr in viewer.layers],
               canvas=list(viewer.window._qt_viewer.canvas.size))  # fmt: skip
    if case == "napari-plane":
        out.update(opening=opening, opening_level=opening_level)
        corners = layer.corner_pixels
        out["view_voxels"] = [int(b - a) for a, b in zip(corners[0], corners[1], strict=True)]
    if screenshot:
        viewer.screenshot(screenshot, canvas_only=True)
    viewer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=CASES)
    parser.add_argument("group", help="the scan's image group (a folder)")
    parser.add_argument("--screenshot", help="napari: save the canvas here")
    args = parser.parse_args()
    reads = Reads(args.group)
    if args.case.startswith("ome-zarr"):
        out = _ome_zarr(args.group, args.case, reads)
    else:
        out = _napari(args.group, args.case, reads, args.screenshot)
    print(json.dumps({"case": args.case, **out}))


if __name__ == "__main__":
    main()
