"""A running sweep job, as the runner sees it, however it runs: a `python train.py` process of
its own (`ProcessJob`), or a job handed to a warm worker (`WarmJob`, from `WarmPool`).

Both answer the same few questions: is it over and with which exit status (`poll`), and pass
on a signal (`signal`, `kill`). A job's stdout and stderr go to its folder's console.log
either way.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Protocol

from gradsweep.sweeps.warm import GROWTH_MB, RUNS_PER_WORKER, WarmWorker


class Job(Protocol):
    description: str

    def poll(self) -> int | None: ...

    def signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...

    def waitables(self) -> list[Any]: ...


class ProcessJob:
    """A run as its own process, as `wandb agent` starts it."""

    description = "own process"

    def __init__(self, command: Sequence[str], env: Mapping[str, str], console: Path) -> None:
        with console.open("a") as out:
            self.process = subprocess.Popen(
                list(command),
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def poll(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def waitables(self) -> list[Any]:
        return []  # polled


class WarmJob:
    """A run handed to a warm worker."""

    def __init__(self, worker: WarmWorker) -> None:
        self.worker = worker
        self.description = f"warm worker pid {worker.process.pid}, its job {worker.jobs}"

    def poll(self) -> int | None:
        result = self.worker.poll()
        return None if result is None else int(result["exit_code"])

    def signal(self, signum: int) -> None:
        self.worker.signal(signum)

    def kill(self) -> None:
        self.worker.process.kill()
        self.worker.process.wait()

    def waitables(self) -> list[Any]:
        # Readable when the worker replies, and at end of file when it dies: only it holds
        # the other end.
        return [self.worker._conn]


class WarmPool:
    """One warm worker per slot, started on demand (or up front, `start`) and replaced when it
    retires or dies. Workers log to `<log_dir>/worker-<slot>.log`."""

    def __init__(
        self,
        log_dir: Path,
        program: str,
        runs_per_worker: int = RUNS_PER_WORKER,
        growth_mb: float = GROWTH_MB,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.program = program
        self.runs_per_worker = runs_per_worker
        self.growth_mb = growth_mb
        self.workers: dict[int, WarmWorker] = {}
        self._leaving: list[WarmWorker] = []  # retired, exiting on their own
        self.started = 0

    def start(self, slot: int, env: Mapping[str, str]) -> WarmWorker:
        """The slot's worker, a new one if it has none it can use."""
        worker = self.workers.get(slot)
        if worker is not None and worker.usable:
            return worker
        if worker is not None:
            self._leaving.append(worker)
        worker = WarmWorker(
            env,
            self.log_dir / f"worker-{slot}.log",
            self.program,
            self.runs_per_worker,
            self.growth_mb,
        )
        self.workers[slot] = worker
        self.started += 1
        self._reap()
        return worker

    def submit(
        self,
        slot: int,
        env: Mapping[str, str],
        args: Sequence[str],
        console: Path,
        job_env: Mapping[str, str] | None = None,
    ) -> WarmJob:
        worker = self.start(slot, env)
        worker.submit(self.program, args, console, dict(job_env or {}))
        return WarmJob(worker)

    def release(self, slot: int) -> None:
        """The slot's worker told to quit now (no run is left for it), not waited for."""
        worker = self.workers.pop(slot, None)
        if worker is not None:
            worker.quit()
            self._leaving.append(worker)

    def _reap(self) -> None:
        self._leaving = [w for w in self._leaving if w.process.poll() is None]

    def close(self) -> None:
        """Every worker told to quit, and waited for (each ends its W&B writer)."""
        workers = [*self.workers.values(), *self._leaving]
        for worker in workers:
            worker.quit()
        for worker in workers:
            worker.wait()
        self.workers.clear()
        self._leaving.clear()


def wait_for_any(jobs: Sequence[Job], timeout: float) -> None:
    """Return when a job may have ended, or after timeout seconds."""
    waitables = [w for job in jobs for w in job.waitables()]
    if len(waitables) < len(jobs):  # processes among them, polled
        timeout = min(timeout, 0.05)
    if waitables:
        wait(waitables, timeout)
    else:
        time.sleep(timeout)
