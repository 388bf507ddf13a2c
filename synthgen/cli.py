"""What the command-line tools share: help that shows every option's default."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's layout; append ``(default: ...)`` to each option's help unless the help already
    names its default, the option is a flag, or the default is None (unset: the help says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"
