"""The errors a user can fix, shown as one clear message (never a traceback), and exit codes."""

from __future__ import annotations

from gradsweep.data.load import DataError
from gradsweep.fixes.skips import ShapeMismatchError
from gradsweep.run.checkpoint import CheckpointError
from gradsweep.run.validate import ConfigError
from gradsweep.sweeps.definition import SweepError

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
