"""Preemption, kills, NaN and secrets: a run resumes exactly and loses nothing it logged."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gradsweep.errors import EXIT_NON_FINITE, CheckpointError
from gradsweep.files import write_json_atomic
from gradsweep.run.checkpoint import checkpoint_path, save_checkpoint
from gradsweep.run.training import train
from gradsweep.scan import report as scan_report
from gradsweep.tracking.tracker import RUN_ID_FILE
from gradsweep.tracking.wandb_records import find_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
PAUSED_TRAIN = Path(__file__).with_name("paused_train.py")
FAKE_KEY = "gsfake" + "0123456789abcdef" * 2 + "xyzw"  # 42 chars, well formed, never valid
RUN = ["data.source=bundled", "trainer.max_steps=40", "trainer.checkpoint_every=10"]
# Bounds for a hang, not measurements: a run takes seconds, more on a loaded machine.
HANG_S = 600


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    env.update(HOME=str(home), WANDB_CONFIG_DIR=str(home / ".wandb"), NETRC=str(home / ".netrc"))
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", **extra)
    return env


def start(
    run_dir: Path, env: dict[str, str], *overrides: str, paused: tuple[Path, str, int] | None = None
) -> subprocess.Popen:
    """`python train.py` on RUN and overrides in run_dir; with paused=(gate, where, step), the
    same run through tests/paused_train.py, which waits at that point for `go(gate)`."""
    program = ["train.py"] if paused is None else [str(PAUSED_TRAIN), *map(str, paused)]
    command = [sys.executable, *program, *RUN, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = HANG_S) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def wait_until_paused(gate: Path, process: subprocess.Popen) -> None:
    """Until the process started with paused=(gate, ...) has stopped at its point."""
    deadline = time.monotonic() + HANG_S
    while not (gate / "paused").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached its pause"
        time.sleep(0.05)


def go(gate: Path) -> None:
    (gate / "go").touch()


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path(run_dir), weights_only=True)["model"]


def history_steps(run_dir: Path) -> list[tuple[int, float]]:
    rows = []
    for path in find_runs(run_dir / "wandb"):
        rows += [(r["_step"], r["train/loss"]) for r in read_run(path).history if "train/loss" in r]
    return rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    code, stderr = finish(start(run_dir, clean_env(run_dir), "logger=none"))
    assert code == 0, stderr
    return run_dir


# Where the signal lands (tests/paused_train.py holds the run there until it is sent), and
# the step of the checkpoint the run stops with: in step 15, after step 10's checkpoint
# (SIGKILL leaves that one; SIGTERM checkpoints at the step's end, 16), or inside the
# checkpoint of step 20, W&B flushed and the file not yet written (SIGTERM: that checkpoint
# completes as a plain one, and the run stops after the next step, with a clean one).
SIGNALLED = [
    pytest.param(signal.SIGKILL, ("step", 15), 10, id="SIGKILL-mid-step"),
    pytest.param(signal.SIGTERM, ("step", 15), 16, id="SIGTERM-mid-step"),
    pytest.param(signal.SIGTERM, ("checkpoint", 20), 21, id="SIGTERM-mid-checkpoint"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "where", "stops_at"), SIGNALLED)
def test_killed_run_resumes_to_the_same_weights_and_metrics(
    uninterrupted, tmp_path, sig, where, stops_at
):
    env = clean_env(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    process = start(tmp_path, env, "logger=wandb", paused=(gate, *where))
    wait_until_paused(gate, process)
    process.send_signal(sig)
    go(gate)  # after the signal: a SIGTERM is recorded before the run goes on
    code, stderr = finish(process)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), stderr
    checkpoint = torch.load(checkpoint_path(tmp_path), weights_only=True)
    stopped_at = checkpoint["step"]
    assert stopped_at == stops_at
    if sig == signal.SIGTERM:
        assert f"checkpoint saved at step {stopped_at}" in stderr
        assert checkpoint["clean_stop"]  # the run ended its W&B run itself: nothing to replay
        # Told W&B it was preempted, as a sweep needs to requeue it, and ended failed.
        [stopped] = [read_run(path) for path in find_runs(tmp_path / "wandb")]
        assert stopped.preempting and stopped.exit_code == 128 + signal.SIGTERM

    code, stderr = finish(start(tmp_path, env, "logger=wandb"))
    assert code == 0, stderr
    assert f"resuming from {checkpoint_path(tmp_path)} at step {stopped_at}" in stderr

    expected, resumed = final_weights(uninterrupted), final_weights(tmp_path)
    assert max((expected[k] - resumed[k]).abs().max().item() for k in expected) == 0.0
    a = json.loads((uninterrupted / "summary.json").read_text())
    b = json.loads((tmp_path / "summary.json").read_text())
    for key in ("val/acc", "val/loss", "val/acc_best", "grad_flow/log10_ratio", "steps"):
        assert a[key] == b[key], key
    assert a["diagnosis/verdict"] == b["diagnosis/verdict"]

    # Both offline W&B folders carry the same run id, so `wandb sync` merges them.
    rows = history_steps(tmp_path)
    steps = sorted(step for step, _ in rows)
    assert sorted(set(steps)) == list(range(40))  # no step is missing
    if sig == signal.SIGTERM:
        assert steps == list(range(40))  # checkpointed at the signal: each step exactly once
    else:  # steps after the last checkpoint may appear twice, with equal values
        values: dict[int, float] = {}
        for step, loss in rows:
            assert values.setdefault(step, loss) == loss
    ids = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")}
    assert len(ids) == 1


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_keeps_its_wandb_run(tmp_path) -> None:
    env = clean_env(tmp_path)
    gate = tmp_path / "gate"
    gate.mkdir()
    process = start(tmp_path, env, "logger=wandb", paused=(gate, "step", 5))
    wait_until_paused(gate, process)
    process.send_signal(signal.SIGKILL)
    assert finish(process)[0] == -signal.SIGKILL
    assert not checkpoint_path(tmp_path).exists()
    run_id = (tmp_path / RUN_ID_FILE).read_text().strip()  # kept before the first step

    code, stderr = finish(start(tmp_path, env, "logger=wandb"))
    assert code == 0, stderr
    assert "resuming" not in stderr  # no checkpoint: trained again from step 0
    # One W&B run: both offline folders carry its id, and `wandb sync` merges them.
    runs = [read_run(path) for path in find_runs(tmp_path / "wandb")]
    assert [run.run_id for run in runs] == [run_id, run_id]
    # The writer outlived the killed run and ended its W&B run as failed, with its rows.
    first, second = sorted(runs, key=lambda run: run.exit_code == 0)
    assert first.exit_code == 1 and 0 < len(first.history) <= 6  # killed at step 5
    assert second.exit_code == 0
    assert [row["_step"] for row in second.history if "train/loss" in row] == list(range(40))


@pytest.mark.slow
def test_finished_run_folder_trains_no_more(uninterrupted) -> None:
    before = final_weights(uninterrupted)
    code, stderr = finish(start(uninterrupted, clean_env(uninterrupted), "logger=none"))
    assert code == 0 and "at step 40" in stderr
    after = final_weights(uninterrupted)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoint_of_another_config_is_refused(make_cfg, tmp_path) -> None:
    train(make_cfg(max_steps=2), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="different config"):
        train(make_cfg("activation=relu", max_steps=2), run_dir=tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "corrupt or not a gradsweep checkpoint"),
        (None, "not a gradsweep"),
    ],
)
def test_corrupt_or_foreign_checkpoint_is_a_clear_error(make_cfg, tmp_path, content, message):
    path = checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    if content is None:
        torch.save({"model": {}}, path)  # someone else's checkpoint
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        train(make_cfg(max_steps=2), run_dir=tmp_path)


def test_checkpoint_write_is_atomic(tmp_path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


# Each atomic writer, with contents it cannot serialize and with contents it can.
WRITERS = {
    "summary.json": (
        lambda path: write_json_atomic(path, {"bad": object()}),
        lambda path: write_json_atomic(path, {"val/acc": 0.9}),
    ),
    "last.pt": (
        lambda path: save_checkpoint(path, {"bad": lambda: None}),
        lambda path: save_checkpoint(path, {"step": 1}),
    ),
    "scan.json": (
        lambda path: scan_report.write_json(path, [{"bad": math.nan}]),
        lambda path: scan_report.write_json(path, [{"verdict": "vanishing"}]),
    ),
}


@pytest.mark.parametrize("name", WRITERS)
def test_a_write_that_fails_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, name) -> None:
    bad, good = WRITERS[name]
    path = tmp_path / name
    path.write_text("the previous contents\n")
    with pytest.raises((TypeError, ValueError, AttributeError, pickle.PicklingError)):
        bad(path)
    assert path.read_text() == "the previous contents\n"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    # The rename fails too (the target is a folder that holds a file): no temp file stays.
    path.unlink()
    (path / "inside").mkdir(parents=True)
    with pytest.raises(OSError):
        good(path)
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.slow
def test_nan_stops_the_run_with_its_own_exit_code(tmp_path) -> None:
    overrides = ("logger=wandb", "activation=relu", "init=kaiming", "optimizer.lr=1e4")
    process = start(tmp_path, clean_env(tmp_path), *overrides)
    code, stderr = finish(process)
    assert code == EXIT_NON_FINITE, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diagnosis/verdict"] == "non_finite"
    step = summary["diagnosis/non_finite_step"]
    assert summary["steps"] == step + 1 < 40
    assert sorted(s for s, _ in history_steps(tmp_path)) == list(range(step + 1))


def test_unwritable_run_folder_is_named(make_cfg, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    from gradsweep.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot write to the run folder"):
        train(make_cfg(max_steps=2), run_dir=blocker / "run")


@pytest.mark.slow
def test_api_key_appears_in_no_file_and_no_output(tmp_path) -> None:
    env = clean_env(tmp_path, WANDB_API_KEY=FAKE_KEY)
    del env["WANDB_MODE"]  # auto mode sees the key, finds no server, goes offline
    code, stderr = finish(start(tmp_path / "run", env, "logger=wandb", "trainer.max_steps=5"))
    assert code == 0, stderr
    assert FAKE_KEY not in stderr
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".pt" for p in files)
    for path in files:
        assert FAKE_KEY.encode() not in path.read_bytes(), path
