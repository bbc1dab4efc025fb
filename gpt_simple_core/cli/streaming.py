"""``generate --stream``: completions printed on stdout as they are decoded, as HipGPT does.

The engine calls :meth:`StreamPrinter.on_token` after every token with the text that token
adds (whole characters only; text that could be the start of a stop string is held back until
it is known not to be one: :meth:`TokenSequence.stream_piece
<gpt_simple_core.engine.token_sequence.TokenSequence.stream_piece>`), and
:meth:`StreamPrinter.put` when a record is finished. Each completion is printed on its own
line, in input order: several prompts decode side by side, so the text of the records after
the one being shown waits until it is their turn (one prompt, the usual case, just streams).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gpt_simple_core.engine.token_sequence import TokenSequence


class StreamPrinter:
    """Prints each completion as it is decoded, then a newline (a
    :class:`~gpt_simple_core.engine.token_sequence.TokenSink`).

    ``delay_ms`` pauses after each piece shown live (HipGPT's ``--delay_ms``: a readable
    pace for demonstrations). A record that fails ends its line if it had printed anything;
    its error is logged on stderr as for any run.
    """

    def __init__(self, out: TextIO | None = None, *, delay_ms: float = 0.0) -> None:
        self.out = out or sys.stdout
        self.delay = max(delay_ms, 0.0) / 1000
        self.current: int | None = None  # the record being shown live
        self.waiting: dict[int, list[str]] = {}  # text of records whose turn has not come
        self.finished: set[int] = set()  # records among the waiting that are finished
        self.at_line_start = True

    # The engine's calls ------------------------------------------------------------------
    def on_token(self, seq: TokenSequence, piece: str) -> None:
        index = seq.index
        if self.current is None and index not in self.waiting:
            self.current = index
        if index == self.current:
            if piece:
                self._write(piece)
                if self.delay:
                    time.sleep(self.delay)
        else:
            self.waiting.setdefault(index, []).append(piece)

    def put(self, index: int, record: dict[str, Any]) -> None:
        """Record ``index`` is finished (its completion or its error)."""
        if index == self.current:
            self._end_line(failed="error" in record)
            self.current = None
            self._next()
        elif "error" in record and not self.waiting.get(index):
            self.waiting.pop(index, None)  # failed before printing anything: nothing to show
        else:
            self.waiting.setdefault(index, [])
            self.finished.add(index)
            if self.current is None:
                self._next()

    def close(self) -> None:
        """End the line a stopped run left unfinished (Ctrl-C): the shell prompt starts on a
        line of its own. Records still waiting were not finished: nothing more is shown."""
        if not self.at_line_start:
            self._write("\n")
        self.current = None
        self.waiting.clear()
        self.finished.clear()

    # Inside ------------------------------------------------------------------------------
    def _next(self) -> None:
        """Give the turn to the first waiting record: print what it has so far; if it is
        finished already, end its line and go on."""
        while self.waiting:
            index = min(self.waiting)
            self._write("".join(self.waiting.pop(index)))
            if index not in self.finished:
                self.current = index
                return
            self.finished.discard(index)
            self._end_line(failed=False)

    def _end_line(self, *, failed: bool) -> None:
        if not failed or not self.at_line_start:
            self._write("\n")
            self.at_line_start = True

    def _write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self.at_line_start = text.endswith("\n")
