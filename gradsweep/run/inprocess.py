"""`python train.py ARGS` run inside a long-lived process (a warm sweep worker) instead of a fresh
interpreter: the same code, composed by Hydra the same way, and the process put back as it was
before the next job.

    run_program(program, args)   train.py's own code under `__main__` (runpy), with its
                                 arguments in sys.argv: @hydra.main parses them, composes the
                                 config, makes the run folder, writes .hydra/ and sets up
                                 train.log, exactly as for `python train.py`; the exit status
                                 is the one that process would have had
    ProcessState                 what a job may change in the process, taken before the first
                                 job and put back after each: random states, torch's global
                                 settings and thread count, environment, working directory,
                                 sys.argv and sys.path, warnings filters, logging handlers and
                                 levels, signal handlers, matplotlib's figures, compiled graphs;
                                 and what it must not leave behind (files, global module hooks)
    console_to(path)             the job's stdout and stderr (file descriptors 1 and 2, so C
                                 libraries' output too) appended to its console.log

Kept across jobs on purpose: imported modules, the loaded data (`data.load.keep_loaded_data`)
and the W&B writer process (`tracking.writer_process.reuse_writers`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import runpy
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Signals whose handlers a job may install (StopRequest, Hydra, wandb) and must leave as found.
_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT")
    if hasattr(signal, name)
)


def run_program(program: Path, args: Sequence[str]) -> int:
    """Run `python program ARGS` in this process; its exit status as the process's would be.

    KeyboardInterrupt is not a job's status: it propagates, and the caller stops."""
    sys.argv = [str(program), *args]
    sys.path[0] = os.path.dirname(os.path.abspath(program))  # as `python program` has it
    try:
        runpy.run_path(str(program), run_name="__main__")
    except SystemExit as stop:
        return exit_status(stop.code)
    except KeyboardInterrupt:
        raise
    except BaseException:  # what the interpreter does with an uncaught error: print, exit 1
        traceback.print_exc()
        return 1
    return 0


