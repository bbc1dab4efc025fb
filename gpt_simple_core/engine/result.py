"""What a run did: the value :meth:`gpt_simple_core.session.Session.run` returns."""

from __future__ import annotations

import attrs


@attrs.frozen
class RunResult:
    """What a run did: records written (completions and errors), how many failed, tokens
    generated, and why it stopped early (``None``: it ran to the end)."""

    records: int
    written: int
    failed: int
    tokens: int
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return self.stopped is None and self.written == self.records
