"""Executors: where a run's groups execute. The session hands one the resolved groups and the
sink; it returns what ran.

* :class:`LocalExecutor`: this process, one group (one model in memory) at a time;
* :class:`~gpt_simple_core.engine.ray_executor.RayExecutor`: a Ray cluster, one actor per
  group, records streamed back to the same sink.

Whatever runs the groups, the records reach the core's sink in this process: the ordered
writer, its spool and the resume manifest are the same for every executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gpt_simple_core.engine.groups import GroupRun
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.output.sinks import Sink
from gpt_simple_core.settings import RunOptions


class Executor(Protocol):
    def run(
        self,
        runs: Sequence[GroupRun],
        sink: Sink,
        options: RunOptions,
        *,
        progress: Progress,
        stop: Stop | None,
    ) -> RunResult:
        """Run every group of ``runs``, each finished record into ``sink``."""
        ...


class LocalExecutor:
    """Groups in plan order in this process, one model in memory at a time."""

    def run(
        self,
        runs: Sequence[GroupRun],
        sink: Sink,
        options: RunOptions,
        *,
        progress: Progress,
        stop: Stop | None,
    ) -> RunResult:
        from gpt_simple_core.engine.run import Engine  # numpy: imported when something runs

        total = sum(len(run.records) for run in runs)
        return Engine(sink, options, progress=progress, stop=stop).run(runs, total)