def exit_status(code: object) -> int:
    """The status `sys.exit(code)` gives a process."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def console_to(path: Path, header: str | None = None) -> Iterator[None]:
    """File descriptors 1 and 2 (and so sys.stdout and sys.stderr) appended to `path` while
    inside, as a process started with `>> path 2>&1` has them."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        with open(path, "a") as console:
            if header:
                console.write(header)
                console.flush()
            os.dup2(console.fileno(), 1)
            os.dup2(console.fileno(), 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@dataclass
class ProcessState:
    """What a job may change in this process, to be put back after it (`restore`)."""

    cwd: str
    argv: list[str]
    path: list[str]
    environ: dict[str, str]
    torch_rng: torch.Tensor
    torch_seed: int  # a fresh process's: CUDA's generators start from it when CUDA starts
    cuda_rng: list[torch.Tensor] | None
    python_rng: Any
    numpy_rng: Any
    torch_settings: dict[str, Any]
    warning_filters: list[Any]
    loggers: dict[str, tuple[int, list[logging.Handler], bool, bool]]  # "" is the root
    handlers: dict[int, Any]
    fds: set[int] = field(default_factory=set)

    @classmethod
    def capture(cls) -> ProcessState:
        import numpy as np

        gc.collect()
        gc.freeze()  # what is here now lives as long as the process: no collection walks it

        return cls(
            cwd=os.getcwd(),
            argv=list(sys.argv),
            path=list(sys.path),
            environ=dict(os.environ),
            torch_rng=torch.get_rng_state(),
            torch_seed=torch.initial_seed(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(),
            torch_settings=_torch_settings(),
            warning_filters=list(warnings.filters),
            loggers={name: _logger_state(lg) for name, lg in _loggers().items()},
            handlers={sig: signal.getsignal(sig) for sig in _SIGNALS},
            fds=_open_fds(),
        )

    def restore(self) -> list[str]:
        """Put the process back as captured; what the job had left behind, for the log."""
        import numpy as np

        leaks = _release_job_objects()
        for sig, handler in self.handlers.items():
            if signal.getsignal(sig) is not handler and handler is not None:
                signal.signal(sig, handler)
        _restore_logging(self.loggers)
        warnings.filters[:] = self.warning_filters
        # Forgets which warnings were shown once already, as a new process has seen none.
        getattr(warnings, "_filters_mutated", lambda: None)()
        os.chdir(self.cwd)
        sys.argv[:] = self.argv
        sys.path[:] = self.path
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        torch.set_rng_state(self.torch_rng)
        if torch.cuda.is_initialized():
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state_all(self.cuda_rng)
            else:  # CUDA started in a job: its generators as CUDA starts them
                torch.cuda.manual_seed_all(self.torch_seed)
            torch.cuda.empty_cache()
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        changed = _restore_torch_settings(self.torch_settings)
        if changed:
            leaks.append(f"torch settings changed: {', '.join(changed)}")
        # The job's garbage; what outlives it (caches, the kept data) is set aside from later
        # collections, which would otherwise walk every object of torch and its kin: 0.25 s.
        gc.collect()
        gc.freeze()
        # Files open for writing (logs, checkpoints): not sockets and pipes (the W&B writer
        # kept for the next job), nor files a library keeps open to read (matplotlib's fonts).
        written = [_describe_fd(fd) for fd in sorted(_open_fds() - self.fds) if _writable(fd)]
        if written:
            leaks.append(f"files left open: {', '.join(written)}")
        return leaks


def _torch_settings() -> dict[str, Any]:
    backends = torch.backends
    return {
        "num_threads": torch.get_num_threads(),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": (backends.cudnn.enabled, backends.cudnn.benchmark, backends.cudnn.deterministic),
        "tf32": (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32),
    }


def _restore_torch_settings(settings: dict[str, Any]) -> list[str]:
    """Put torch's global settings back; the names of those the job had changed."""
    changed = [key for key, value in _torch_settings().items() if value != settings[key]]
    backends = torch.backends
    torch.set_num_threads(settings["num_threads"])
    deterministic, warn_only = settings["deterministic"]
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_default_dtype(settings["default_dtype"])
    torch.set_grad_enabled(settings["grad_enabled"])
    torch.set_anomaly_enabled(settings["anomaly"])
    torch.set_float32_matmul_precision(settings["matmul_precision"])
    cudnn = backends.cudnn
    cudnn.enabled, cudnn.benchmark, cudnn.deterministic = settings["cudnn"]
    backends.cuda.matmul.allow_tf32, cudnn.allow_tf32 = settings["tf32"]
    return changed


def _release_job_objects() -> list[str]:
    """Let go of what a job may hold process-wide: matplotlib's figures, torch.compile's
    graphs and caches, torch's global module hooks (reported: a job should not leave any)."""
    leaks = []
    for stream in (sys.stdout, sys.stderr):  # a console copy (W&B's) still patched in
        if "write" in getattr(stream, "__dict__", {}):
            leaks.append(f"{getattr(stream, 'name', 'a stream')}.write still patched")
            del stream.write
    if "matplotlib.pyplot" in sys.modules:
        figures = sys.modules["matplotlib.pyplot"].get_fignums()
        if figures:
            leaks.append(f"{len(figures)} matplotlib figure(s) left open")
        sys.modules["matplotlib.pyplot"].close("all")
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    from torch.nn.modules import module

    for name in dir(module):
        hooks = getattr(module, name)
        global_hooks = name.startswith("_global_") and name.endswith("hooks")
        if global_hooks and isinstance(hooks, dict) and hooks:
            leaks.append(f"torch.nn.modules.module.{name}: {len(hooks)} hook(s)")
            hooks.clear()
    return leaks


def _loggers() -> dict[str, logging.Logger]:
    """Every logger, the root as ""."""
    manager = logging.Logger.manager
    known = {n: lg for n, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    return {"": logging.getLogger(), **known}


def _logger_state(logger: logging.Logger) -> tuple[int, list[logging.Handler], bool, bool]:
    return logger.level, [*logger.handlers], logger.propagate, logger.disabled


def _restore_logging(loggers: dict[str, tuple[int, list[logging.Handler], bool, bool]]) -> None:
    """Logging as before the job: the handlers Hydra set up for it (train.log, its console
    handler) closed, levels and handlers as they were, loggers the job created reset."""
    fresh = (logging.NOTSET, [], True, False)
    for name, logger in _loggers().items():
        level, handlers, propagate, disabled = loggers.get(name, fresh)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        if logger.level != level:  # setLevel clears every logger's cache: only if changed
            logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


def _open_fds() -> set[int]:
    try:
        return {int(fd) for fd in os.listdir("/proc/self/fd")}
    except OSError:  # no /proc (macOS): not checked
        return set()


def _writable(fd: int) -> bool:
    """Whether fd is a file opened for writing."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as info:
            flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
        return os.path.isfile(f"/proc/self/fd/{fd}") and bool(flags & (os.O_WRONLY | os.O_RDWR))
    except (OSError, StopIteration, ValueError):
        return False


def _describe_fd(fd: int) -> str:
    """What fd is open on (a path, `socket:[...]`, `pipe:[...]`)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return str(fd)
