"""Scheduler-side measurements of a run: how many tasks the scheduler holds, and graph sizes.

``run`` keeps the scheduler's load bounded by its concurrency (DESIGN.md section 7); these are
what checks it on a real cluster::

    client.register_plugin(TaskPeak())
    bm.run(...)
    peak, largest = client.run_on_scheduler(task_peak)
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["TaskPeak", "task_peak"]


class TaskPeak(SchedulerPlugin):
    """Records the most tasks the scheduler held at once and the largest graph one call sent."""

    name = "bonemet-task-peak"

    def __init__(self) -> None:
        self.peak = 0
        self.largest_graph = 0
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        """Remember the scheduler whose tasks are counted."""
        self.scheduler = scheduler

    def update_graph(self, scheduler: Any, *, keys: Any, tasks: Any = (), **kwargs: Any) -> None:
        """A client sent a graph: keep the largest size."""
        self.largest_graph = max(self.largest_graph, len(tasks))

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """After every task transition: keep the largest number of tasks held."""
        self.peak = max(self.peak, len(self.scheduler.tasks))


def task_peak(dask_scheduler: Any = None, *, reset: bool = True) -> tuple[int, int]:
    """The ``(peak tasks held, largest graph)`` that :class:`TaskPeak` recorded.

    Pass it to ``client.run_on_scheduler``; ``reset`` starts a new measurement.
    """
    plugin = dask_scheduler.plugins[TaskPeak.name]
    state = (plugin.peak, plugin.largest_graph)
    if reset:
        plugin.peak = plugin.largest_graph = 0
    return state
