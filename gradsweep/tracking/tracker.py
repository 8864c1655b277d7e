"""The run's link to Weights & Biases.

`start_tracking` turns the `logger` config node into a `Tracker`: a W&B run (online or
offline, its files under `<run_dir>/wandb/`) or a `NullTracker` that makes no W&B call.

The wandb run lives in a child process, the W&B writer (`gradsweep.tracking.wandb_writer`); this
process never imports wandb. `Tracker.log` pickles the row onto a socket (tens of
microseconds) and the writer makes every `run.*` call in the order sent, at a raised
niceness, so wandb's millisecond of work per row neither holds this process's GIL nor takes
CPU time the training threads need. `prestart` launches the writer early, so that its import
of wandb overlaps the caller's import of torch.

The W&B run describes the training job, not the writer: the program and the Hydra overrides
as its command, this process's resource use, the Hydra files, and this process's console
(`ConsoleTee`) in the Logs tab. Its id is kept in the run folder (`RUN_ID_FILE`) as soon as it
starts, so a run started again in that folder continues the same W&B run, and under
`wandb agent` the run is the agent's: its id, project and sweep are read back from the run.

`logger.mode=auto` goes online only when wandb finds credentials and the server answers a TCP
probe within `wandb_writer.PROBE_TIMEOUT_S`; the online `wandb.init` itself is bounded by
`logger.init_timeout`. Anything else falls back to an offline run, said in one log line, so a
laptop with no key or no network never crashes nor waits wandb's default ~100 s.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from gradsweep.config import LOGGER_MODES
from gradsweep.tracking.console_tee import ConsoleTee
from gradsweep.tracking.writer_process import (
    WriterProcess,
    prestart_writer,
    release_writer,
    reusing_writers,
    take_writer,
)

log = logging.getLogger(__name__)

# WANDB_MODE values that auto mode honours: the user said where the run should go.
_ENV_MODES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}
_ID_ALPHABET = string.ascii_lowercase + string.digits
# In the run folder: the W&B run id of the run that folder holds.
RUN_ID_FILE = "wandb_run_id"
# What `wandb agent` tells a run through its environment (wandb's settings names, variables).
# Sent with each run: a writer that serves several runs (a warm sweep worker's) read its own
# environment once, before the first.
SWEEP_ENV = {
    "sweep_id": "WANDB_SWEEP_ID",
    "run_id": "WANDB_RUN_ID",
    "sweep_param_path": "WANDB_SWEEP_PARAM_PATH",
    "project": "WANDB_PROJECT",
    "entity": "WANDB_ENTITY",
}


class Tracker(Protocol):
    """Where a run's metrics go. `mode` is what the run actually uses."""

    mode: str  # "online", "offline", "disabled" or "none"
    run_id: str | None

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_images(self, images: dict[str, Path], step: int | None = None) -> None: ...

    def log_table(
        self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None
    ) -> None: ...

    def update_summary(self, values: dict[str, object]) -> None: ...

    def mark_preempting(self) -> None: ...

    def save_files(self, paths: list[Path], base_path: Path) -> None: ...

    def flush(self) -> None: ...

    def recent_rows(self) -> list[tuple[dict[str, float], int]]: ...

    def replay(self, rows: list[tuple[dict[str, float], int]]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """No W&B at all (`logger=none` or `logger.mode=disabled`): every call does nothing."""

    def __init__(self, mode: str = "none") -> None:
        self.mode = mode
        self.run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, images: dict[str, Path], step: int | None = None) -> None:
        pass

    def log_table(
        self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None
    ) -> None:
        pass

    def update_summary(self, values: dict[str, object]) -> None:
        pass

    def mark_preempting(self) -> None:
        pass

    def save_files(self, paths: list[Path], base_path: Path) -> None:
        pass

    def flush(self) -> None:
        pass

    def recent_rows(self) -> list[tuple[dict[str, float], int]]:
        return []

    def replay(self, rows: list[tuple[dict[str, float], int]]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """A wandb run, online or offline, kept by a W&B writer process.

    Calls are sent in order and return at once; `flush` and `finish` wait for the writer.
    `mode` and `run_id` wait until the writer has started the run, whose id is then kept in
    `run_dir`. A failure in the writer is raised by the next call here.
    """

    # Rows kept for `recent_rows`: a killed process can take the rows still in wandb's own
    # buffers with it, and a resumed run logs these again (equal values) to cover them.
    RECENT_ROWS = 256

    def __init__(self, writer: WriterProcess, run_dir: Path) -> None:
        self._writer = writer
        self._run_dir = run_dir
        self._run: dict[str, Any] | None = None  # what the writer says of the run it started
        self._finished = False
        self._recent: deque[tuple[dict[str, float], int]] = deque(maxlen=self.RECENT_ROWS)
        # Console output goes to W&B raw, as sent: no row waits on the writer's answers.
        self._console = ConsoleTee(lambda stream, text: writer.send(("console", stream, text)))
        self._console.install()

    @property
    def mode(self) -> str:
        """ "online" or "offline", once the writer has started the run (this waits for it)."""
        return self._started()["mode"]

    @property
    def run_id(self) -> str:
        """The W&B run's id, as wandb chose it (under `wandb agent`, the agent's)."""
        return self._started()["run_id"]

    def _started(self) -> dict[str, Any]:
        while self._run is None:
            self._handle(self._writer.receive())
        return self._run

    def log(self, metrics: dict[str, float], step: int) -> None:
        # One row per step. A later call with the same step merges into the row; a smaller
        # one is dropped.
        self._send(("log", metrics, step))
        self._recent.append((metrics, step))

    def recent_rows(self) -> list[tuple[dict[str, float], int]]:
        """The last rows given to `log`, oldest first, for a checkpoint to carry."""
        return list(self._recent)

    def replay(self, rows: list[tuple[dict[str, float], int]]) -> None:
        """Log rows a killed run may have lost again, in order (offline runs only: an
        online run drops steps below its last one, which the server already has)."""
        if self.mode == "offline":
            for metrics, step in rows:
                self.log(metrics, step)

    def log_images(self, images: dict[str, Path], step: int | None = None) -> None:
        """Log PNG files as wandb.Image (copied into the run); step None: the current row."""
        self._send(("images", {key: str(path) for key, path in images.items()}, step))

    def log_table(
        self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None
    ) -> None:
        """Log rows of plain values as a wandb.Table under `key`."""
        self._send(("table", key, columns, rows, step))

    def update_summary(self, values: dict[str, object]) -> None:
        """Set summary values; W&B's own aggregates (`val/acc` max and last...) stay its own."""
        self._send(("summary", values))

    def mark_preempting(self) -> None:
        """Tell W&B the run is being stopped to be resumed: under `wandb agent`, the sweep
        requeues it (call before the checkpoint and a non-zero exit)."""
        self._send(("preempting",), wake=True)

    def save_files(self, paths: list[Path], base_path: Path) -> None:
        """Save files with the run, named by their path under `base_path`."""
        self._send(("save", [str(path) for path in paths], str(base_path)))

    def flush(self) -> None:
        """Wait until wandb has every row logged so far (before a checkpoint is written)."""
        if not self._finished:
            self._send(("flush",), wake=True)
            self._wait_for("flushed")

    def finish(self, exit_code: int = 0) -> None:
        """End the run once the writer has made every call sent before; a non-zero exit code
        marks it failed. Returns when the run's files are complete and the writer is gone, or
        kept for this process's next run (`writer_process.reuse_writers`)."""
        if self._finished:
            return
        self._finished = True
        self._console.uninstall()
        released = False
        try:
            self._writer.send(("finish", exit_code, reusing_writers()), wake=True)
            self._wait_for("finished")
            release_writer(self._writer)
            released = True
        finally:
            if not released:
                self._writer.close()

    def _send(self, message: tuple, wake: bool = False) -> None:
        if self._finished:
            raise RuntimeError("the W&B run is finished")
        while self._writer.has_message():  # the start of the run, or a failed call
            self._handle(self._writer.receive())
        self._writer.send(message, wake)

    def _wait_for(self, kind: str) -> None:
        while (message := self._writer.receive())[0] != kind:
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind, *args = message
        if kind == "started":
            (run,) = args
            self._run = run
            (self._run_dir / RUN_ID_FILE).write_text(run["run_id"] + "\n")
            sweep = f" (sweep {run['sweep_id']})" if run.get("sweep_id") else ""
            if run["mode"] == "online":
                log.info("W&B: online, %s%s", run["url"], sweep)
            else:
                log.log(
                    logging.WARNING if run["warn"] else logging.INFO,
                    "W&B: offline (%s); sync later with `wandb sync %s`",
                    run["reason"],
                    run["sync_dir"],
                )
        elif kind in ("failed", "error"):
            self._finished = True
            self._console.uninstall()
            self._writer.close()
            prefix = "" if kind == "failed" else "W&B logging failed:\n"
            raise RuntimeError(prefix + args[0])
        else:
            raise RuntimeError(f"unexpected message from the W&B writer: {message!r}")


def prestart(cfg_logger: Mapping[str, Any]) -> None:
    """Start the W&B writer process now, if `cfg_logger` will want one, so that its import of
    wandb (~1 s) overlaps whatever the caller imports and loads next. The next
    `start_tracking` uses it."""
    try:
        mode, _ = requested_mode(cfg_logger)
    except ValueError:  # reported by the config check, with the fix
        return
    if mode not in ("none", "disabled"):
        prestart_writer(_niceness(cfg_logger))


def _niceness(cfg_logger: Mapping[str, Any]) -> int:
    niceness = cfg_logger.get("niceness") or 0
    return niceness if isinstance(niceness, int) and 0 <= niceness <= 19 else 0


def requested_mode(cfg_logger: Mapping[str, Any]) -> tuple[str, str]:
    """The mode `cfg_logger` asks for ("none", "disabled", "auto", "online" or "offline"),
    with WANDB_MODE honoured in auto mode, and what decided it."""
    if cfg_logger.get("name", "wandb") == "none":
        return "none", "logger=none"
    mode = cfg_logger.get("mode") or "auto"
    if mode not in LOGGER_MODES:
        raise ValueError(f"logger.mode must be one of {', '.join(LOGGER_MODES)}, not {mode!r}")
    env_mode = os.environ.get("WANDB_MODE", "")
    if mode == "auto" and env_mode.lower() in _ENV_MODES:
        return _ENV_MODES[env_mode.lower()], f"WANDB_MODE={env_mode}"
    return mode, f"logger.mode={mode}"


def start_tracking(
    cfg_logger: Mapping[str, Any],
    config: dict[str, Any],
    run_dir: Path,
    args: list[str] | None = None,
) -> Tracker:
    """Open the run's tracker as `cfg_logger` asks (see conf/logger/*.yaml).

    Returns as soon as the writer has the request; the tracker's `mode` waits for the run to
    start (and raises if logger.mode=online cannot be had). `config` (the whole resolved
    config, nested or flat) goes to wandb.config as it is. `args` are the program's arguments
    as W&B shows them (default: this process's). If `run_dir` holds the id of a run started
    there before, this run is that W&B run, with resume="allow": it continues it (online), or
    syncs into it later (offline, where wandb ignores resume).
    """
    mode, reason = requested_mode(cfg_logger)
    if mode in ("none", "disabled"):
        return NullTracker(mode)
    # wandb warns "git root ... does not exist" when dir does not exist yet.
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Fixed up front so that an offline fallback keeps the id, and a failed online attempt's
    # folder can be told apart. From `secrets`, as wandb's own ids are random: a run that
    # seeded `random` must not draw the same id as the last run with that seed.
    run_id = kept_run_id(run_dir)
    run_id_fixed = run_id or "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))
    options = {
        key: cfg_logger.get(key)
        for key in ("project", "entity", "group", "tags", "run_name", "notes", "init_timeout")
    }
    options["tags"] = list(options["tags"] or [])
    options |= {
        "mode": mode,
        "reason": reason,
        "run_dir": str(run_dir),
        "config": config,
        "run_id": run_id_fixed,
        "resume": run_id is not None,
        "args": list(sys.argv[1:] if args is None else args),
        "sweep": sweep_identity(os.environ),
    }
    writer = take_writer(_niceness(cfg_logger))
    writer.send(("init", options))
    return WandbTracker(writer, run_dir)


def sweep_identity(env: Mapping[str, str]) -> dict[str, str] | None:
    """The sweep run `env` describes (`wandb agent`'s variables, as wandb's settings), or None
    outside a sweep."""
    if not env.get(SWEEP_ENV["sweep_id"]):
        return None
    return {key: env[name] for key, name in SWEEP_ENV.items() if env.get(name)}


def kept_run_id(run_dir: Path) -> str | None:
    """The W&B run id of the run started in `run_dir` before, if any."""
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() or None if path.is_file() else None
