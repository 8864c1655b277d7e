"""A user's own model through `model=custom`: train.py, every fix group, `gradsweep show`, and the
monitor in a hand-written loop against the built-in one (real offline W&B runs, real digits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradsweep
from gradsweep.cli.main import main as gradsweep_main
from gradsweep.data.batches import Batches
from gradsweep.data.load import load_data
from gradsweep.run.build import build_model, stream_seed
from gradsweep.run.optimizers import create_optimizer
from gradsweep.run.training import train
from gradsweep.tracking.wandb_records import find_runs, read_run

ROOT = Path(__file__).resolve().parents[1]
CUSTOM = ("model=custom", "model._target_=examples.deep_sigmoid.DeepSigmoid", "+model.depth=4")


@pytest.mark.parametrize(
    ("fix", "account"),
    [
        ("activation=gelu", "activation: swapped 4 torch.sigmoid calls in DeepSigmoid.forward"),
        ("norm=layer", "norm: inserted 4 LayerNorm"),
        ("skip=residual", "skip: wrapped 2 of 2 blocks of 2"),
        ("init=kaiming", "init: kaiming normal on 5 weight layers (gain of sigmoid)"),
        ("clipping=norm", None),
    ],
)
def test_custom_model_trains_with_each_fix_group(make_cfg, tmp_path, caplog, fix, account) -> None:
    caplog.set_level("INFO")
    train(make_cfg(*CUSTOM, fix, max_steps=6), run_dir=tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    group, choice = fix.split("=")
    assert summary["model"] == "custom" and summary[group] == choice
    assert summary["steps"] == 6 and 0 <= summary["val/acc"] <= 1
    if account is not None:
        assert account in caplog.text  # the account, on the CLI path's log
    # Telemetry runs on the model unchanged: its own weight layers, in forward order.
    assert summary["grad_flow/first"] > 0 and summary["diagnosis/verdict"]


@pytest.mark.slow
def test_custom_model_through_train_py_with_every_fix(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            *CUSTOM,
            "logger=none",
            "data.source=bundled",
            "trainer.max_steps=4",
            "activation=relu",
            "norm=batch",
            "skip=residual",
            "init=auto",
            "clipping=value",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a bound for a hang, not a measurement
    )
    assert result.returncode == 0, result.stderr
    for line in ("activation: swapped", "norm: inserted", "skip: wrapped", "init: kaiming"):
        assert line in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "custom" and summary["skip"] == "residual"
    assert "clip/hit_rate" in summary


def test_show_prints_the_fixed_custom_model_and_its_layers(capsys) -> None:
    assert gradsweep_main(["show", *CUSTOM, "activation=gelu", "norm=batch", "--code"]) == 0
    out = capsys.readouterr().out
    assert "(layers_0_norm): BatchNorm1d(256" in out and "(layers_3_act): GELU" in out
    assert "activation: swapped 4 torch.sigmoid calls" in out
    assert "norm: inserted 4 BatchNorm1d" in out
    assert "weight layers (forward order), 5" in out
    assert "    4  head" in out
    assert "layers_0_act = self.layers_0_act(layers_0_norm)" in out  # the rewritten forward


@pytest.mark.slow  # the W&B writer process, and wandb's own service for the user's run
def test_monitor_in_a_hand_written_loop_gives_the_built_in_loops_norms(
    make_cfg, tmp_path, no_wandb_credentials
) -> None:
    steps = 5
    cfg = make_cfg(
        *CUSTOM, "activation=tanh", "logger=wandb", "logger.mode=offline", max_steps=steps
    )
    train(cfg, run_dir=tmp_path / "builtin")
    (run_file,) = find_runs(tmp_path / "builtin")
    logged = {row["_step"]: row for row in read_run(run_file).history}

    # The user's loop: same data, model and optimizer; the monitor is three lines.
    device = torch.device("cpu")
    data = load_data(cfg.data, device)
    model = build_model(cfg, data, device)
    optimizer = create_optimizer(cfg.optimizer, model.parameters())
    generator = torch.Generator().manual_seed(stream_seed(cfg.seed, "data"))
    batches = iter(Batches(data, cfg.data.batch_size, generator, augment=cfg.data.augment))
    import wandb

    run = wandb.init(mode="offline", dir=tmp_path / "mine", project="gradsweep-tests")
    monitor = gradsweep.GradientMonitor(model, data.train_x[:2], params="all", tracker=run)  # 1
    for step in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        naive = {name: p.grad.norm().item() for name, p in model.named_parameters()}
        row = monitor.step(loss)  # 2
        optimizer.step()
        assert row is not None
        # As the built-in loop logs them: each weight layer by depth, total, first, last, ratio.
        shared = [k for k in row if k.startswith("grad_flow/") or k == "grad_norm/total"]
        assert len(shared) == len(monitor.layers) + 4
        for key in shared:
            assert row[key] == pytest.approx(logged[step][key], rel=1e-5), (step, key)
        for name, value in naive.items():  # and every parameter, as params="all" asks
            assert row[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5)
    flow = monitor.gradient_flow()  # 3
    summary = json.loads((tmp_path / "builtin" / "summary.json").read_text())
    assert flow.label == summary["diagnosis/gradient_flow"]
    # A wandb Run is a tracker as it is: the user's run holds the same rows.
    run.finish()
    wandb.teardown()
    (mine,) = find_runs(tmp_path / "mine")
    history = read_run(mine).history
    assert [row["_step"] for row in history] == list(range(steps))
    for row in history:
        theirs = logged[row["_step"]]
        for key in (k for k in row if k in theirs and k.startswith(("grad_norm/", "grad_flow/"))):
            assert row[key] == pytest.approx(theirs[key], rel=1e-5), key
        assert {k for k in row if k.startswith("grad_flow/layer_")} == {
            k for k in theirs if k.startswith("grad_flow/layer_")
        }
