"""Where a run's finished records go: anything with ``put(index, record)``.

The engine calls :meth:`Sink.put` once per record it finishes (a completion or an error), in
the order they finish; ``index`` is the record's 0-based position in the input. A sink decides
what order means: :class:`~gpt_simple_core.output.writer.OrderedWriter` writes JSONL in input
order with a spool, :class:`MemorySink` keeps records for the Python API.
"""

from __future__ import annotations

from typing import Any, Protocol


class Sink(Protocol):
    def put(self, index: int, record: dict[str, Any]) -> None:
        """Take the finished output record of input record ``index``."""
        ...


class MemorySink:
    """Records kept in memory, by input position (the Python API's sink)."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, Any]] = {}

    def put(self, index: int, record: dict[str, Any]) -> None:
        self.records[index] = record

    def in_order(self) -> list[dict[str, Any]]:
        return [self.records[index] for index in sorted(self.records)]
