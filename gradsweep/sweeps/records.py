"""A sweep's record of its runs: each run folder's `sweep_run.json` (parameters, command,
state, exit code, seconds), which is what makes a sweep resumable."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradsweep.files import write_json_atomic

log = logging.getLogger(__name__)

RECORD = "sweep_run.json"

FINISHED, FAILED, RUNNING, INTERRUPTED = "finished", "failed", "running", "interrupted"


@dataclass
class RunRecord:
    """One run of the sweep, as its folder's sweep_run.json holds it."""

    folder: Path
    params: dict[str, Any]
    command: list[str] = field(default_factory=list)
    state: str = RUNNING
    exit_code: int | None = None
    seconds: float | None = None

    @property
    def key(self) -> str:
        return params_key(self.params)

    def save(self) -> None:
        write_json_atomic(
            self.folder / RECORD,
            {
                "params": self.params,
                "command": self.command,
                "state": self.state,
                "exit_code": self.exit_code,
                "seconds": self.seconds,
            },
        )

    def summary(self) -> dict[str, Any]:
        """The run's summary.json, or {} before it ends."""
        try:
            return json.loads((self.folder / "summary.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def load_records(sweep_dir: Path) -> list[RunRecord]:
    """Every run folder's record under sweep_dir, in folder order."""
    records = []
    for path in sorted(Path(sweep_dir).glob(f"*/{RECORD}")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            log.warning("%s: unreadable, ignored", path)
            continue
        records.append(
            RunRecord(
                folder=path.parent,
                params=data["params"],
                command=data.get("command", []),
                state=data.get("state", RUNNING),
                exit_code=data.get("exit_code"),
                seconds=data.get("seconds"),
            )
        )
    return records
