"""`python tests/paused_train.py GATE WHERE STEP OVERRIDES...`: `python train.py OVERRIDES...`
that pauses once, at a known point, until a test lets it go on.

A test that signals a training process needs the signal to land at a known point of the run:
sent "soon after the first checkpoint appears", it lands wherever the run has got to by then,
which on a loaded machine can be a later checkpoint or the end of the run. Here the process
stops and waits instead, so the signal arrives there whatever the machine's load:

    WHERE=step        in training step STEP, after its backward pass (outside any checkpoint)
    WHERE=checkpoint  in the checkpoint taken after step STEP - 1, before it is written

On arriving there the process creates GATE/paused, then waits until GATE/go exists (the test
signals it first). Nothing else changes: same config, same draws, same files.
"""

from __future__ import annotations

import inspect
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pause(gate: Path) -> None:
    (gate / "paused").touch()
    while not (gate / "go").exists():
        time.sleep(0.01)  # a stop signal that arrives meanwhile is recorded by its handler


def main(argv: list[str]) -> None:
    gate, where, at, overrides = Path(argv[1]), argv[2], int(argv[3]), argv[4:]
    # The path `python train.py` has: the repository first, not this folder (whose
    # datasets.py would shadow any package of that name).
    sys.path[0] = str(ROOT)
    # Patched before train.py imports gradsweep.run.training, which binds these names.
    assert "gradsweep.run.training" not in sys.modules
    if where == "step":
        from gradsweep.telemetry.monitor import GradientMonitor

        measure = GradientMonitor.step  # called once a step, after backward()
        signature = inspect.signature(measure)

        def step(*args, **kwargs):
            if signature.bind(*args, **kwargs).arguments.get("step") == at:
                pause(gate)
            return measure(*args, **kwargs)

        GradientMonitor.step = step
    elif where == "checkpoint":
        from gradsweep.run import checkpoint

        save = checkpoint.save_checkpoint

        def save_checkpoint(path, state):
            if state["step"] == at:
                pause(gate)
            save(path, state)

        checkpoint.save_checkpoint = save_checkpoint
    else:
        raise SystemExit(f"WHERE must be step or checkpoint, not {where!r}")
    sys.argv = [str(ROOT / "train.py"), *overrides]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
