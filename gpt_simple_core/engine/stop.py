"""Stopping a run early, at a safe point, within a bounded time.

A :class:`Stop` is asked to stop (by a signal handler the CLI installs, or by a deadline such
as ``--max-runtime``). What happens next depends on the phase the run is in:

* decoding or writing: nothing is interrupted; the scheduler checks the flag between decode
  steps (a step is one forward call), so records being written stay whole lines and the run
  stops within one step. Rows in flight are dropped: a resumed run starts them again;
* loading a model or exporting one (:meth:`Stop.interruptible`): these can take minutes and
  hold nothing worth keeping, so :class:`StopRequested` is raised at once, from the handler;
* a second request raises at once whatever the phase: the user insists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequested(BaseException):
    """Unwinds a run that was asked to stop. A ``BaseException`` (like ``KeyboardInterrupt``):
    it usually surfaces inside a backend's call, and no per-record ``except Exception`` may
    turn it into a record error and carry on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stop:
    """Whether a run should stop, and why (``SIGTERM``, ``SIGINT``, ``SIGUSR1``,
    ``max-runtime``). ``deadline`` is a ``time.monotonic()`` value or ``None``."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.reason: str | None = None
        self._interruptible = 0

    def request(self, reason: str) -> None:
        """Ask to stop; raises :class:`StopRequested` at once when the run is in an
        interruptible phase or was asked before (called from signal handlers)."""
        again = self.reason is not None
        self.reason = self.reason or reason
        if again or self._interruptible:
            raise StopRequested(self.reason)

    @property
    def requested(self) -> bool:
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.reason = "max-runtime"
        return self.reason is not None

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for (or the deadline passed)."""
        if self.requested:
            assert self.reason is not None
            raise StopRequested(self.reason)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A phase a stop may cut short (loading, exporting): checked on entry, and a request
        arriving inside raises at once."""
        self.check()
        self._interruptible += 1
        try:
            yield
        finally:
            self._interruptible -= 1
