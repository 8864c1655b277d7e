"""The W&B writer process, seen from the training process: start it, talk to it, end it.

`prestart` launches the writer early, so that its import of wandb overlaps the caller's import
of torch; the next `start_tracking` takes it (`take_writer`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

# Bytes of rows the socket holds before `log` waits for the writer: ~1,000 rows of a 20-layer
# MLP, so a writer that falls behind for a while (a busy machine) does not stall training.
_SEND_BUFFER = 4 << 20
WRITER_MODULE = "gradsweep.tracking.wandb_writer"


class WriterProcess:
    """A running `python -m gradsweep.tracking.wandb_writer` and the socket to it."""

    def __init__(self, niceness: int = 0) -> None:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        # The writer takes rows in bursts; a byte here wakes it for a call that waits for it.
        self._bell, bell_theirs = socket.socketpair()
        self._bell.setblocking(False)
        # The package's own folder first on the path: the writer imports the same gradsweep.
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        fds = (theirs.fileno(), bell_theirs.fileno())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                WRITER_MODULE,
                *map(str, fds),
                str(niceness),
            ],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        theirs.close()
        bell_theirs.close()
        self.niceness = niceness
        self._conn = Connection(ours.detach())
        # Registered once: a poll(0) on it costs a few microseconds, Connection.poll() tens.
        self._poller = select.poll()
        self._poller.register(self._conn.fileno(), select.POLLIN)

    def send(self, message: tuple, wake: bool = False) -> None:
        """Send `message`; `wake` when the caller is about to wait for the writer's reply."""
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            if wake:
                with contextlib.suppress(BlockingIOError):  # full: it rings already
                    self._bell.send(b"!")
        except OSError as error:  # BrokenPipeError, ConnectionResetError
            raise self.died() from error

    def receive(self) -> tuple:
        try:
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as error:
            raise self.died() from error

    def has_message(self) -> bool:
        return bool(self._poller.poll(0))

    def died(self) -> RuntimeError:
        return RuntimeError(
            f"the W&B writer process exited with code {self.process.wait()}; "
            "its error, if any, is printed above"
        )

    def close(self) -> None:
        """Hang up and wait for the writer to exit (it finishes its run first)."""
        self._conn.close()
        self._bell.close()
        self.process.wait()


# A writer started by `prestart_writer`, waiting for the next `take_writer`.
_prestarted: WriterProcess | None = None


def prestart_writer(niceness: int) -> None:
    """Start a writer now, for the next `take_writer` to use."""
    global _prestarted
    if _prestarted is None:
        _prestarted = WriterProcess(niceness)


def take_writer(niceness: int) -> WriterProcess:
    """The prestarted writer if it is alive and at this niceness, else a new one."""
    global _prestarted
    writer, _prestarted = _prestarted, None
    if writer is not None and writer.niceness == niceness and writer.process.poll() is None:
        return writer
    if writer is not None:
        writer.close()
    return WriterProcess(niceness)
