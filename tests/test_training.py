"""train(cfg) end to end on real digits (the bundled 5,000), offline, on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsweep.errors import ConfigError
from gradsweep.run.build import stream_seed
from gradsweep.run.training import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
# A bound for a hang, not a measurement: `python train.py` takes seconds, more when loaded.
HANG_S = 600


def run(make_cfg, tmp_path: Path, *overrides: str, max_steps: int = 30) -> dict:
    train(make_cfg(*overrides, max_steps=max_steps), run_dir=tmp_path)
    return json.loads((tmp_path / "summary.json").read_text())


def test_default_sigmoid_mlp_vanishes_and_relu_kaiming_does_not(make_cfg, tmp_path) -> None:
    default = run(make_cfg, tmp_path / "default")
    assert default["diagnosis/verdict"] == "vanishing"
    assert default["grad_flow/log10_ratio"] < -10
    assert default["diagnosis/advice"].startswith("activation=gelu")
    fixed = run(make_cfg, tmp_path / "fixed", "activation=relu", "init=kaiming")
    assert fixed["diagnosis/verdict"] == "healthy"
    assert abs(fixed["grad_flow/log10_ratio"]) < 2
    assert fixed["val/acc"] > default["val/acc"]


def test_summary_holds_flat_choices_and_metrics(make_cfg, tmp_path) -> None:
    summary = run(make_cfg, tmp_path, "activation=gelu", "norm=layer", "clipping=norm")
    assert {k: summary[k] for k in ("activation", "norm", "skip", "init", "clipping", "model")} == {
        "activation": "gelu",
        "norm": "layer",
        "skip": "none",
        "init": "default",
        "clipping": "norm",
        "model": "mlp",
    }
    assert summary["data.source"] == "bundled" and summary["steps"] == 30
    assert 0 <= summary["clip/hit_rate"] <= 1
    assert summary["val/acc_best"] >= summary["val/acc"] - 1e-12
    assert {"val/loss", "grad_flow/log10_ratio", "diagnosis/verdict", "diagnosis/advice"} <= set(
        summary
    )
    assert (tmp_path / "grad_flow_heatmap.png").stat().st_size > 1000
    assert (tmp_path / "grad_flow_layers.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_evaluation_keeps_batchnorm_statistics_and_restores_training_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    result = evaluate(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert 0 <= result["acc"] <= 1 and result["loss"] > 0


def test_seed_streams_keep_batches_fixed_when_a_fix_changes(make_cfg) -> None:
    assert stream_seed(0, "data") != stream_seed(0, "init")
    assert stream_seed(0, "data") == stream_seed(0, "data") != stream_seed(1, "data")


def test_batch_norm_on_tiny_batches_warns_and_on_one_sample_refuses(make_cfg, tmp_path, caplog):
    with pytest.raises(ConfigError, match="norm=layer or norm=group"):
        train(make_cfg("norm=batch", "data.batch_size=1"), run_dir=tmp_path)
    assert not (tmp_path / "summary.json").exists()
    run(make_cfg, tmp_path, "norm=batch", "data.batch_size=4", max_steps=3)
    assert "use norm=layer or norm=group" in caplog.text


@pytest.mark.slow
def test_train_py_runs_from_the_command_line(tmp_path: Path) -> None:
    """The real entry point: Hydra composes, train() runs, logs go to stderr only."""
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "logger=none",
            "data.source=bundled",
            "trainer.max_steps=5",
            "activation=gelu",
            "norm=layer",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "verdict:" in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["activation"] == "gelu" and summary["norm"] == "layer"
    assert (tmp_path / "train.log").exists()


@pytest.mark.slow  # train.py and its W&B writer
def test_the_wandb_run_describes_the_training_job(tmp_path: Path) -> None:
    """What W&B shows of a run started as users start it: train.py and its overrides as the
    command, the Hydra files, the console in the Logs tab, per-layer series by depth, and W&B's
    own best-and-last summary of val/acc."""
    from gradsweep.tracking.wandb_records import find_runs, read_run

    overrides = ["logger=wandb", "data.source=bundled", "trainer.max_steps=6", "norm=batch"]
    overrides += ["skip=residual"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "home")}
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_S
    )
    assert result.returncode == 0, result.stderr
    [path] = find_runs(tmp_path / "wandb")
    record = read_run(path)

    assert Path(record.program) == ROOT / "train.py"
    assert record.args == overrides  # this job's overrides (hydra.* settings are not among them)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"} <= set(record.files)
    # The training process's console, not the writer's: its log lines, its verdict.
    assert "norm: inserted 20 BatchNorm1d" in record.output
    assert "verdict: " in record.output and "verdict: " in result.stderr
    # Norm layers and the shortcuts' projection are not weight layers: 21 series, as without.
    layers = {k for row in record.history for k in row if re.fullmatch(r"grad_flow/layer_\d{3}", k)}
    assert layers == {f"grad_flow/layer_{index:03d}" for index in range(21)}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert record.summary["val/acc"] == {"max": summary["val/acc_best"], "last": summary["val/acc"]}
    assert record.summary["diagnosis/verdict"] == summary["diagnosis/verdict"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-1"], "optimizer.lr=-1 must be > 0"),
        (["optimizer.lr=fast"], "optimizer.lr='fast' must be a number"),
        (["clipping=norm", "clipping.max_norm=0"], "clipping.max_norm=0 must be > 0"),
        (["norm=group", "norm.num_groups=7"], "does not divide model.width=256"),
        (["model.depth=0"], "model.depth=0 must be >= 1"),
        (["model=custom"], "model._target_=my_package.my_module.MyNet"),
        (["trainer.checkpoint_every=0"], "trainer.checkpoint_every=0 must be >= 1"),
        (["data.source=bundled", "data=cifar10"], "for cifar10 use data.source=full"),
        (["skip=residual", "skip.placement=middle"], "skip.placement='middle'"),
        (["skip=residual", "skip.modules=[nothing]"], "has no submodule 'nothing'"),
    ],
)
def test_bad_input_fails_before_any_work_with_a_message_naming_the_fix(
    make_cfg, overrides, message, tmp_path
) -> None:
    with pytest.raises(ConfigError) as error:
        train(make_cfg(*overrides), run_dir=tmp_path)
    assert message in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing written, nothing loaded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.lr=-1", "model.depth=0"], "model.depth=0 must be >= 1"),
        (["activation=swish"], "Available options"),  # Hydra lists the choices
    ],
)
def test_bad_input_on_the_command_line_exits_non_zero(overrides, message, tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py", "logger=none", f"hydra.run.dir={tmp_path}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow  # the W&B writer process
def test_offline_wandb_run_holds_a_row_per_step_and_the_verdict(
    make_cfg, tmp_path, no_wandb_credentials
) -> None:
    from gradsweep.tracking.wandb_records import find_runs, last_values, read_run

    cfg = make_cfg("logger=wandb", "clipping=norm", max_steps=12, eval_every=5)
    train(cfg, run_dir=tmp_path)  # no key, no WANDB_MODE: auto falls back to offline
    (path,) = find_runs(tmp_path / "wandb")
    record = read_run(path)
    steps = [row["_step"] for row in record.history if "train/loss" in row]
    assert steps == list(range(12))  # one row per training step, in order
    layers = [f"grad_flow/layer_{index:03d}" for index in range(21)]  # 20 hidden + output
    for row in record.history:
        if "train/loss" in row:
            # By depth, every step; no per-parameter series unless telemetry.params asks.
            assert sorted(k for k in row if re.fullmatch(r"grad_flow/layer_\d{3}", k)) == layers
            assert [k for k in row if k.startswith("grad_norm/")] == ["grad_norm/total"]
            assert {"grad_norm/total", "grad_flow/log10_ratio", "clip/hit", "clip/hit_rate"} <= set(
                row
            )
    evals = [row["_step"] for row in record.history if "val/acc" in row]
    assert evals == [4, 9, 11]  # every eval_every steps and the last, in the same rows
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert record.summary["diagnosis/verdict"] == summary["diagnosis/verdict"] == "vanishing"
    # W&B keeps its own aggregates of the metrics it was told to; the end of the run adds the
    # rest of summary.json without replacing them.
    assert record.summary["val/acc"] == {"max": summary["val/acc_best"], "last": summary["val/acc"]}
    assert last_values(record.summary)["clip/hit_rate"] == pytest.approx(summary["clip/hit_rate"])
    assert record.config["activation"] == "sigmoid" and record.config["optimizer.lr"] == 0.01
    assert record.config["data.source"] == "bundled"
    assert record.exit_code == 0


@pytest.mark.parametrize("switch", ["trainer.precision=bf16", "trainer.compile=aot_eager"])
def test_bf16_autocast_and_compile_switches_train(make_cfg, tmp_path, switch) -> None:
    summary = run(make_cfg, tmp_path, "activation=relu", "init=kaiming", switch, max_steps=6)
    assert summary["steps"] == 6 and summary["diagnosis/verdict"] != "non_finite"


@pytest.mark.slow  # the W&B writer process
def test_a_model_that_cannot_be_built_ends_its_wandb_run_as_failed(
    make_cfg, tmp_path, no_wandb_credentials
) -> None:
    # The W&B run starts once the data is loaded, beside the model build: a build that fails
    # leaves a run marked failed, not one left open.
    from gradsweep.tracking.wandb_records import read_run

    cfg = make_cfg("logger=wandb", "model=custom", "model._target_=examples.no_such.Net")
    with pytest.raises(Exception, match="no_such"):
        train(cfg, run_dir=tmp_path)
    run = read_run(tmp_path)
    assert run.exit_code == 1 and run.history == []
    assert not (tmp_path / "summary.json").exists()
