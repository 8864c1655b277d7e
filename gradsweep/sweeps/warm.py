"""Warm workers: long-lived processes that run a sweep's jobs one after another, in-process.

A fresh `python train.py` pays its start-up on every run: the interpreter, `import torch`,
Hydra, the W&B writer's import of wandb and its wandb service, the data from its cache. A
warm worker pays them once, then runs job after job, each still `train.py`'s own code with
its own arguments (`run.inprocess.run_program`): composed by Hydra, in its own folder, with
its own seeds, W&B run, summary.json, checkpoint and exit status. Between jobs the process is
put back as it was (`run.inprocess.ProcessState`); the loaded data and the W&B writer, whose
wandb service serves every run (each its own W&B run, finished before the next starts), are
kept on purpose.

    runner (WarmWorker)                         worker (python -m gradsweep.sweeps.warm)
                                                imports torch, Hydra, gradsweep; starts its
                                                W&B writer
                                                ("ready", pid)
    ("run", {program, args, console, env})      runs the job, its stdout/stderr appended to
                                                console; puts the process back
                                                ("done", {exit_code, rss_mb, leaks, retire})
    ("quit",) or hang up                        ends its W&B writer, exits

A worker retires (exits after its reply) after `runs_per_worker` jobs, or once its memory has
grown by `growth_mb` since its first job, or after a stop signal; the runner starts a new one.
A job that fails or goes NaN is an exit status like any other and the worker goes on; a worker
that dies (killed, out of memory) fails its job with its exit status, as a killed process's
run would, and is replaced. SIGTERM (and SLURM's preemption signal) stops the job in hand at
its next step with a checkpoint, exactly as for `python train.py`, and then the worker; an
idle worker exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# A worker retires after this many jobs (`--runs-per-worker`) ...
RUNS_PER_WORKER = 100
# ... or once its resident memory has grown this much (MiB) since the end of its first job.
GROWTH_MB = 1024.0
# Seconds a worker gets to end its W&B writer and exit when told to quit.
QUIT_GRACE_S = 60.0

WORKER_MODULE = "gradsweep.sweeps.warm"


def split_command(command: Sequence[str], interpreter: str) -> tuple[str, list[str]] | None:
    """(program, args) of `[/usr/bin/env] INTERPRETER PROGRAM.py ARGS...`, the command a
    sweep's `${env} ${interpreter} ${program} ${args...}` builds, which a warm worker runs
    in-process; None for any other shape (interpreter options, another launcher), which
    needs a process of its own. The program as `python` names `__main__.__file__`."""
    words = list(command)
    if words[:1] == ["/usr/bin/env"]:
        words = words[1:]
    pythons = {interpreter, "python", "python3", os.path.basename(interpreter)}
    if len(words) < 2 or words[0] not in pythons or not words[1].endswith(".py"):
        return None
    return os.path.join(os.getcwd(), words[1]), words[2:]


class WarmWorker:
    """The runner's handle on one warm worker process: one job at a time."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        program: str,
        runs_per_worker: int = RUNS_PER_WORKER,
        growth_mb: float = GROWTH_MB,
    ) -> None:
        ours, theirs = socket.socketpair()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    WORKER_MODULE,
                    str(theirs.fileno()),
                    program,
                    str(runs_per_worker),
                    str(growth_mb),
                ],
                pass_fds=(theirs.fileno(),),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        theirs.close()
        self.log_path = log_path
        self._conn = Connection(ours.detach())
        self._result: dict[str, Any] | None = None
        self.busy = False
        self.retiring = False
        self.jobs = 0

    @property
    def usable(self) -> bool:
        """Whether it can take a job now: alive, idle and not retiring."""
        return not self.busy and not self.retiring and self.process.poll() is None

    def submit(self, program: str, args: Sequence[str], console: Path, env=None) -> None:
        assert self.usable
        job = {"program": program, "args": list(args), "console": str(console), "env": env or {}}
        self._result, self.busy = None, True
        self.jobs += 1
        with contextlib.suppress(OSError):  # it died since: poll() reports its exit status
            self._conn.send(("run", job))

    def poll(self) -> dict[str, Any] | None:
        """The job's outcome once it is over ({"exit_code": ...}), else None. A worker that
        died with the job in hand fails it with its own exit status."""
        self._read()
        if self._result is not None:
            return self._result
        if self.busy and self.process.poll() is not None:
            self._read()  # its last words may have come just before it exited
            if self._result is None:
                self._result = {"exit_code": self.process.returncode, "died": True}
                self.retiring = True
            return self._result
        return None

    def _read(self) -> None:
        try:
            while self._conn.poll():
                kind, payload = self._conn.recv()
                if kind == "done":
                    self._result, self.busy = payload, False
                    self.retiring = self.retiring or bool(payload.get("retire"))
        except (EOFError, OSError):
            self.retiring = True

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def quit(self) -> None:
        """Tell it to quit: it ends its W&B writer, then exits."""
        with contextlib.suppress(OSError):
            self._conn.send(("quit", None))
        self._conn.close()

    def wait(self, grace_s: float = QUIT_GRACE_S) -> None:
        """Wait for it to exit; killed after grace_s."""
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _StopSignals:
    """SIGTERM and the preemption signal in the worker: idle, it exits at once; with a job in
    hand, the job's own handler (StopRequest, which chains to this one) checkpoints and stops
    it, and the worker exits after replying."""

    def __init__(self) -> None:
        self.busy = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        from gradsweep.signals import stop_signals

        for sig in stop_signals():
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if not self.busy:
            raise SystemExit(128 + signum)


