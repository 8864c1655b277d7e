"""The W&B link, on real offline wandb runs read back from their `.wandb` files (no mocks).

Every test runs with no W&B credentials: HOME, wandb's config folder and the netrc file point
into tmp_path and the WANDB_* variables that carry keys or modes are unset; the W&B writer
process inherits that environment. `finish()` returns once the writer has exited, so the
run's files are complete then.

Every test starts a process (the W&B writer, or a Python of its own), hence `slow`. No test
times anything: "fast" below means the online init was never tried, as the log line says.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradsweep.tracking.tracker import RUN_ID_FILE, start_tracking
from gradsweep.tracking.wandb_records import BLOCK_LEN, find_runs, read_run

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "gradsweepfakekey" + "0123456789abcdef01234567"  # 40 characters, wandb's format
# How long a writer may take to end a run on its own before a test gives up: a bound for a
# hang, not a measurement (ending takes seconds, more on a loaded machine).
ENDED_WITHIN_S = 600


def logger_cfg(**overrides: object) -> dict[str, object]:
    """conf/logger/wandb.yaml, as start_tracking sees it."""
    cfg: dict[str, object] = {
        "name": "wandb",
        "mode": "offline",
        "project": "gradsweep-tests",
        "entity": None,
        "group": None,
        "tags": [],
        "run_name": None,
        "notes": None,
        "init_timeout": 15,
    }
    cfg.update(overrides)
    return cfg


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_wandb_credentials")]


def write_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def test_offline_run_round_trips(tmp_path: Path) -> None:
    # 45 metrics a step as in a 20-layer MLP, enough steps to fill several 32 KiB blocks, and a
    # config value bigger than a block, so records split across blocks are read too.
    config = {
        "model": {"name": "mlp", "depth": 20, "width": 256},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "seed": 0,
        "tags_seen": ["a", "b"],
        "blob": "x" * (2 * BLOCK_LEN),
    }
    run_dir = tmp_path / "run"
    tracker = start_tracking(
        logger_cfg(group="sigmoid-depth20", tags=["test"], run_name="rt"), config, run_dir
    )
    assert tracker.mode == "offline"
    logged = []
    for step in range(150):
        metrics = {f"grad_norm/layers.{i}.weight": 10.0 ** -(i % 8) * (step + 1) for i in range(41)}
        metrics |= {"train/loss": 2.3 / (step + 1), "train/acc": step / 150}
        metrics |= {"grad_norm/total": 1.5, "grad_flow/log10_ratio": -7.0}
        if step % 50 == 49:
            metrics |= {"val/acc": [0.3, 0.9, 0.6][step // 50], "val/loss": 1.0 - step / 150}
        tracker.log(metrics, step=step)
        logged.append(metrics)
    tracker.log_images({"grad_flow/plot": write_png(tmp_path / "plot.png")}, step=149)
    # Int keys in a nested dict, which wandb itself would fail on, come back as str.
    layers = {0: "layers.0", 1: "layers.1"}
    tracker.update_summary(
        {"diagnosis/verdict": "vanishing", "val/acc_best": 0.9, "telemetry/layers": layers}
    )
    tracker.finish()

    run = read_run(run_dir)
    assert run.run_id == tracker.run_id
    assert run.group == "sigmoid-depth20"
    assert run.config == config
    assert run.exit_code == 0
    assert [row["_step"] for row in run.history] == list(range(150))
    assert [
        {key: row[key] for key in metrics} for row, metrics in zip(run.history, logged, strict=True)
    ] == logged
    # The image joined the last step's row, as a reference to the copied file.
    image = run.history[-1]["grad_flow/plot"]
    assert image["_type"] == "image-file"
    assert (find_runs(run_dir)[0].parent / "files" / image["path"]).is_file()
    # define_metric summaries: best and last for val/acc, the last row for the rest.
    assert run.summary["val/acc"] == {"max": 0.9, "last": 0.6}
    assert run.summary["val/loss"] == {
        "min": logged[149]["val/loss"],
        "last": logged[149]["val/loss"],
    }
    assert run.summary["train/loss"] == logged[-1]["train/loss"]
    assert run.summary["diagnosis/verdict"] == "vanishing"
    assert run.summary["val/acc_best"] == 0.9
    assert run.summary["telemetry/layers"] == {"0": "layers.0", "1": "layers.1"}


def test_reader_agrees_with_wandb_leet(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    tracker = start_tracking(logger_cfg(), {"a": {"b": 1}, "lr": 0.1}, run_dir)
    for step in range(3):
        tracker.log({"train/loss": 1.0 / (step + 1), "val/acc": 0.5 + step / 10}, step=step)
    tracker.log({"odd": math.nan}, step=3)
    tracker.update_summary({"diagnosis/verdict": "healthy"})
    tracker.finish(exit_code=1)

    wandb_file = find_runs(run_dir)[0]
    wandb_cli = shutil.which("wandb")
    if wandb_cli is None:
        pytest.skip("no wandb command on PATH")
    # wandb's CLI appends to <temp dir>/debug-cli.<user>.log (no ./wandb folder here): a
    # temp dir of this test's own, not the /tmp that other suites and users share.
    leet = subprocess.run(
        [wandb_cli, "leet", "inspect", "--summary", "--json", str(wandb_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    if leet.returncode != 0:
        pytest.skip(f"wandb leet inspect unavailable: {leet.stderr.strip()[:200]}")
    theirs = json.loads(leet.stdout)
    ours = read_run(wandb_file)
    # leet prints NaN as the string "NaN".
    assert {**ours.summary, "odd": "NaN"} == theirs["summary"]
    assert ours.config == theirs["config"]
    assert (ours.run_id, ours.exit_code) == (theirs["run_id"], theirs["exit_code"])
    assert ours.history[-1]["_step"] == theirs["step"]


def test_failed_run_keeps_exit_code_and_history(tmp_path: Path) -> None:
    tracker = start_tracking(logger_cfg(), {"seed": 1}, tmp_path / "run")
    for step in range(3):
        tracker.log({"train/loss": float(step)}, step=step)
    tracker.finish(exit_code=1)

    run = read_run(tmp_path / "run")
    assert run.exit_code == 1
    assert [row["train/loss"] for row in run.history] == [0, 1, 2]


def test_reader_tolerates_a_cut_tail_and_rejects_corruption(tmp_path: Path) -> None:
    tracker = start_tracking(logger_cfg(), {}, tmp_path / "run")
    for step in range(5):
        tracker.log({"train/loss": float(step)}, step=step)
    tracker.finish()
    data = find_runs(tmp_path / "run")[0].read_bytes()

    # A killed run: the file ends inside a record. What came before still reads.
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[:-3])
    run = read_run(cut)
    assert run.exit_code is None
    assert [row["_step"] for row in run.history] == list(range(5))

    # A flipped byte inside a payload (a header byte could read as a cut tail instead).
    flipped = bytearray(data)
    flipped[data.index(b"train/loss") + 2] ^= 0xFF
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupt"):
        read_run(bad)


def test_auto_without_key_runs_offline(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gradsweep.tracking.tracker")
    tracker = start_tracking(logger_cfg(mode="auto"), {}, tmp_path / "run")
    mode = tracker.mode  # waits for the run to start
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.finish()

    assert mode == "offline"
    # Offline at once: the reason is the missing key, so no online init was tried.
    [record] = [r for r in caplog.records if r.name == "gradsweep.tracking.tracker"]
    assert "offline (no API key configured)" in record.getMessage()
    assert "wandb sync" in record.getMessage()
    assert len(read_run(tmp_path / "run").history) == 1


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on, for the whole test: connecting is refused at once.
    The port stays bound (never listening) until the test ends, so that no other process,
    such as a second test suite's stand-in server, can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server", ["dns", "refused"])
def test_auto_with_key_and_no_server_runs_offline_fast(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    closed_port: int,
    server: str,
) -> None:
    # Without the probe, wandb.init would wait init_timeout (90 s by default) for the server.
    base_url = {
        "dns": "https://gradsweep-test.invalid",  # .invalid never resolves (RFC 2606)
        "refused": f"http://127.0.0.1:{closed_port}",
    }[server]
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", base_url)
    caplog.set_level(logging.INFO, logger="gradsweep.tracking.tracker")
    tracker = start_tracking(logger_cfg(mode="auto"), {"seed": 0}, tmp_path / "run")
    mode = tracker.mode
    tracker.finish()

    assert mode == "offline"
    # The probe found no server, so the online init (the wait) was never tried.
    [record] = [r for r in caplog.records if r.name == "gradsweep.tracking.tracker"]
    assert f"{base_url} unreachable" in record.getMessage()
    assert "online init failed" not in caplog.text
    assert FAKE_KEY not in caplog.text
    assert not files_holding(tmp_path, FAKE_KEY)


def test_auto_falls_back_when_server_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that accepts connections and never replies: the probe passes, the online init
    # times out after logger.init_timeout, and the run goes offline with the id it was given.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        caplog.set_level(logging.INFO, logger="gradsweep.tracking.tracker")
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / RUN_ID_FILE).write_text("resumable1\n")  # a run started here before
        tracker = start_tracking(logger_cfg(mode="auto", init_timeout=1), {"seed": 0}, run_dir)
        assert tracker.mode == "offline"
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.finish()

    assert (tracker.mode, tracker.run_id) == ("offline", "resumable1")
    # The probe passed (the server accepts), so the online init was tried and failed.
    assert "online init failed" in caplog.text
    # The failed online attempt's folder is gone: the run folder holds one run.
    [wandb_file] = find_runs(run_dir)
    assert read_run(wandb_file).run_id == "resumable1"
    # The key went to wandb's service, which logs a lot: it is in no file (run folder, HOME).
    assert not files_holding(tmp_path, FAKE_KEY)
    assert FAKE_KEY not in caplog.text


def test_online_mode_without_key_raises(tmp_path: Path) -> None:
    tracker = start_tracking(logger_cfg(mode="online"), {}, tmp_path / "run")
    with pytest.raises(RuntimeError, match="no API key configured"):
        print(tracker.mode)
    tracker.finish()  # nothing left to end: no error


@pytest.mark.parametrize("cfg", [{"name": "none"}, {"name": "wandb", "mode": "disabled"}])
def test_no_wandb_writes_nothing_and_never_imports_it(tmp_path: Path, cfg: dict) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = f"""
import sys
from pathlib import Path
from gradsweep.tracking.tracker import start_tracking
tracker = start_tracking({cfg!r}, {{"seed": 0}}, Path({str(run_dir)!r}))
tracker.log({{"train/loss": 1.0}}, step=0)
tracker.log_images({{"plot": Path("missing.png")}}, step=0)
tracker.log_table("table", ["a"], [[1]], step=0)
tracker.update_summary({{"diagnosis/verdict": "healthy"}})
tracker.finish(exit_code=1)
print(tracker.mode, tracker.run_id, "wandb" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    mode = "none" if cfg["name"] == "none" else "disabled"
    assert result.stdout.split() == [mode, "None", "False"]
    assert list(run_dir.iterdir()) == []


def test_runs_open_side_by_side_stay_apart(tmp_path: Path) -> None:
    # Each run has its own writer process: a job that is still open (Hydra multirun runs
    # jobs in one process) cannot take the next job's rows.
    first = start_tracking(logger_cfg(), {"job": 0}, tmp_path / "job0")
    first.log({"train/loss": 1.0}, step=0)
    second = start_tracking(logger_cfg(), {"job": 1}, tmp_path / "job1")
    second.log({"train/loss": 2.0}, step=0)
    second.finish()
    first.log({"train/loss": 3.0}, step=1)
    first.finish(exit_code=1)

    assert first.run_id != second.run_id
    job0, job1 = read_run(tmp_path / "job0"), read_run(tmp_path / "job1")
    assert (job0.config, job1.config) == ({"job": 0}, {"job": 1})
    assert [row["train/loss"] for row in job0.history] == [1, 3]
    assert [row["train/loss"] for row in job1.history] == [2]
    assert (job0.exit_code, job1.exit_code) == (1, 0)


def test_a_killed_trainer_loses_no_row(tmp_path: Path) -> None:
    # SIGKILL leaves no chance to finish: the writer reads every row already sent, then ends
    # the run itself, marked failed. The training process never imports wandb.
    run_dir = tmp_path / "run"
    code = f"""
import os, signal, sys
from pathlib import Path
from gradsweep.tracking.tracker import start_tracking
tracker = start_tracking({logger_cfg()!r}, {{"seed": 0}}, Path({str(run_dir)!r}))
for step in range(500):
    tracker.log({{"train/loss": float(step), "grad_norm/total": step / 7}}, step=step)
assert "wandb" not in sys.modules
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    run = ended_run(run_dir)
    assert run.exit_code == 1
    assert [row["train/loss"] for row in run.history] == list(range(500))


def ended_run(run_dir: Path, timeout: float = ENDED_WITHIN_S):
    """The run in run_dir once the writer has written its exit record (the writer ends the
    run on its own after the training process is gone, so this polls)."""
    deadline = time.monotonic() + timeout
    while True:
        if find_runs(run_dir) and (run := read_run(run_dir)).exit_code is not None:
            return run
        assert time.monotonic() < deadline, "the writer never ended the run"
        time.sleep(0.2)


def test_a_failed_wandb_call_is_raised_and_the_run_still_ends(tmp_path: Path) -> None:
    tracker = start_tracking(logger_cfg(), {}, tmp_path / "run")
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.log_images({"plot": tmp_path / "missing.png"}, step=1)  # wandb.Image raises
    with pytest.raises(RuntimeError, match="W&B logging failed"):
        tracker.flush()
    tracker.finish(exit_code=1)  # already ended: nothing more happens

    run = ended_run(tmp_path / "run")
    assert run.exit_code == 1
    assert [row["train/loss"] for row in run.history] == [1]


def test_the_writer_outlives_stop_signals_sent_to_the_whole_job(tmp_path: Path) -> None:
    # SLURM signals every process of a job (SIGTERM, and SIGUSR2 before preemption): the
    # writer stays, so the training process can checkpoint and then end the run itself.
    tracker = start_tracking(logger_cfg(), {}, tmp_path / "run")
    assert tracker.mode == "offline"
    writer = tracker._writer.process
    for stop in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        writer.send_signal(stop)
    tracker.log({"train/loss": 1.0}, step=0)
    tracker.flush()
    assert writer.poll() is None
    tracker.finish()

    run = read_run(tmp_path / "run")
    assert run.exit_code == 0 and len(run.history) == 1
