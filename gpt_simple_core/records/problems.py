"""A structural problem of an input: where it is and what is wrong."""

from __future__ import annotations

import attrs


@attrs.frozen
class Problem:
    """``line`` is 1-based (None for problems not tied to a line); ``field`` is a dotted path."""

    line: int | None
    field: str
    message: str

    def render(self, source: str) -> str:
        """``file:line: field: message``, the form editors and terminals link to."""
        where = f"{source}:{self.line}" if self.line is not None else source
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
