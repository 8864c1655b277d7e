"""`gradsweep sweep`: the offline runner plans with W&B's engine, runs real jobs in parallel,
logs them to W&B offline under the sweep's group, and never repeats a finished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from gradsweep.cli.main import main
from gradsweep.config import hydra_value
from gradsweep.errors import SweepError
from gradsweep.sweeps.definition import load_definition
from gradsweep.sweeps.plan import SweepPlan
from gradsweep.sweeps.records import FINISHED, INTERRUPTED, RunRecord, load_records
from gradsweep.sweeps.runner import run_sweep
from gradsweep.sweeps.summarize import summarize
from gradsweep.sweeps.workers import MAX_AUTO_WORKERS, auto_workers, visible_gpus, worker_env
from gradsweep.tracking.wandb_records import find_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]


def write_definition(folder: Path, method: str = "grid", **parameters) -> Path:
    """A tiny sweep over activations: 2-hidden-layer MLPs, 3 steps on the bundled digits."""
    params = {
        "activation": {"values": ["sigmoid", "relu", "gelu"]},
        "model.depth": {"value": 2},
        "model.width": {"value": 16},
        "data.source": {"value": "bundled"},
        "trainer.max_steps": {"value": 3},
        **parameters,
    }
    definition = {
        "name": "tiny_grid",
        "program": str(ROOT / "train.py"),
        "method": method,
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": params,
        "command": COMMAND,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    return path


def test_worker_env_splits_threads_and_gpus_and_sets_the_group() -> None:
    env = worker_env({}, slot=1, workers=2, group="g", cpus=2, gpus=["0", "1"])
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["WANDB_MODE"] == "offline" and env["WANDB_RUN_GROUP"] == "g"
    alone = worker_env({"WANDB_MODE": "disabled"}, 0, 1, "g", cpus=16, gpus=["0"])
    assert alone["OMP_NUM_THREADS"] == "16"
    assert "CUDA_VISIBLE_DEVICES" not in alone  # one GPU: every job shares it
    assert alone["WANDB_MODE"] == "disabled"  # the user's choice stays
    capped = worker_env({"OMP_NUM_THREADS": "2"}, 0, 2, "g", cpus=16, gpus=[])
    assert capped["OMP_NUM_THREADS"] == "2"
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_auto_workers_is_one_job_per_gpu_else_per_core_capped() -> None:
    assert auto_workers({}, cpus=2, gpus=[]) == 2
    assert auto_workers({}, cpus=64, gpus=[]) == MAX_AUTO_WORKERS
    assert auto_workers({}, cpus=64, gpus=["0", "1", "2", "3"]) == 4
    assert auto_workers({"CUDA_VISIBLE_DEVICES": "5"}, cpus=1) == 1
    assert auto_workers({"CUDA_VISIBLE_DEVICES": ""}, cpus=3) == 3


@pytest.mark.parametrize("path", ["/tmp/plain/0001", "/tmp/a b/x,y=z/0001", "/tmp/it's"])
def test_run_folder_reaches_hydra_intact(path: str) -> None:
    override = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_value(path)}"])
    assert override[0].value() == path


def test_plan_skips_finished_runs_and_resumes_interrupted_ones_in_place(tmp_path) -> None:
    definition = load_definition(write_definition(tmp_path))
    sweep_dir = tmp_path / "sweep"
    fixed = {"data.source": "bundled", "model.depth": 2, "model.width": 16, "trainer.max_steps": 3}
    for index, (activation, state) in enumerate([("relu", FINISHED), ("gelu", INTERRUPTED)]):
        folder = sweep_dir / f"{index:04d}"
        folder.mkdir(parents=True)
        RunRecord(folder=folder, params={"activation": activation, **fixed}, state=state).save()
    planned = SweepPlan(definition, sweep_dir).plan()
    # The grid's order; the interrupted run goes back to its own folder, to resume there.
    assert [(r.folder.name, r.params["activation"]) for r in planned] == [
        ("0002", "sigmoid"),
        ("0001", "gelu"),
    ]
    assert planned[0].command[-1] == f"hydra.run.dir={(sweep_dir / '0002').resolve()}"
    assert "activation=sigmoid" in planned[0].command
    assert len(SweepPlan(definition, sweep_dir, count=1).plan()) == 1


@pytest.mark.filterwarnings("ignore:The optimal value found:UserWarning")
def test_random_and_bayes_propose_with_w_and_b_engine(tmp_path) -> None:
    lr = {"optimizer.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}
    random = load_definition(write_definition(tmp_path, "random", **lr))
    with pytest.raises(SweepError, match="--count"):
        SweepPlan(random, tmp_path / "r")
    planned = SweepPlan(random, tmp_path / "r", count=3).plan()
    assert len(planned) == 3
    assert all(1e-4 <= r.params["optimizer.lr"] <= 1e-1 for r in planned)

    bayes = load_definition(write_definition(tmp_path, "bayes", **lr))
    sweep_dir = tmp_path / "b"
    for index, (activation, acc) in enumerate([("relu", 0.9), ("sigmoid", 0.1)]):
        folder = sweep_dir / f"{index:04d}"
        folder.mkdir(parents=True)
        params = {"activation": activation, "optimizer.lr": 0.01}
        RunRecord(folder=folder, params=params, state=FINISHED).save()
        (folder / "summary.json").write_text(json.dumps({"val/acc": acc}))
    planned = SweepPlan(bayes, sweep_dir, count=2).plan()
    assert [r.folder.name for r in planned] == ["0002", "0003"]


def test_overriding_a_sweep_parameter_is_refused(tmp_path) -> None:
    definition = load_definition(write_definition(tmp_path))
    with pytest.raises(SweepError, match="activation"):
        SweepPlan(definition, tmp_path / "s", overrides=["activation=tanh"])


def test_dry_run_prints_the_agent_commands(tmp_path, capsys) -> None:
    path = write_definition(tmp_path)
    code = main(["sweep", str(path), "--dry-run", "--dir", str(tmp_path / "s"), "-o", "seed=3"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("/usr/bin/env ")
    assert "activation=sigmoid" in lines[0] and "seed=3 hydra.run.dir=" in lines[0]
    assert not (tmp_path / "s").exists()  # a dry run writes nothing


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")  # the jobs' wandb writes under tmp_path/home
def test_offline_sweep_end_to_end_then_nothing_repeats(tmp_path) -> None:
    path = write_definition(tmp_path, activation={"values": ["sigmoid", "relu"]})
    definition = load_definition(path)
    sweep_dir = tmp_path / "sweep"
    first = run_sweep(definition, sweep_dir, workers=2)  # both runs at once
    assert (first.finished, first.failed) == (2, 0)
    second = run_sweep(definition, sweep_dir, workers=2)
    assert second.planned == [] and second.already_finished == 2

    records = load_records(sweep_dir)
    assert sorted(r.params["activation"] for r in records) == ["relu", "sigmoid"]
    assert all(r.state == FINISHED and r.exit_code == 0 for r in records)
    runs = [read_run(path) for path in find_runs(sweep_dir)]
    assert len(runs) == 2
    assert {run.group for run in runs} == {"tiny_grid"}  # the sweep's name
    assert sorted(run.config["activation"] for run in runs) == ["relu", "sigmoid"]
    assert all(run.config["model.depth"] == 2 for run in runs)  # flat, as the sweep names it
    assert all(run.exit_code == 0 for run in runs)

    text, _ = summarize(sweep_dir, "json")
    rows = json.loads(text)["runs"]
    assert sorted(row["activation"] for row in rows) == ["relu", "sigmoid"]
    assert all(row["n"] == 1 and row["diagnosis/verdict"] for row in rows)
    accuracies = [row["val/acc"] for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)

    # The same runs known only by their .wandb files (a folder of offline W&B runs).
    only_wandb = tmp_path / "only_wandb"
    for index, path in enumerate(find_runs(sweep_dir)):
        shutil.copytree(path.parent, only_wandb / str(index))
    _, from_wandb = summarize(only_wandb)
    assert sorted(row.choices["activation"] for row in from_wandb.rows) == ["relu", "sigmoid"]
    assert {row.verdict for row in from_wandb.rows} == {row["diagnosis/verdict"] for row in rows}


@pytest.mark.slow
@pytest.mark.usefixtures("no_wandb_credentials")
def test_a_run_driven_to_nan_is_recorded_and_the_sweep_goes_on(tmp_path) -> None:
    path = write_definition(
        tmp_path,
        activation={"value": "relu"},
        init={"value": "kaiming"},
        **{"optimizer.lr": {"values": [1e8, 0.01]}},
    )
    # A process per run, as `wandb agent` starts them (tests/test_warm_workers.py: warm).
    outcome = run_sweep(load_definition(path), tmp_path / "sweep", workers=1, warm=False)
    assert (outcome.finished, outcome.failed) == (1, 1)
    records = {r.params["optimizer.lr"]: r for r in load_records(tmp_path / "sweep")}
    assert records[1e8].exit_code == 3  # gradsweep.errors.EXIT_NON_FINITE
    assert records[0.01].state == FINISHED  # the next run ran
    summary = json.loads((records[1e8].folder / "summary.json").read_text())
    assert summary["diagnosis/verdict"] == "non_finite"
