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
import threading
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
        env = {**os.environ, "PYTHONPATH": path}
        # wandb records the program of the process that starts the run: name this one's.
        program = main_program()
        if program is not None:
            env.setdefault("WANDB_PROGRAM", program)
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
            env=env,
        )
        theirs.close()
        bell_theirs.close()
        self.niceness = niceness
        self._conn = Connection(ours.detach())
        # Registered once: a poll(0) on it costs a few microseconds, Connection.poll() tens.
        self._poller = select.poll()
        self._poller.register(self._conn.fileno(), select.POLLIN)
        # Rows come from the training thread, console text from any thread that prints.
        self._send_lock = threading.Lock()

    def send(self, message: tuple, wake: bool = False) -> None:
        """Send `message`; `wake` when the caller is about to wait for the writer's reply."""
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self._conn.send_bytes(payload)
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


# A writer started by `prestart_writer` (or handed back by `release_writer`), waiting for the
# next `take_writer`.
_prestarted: WriterProcess | None = None
# Whether a writer that has finished a run serves the next one (a warm sweep worker's runs, one
# after another): its wandb service stays up. Off: each run's writer ends with its run.
_reusing = False


def reuse_writers(enabled: bool) -> None:
    """Keep each run's writer for the next run of this process (on), or end it with its run
    and the one kept now (off)."""
    global _reusing, _prestarted
    _reusing = enabled
    if not enabled and _prestarted is not None:
        writer, _prestarted = _prestarted, None
        writer.close()


def reusing_writers() -> bool:
    return _reusing


def release_writer(writer: WriterProcess) -> None:
    """A writer whose run has finished: kept for the next `take_writer` when writers are reused
    and it is alive, else closed (it ends its wandb session and exits)."""
    global _prestarted
    if _reusing and _prestarted is None and writer.process.poll() is None:
        _prestarted = writer
    else:
        writer.close()


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


def main_program() -> str | None:
    """This process's program as wandb names a script's: `__main__`'s file, else `-m module`."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None):
        return main.__file__
    spec = getattr(main, "__spec__", None)
    return f"-m {spec.name}" if spec is not None else None
