"""Runs started the way `wandb agent` starts them.

wandb's own `Agent` (wandb/wandb_agent.py) reads the sweep's command, builds each run's command
line and environment (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH, WANDB_DIR) and
starts it. Only the W&B server is stood in for: the three calls the agent makes to it (fetch the
sweep, register the agent, the heartbeat that hands out a run) and the API object it keeps.
The runs log offline, so nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import queue
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradsweep.config import CONF_DIR
from gradsweep.sweeps.definition import import_sweeps, load_definition
from gradsweep.tracking.tracker import RUN_ID_FILE
from gradsweep.tracking.wandb_records import find_runs, read_run
from tests.datasets import write_mnist

REPO = CONF_DIR.parent
SWEEP_FILES = sorted(CONF_DIR.glob("sweep*.yaml"))
SWEEP_ID = "swp12345"


class StandInServer:
    """What the agent asks of the W&B server, answered for one sweep that hands out one run."""

    def __init__(self, sweep_config: dict[str, Any], run_id: str, args: dict[str, Any]) -> None:
        self.sweep_config = sweep_config
        self.commands = [
            {
                "type": "run",
                "run_id": run_id,
                "program": sweep_config["program"],
                "args": {key: {"value": value} for key, value in args.items()},
            }
        ]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import wandb
        from wandb.apis.public import sweeps

        monkeypatch.setattr(sweeps, "_sweep_with_runs", self.sweep_with_runs)
        monkeypatch.setattr(sweeps, "_register_agent", self.register_agent)
        monkeypatch.setattr(sweeps, "_agent_heartbeat", self.agent_heartbeat)
        # The agent makes a new API object after each run (wandb.teardown closes the old one).
        monkeypatch.setattr(wandb, "Api", lambda *args, **kwargs: self)

    def sweep_with_runs(self, api: Any, sweep: str, specs: str, **kwargs: Any) -> dict:
        assert sweep == SWEEP_ID
        return {"config": yaml.safe_dump(self.sweep_config)}

    def register_agent(self, api: Any, host: str, **kwargs: Any) -> dict:
        return {"id": "agent1"}

    def agent_heartbeat(self, api: Any, agent_id: str, metrics: dict, run_states: dict) -> list:
        commands, self.commands = self.commands, []
        return commands


def first_proposal(sweep_file: Path) -> dict[str, Any]:
    """The first run W&B's own sweep engine proposes for this sweep file."""
    definition = load_definition(sweep_file)
    [run] = import_sweeps().next_runs(definition.engine_config, [], n=1)
    return {key: spec["value"] for key, spec in run.config.items()}


@pytest.mark.slow
@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=lambda path: path.stem)
def test_a_grid_point_runs_under_wandbs_own_agent(
    sweep_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_wandb_credentials: None
) -> None:
    from wandb import wandb_agent

    # The user's checkout, as the agent sees it: it runs `python train.py` in its folder.
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for name in ("train.py", "conf"):
        (workdir / name).symlink_to(REPO / name)
    write_mnist(tmp_path / "data", n_train=256, n_test=64)
    params = first_proposal(sweep_file)
    # What the server sends is the sweep's parameters; a tiny dataset and a short run here.
    tiny = {"data.root": str(tmp_path / "data"), "data.val_size": 64, "trainer.max_steps": 12}
    args = {**params, **tiny}
    server = StandInServer(yaml.safe_load(sweep_file.read_text()), "agentrun1", args)
    server.install(monkeypatch)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", SWEEP_ID)  # `wandb agent ID` sets it for its runs
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the agent sets it: its own folder
    for name in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(wandb_agent.Agent, "POLL_INTERVAL", 0.2)

    # The queue carries commands from `wandb agent`'s own controller thread: none here.
    agent = wandb_agent.Agent(server, queue.Queue(), sweep_id=SWEEP_ID, count=1)
    agent.run()

    assert (agent._finished, agent._failed) == (1, 0)  # the run exited 0
    # Its folder is keyed by the W&B run, so a requeued run finds its checkpoint there.
    run_dir = workdir / "outputs" / f"sweep-{SWEEP_ID}" / "agentrun1"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / RUN_ID_FILE).read_text().strip() == "agentrun1"
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    [record_file] = find_runs(run_dir / "wandb")
    record = read_run(record_file)
    assert (record.run_id, record.sweep_id, record.exit_code) == ("agentrun1", SWEEP_ID, 0)
    # The parameters the server sent, flat in the config as they are in summary.json.
    for key, value in args.items():
        assert record.config[key] == value, key
        if key in summary:
            assert summary[key] == value, key
    assert summary["steps"] == 12


