"""A copy of this process's console for W&B's Logs tab.

The wandb run lives in the writer process, so wandb's own console capture would record the
writer's output, not the training job's. `ConsoleTee` copies every write to this process's
`sys.stdout` and `sys.stderr` to a callback (the tracker sends it to the writer, which hands it
to the run as wandb's capture would). It patches the `write` method of the stream objects
themselves, as wandb's `console="wrap"` does, rather than replacing `sys.stderr`: logging
handlers hold the object they were given (Hydra's console handler took `sys.stderr` at start),
so their lines are copied too. Output written below Python (a C library writing to fd 2) is not.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO


class ConsoleTee:
    """Copies writes to sys.stdout and sys.stderr to `send(stream_name, text)` while installed.

    The console itself is untouched: text is written first, then copied. A `send` that raises
    uninstalls the tee (the training goes on; the Logs tab stops there), and a write made while
    `send` runs (its own error messages) is not copied again.
    """

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self._send = send
        self._patched: list[tuple[TextIO, Any, Any]] = []  # stream, its write before, ours
        self._sending = threading.local()

    def install(self) -> None:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            before = stream.__dict__.get("write") if hasattr(stream, "__dict__") else None
            ours = self._wrap(name, stream.write)
            try:
                stream.write = ours
            except (AttributeError, TypeError):  # a stream whose write cannot be replaced
                continue
            self._patched.append((stream, before, ours))

    def uninstall(self) -> None:
        """Restore each stream's write, unless something patched it after us (then only stop
        copying: the later patch calls ours, which now passes text through)."""
        patched, self._patched = self._patched, []
        for stream, before, ours in reversed(patched):
            if stream.__dict__.get("write") is not ours:
                continue
            if before is None:
                del stream.write  # back to the class's own method
            else:
                stream.write = before

    def _wrap(self, name: str, write: Callable[[str], int]) -> Callable[[str], int]:
        def tee(text: str) -> int:
            written = write(text)
            if self._patched and text and not getattr(self._sending, "active", False):
                self._copy(name, text)
            return written

        return tee

    def _copy(self, name: str, text: str) -> None:
        self._sending.active = True
        try:
            self._send(name, text)
        except Exception:
            self.uninstall()
        finally:
            self._sending.active = False
