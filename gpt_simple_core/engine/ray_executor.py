"""Running a sweep's groups on a Ray cluster: one actor per model group, records streamed back.

Each group (one model load) becomes a :class:`GroupWorker` actor, which loads the model once
and decodes the group's records with the same engine as a local run, yielding each finished
record as it is done (a Ray streaming generator). Ray places the actors on the cluster's nodes
by the resources they ask for: ``num_cpus`` from ``--threads`` (default 1), one GPU when the
group runs on ``cuda``. The driver (this process) writes what comes back through the core's
sink: the ordered writer, its spool and the resume manifest, exactly as for a local run.

When an actor dies (its node fails, it is killed), Ray restarts it and runs its task again
(``max_restarts``, ``max_task_retries``): the model loads again and the group decodes again.
Records that had already arrived are then sent twice; the driver keeps the first of each and
drops the copies, so nothing is duplicated, and records are seeded, so the copies are equal.

Ray is the ``[ray]`` extra, imported only when this executor runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from gpt_simple_core.engine.groups import GroupRun
from gpt_simple_core.engine.result import RunResult
from gpt_simple_core.engine.stop import Stop
from gpt_simple_core.errors import BackendError
from gpt_simple_core.install import install_command
from gpt_simple_core.output.progress import Progress
from gpt_simple_core.output.sinks import Sink
from gpt_simple_core.settings import RunOptions

log = structlog.get_logger(__name__)

#: How often an actor may be restarted, and its task retried, when its process dies.
RETRIES = 2
#: Seconds between checks for a stop request while waiting for records.
POLL_SECONDS = 0.2
_DONE = object()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BackendError(
            f"--executor ray needs Ray, which is not installed "
            f"({install_command('gpt-simple-inference', 'ray')})"
        ) from None
    return ray


class _QueueSink:
    """The actor side of a sink: each record goes into a queue the generator drains."""

    def __init__(self, items: queue.Queue) -> None:
        self.items = items

    def put(self, index: int, record: dict[str, Any]) -> None:
        self.items.put((index, record))


def decode_group(run: GroupRun, options: RunOptions) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, output record) of every record of ``run``, as each finishes: the engine runs
    in a thread, so records can be yielded while it decodes."""
    from gpt_simple_core.engine.run import Engine

    items: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            Engine(_QueueSink(items), options).run_group(run)
        except BaseException as exc:  # re-raised in the generator, on the caller's side
            failure.append(exc)
        finally:
            items.put(_DONE)

    threading.Thread(target=work, daemon=True, name="gpt-simple-group").start()
    while (item := items.get()) is not _DONE:
        yield item
    if failure:
        raise failure[0]


class GroupWorker:
    """A Ray actor (wrapped by :func:`_actor_class`): one model group."""

    def decode(self, run: GroupRun, options: RunOptions) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from decode_group(run, options)

    def pid(self) -> int:
        import os

        return os.getpid()


class RayExecutor:
    """Runs groups as actors of the Ray cluster at ``address`` (``auto``: the one this
    machine belongs to, or ``RAY_ADDRESS``; ``ray://HOST:PORT``: a remote one through Ray
    Client; ``None``: start a local one for this run)."""

    def __init__(self, address: str | None = "auto", *, init_options: dict | None = None) -> None:
        self.address = address
        self.init_options = dict(init_options or {})
        self.actors: list[Any] = []

    def run(
        self,
        runs: Sequence[GroupRun],
        sink: Sink,
        options: RunOptions,
        *,
        progress: Progress,
        stop: Stop | None,
    ) -> RunResult:
        ray = _import_ray()
        stop = stop or Stop()
        total = sum(len(run.records) for run in runs)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, **self.init_options)
            except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
                where = self.address or "a new local cluster"
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                raise BackendError(f"cannot use the Ray cluster at {where}: {first}") from None
        worker = ray.remote(GroupWorker)
        items: queue.Queue = queue.Queue()
        threads = [self._start(ray, worker, run, options, items) for run in runs]
        seen: set[int] = set()
        failed = 0
        stopped = None
        finished = 0
        try:
            while finished < len(threads):
                if stop.requested:
                    stopped = stop.reason
                    break
                try:
                    item = items.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if item is _DONE:
                    finished += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                index, record = item
                if index in seen:
                    continue  # a retried actor sends again what had already arrived
                seen.add(index)
                sink.put(index, record)
                failed += "error" in record
                progress.add_tokens(record.get("meta", {}).get("completion_tokens", 0))
                progress.record_done("error" in record)
        finally:
            progress.close()
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors.clear()
        return RunResult(total, len(seen), failed, progress.tokens, stopped)

    def _start(
        self, ray: Any, worker: Any, run: GroupRun, options: RunOptions, items: queue.Queue
    ) -> threading.Thread:
        """One actor for ``run`` and a thread moving what it yields into ``items``."""
        resources = {"num_cpus": options.threads or run.request.threads or 1}
        if run.request.device.kind == "cuda":
            resources["num_gpus"] = 1
        actor = worker.options(max_restarts=RETRIES, max_task_retries=RETRIES, **resources).remote()
        self.actors.append(actor)
        log.info(
            "group sent to the cluster",
            checkpoint=str(run.group.info.path),
            records=len(run.records),
            **resources,
        )
        generator = actor.decode.options(num_returns="streaming").remote(run, options)

        def drain() -> None:
            try:
                for ref in generator:
                    items.put(ray.get(ref))
            except BaseException as exc:
                items.put(exc)
            finally:
                # An actor holds its CPUs (or GPU) while it lives: end it so the next group's
                # actor can be placed.
                ray.kill(actor, no_restart=True)
                items.put(_DONE)

        thread = threading.Thread(target=drain, daemon=True, name="gpt-simple-ray")
        thread.start()
        return thread
