"""Untrusted text (file names, user names) on the terminal, shown exactly as it is.

A file name is data, not formatting: Rich would read ``[red]`` or ``[/]`` in it as markup (a
stray closing tag raised ``MarkupError`` and ``ingest`` ended with a traceback after its rows
were committed), and an ANSI escape sequence in it would reach the terminal raw (recolouring
or rewriting what the admin sees). ``printable`` escapes control characters the way Python's
``repr`` does; ``plain`` wraps the result in a ``rich.text.Text``, which Rich never parses
as markup.
"""

from __future__ import annotations

import unicodedata

from rich.text import Text


def printable(value: object) -> str:
    """``value`` as text with every control or format character shown as an escape
    (``\\x1b``, ``\\n``, ``\\u202e``...), so it prints on one line exactly as stored."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or unicodedata.category(ch) == "Zs"
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def plain(value: object, style: str = "") -> Text:
    """A Rich ``Text`` of ``printable(value)``: safe in tables and ``console.print``."""
    return Text(printable(value), style=style)
