"""Models that misbehave on purpose at a chosen training step, for the warm worker tests.

    model=custom model._target_=tests.worker_models.Raises

`Raises` raises a RuntimeError out of forward (the run crashes, exit 1), `KillsItself` sends
SIGKILL to its own process (a worker that dies with a job in hand), `HoldsMemory` keeps 256 MiB
for the rest of the process (a job whose memory outlives it), `Pauses` creates
$GRADSWEEP_TEST_GATE/paused and waits until $GRADSWEEP_TEST_GATE/go exists (a test signals the
process at a known point), `Fine` does nothing wrong. Each does it at its `AT`th training
forward (train mode, with grad): the fixes' and the monitor's probing forwards and evaluation
do not count. Sweep parameters cannot add keys to the model's node (W&B's schema refuses
`+model.x`), hence one class a behaviour.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn


class Fine(nn.Module):
    """Flatten -> Linear -> ReLU -> Linear; `_misbehave` at training forward AT (here: not)."""

    AT = 6

    def __init__(self, width: int = 16, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes)
        )
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.AT:
                self._misbehave()
        return self.body(x)

    def _misbehave(self) -> None:
        pass


class AlsoFine(Fine):
    """The same, under another name: a second healthy configuration for a grid."""


class Raises(Fine):
    def _misbehave(self) -> None:
        raise RuntimeError(f"raised on purpose at training forward {self.AT}")


class KillsItself(Fine):
    def _misbehave(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


# What HoldsMemory runs keep: the module stays imported in a warm worker from job to job.
HELD: list[bytes] = []


class HoldsMemory(Fine):
    def _misbehave(self) -> None:
        HELD.append(b"\x01" * (256 << 20))  # written, so resident


class Pauses(Fine):
    def _misbehave(self) -> None:
        gate = Path(os.environ["GRADSWEEP_TEST_GATE"])
        (gate / "paused").touch()
        while not (gate / "go").exists():
            time.sleep(0.01)  # a stop signal that arrives meanwhile is recorded
