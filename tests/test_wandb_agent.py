"""Runs started the way `wandb agent` starts them.

wandb's own `Agent` (wandb/wandb_agent.py) reads the sweep's command, builds each run's command
line and environment (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH, WANDB_DIR) and
starts it. Only the W&B server is stood in for: the three calls the agent makes to it (fetch the
sweep, register the agent, the heartbeat that hands out a run) and the API object it keeps.
The runs log offline, so nothing leaves the machine.
"""

from __future__ import annotations

import json
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