class JobHost:
    """This process as a warm worker: started up once (`start_up`), then job after job, each
    followed by putting the process back as it was, and a word on whether to retire.

    Call from the main thread, which receives the stop signals."""

    def __init__(self, program: str, runs_per_worker: int, growth_mb: float) -> None:
        self.program = program
        self.runs_per_worker, self.growth_mb = runs_per_worker, growth_mb
        self.stop = _StopSignals()
        self.stop.install()
        self._environ = dict(os.environ)  # start_up's additions are undone by close()
        self.baseline = start_up(program)
        self.jobs = 0
        self.first_rss: float | None = None

    @property
    def stopping(self) -> bool:
        return self.stop.signum is not None

    def run(self, args: list[str], env: dict[str, str], console: str | None) -> dict[str, Any]:
        """Run `python PROGRAM ARGS` here with env added, its output appended to console (or
        left where this process's goes): {exit_code, rss_mb, leaks, retire}."""
        from gradsweep.run.inprocess import console_to, run_program

        self.stop.busy = True
        try:
            os.environ.update(env)
            output = console_to(Path(console)) if console else contextlib.nullcontext()
            with output:
                code = run_program(Path(self.program), args)
        except KeyboardInterrupt:  # Ctrl-C reached the whole sweep: the job is over
            code = 128 + signal.SIGINT
            self.stop.signum = signal.SIGINT
        leaks = self.baseline.restore()
        self.stop.busy = False
        self.jobs += 1
        rss = _rss_mb()
        self.first_rss = rss if self.first_rss is None else self.first_rss
        grown = rss - self.first_rss > self.growth_mb
        retire = self.jobs >= self.runs_per_worker or grown or self.stopping
        for leak in leaks:
            print(f"warm worker {os.getpid()}: job {self.jobs} left {leak}", file=sys.stderr)
        return {"exit_code": code, "rss_mb": round(rss, 1), "leaks": leaks, "retire": retire}

    def close(self) -> None:
        """End the kept W&B writer (its wandb session) and forget the kept data."""
        from gradsweep.data.load import keep_loaded_data
        from gradsweep.tracking.writer_process import reuse_writers

        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the writer ends in order
        try:
            reuse_writers(False)
            keep_loaded_data(False)
        finally:
            signal.signal(signal.SIGINT, previous)
            self.stop.uninstall()
            os.environ.clear()
            os.environ.update(self._environ)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # no /proc: never recycled for memory
        return 0.0


def start_up(program: str) -> Any:
    """What every job would import and start: torch (and torch._dynamo, which building an
    optimizer imports), Hydra, gradsweep's training; the data kept and the W&B writer reused
    from job to job, the writer started now. The process's state after it, for `restore`."""
    import torch
    import torch._dynamo
    from omegaconf import OmegaConf

    import gradsweep.run.training  # noqa: F401
    from gradsweep.config import find_conf_dir
    from gradsweep.data.load import keep_loaded_data
    from gradsweep.run.inprocess import ProcessState
    from gradsweep.tracking.tracker import prestart
    from gradsweep.tracking.writer_process import reuse_writers

    del torch
    # The W&B run's program is the job's, as `python train.py` has it, not this module.
    os.environ.setdefault("WANDB_PROGRAM", program)
    keep_loaded_data(True)
    reuse_writers(True)
    # At the default logger's niceness; a job asking for another gets a writer of its own.
    prestart(OmegaConf.load(find_conf_dir() / "logger" / "wandb.yaml"))
    return ProcessState.capture()


def serve(conn: Connection, program: str, runs_per_worker: int, growth_mb: float) -> int:
    """The runner's worker: jobs from conn until told to quit, retired or stopped."""
    host = None
    try:
        host = JobHost(program, runs_per_worker, growth_mb)
        conn.send(("ready", os.getpid()))
        while not host.stopping:
            try:
                kind, job = conn.recv()
            except EOFError:
                break
            if kind == "quit":
                break
            result = host.run(job["args"], job["env"], job["console"])
            with contextlib.suppress(OSError):
                conn.send(("done", result))
            if result["retire"]:
                break
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        if host is not None:
            host.close()
        conn.close()
    return 0 if host is None or not host.stopping else 128 + host.stop.signum


def main(argv: list[str]) -> int:
    fd, program, runs_per_worker, growth_mb = int(argv[1]), argv[2], int(argv[3]), float(argv[4])
    os.set_inheritable(fd, False)  # not passed on to the W&B writer
    started = time.perf_counter()
    code = serve(Connection(fd), program, runs_per_worker, growth_mb)
    print(
        f"warm worker {os.getpid()}: exits {code} after {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
