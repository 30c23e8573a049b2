"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (recipe, files, flags). ``str(err)`` is the message;
    it may hold several lines, one problem each."""

    exit_code = 2


class PluginError(UserError):
    """A plugin that cannot be registered or found."""
