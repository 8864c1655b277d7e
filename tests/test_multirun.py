"""Hydra multirun over the fixes with each launcher: a two-run grid completes, and
`gradsweep summarize` compares its runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradsweep.sweeps.summarize import summarize

ROOT = Path(__file__).resolve().parents[1]
# Each test runs `python train.py -m`, whose launcher starts the jobs' processes.
pytestmark = pytest.mark.slow
# Two runs that differ in one fix, each a few steps of a tiny MLP on the bundled digits.
GRID = [
    "activation=sigmoid,relu",
    "model.depth=2",
    "model.width=16",
    "data.source=bundled",
    "trainer.max_steps=3",
    "logger=none",
]


@pytest.mark.parametrize(
    "launcher",
    [None, "parallel", "slurm_local"],
    ids=["basic", "joblib", "submitit_local"],
)
def test_two_run_grid_completes_and_summarizes(launcher: str | None, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "multirun"
    args = [sys.executable, "train.py", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}"]
    if launcher is not None:
        args.append(f"hydra/launcher={launcher}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    assert [path.parent.name for path in summaries] == ["0", "1"]
    if launcher == "slurm_local":
        assert (sweep_dir / ".submitit").is_dir()  # submitit's own bookkeeping ran

    _, comparison = summarize(sweep_dir)
    assert sorted(row.choices["activation"] for row in comparison.rows) == ["relu", "sigmoid"]
    assert comparison.columns[:5] == ["activation", "init", "norm", "skip", "clipping"]
    assert all(row.n == 1 and row.verdict for row in comparison.rows)
