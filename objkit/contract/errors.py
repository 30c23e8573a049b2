"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (recipe, files, flags). ``str(err)`` is the message;
    it may hold several lines, one problem each."""

    exit_code = 2


class PluginError(UserError):
    """A plugin that cannot be registered or found."""


# Characters str.splitlines() breaks on: a message keeps each problem on one line by escaping them.
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none: the reason
    part of a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(text: str) -> str:
    """``text`` with line-breaking characters escaped (user-supplied keys and values can hold them)."""
    return text.translate(str.maketrans(_LINE_BREAKS)) if any(c in text for c in _LINE_BREAKS) else text
