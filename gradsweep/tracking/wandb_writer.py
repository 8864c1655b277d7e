"""The W&B writer: a child process that owns the training process's wandb runs, one at a time.

    python -m gradsweep.tracking.wandb_writer FD BELL NICENESS    (started by tracking.tracker)

Why a process. wandb spends about a millisecond of Python on every logged row (encoding
each value, its own telemetry, a hand-off to its asyncio thread) and as much again in its
wandb-core service. Inside the training process that Python holds the GIL against the
training loop, and a background thread there did not help: the step still took 1.15-1.20x
the bare step (bench/telemetry_overhead.py). Here it holds no lock the training loop needs,
and at a raised niceness this process and wandb-core (its child, which inherits the
niceness) run on the CPU time the training threads leave idle instead of the time they need.
It also imports wandb (~1 s) while the training process imports torch.

The parent speaks over the socket FD in multiprocessing's framing (Connection.send_bytes),
one pickled tuple a message, and reads replies the same way:

    parent -> writer                                 writer -> parent
    ("init", options)                                ("started", {mode, run_id, url or
                                                     reason and sync_dir, warn})
                                                     or ("failed", message)
    ("log", metrics, step)
    ("images", {key: png path}, step)
    ("table", key, columns, rows, step)
    ("summary", values)
    ("console", "stdout" or "stderr", text)
    ("save", [path], base_path)
    ("preempting",)
    ("flush",)                                       ("flushed",)
    ("finish", exit_code, keep)                      ("finished",)
                                                     ("error", message): a call failed

`keep` false: the writer ends its wandb session (`wandb.teardown()`), answers and exits. `keep`
true (a warm sweep worker's runs, one after another): it answers once the run is finished and
waits for the next "init", so that one wandb service serves every run; hanging up ends it.

The writer looks at FD every BATCH_S and logs the rows waiting there back to back; BELL is a
second socket on which the parent sends a byte when it is about to wait for a reply (flush,
finish), so that those are answered at once.

The run describes the parent, the training job: the parent's program (WANDB_PROGRAM, set by
the parent) and arguments (`options["args"]`, put in this process's sys.argv, where wandb
reads them) as its command, the parent's resource use (wandb's `x_stats_pid`), and the
parent's console as its output (`console` messages, published as wandb's own console capture
publishes a script's). Under `wandb agent` (WANDB_SWEEP_ID set in the training process) the
run's id, project and entity are the agent's (sent with each run) and the reply says which.

Messages are handled in the order sent, so no row is reordered. After a failed call the
writer drops what follows (the parent raises at its next call) but still finishes the run.
If the parent dies (end of file on FD) the writer finishes the run with exit code 1 and
every row it received is kept. Ctrl-C and SIGTERM reach the whole process group; the
writer ignores them (and SLURM's preemption signal, SIGUSR2 by default) and ends when its
parent says so or is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sys
import threading
import traceback
import urllib.request
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gradsweep.errors import first_line
from gradsweep.signals import stop_signals

# Seconds a TCP connection to the W&B server may take before auto mode gives up on it. DNS
# failures and refused connections answer at once; this bounds a silent network.
PROBE_TIMEOUT_S = 2.0
# Aggregates W&B keeps in the run summary (wandb 0.31 accepts min, max, mean, first, last and
# none, comma-separated; there is no "best"). Keeping "last" beside max/min keeps the final
# value too, which summary.json also reports.
METRIC_SUMMARIES = {"val/acc": "max,last", "val/loss": "min,last", "clip/hit_rate": "last"}
NO_KEY = "no API key configured"
# Seconds between looks at the socket: how late a row may reach wandb. The rows sent meanwhile
# are logged back to back, so wandb's threads and wandb-core wake once a burst instead of once
# a row. Measured with a row of 50 keys every 25 ms, the CPU time of this process and
# wandb-core a row: 2.4 + 1.4 ms when taken one by one (every 20 ms), 1.4 + 1.0 ms at 0.25 s,
# 1.1 + 0.8 ms at 1 s; CPU time the training threads share on a small machine. A call the
# parent waits for (flush, finish) rings the bell and is not kept waiting.
BATCH_S = 1.0


def main(argv: list[str]) -> int:
    fd, bell_fd, niceness = int(argv[1]), int(argv[2]), int(argv[3])
    # Not passed on to wandb-core: the parent must see end of file when this process dies.
    os.set_inheritable(fd, False)
    os.set_inheritable(bell_fd, False)
    conn = Connection(fd)
    bell = socket.socket(fileno=bell_fd)
    bell.setblocking(False)
    # Ctrl-C, SIGTERM and SLURM's preemption signal reach every process of the job; the
    # training process answers them with a checkpoint and then ends this run itself.
    for stop in (signal.SIGINT, *stop_signals()):
        signal.signal(stop, signal.SIG_IGN)
    if niceness:
        os.nice(niceness)
    import wandb

    # Starts wandb's service now, while the parent is still busy, rather than at init.
    wandb.setup()
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent gave up before a run began, or has no more runs
            wandb.teardown()
            return 0
        kind, options = message
        assert kind == "init", message
        try:
            run, started = start_run(wandb, options)
        except Exception as error:
            reply(conn, ("failed", first_line(error)))
            return 1
        reply(conn, ("started", started))
        code, more = serve(conn, bell, run)
        if not more:
            return code


def reply(conn: Connection, message: tuple) -> None:
    """Send to the parent, if it is still there: when it has died, the rows it sent before
    are still to be read and logged, and end of file ends the run."""
    with contextlib.suppress(OSError):  # BrokenPipeError: the parent is gone
        conn.send(message)


def serve(conn: Connection, bell: socket.socket, run: Any) -> tuple[int, bool]:
    """Carry out the parent's calls on `run` until it says finish or is gone: (code, more)."""
    import wandb

    failed = False
    while True:
        try:
            message = next_message(conn, bell)
        except EOFError:  # the parent died: keep what it logged, mark the run failed
            run.finish(exit_code=1)
            wandb.teardown()
            return 1, False
        kind, *args = message
        if kind == "finish":
            exit_code, keep = args[0], bool(args[1:] and args[1])
            run.finish(exit_code=exit_code)
            if not keep:
                wandb.teardown()  # waits until wandb-core has written the run's last records
            reply(conn, ("finished",))
            return 0, keep
        if kind == "flush":
            reply(conn, ("flushed",))
            continue
        if failed:
            continue
        try:
            if kind == "log":
                run.log(args[0], step=args[1])
            elif kind == "images":
                images, step = args
                run.log({key: wandb.Image(path) for key, path in images.items()}, step=step)
            elif kind == "table":
                key, columns, rows, step = args
                run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
            elif kind == "summary":
                run.summary.update(str_keys(without_aggregates(args[0])))
            elif kind == "console":
                publish_console(run, *args)
            elif kind == "save":
                paths, base_path = args
                for path in paths:
                    run.save(path, base_path=base_path, policy="now")
            elif kind == "preempting":
                run.mark_preempting()
            else:
                raise ValueError(f"unknown message {kind!r}")
        except Exception:
            failed = True
            reply(conn, ("error", traceback.format_exc(limit=3)))


