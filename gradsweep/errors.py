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


def hydra_user_errors() -> tuple[type[Exception], ...]:
    """Hydra's errors for a command line it cannot compose, bad input like USER_ERRORS: an
    unknown option (`activation=gelx`) or key (`trainer.max_stepz=3`), a malformed override, a
    missing `--config-dir`. A function, read when an error is matched against it, so that
    importing this module imports no Hydra."""
    from hydra.errors import (
        ConfigCompositionException,
        OverrideParseException,
        SearchPathException,
    )

    return (ConfigCompositionException, OverrideParseException, SearchPathException)


# Exit codes of `python train.py` run alone (a multirun records them per job instead); a command
# line Hydra cannot compose exits EXIT_USER_ERROR, multirun too, before any job runs.
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
