"""What the command-line tools share: help that shows every option's default, and one way of answering errors.

Every entry point (``train/run.py``, ``train/predict.py``, ``train/evaluate.py``, ``python -m synthgen.data``,
``synthgen.preview``, ``synthgen.sample``) runs its ``main`` through :func:`cli_main`: bad input is one line
``error: <file or argument>: <problem and what to do>`` and exit status 2 (:data:`INPUT_ERRORS`), any other failure
one line and exit status 1; no traceback unless ``--debug`` is given or ``SYNTHGEN_DEBUG=1`` is set.

Exit statuses: 0 done; 1 some cases of a batch failed (each named, the others done), or an internal error;
2 usage or input error (nothing was done); 128 + N stopped by signal N after saving its work (training).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2
DEBUG_ENV = "SYNTHGEN_DEBUG"
# a problem with what the user gave (files, folders, arguments): exit status 2
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                FileExistsError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the description's layout; append ``(default: ...)`` to each option's help unless the help already
    names its default, the option is a flag, or the default is None (unset: the help says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


def add_debug(parser: argparse.ArgumentParser) -> None:
    """The ``--debug`` flag every command line has (read by :func:`cli_main`)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show the Python traceback of an error (also: {DEBUG_ENV}=1)")


def crop_size(values) -> tuple:
    """A crop ``(D, H, W)`` from ``N``, ``D,H,W`` (or ``DxHxW``) or three separate values, as every command line that
    has a ``--crop`` takes it.

    Raises:
        ValueError: not one or three positive ints.
    """
    values = [values] if isinstance(values, str) else list(values)
    try:
        sizes = [int(v) for text in values for v in str(text).replace("x", ",").split(",") if v]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 3
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"must be N, D,H,W or D H W (positive ints), got {' '.join(map(str, values))!r}")
    return tuple(sizes)


class _CropAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, crop_size(values))
        except ValueError as err:
            parser.error(f"{option_string} {err}")


def add_crop(parser: argparse.ArgumentParser, help: str, default=None) -> None:
    """The ``--crop`` option: N, D,H,W or D H W voxels (:func:`crop_size`)."""
    parser.add_argument("--crop", nargs="+", action=_CropAction, default=default, metavar="N|D,H,W", help=help)


class _Deprecated(argparse.Action):
    """An old spelling of an option, kept for one release: it still works and says what replaces it."""

    def __init__(self, option_strings, dest, replacement: str, **kwargs):
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and will be removed in the next release: use "
              f"{self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated(parser: argparse.ArgumentParser, option: str, replacement: str, dest: str,
                   flag: bool = False, **kwargs) -> None:
    """Accept ``option``, the old spelling of ``replacement``, for one release: it sets ``dest`` (to True for a
    ``flag``) and prints a warning line naming ``replacement``."""
    if flag:
        kwargs.update(nargs=0, const=True)
    parser.add_argument(option, action=_Deprecated, replacement=replacement, dest=dest,
                        help=f"deprecated, use {replacement}", **kwargs)


def debugging(argv) -> bool:
    """``--debug`` among the arguments or ``SYNTHGEN_DEBUG`` set to anything but "" / "0"."""
    return "--debug" in (argv or ()) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def error_line(err: BaseException) -> str:
    """The one line an error is answered with."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, INPUT_ERRORS):      # an OSError's text names its file
        return f"error: {text}"
    if isinstance(err, MemoryError):
        return ("error: out of memory (MemoryError): use smaller inputs, a coarser --voxel-size or a smaller crop; "
                f"{DEBUG_ENV}=1 shows where")
    return f"error: {type(err).__name__}: {text} (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"


def report(line: str) -> None:
    """Print a ``warning: ...`` / ``error: ...`` line on stderr on a line of its own, above any progress bar that is
    running (``tqdm.write`` clears the bar, prints, redraws it), never glued to the bar's line."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)


def cli_main(fn):
    """Wrap a command line's ``main(argv) -> int``: errors become one line on stderr and an exit status (2 for
    :data:`INPUT_ERRORS`, 1 otherwise, 130 for Ctrl-C); ``--debug`` / ``SYNTHGEN_DEBUG=1`` re-raise instead."""
    @functools.wraps(fn)
    def main(argv=None) -> int:
        args = list(sys.argv[1:] if argv is None else argv)
        try:
            return fn(args)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            if debugging(args):
                raise
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
            return 128 + 2
        except Exception as err:   # noqa: BLE001 -- every error gets one line; --debug shows the traceback
            if debugging(args):
                raise
            print(error_line(err), file=sys.stderr)
            return EXIT_INPUT if isinstance(err, INPUT_ERRORS) else EXIT_FAILED
    return main
