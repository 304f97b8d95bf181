"""Warm a new worker process up before its first task: imports and the numba cache loaded.

A worker's first conversion task used to pay for importing zarr and the codecs and for loading
the compiled PNG unfilter from numba's cache (0.3 s by itself), on top of its own work. The
first conversion on a fresh cluster took 1.5x as long as the next
(``benchmarks/suite.py --stages convert``). :class:`WarmUp`, which ``connect()`` registers,
imports that path as a worker starts and loads the numba cache in a background thread. It
never fails a worker: a warm-up that raises is logged and forgotten.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

logger = logging.getLogger(__name__)

PLUGIN_NAME = "bonemet-warm-up"


def _import_conversion() -> None:
    """Import the conversion path (in the worker's own thread: see :class:`WarmUp`)."""
    import imagecodecs  # noqa: F401
    import zarr  # noqa: F401

    from bonemet_dask.io import store  # noqa: F401
    from bonemet_dask.kernels import png_decode, slab  # noqa: F401


def warm_conversion() -> float:
    """Run the conversion kernels once on tiny inputs (numba's cache loaded); return seconds."""
    started = time.perf_counter()
    import imagecodecs
    import numpy as np

    from bonemet_dask.kernels.png_decode import decode_png
    from bonemet_dask.kernels.slab import slab_digests

    for dtype in (np.uint8, np.uint16):  # both unfilter specialisations
        image = (np.arange(64 * 64).reshape(64, 64) % 251).astype(dtype)
        decode_png(imagecodecs.png_encode(image, level=6))
    slab_digests(np.zeros((2, 8, 8), np.uint8))
    return time.perf_counter() - started


class WarmUp(WorkerPlugin):
    """A ``distributed`` worker plugin that runs :func:`warm_conversion` in the background.

    Attributes
    ----------
    done : threading.Event
        Set when the warm-up has finished (or failed), on the worker's copy of the plugin.
    seconds : float or None
        How long it took.
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.done = threading.Event()
        self.seconds: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def setup(self, worker: Any) -> None:
        """Import the conversion path here, then load numba's cache in a background thread.

        The imports happen in this call, not in the thread: a package imported by two threads
        at once can be seen half-initialised (zarr raised ``ImportError: cannot import name
        'DEFAULT_FILL_VALUE' from partially initialized module`` in a task that unpickled while
        the thread imported). Numba's cache loads under its own compiler lock, so the thread
        may overlap a first task.
        """
        try:
            _import_conversion()
        except Exception:  # an optimisation: never a reason for a worker not to start
            logger.warning("worker warm-up imports failed", exc_info=True)
            self.done.set()
            return
        threading.Thread(target=self._run, name=PLUGIN_NAME, daemon=True).start()

    def _run(self) -> None:
        try:
            self.seconds = warm_conversion()
            logger.debug("worker warmed up in %.2f s", self.seconds)
        except Exception:  # a warm-up is an optimisation: it must never break a worker
            logger.warning("worker warm-up failed; the first task pays for it", exc_info=True)
        finally:
            self.done.set()

    def teardown(self, worker: Any) -> None:
        """Nothing to release: the thread is a daemon and ends by itself."""
