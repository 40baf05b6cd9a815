"""How a jaxnets error message quotes another exception: its type and first line, cut to one length.

    >>> describe(OSError("disk full\\nwhile writing x"))
    'OSError: disk full'
"""

from __future__ import annotations

#: The most characters of another exception's message that a jaxnets message quotes.
QUOTE_LIMIT = 300


def first_line(err: BaseException | str, limit: int = QUOTE_LIMIT) -> str:
    """The first non-blank line of `str(err)`, at most `limit` characters; '' for an empty message."""
    lines = str(err).strip().splitlines()
    return lines[0].strip()[:limit] if lines else ""


def describe(err: BaseException, limit: int = QUOTE_LIMIT) -> str:
    """`'TypeName: first line'` of `err` (`first_line`), or `'TypeName'` when its message is empty."""
    line = first_line(err, limit)
    return f"{type(err).__name__}: {line}" if line else type(err).__name__
