"""Stop requests (SIGTERM, SLURM preemption) turned into a checkpoint at a step boundary.

A handler that saved a checkpoint in the middle of a backward pass would save a
half-updated model, so the handler only records the request; the training loop checks
it after each step, saves, and then hands over to whoever handled the signal before
(submitit's own handler requeues the job on SLURM: we chain to it, never replace it).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, and the signal submitit uses for preemption (SIGUSR2 unless overridden)."""
    signals = [signal.SIGTERM]
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "SIGUSR2")
    preempt = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if preempt is not None and preempt not in signals:
        signals.append(preempt)
    return signals


class StopRequest:
    """Records stop signals while installed; `handover()` passes one on after a checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._frame: FrameType | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in stop_signals():
            try:
                self._previous[sig] = signal.signal(sig, self._record)
            except ValueError:  # not the main thread (e.g. a joblib worker thread)
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum, self._frame = signum, frame

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handover(self) -> None:
        """After the checkpoint: run the previous handler, or exit as the signal would."""
        assert self.signum is not None
        previous = self._previous.get(self.signum)
        self.__exit__()
        if callable(previous):
            handler: Callable[[int, FrameType | None], Any] = previous
            handler(self.signum, self._frame)
        if previous != signal.SIG_IGN:
            sys.exit(128 + self.signum)
