"""The errors a user can fix, shown as one clear message (never a traceback), and exit codes."""

from __future__ import annotations

from gradsweep.checkpoint import CheckpointError
from gradsweep.data import DataError
from gradsweep.skips import ShapeMismatchError
from gradsweep.sweep_definition import SweepError
from gradsweep.validate import ConfigError

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
