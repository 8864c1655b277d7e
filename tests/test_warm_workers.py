"""Warm workers: a sweep's jobs run one after another in one long-lived process, each exactly as
its own `python train.py` would run, with nothing carried from one job into the next."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from gradsweep.data.load import keep_loaded_data, load_data
from gradsweep.run.inprocess import ProcessState, console_to, exit_status
from gradsweep.sweeps.definition import load_definition
from gradsweep.sweeps.records import FAILED, FINISHED, INTERRUPTED, load_records
from gradsweep.sweeps.runner import run_sweep
from gradsweep.sweeps.warm import WarmWorker, split_command
from gradsweep.sweeps.workers import auto_workers, worker_env
from gradsweep.tracking.wandb_records import find_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "train.py")
DATA = ["data.source=bundled", "data.val_size=500"]
SMALL = [*DATA, "model.depth=6", "model.width=32"]
MODELS = "tests.worker_models"


def test_split_command_takes_what_a_sweep_builds_and_nothing_else() -> None:
    command = ["/usr/bin/env", sys.executable, "train.py", "activation=relu", "seed=1"]
    assert split_command(command, sys.executable) == (
        os.path.join(os.getcwd(), "train.py"),
        ["activation=relu", "seed=1"],
    )
    assert split_command(["python", "/abs/train.py"], sys.executable) == ("/abs/train.py", [])
    assert split_command(["python", "-u", "train.py"], sys.executable) is None
    assert split_command(["srun", "python", "train.py"], sys.executable) is None


def test_workers_per_gpu_share_each_gpu_and_are_pinned_where_there_are_several() -> None:
    gpus = ["0", "1"]
    pinned = [worker_env({}, s, 4, "g", cpus=8, gpus=gpus, workers_per_gpu=2) for s in range(4)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in pinned] == ["0", "0", "1", "1"]
    assert {env["OMP_NUM_THREADS"] for env in pinned} == {"2"}  # the cores shared by all four
    shared = worker_env({}, 1, 3, "g", cpus=6, gpus=["0"], workers_per_gpu=3)
    assert "CUDA_VISIBLE_DEVICES" not in shared  # one GPU: visible to all, nothing to pin
    assert auto_workers({}, cpus=8, gpus=gpus, workers_per_gpu=3) == 6
    assert auto_workers({}, cpus=2, gpus=[], workers_per_gpu=3) == 2  # no GPU: per core


def test_process_state_puts_back_what_a_job_changed(tmp_path: Path) -> None:
    before = ProcessState.capture()
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    # A job that changes everything it may change.
    torch.manual_seed(123)
    torch.set_num_threads(threads + 1)
    torch.use_deterministic_algorithms(True)
    os.environ["GRADSWEEP_TEST_JOB"] = "1"
    os.chdir(tmp_path)
    warnings.simplefilter("error")
    handler = logging.FileHandler(tmp_path / "job.log")
    logging.getLogger().addHandler(handler)
    logging.getLogger("a.job.logger").setLevel(logging.DEBUG)
    previous = signal.signal(signal.SIGUSR1, lambda *args: None)
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    left_open = (tmp_path / "left_open.txt").open("w")
    try:
        leaks = before.restore()
    finally:
        hook.remove()
        left_open.close()
        gc.unfreeze()  # restore() sets the process's objects aside from collections
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)
    assert not torch.are_deterministic_algorithms_enabled()
    assert "GRADSWEEP_TEST_JOB" not in os.environ
    assert os.getcwd() == before.cwd
    assert warnings.filters == before.warning_filters
    assert handler not in logging.getLogger().handlers and handler.stream is None  # closed
    assert logging.getLogger("a.job.logger").level == logging.NOTSET
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert any("left_open.txt" in leak for leak in leaks)
    assert any("_global_forward_hooks" in leak for leak in leaks)
    assert any("torch settings changed" in leak for leak in leaks)


def test_console_to_takes_python_and_file_descriptor_output(tmp_path: Path, capsys) -> None:
    path = tmp_path / "console.log"
    with capsys.disabled(), console_to(path, header="$ train.py\n"):  # the real sys.stdout
        print("from print")
        print("from stderr", file=sys.stderr)
        os.write(1, b"from fd 1\n")
    assert path.read_text().splitlines() == ["$ train.py", "from print", "from stderr", "from fd 1"]
    assert [exit_status(c) for c in (None, 0, 3, 130, "message")] == [0, 0, 3, 130, 1]


def test_kept_data_is_shared_until_changed_in_place(make_cfg) -> None:
    cfg = make_cfg()
    keep_loaded_data(True)
    try:
        first = load_data(cfg.data)
        assert load_data(cfg.data) is first
        first.train_x.add_(0)  # changed in place: never handed out again
        second = load_data(cfg.data)
        assert second is not first
    finally:
        keep_loaded_data(False)
    assert load_data(cfg.data) is not second


def _run_on(worker: WarmWorker, folder: Path, args: list[str]) -> dict:
    folder.mkdir(parents=True)
    worker.submit(TRAIN, [*args, f"hydra.run.dir={folder}"], folder / "console.log")
    while (result := worker.poll()) is None:
        time.sleep(0.05)
    return result


def _history_losses(folder: Path) -> list[float]:
    [path] = find_runs(folder / "wandb")
    return [row["train/loss"] for row in read_run(path).history if "train/loss" in row]


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_a_run_is_the_same_alone_and_as_the_nth_run_of_a_warm_worker(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    target = [*SMALL, "activation=tanh", "trainer.max_steps=40", "trainer.eval_every=20"]
    alone = tmp_path / "alone"
    subprocess.run(
        [sys.executable, TRAIN, *target, f"hydra.run.dir={alone}"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )

    worker = WarmWorker(env, tmp_path / "worker.log", TRAIN)
    steps = ["trainer.max_steps=20"]
    jobs = {
        "other": [
            *SMALL,
            *steps,
            "activation=relu",
            "norm=batch",
            "skip=residual",
            "clipping=norm",
        ],
        "nan": [*SMALL, *steps, "activation=relu", "optimizer.lr=1e30"],
        "raised": [*DATA, *steps, "model=custom", f"model._target_={MODELS}.Raises"],
        "bad_option": [*SMALL, "activation=gelx"],
        "target": target,
    }
    try:
        results = {name: _run_on(worker, tmp_path / name, args) for name, args in jobs.items()}
        assert worker.process.poll() is None  # one worker ran them all
    finally:
        worker.quit()
        worker.wait()
    codes = {name: result["exit_code"] for name, result in results.items()}
    assert codes == {"other": 0, "nan": 3, "raised": 1, "bad_option": 2, "target": 0}
    assert all(result["leaks"] == [] for result in results.values()), results
    assert "raised on purpose" in (tmp_path / "raised" / "console.log").read_text()
    assert "gelx" in (tmp_path / "bad_option" / "console.log").read_text()

    # The same results, to the last bit: summary.json, the loss at every step, the config.
    warm = tmp_path / "target"
    assert json.loads((warm / "summary.json").read_text()) == json.loads(
        (alone / "summary.json").read_text()
    )
    assert _history_losses(warm) == _history_losses(alone)
    for name in ("config.yaml", "overrides.yaml"):
        ours = (warm / ".hydra" / name).read_text().replace(str(warm), "DIR")
        assert ours == (alone / ".hydra" / name).read_text().replace(str(alone), "DIR"), name
    # The same files in the folder (console.log is the runner's; the lone run had a terminal).
    listing = {p.relative_to(warm).parts[0] for p in warm.iterdir()} - {"console.log"}
    assert listing == {p.relative_to(alone).parts[0] for p in alone.iterdir()}
    assert "training steps 0..40" in (warm / "train.log").read_text()
    # The W&B run describes the same job: the program, and the arguments as given.
    [ours], [theirs] = find_runs(warm / "wandb"), find_runs(alone / "wandb")
    ours, theirs = read_run(ours), read_run(theirs)
    assert ours.program == theirs.program == TRAIN
    assert [a.replace(str(warm), "DIR") for a in ours.args] == [
        a.replace(str(alone), "DIR") for a in theirs.args
    ]
    assert ours.config == {**theirs.config}
    # Each job its own W&B run, ended with its own status.
    for name, code in {"other": 0, "nan": 1, "raised": 1, "target": 0}.items():
        [path] = find_runs(tmp_path / name / "wandb")
        assert read_run(path).exit_code == code, name


def _definition(folder: Path, name: str, **parameters) -> Path:
    params = {
        "data.source": {"value": "bundled"},
        "data.val_size": {"value": 500},
        "trainer.max_steps": {"value": 12},
        "model": {"value": "custom"},
        **parameters,
    }
    definition = {
        "name": name,
        "program": TRAIN,
        "method": "grid",
        "parameters": params,
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_a_worker_killed_with_a_run_in_hand_fails_it_and_is_replaced(tmp_path: Path) -> None:
    models = [f"{MODELS}.KillsItself", f"{MODELS}.Fine", f"{MODELS}.AlsoFine"]
    path = _definition(tmp_path, "killed", **{"model._target_": {"values": models}})
    # One run a worker: a worker retires after each run, and a fresh one takes the next.
    sweep = tmp_path / "sweep"
    outcome = run_sweep(load_definition(path), sweep, workers=1, runs_per_worker=1)
    assert (outcome.finished, outcome.failed) == (2, 1)
    records = {r.params["model._target_"]: r for r in load_records(sweep)}
    killed, fine = records[models[0]], records[models[1]]
    assert killed.state == FAILED and killed.exit_code == -signal.SIGKILL
    assert fine.state == records[models[2]].state == FINISHED  # each on a fresh worker
    # The killed worker wrote no last line; each of the two retired ones did.
    assert (sweep / ".workers" / "worker-0.log").read_text().count(": exits 0 after") == 2
    # The killed job's W&B run was ended by its writer, marked failed, its rows kept.
    [run] = find_runs(killed.folder / "wandb")
    assert read_run(run).exit_code == 1


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_a_worker_whose_memory_grows_is_replaced_after_its_run(tmp_path: Path) -> None:
    models = [f"{MODELS}.Fine", f"{MODELS}.HoldsMemory", f"{MODELS}.AlsoFine"]
    path = _definition(tmp_path, "growth", **{"model._target_": {"values": models}})
    sweep = tmp_path / "sweep"
    outcome = run_sweep(load_definition(path), sweep, workers=1, growth_mb=128)
    assert (outcome.finished, outcome.failed) == (3, 0)
    # The first worker ran Fine, then HoldsMemory grew it by 256 MiB: it retired after that
    # run, and a fresh worker ran AlsoFine. Both wrote their last line.
    log = (sweep / ".workers" / "worker-0.log").read_text()
    assert log.count(": exits 0 after") == 2, log


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_sigterm_stops_a_warm_sweep_that_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    parameters = {
        "model._target_": {"value": f"{MODELS}.Pauses"},
        "trainer.checkpoint_every": {"value": 1000},
    }
    path = _definition(tmp_path, "stopped", **parameters)
    monkeypatch.setenv("GRADSWEEP_TEST_GATE", str(gate))  # for the sweep and the rerun
    command = [sys.executable, "-m", "gradsweep.cli.main", "sweep", str(path)]
    command += ["--dir", str(tmp_path / "sweep"), "--workers", "1"]
    sweep = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (gate / "paused").exists():
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.stderr.read()
            time.sleep(0.05)
        os.killpg(sweep.pid, signal.SIGTERM)  # as a scheduler stops a job: every process
        time.sleep(0.5)
        (gate / "go").touch()
        assert sweep.wait(timeout=300) == 130
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    [record] = load_records(tmp_path / "sweep")
    assert record.state == INTERRUPTED and record.exit_code == 128 + signal.SIGTERM
    assert "signal 15: checkpoint saved at step 6" in (record.folder / "train.log").read_text()

    # Resumed at step 6, the model pauses again at its 6th training forward, and goes on: the
    # gate is open.
    outcome = run_sweep(load_definition(path), tmp_path / "sweep", workers=1)
    assert (outcome.finished, outcome.failed) == (1, 0)
    assert "resuming from" in (record.folder / "console.log").read_text()
    assert json.loads((record.folder / "summary.json").read_text())["steps"] == 12


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_one_w_and_b_writer_serves_runs_one_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm worker's W&B side: one writer process (one wandb service) for its runs, each its
    own W&B run, finished before the next; a sweep run's ids come with the run."""
    from gradsweep.tracking.tracker import start_tracking
    from gradsweep.tracking.writer_process import reuse_writers

    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "params.yaml").write_text("activation:\n  value: relu\n")
    sweep_env = {
        "WANDB_SWEEP_ID": "swp777",
        "WANDB_RUN_ID": "sweeprun7",
        "WANDB_SWEEP_PARAM_PATH": str(tmp_path / "params.yaml"),
    }
    runs = [("plain", 0, {}), ("failed", 1, {}), ("in_sweep", 0, sweep_env), ("after", 0, {})]
    writers = []
    reuse_writers(True)
    try:
        for name, code, env in runs:
            with monkeypatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                logger = {"name": "wandb", "mode": "auto", "niceness": 0}
                tracker = start_tracking(logger, {"run": name}, tmp_path / name)
                tracker.log({"x": 1.0}, step=0)
                writers.append(tracker._writer.process)
                tracker.finish(exit_code=code)
    finally:
        reuse_writers(False)
    assert len({writer.pid for writer in writers}) == 1
    assert writers[0].poll() is not None  # ended with the worker's last run
    records = {name: read_run(*find_runs(tmp_path / name / "wandb")) for name, *_ in runs}
    assert [records[name].exit_code for name, *_ in runs] == [0, 1, 0, 0]
    assert all(records[name].config["run"] == name for name, *_ in runs)
    assert all([row["x"] for row in records[name].history] == [1] for name, *_ in runs)
    swept = records["in_sweep"]
    assert (swept.run_id, swept.sweep_id, swept.config["activation"]) == (
        "sweeprun7",
        "swp777",
        "relu",
    )
    after = records["after"]  # no sweep's ids left over in the writer's wandb session
    assert after.sweep_id is None and after.run_id != "sweeprun7"
    assert "activation" not in after.config
