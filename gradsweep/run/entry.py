"""What `train.py` wraps around its `@hydra.main`: the exit code of a command line Hydra cannot
compose (`activation=gelx`, `trainer.max_stepz=3`, a malformed override) is gradsweep's
EXIT_USER_ERROR (2), as for any bad input, with Hydra's own message, which lists the options.

Hydra reports such an error itself and exits 1, the code of a crash. It calls `sys.exit(1)`
while it handles the error, so the SystemExit carries that error as its `__context__`: that,
and not the text on stderr, tells bad input from a crash. The error reaches this code as it is
where Hydra does not report it (`--help` with a bad override, or HYDRA_FULL_ERROR=1, which
keeps the full traceback).

Imports no torch: `python train.py --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from gradsweep.errors import EXIT_USER_ERROR, hydra_user_errors


@contextmanager
def user_error_on_bad_overrides() -> Iterator[None]:
    """Exit EXIT_USER_ERROR where Hydra fails to compose the config; any other exit as it is."""
    try:
        yield
    except SystemExit as stop:
        # Hydra reported the error, then exited 1. The run's own exits (2, 3, a crash's 1) carry
        # an error of the run, or none, as their context.
        if stop.code == 1 and isinstance(stop.__context__, hydra_user_errors()):
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
    except hydra_user_errors() as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        else:  # as Hydra reports it: its message, and the OmegaConf error beneath if any
            print(error, file=sys.stderr)
            if error.__cause__ is not None:
                print(error.__cause__, file=sys.stderr)
            hint = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."
            print(f"\n{hint}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
