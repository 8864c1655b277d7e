"""The run's link to Weights & Biases.

`start_tracking` turns the `logger` config node into a `Tracker`: a W&B run (online or
offline, its files under `<run_dir>/wandb/`) or a `NullTracker` that makes no W&B call. The
training loop calls `Tracker.log` once per step; a W&B tracker only queues the row there and
one background thread makes every `run.*` call in order, so wandb's serialization (about a
millisecond of Python a row) overlaps the step's tensor work, which releases the GIL.

`logger.mode=auto` goes online only when wandb finds credentials and the server answers a TCP
probe within `PROBE_TIMEOUT_S`; the online `wandb.init` itself is bounded by
`logger.init_timeout`. Anything else falls back to an offline run, said in one log line, so a
laptop with no key or no network never crashes nor waits wandb's default ~100 s.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import socket
import string
import threading
import urllib.request
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
# Seconds a TCP connection to the W&B server may take before auto mode gives up on it. DNS
# failures and refused connections answer at once; this bounds a silent network.
PROBE_TIMEOUT_S = 2.0
# Aggregates W&B keeps in the run summary (wandb 0.31 accepts min, max, mean, first, last and
# none, comma-separated; there is no "best"). Keeping "last" beside max/min keeps the final
# value too, which summary.json also reports.
METRIC_SUMMARIES = {"val/acc": "max,last", "val/loss": "min,last", "clip/hit_rate": "last"}
# WANDB_MODE values that auto mode honours: the user said where the run should go.
_ENV_MODES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}
NO_KEY = "no API key configured"
_ID_ALPHABET = string.ascii_lowercase + string.digits


class Tracker(Protocol):
    """Where a run's metrics go. `mode` is what the run actually uses."""

    mode: str  # "online", "offline", "disabled" or "none"
    run_id: str | None

    def define_metrics(self) -> None: ...

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def log_images(self, images: dict[str, Path], step: int | None = None) -> None: ...

    def update_summary(self, values: dict[str, object]) -> None: ...

    def flush(self) -> None: ...

    def recent_rows(self) -> list[tuple[dict[str, float], int]]: ...

    def replay(self, rows: list[tuple[dict[str, float], int]]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """No W&B at all (`logger=none` or `logger.mode=disabled`): every call does nothing."""

    def __init__(self, mode: str = "none") -> None:
        self.mode = mode
        self.run_id: str | None = None

    def define_metrics(self) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_images(self, images: dict[str, Path], step: int | None = None) -> None:
        pass

    def update_summary(self, values: dict[str, object]) -> None:
        pass

    def flush(self) -> None:
        pass

    def recent_rows(self) -> list[tuple[dict[str, float], int]]:
        return []

    def replay(self, rows: list[tuple[dict[str, float], int]]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class _OrderedWorker:
    """Runs submitted calls one after another on a background thread.

    One consumer of a FIFO queue: calls run in the order they were submitted, so no row is
    reordered; `close()` waits for every call, so none is lost. An exception in a call stops
    the worker and is raised again by the next `submit` or by `close`.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="gradsweep-wandb", daemon=True)
        self._thread.start()

    def submit(self, call: Any, *args: Any, **kwargs: Any) -> None:
        if self._error is not None:
            raise RuntimeError("W&B logging failed") from self._error
        self._calls.put((call, args, kwargs))

    def _loop(self) -> None:
        while (item := self._calls.get()) is not None:
            call, args, kwargs = item
            try:
                call(*args, **kwargs)
            except BaseException as error:  # surfaced on the training thread
                self._error = error
                return

    def drain(self) -> None:
        """Wait until every call submitted so far has run."""
        done = threading.Event()
        self.submit(done.set)
        done.wait()

    def close(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join()
        if self._error is not None:
            raise RuntimeError("W&B logging failed") from self._error


class WandbTracker:
    """A live wandb run, online or offline, fed through one background thread."""

    # Rows kept for `recent_rows`: a killed process can take the rows still in wandb's own
    # buffers with it, and a resumed run logs these again (equal values) to cover them.
    RECENT_ROWS = 256

    def __init__(self, run: Any, mode: str) -> None:
        self.mode = mode
        self.run_id: str | None = run.id
        self._run = run
        self._worker = _OrderedWorker()
        self._finished = False
        self._recent: deque[tuple[dict[str, float], int]] = deque(maxlen=self.RECENT_ROWS)

    def define_metrics(self) -> None:
        for name, summary in METRIC_SUMMARIES.items():
            self._worker.submit(self._run.define_metric, name, summary=summary)

    def log(self, metrics: dict[str, float], step: int) -> None:
        # One row per step, queued as it is: the caller must not change `metrics` after.
        # A later call with the same step merges into the row; a smaller one is dropped.
        self._worker.submit(self._run.log, metrics, step=step)
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
        import wandb  # already imported by start_tracking; free here

        images = {key: wandb.Image(str(path)) for key, path in images.items()}
        self._worker.submit(self._run.log, images, step=step)

    def update_summary(self, values: dict[str, object]) -> None:
        # wandb 0.31 fails on a non-str key in a nested dict (TypeError in its encoder), as in
        # {"telemetry/layers": {0: "fc1"}}; JSON would make them strings anyway.
        self._worker.submit(self._run.summary.update, _str_keys(values))

    def flush(self) -> None:
        """Wait until wandb has every row logged so far (before a checkpoint is written)."""
        if not self._finished:
            self._worker.drain()

    def finish(self, exit_code: int = 0) -> None:
        """Drain the queued calls, then end the run; a non-zero exit code marks it failed.

        wandb's service writes the run's last records (summary, exit) to the `.wandb` file a
        few ms after this returns; `wandb.teardown()` or the end of the process waits for them.
        """
        if self._finished:
            return
        self._finished = True
        try:
            self._worker.close()
        finally:
            self._run.finish(exit_code=exit_code)


def start_tracking(
    cfg_logger: Mapping[str, Any],
    config: dict[str, Any],
    run_dir: Path,
    run_id: str | None = None,
) -> Tracker:
    """Open the run's tracker as `cfg_logger` asks (see conf/logger/*.yaml).

    `config` (the whole resolved config, nested or flat) goes to wandb.config as it is. A given
    `run_id` is the W&B run id, with resume="allow", so a resumed run continues the same W&B
    run (online), or syncs into it later (offline, where wandb ignores resume).
    """
    if cfg_logger.get("name", "wandb") == "none":
        return NullTracker("none")
    mode = cfg_logger.get("mode") or "auto"
    if mode not in MODES:
        raise ValueError(f"logger.mode must be one of {', '.join(MODES)}, not {mode!r}")
    reason = f"logger.mode={mode}"
    env_mode = os.environ.get("WANDB_MODE", "")
    if mode == "auto" and env_mode.lower() in _ENV_MODES:
        mode, reason = _ENV_MODES[env_mode.lower()], f"WANDB_MODE={env_mode}"
    if mode == "disabled":
        return NullTracker("disabled")

    # Imported here, not at the top: it costs ~0.7 s that logger=none runs need not pay.
    import wandb

    # wandb warns "git root ... does not exist" when dir does not exist yet.
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Fixed up front so that an offline fallback keeps the id, and a failed online attempt's
    # folder can be told apart. From `secrets`, as wandb's own ids are random: a run that
    # seeded `random` must not draw the same id as the last run with that seed.
    run_id_fixed = run_id or "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))

    def init(init_mode: str) -> Any:
        return wandb.init(
            dir=run_dir,
            mode=init_mode,
            project=cfg_logger.get("project"),
            entity=cfg_logger.get("entity"),
            group=cfg_logger.get("group"),
            tags=[str(tag) for tag in cfg_logger.get("tags") or []],
            name=cfg_logger.get("run_name"),
            notes=cfg_logger.get("notes"),
            config=config,
            id=run_id_fixed,
            resume="allow" if run_id else None,
            # A run a crashed job left open (Hydra multirun: one process) is finished, not
            # reused: the default "return_previous" would log this job into the old run.
            reinit="finish_previous",
            settings=wandb.Settings(
                init_timeout=float(cfg_logger.get("init_timeout") or 15),
                # No capture of stdout/stderr: it would slow and garble the progress bar.
                console="off",
                # Hides the run's banner and closing history/summary printout; wandb's
                # warnings and errors still reach stderr.
                silent=True,
            ),
        )

    level = logging.INFO
    if mode != "offline":
        problem = _online_problem()
        if problem is None:
            wandb_dir = run_dir / "wandb"
            before = set(wandb_dir.glob(f"run-*-{run_id_fixed}"))
            try:
                run = init("online")
            except Exception as error:  # CommError, UsageError, AuthenticationError, timeouts
                problem = f"online init failed: {_first_line(error)}"
                # wandb's service still holds the failed run's id ("run ID ... is in use"), so
                # the offline run with that id needs a fresh service; the teardown takes ~2 s.
                wandb.teardown()
                # The failed attempt leaves a run folder of its own; drop it so the run
                # folder holds one run (summaries and tests count them).
                for leftover in set(wandb_dir.glob(f"run-*-{run_id_fixed}")) - before:
                    shutil.rmtree(leftover, ignore_errors=True)
            else:
                log.info("W&B: online, %s", run.url)
                return _started(WandbTracker(run, "online"))
        if mode == "online":
            raise RuntimeError(f"W&B: logger.mode=online, but {problem}")
        # No key is the usual laptop case; anything else means online was meant and failed.
        reason, level = problem, logging.INFO if problem == NO_KEY else logging.WARNING

    run = init("offline")
    log.log(
        level, "W&B: offline (%s); sync later with `wandb sync %s`", reason, run.settings.sync_dir
    )
    return _started(WandbTracker(run, "offline"))


def _str_keys(value: Any) -> Any:
    """value with the keys of every nested dict made str."""
    if isinstance(value, Mapping):
        return {str(key): _str_keys(item) for key, item in value.items()}
    return value


def _started(tracker: WandbTracker) -> WandbTracker:
    tracker.define_metrics()
    return tracker


def _online_problem() -> str | None:
    """Why an online run cannot start now, or None if it may: credentials, then the server."""
    try:
        base_url = _credentials_base_url()
    except Exception as error:  # a malformed key or base URL, which wandb would refuse too
        return f"W&B credentials unusable: {_first_line(error)}"
    if base_url is None:
        return NO_KEY
    if not _reachable(base_url, PROBE_TIMEOUT_S):
        return f"{base_url} unreachable within {PROBE_TIMEOUT_S:g} s"
    return None


def _credentials_base_url() -> str | None:
    """The W&B server URL if wandb finds credentials for it, else None.

    Asks wandb the way wandb.init does (WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE, then the
    netrc entry for the server, then the api_key of wandb's settings files), with no prompt, no
    network call and no change to the session. The key itself is never read out here.
    """
    # wandb-internal modules (0.31); were they to move, the ImportError sends auto mode offline.
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    # The singleton's settings hold the server (WANDB_BASE_URL, `wandb login --host`); reading
    # them does not start wandb's service.
    base_url: str = wandb_setup.singleton().settings.base_url
    auth = wbauth.authenticate_session(
        host=base_url, source="gradsweep", prompt=False, update_session=False
    )
    return base_url if auth is not None else None


def _reachable(base_url: str, timeout: float) -> bool:
    """Whether a TCP connection to the server opens within timeout seconds."""
    parts = urlsplit(base_url)
    if parts.hostname is None:
        return False
    if urllib.request.getproxies().get(parts.scheme):
        # Behind a proxy a direct connection says nothing; init_timeout bounds the init.
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answered: list[bool] = []
    done = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                answered.append(True)
        except OSError:
            pass
        finally:
            done.set()

    # A daemon thread, because create_connection's timeout does not cover the DNS lookup.
    threading.Thread(target=probe, daemon=True).start()
    done.wait(timeout)
    return bool(answered)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