@pytest.mark.slow
def test_gradsweep_agent_runs_a_grid_point_through_wandbs_agent_on_a_warm_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_wandb_credentials: None
) -> None:
    """`gradsweep agent`'s worker: wandb's in-process agent (`wandb.agent(function=...)`) in
    its thread, the run on the worker's main thread, with only the server stood in for."""
    from wandb.agents import pyagent

    from gradsweep.config import FIX_GROUPS
    from gradsweep.sweeps.agent import serve_agent

    workdir = tmp_path / "checkout"
    workdir.mkdir()
    for name in ("train.py", "conf"):
        (workdir / name).symlink_to(REPO / name)
    write_mnist(tmp_path / "data", n_train=256, n_test=64)
    sweep_file = CONF_DIR / "sweep.yaml"
    tiny = {"data.root": str(tmp_path / "data"), "data.val_size": 64, "trainer.max_steps": 12}
    args = {**first_proposal(sweep_file), **tiny}
    server = StandInServer(yaml.safe_load(sweep_file.read_text()), "agentrun2", args)
    server.install(monkeypatch)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(workdir))  # as the agent sets it: its own folder
    for name in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pyagent.Agent, "HEARTBEAT_SLEEP_SECONDS", 0.05)

    before = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    assert serve_agent(SWEEP_ID, str(workdir / "train.py"), count=1) == (0, 1)
    after = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
    assert after == before  # the run's ids went with the run

    run_dir = workdir / "outputs" / f"sweep-{SWEEP_ID}" / "agentrun2"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    [record_file] = find_runs(run_dir / "wandb")
    record = read_run(record_file)
    assert (record.run_id, record.sweep_id, record.exit_code) == ("agentrun2", SWEEP_ID, 0)
    for key, value in args.items():  # the server's parameters, in the W&B config and summary
        assert record.config[key] == value, key
        if key in summary:
            assert summary[key] == value, key
    assert {g: summary[g] for g in FIX_GROUPS} == {g: record.config[g] for g in FIX_GROUPS}
    assert summary["steps"] == 12


@pytest.mark.slow
def test_gradsweep_agent_shares_count_and_replaces_retired_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent of `gradsweep agent`'s workers, with a stand-in worker: --count 5 shared by
    two workers of two runs each, a retired worker replaced until its share is done."""
    from gradsweep.sweeps import agent

    log = tmp_path / "workers.log"
    monkeypatch.setenv("GRADSWEEP_TEST_AGENT_LOG", str(log))
    monkeypatch.setattr(agent, "WORKER_MODULE", "tests.fake_agent_worker")
    monkeypatch.chdir(REPO)
    status = agent.run_agents(
        SWEEP_ID, "train.py", 2, count=5, runs_per_worker=2, report_dir=tmp_path / "reports"
    )
    assert status == 0
    # Shares 3 and 2; the first worker retires after 2 runs and a fresh one runs the last.
    started = sorted(line.split() for line in log.read_text().splitlines())
    assert started == [["1", "1"], ["2", "1"], ["3", "1"]]  # --count, OMP_NUM_THREADS
    assert agent._shares(None, 2) == [None, None] and agent._shares(1, 3) == [1, 0, 0]