def next_message(conn: Connection, bell: socket.socket) -> tuple:
    """The parent's next message: at once if one is waiting, else after the next BATCH_S, or
    as soon as the bell rings. Not waited for on the socket itself: a process blocked there
    is woken by each row sent, which costs the training process ~0.1 ms a row and wandb its
    per-burst saving."""
    while not conn.poll():
        rung, _, _ = select.select([bell], [], [], BATCH_S)
        if rung:
            # Empty once the parent is gone; conn then reads as end of file too.
            with contextlib.suppress(BlockingIOError):
                bell.recv(4096)
    return conn.recv()


def start_run(wandb: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The wandb run `options` asks for, and what the parent's log line says of it: its mode,
    id, and url (online) or why offline and where to sync from, with `warn` when online was
    meant but failed.

    `mode` is "online", "offline" or "auto". Auto goes online only when wandb finds
    credentials and the server answers a TCP probe within PROBE_TIMEOUT_S; the online init
    itself is bounded by `init_timeout`. Otherwise the run is offline, and the note says why.
    """
    mode, reason = options["mode"], options["reason"]
    run_dir = options["run_dir"]
    # wandb takes the arguments it shows from sys.argv[1:] of the process that starts the run.
    sys.argv = [sys.argv[0], *options["args"]]
    sweep = options.get("sweep")
    join_sweep(wandb, sweep)
    # Under `wandb agent` the run's id, project and entity are the agent's: wandb ignores
    # those given to init (and warns). Not passed, they are read back from the run.
    own = (
        {}
        if sweep
        else {
            "id": options["run_id"],
            "project": options.get("project"),
            "entity": options.get("entity"),
        }
    )

    def init(init_mode: str) -> Any:
        return wandb.init(
            dir=run_dir,
            mode=init_mode,
            group=options.get("group"),
            tags=[str(tag) for tag in options.get("tags") or []],
            name=options.get("run_name"),
            notes=options.get("notes"),
            config=options["config"],
            resume="allow" if options["resume"] else None,
            **own,
            settings=wandb.Settings(
                init_timeout=float(options.get("init_timeout") or 15),
                # The console that matters is the parent's, sent here as `console` messages.
                console="off",
                # CPU, memory and threads of the training process, not of this one.
                x_stats_pid=os.getppid(),
                # Hides the run's banner and closing history/summary printout; wandb's
                # warnings and errors still reach stderr.
                silent=True,
            ),
        )

    warn = False
    if mode != "offline":
        earlier = {folder.name for folder in run_folders(run_dir)}
        problem = online_problem()
        if problem is None:
            try:
                run = init("online")
            except Exception as error:  # CommError, UsageError, AuthenticationError, timeouts
                problem = f"online init failed: {first_line(error)}"
                # wandb's service still holds the failed run's id ("run ID ... is in use"), so
                # the offline run with that id needs a fresh service.
                wandb.teardown()
                # The failed attempt leaves a folder of its own; drop it so the run folder
                # holds one run (summaries and tests count them).
                for folder in run_folders(run_dir):
                    if folder.name not in earlier:
                        shutil.rmtree(folder, ignore_errors=True)
            else:
                return _defined(run), {"mode": "online", "url": run.url, **identity(run)}
        if mode == "online":
            raise RuntimeError(f"W&B: logger.mode=online, but {problem}")
        # No key is the usual laptop case; anything else means online was meant and failed.
        reason, warn = problem, problem != NO_KEY

    run = init("offline")
    started = {"mode": "offline", "reason": reason, "warn": warn, **identity(run)}
    return _defined(run), started | {"sync_dir": run.settings.sync_dir}


def join_sweep(wandb: Any, sweep: Mapping[str, str] | None) -> None:
    """Make the next run the sweep run `sweep` names (`wandb agent`'s variables, as settings),
    or no sweep's: wandb reads them from its session, loaded from the environment once, which
    cannot be emptied of a sweep's ids (a run outside the sweep gets a new session)."""
    from wandb.sdk import wandb_setup

    if sweep:
        wandb.setup(wandb.Settings(**sweep))
    elif wandb_setup.singleton().settings.sweep_id:
        wandb.teardown()
        wandb.setup()


def identity(run: Any) -> dict[str, Any]:
    """Which W&B run this is, as wandb decided (under a sweep, the agent's)."""
    return {
        "run_id": run.id,
        "project": run.project,
        "entity": run.entity,
        "sweep_id": run.sweep_id,
    }


def without_aggregates(values: Mapping[str, Any]) -> dict[str, Any]:
    """values less the keys whose W&B summary is an aggregate of the history (METRIC_SUMMARIES):
    a plain value would replace W&B's max and last of them."""
    return {key: value for key, value in values.items() if key not in METRIC_SUMMARIES}


def publish_console(run: Any, stream: str, text: str) -> None:
    """Add the parent's console text to the run's output (W&B's Logs tab, `output.log`).

    wandb has no public call for this: `_console_raw_callback` is what its own console capture
    (`console="wrap"`) calls with each write of a script's stdout or stderr (wandb 0.31).
    Were it gone, the console is left out and the run goes on."""
    callback = getattr(run, "_console_raw_callback", None)
    if callback is not None:
        callback(stream, text)


def _defined(run: Any) -> Any:
    for name, summary in METRIC_SUMMARIES.items():
        run.define_metric(name, summary=summary)
    return run


def run_folders(run_dir: str) -> list[Path]:
    """The run folders wandb has made under run_dir (one per attempt to start a run)."""
    return list((Path(run_dir) / "wandb").glob("*run-*"))


def str_keys(value: Any) -> Any:
    """value with the keys of every nested dict made str: wandb 0.31 fails on a non-str key in
    a nested dict (TypeError in its encoder), as in {"telemetry/layers": {0: "fc1"}}."""
    if isinstance(value, Mapping):
        return {str(key): str_keys(item) for key, item in value.items()}
    return value


def online_problem() -> str | None:
    """Why an online run cannot start now, or None if it may: credentials, then the server."""
    try:
        base_url = credentials_base_url()
    except Exception as error:  # a malformed key or base URL, which wandb would refuse too
        return f"W&B credentials unusable: {first_line(error)}"
    if base_url is None:
        return NO_KEY
    if not reachable(base_url, PROBE_TIMEOUT_S):
        return f"{base_url} unreachable within {PROBE_TIMEOUT_S:g} s"
    return None


def credentials_base_url() -> str | None:
    """The W&B server URL if wandb finds credentials for it, else None.

    Asks wandb the way wandb.init does (WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE, then the
    netrc entry for the server, then the api_key of wandb's settings files), with no prompt, no
    network call and no change to the session. The key itself is never read out here.
    """
    # wandb-internal modules (0.31); were they to move, the ImportError sends auto mode offline.
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    # The singleton's settings hold the server (WANDB_BASE_URL, `wandb login --host`).
    base_url: str = wandb_setup.singleton().settings.base_url
    auth = wbauth.authenticate_session(
        host=base_url, source="gradsweep", prompt=False, update_session=False
    )
    return base_url if auth is not None else None


def reachable(base_url: str, timeout: float) -> bool:
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
