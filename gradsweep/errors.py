"""The errors a user can fix: shown as one clear message, never as a traceback."""

from __future__ import annotations

from gradsweep.data import DataError
from gradsweep.skips import ShapeMismatchError
from gradsweep.validate import ConfigError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, ShapeMismatchError)
