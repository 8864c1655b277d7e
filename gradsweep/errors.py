"""The errors a user can fix, shown as one clear message (never a traceback), and exit codes.

Every class lives here, so that any module, however light, can raise one: this module imports
nothing of gradsweep.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that makes no sense; the message names the fix."""


class DataError(Exception):
    """A dataset that cannot be loaded, with a message naming the fix."""


class ShapeMismatchError(ValueError):
    """A shortcut whose output shape differs from its block's: never broadcast silently."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed, with what to do about it."""


class SweepError(ValueError):
    """A sweep definition or sweep folder the user must fix; the message says how."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    ShapeMismatchError,
    CheckpointError,
    SweepError,
)

# Exit codes of `python train.py` run alone (a multirun records them per job instead).
EXIT_USER_ERROR = 2  # bad config, missing data, foreign checkpoint: the message says what to do
EXIT_NON_FINITE = 3  # the loss or a gradient became NaN/inf; summary.json says at which step


def first_line(error: BaseException, *, with_type: bool = False) -> str:
    """The first line of an error's message, for a one-line report of it: its type's name when
    it has no message; `with_type` puts the type first ("OSError: [Errno 28] No space left")."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if with_type:
        return f"{type(error).__name__}: {line}".rstrip(": ")
    return line or type(error).__name__
