"""Counted nouns in messages: "1 record", "2 records", never "1 records" or "record(s)".

Messages are read by people first; a count with the wrong number reads as a bug, and "(s)"
makes every message a little harder to read. Every message that counts goes through
:func:`plural`.
"""

from __future__ import annotations

#: Nouns whose plural is not the singular + "s".
IRREGULAR = {"entry": "entries", "was": "were", "is": "are"}


def noun(count: int, singular: str, plural_form: str | None = None) -> str:
    """The form of ``singular`` that goes with ``count`` (without the number)."""
    if count == 1:
        return singular
    return plural_form or IRREGULAR.get(singular, singular + "s")


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` and the noun in the form that goes with it: ``plural(1, "record")`` is
    ``"1 record"``, ``plural(3, "record")`` is ``"3 records"``."""
    return f"{count} {noun(count, singular, plural_form)}"
