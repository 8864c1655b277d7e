"""The preflight scan: grids from sweep files and overrides, the measurement at initialization
(equal to training's step 0), the verdicts, the report formats, pruning and the W&B run.

Real Hydra composition, real torch, the bundled real digits, offline W&B runs."""

from __future__ import annotations

import json
import math
import shlex

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from gradsweep.cli.main import main
from gradsweep.config import compose
from gradsweep.errors import ConfigError
from gradsweep.run.training import train
from gradsweep.scan.composer import GridComposer, is_inert
from gradsweep.scan.grid import load_grid, parse_grid
from gradsweep.scan.report import render
from gradsweep.scan.scanner import scan
from gradsweep.telemetry.activation_probe import ActivationProbe
from gradsweep.tracking.wandb_records import read_run

SMALL = ["data.source=bundled", "logger=none"]


@pytest.fixture
def offline_wandb(no_wandb_credentials, monkeypatch):
    """Offline W&B runs, with wandb's own files (HOME, config) under tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.mark.slow  # the W&B writer process
def test_scan_equals_the_first_training_step_of_a_real_run(tmp_path, offline_wandb) -> None:
    # seed=3 and clipping=norm: the scan's seed is the run's, and clipping changes nothing
    # before the norms are taken.
    overrides = ["data.source=bundled", "activation=relu", "clipping=norm", "seed=3"]
    result = scan(parse_grid([*overrides, "logger=none"]), seeds=1, steps=1)
    (row,) = result.rows
    assert row.choices["clipping"] == "norm" and row.measurement.seeds[0].seed == 3

    cfg = compose([*overrides, "logger=wandb", "logger.mode=offline"])
    with open_dict(cfg):
        cfg.trainer.max_steps = 3
        cfg.trainer.eval_every = 3
    train(cfg, run_dir=tmp_path)
    history = read_run(tmp_path).history
    step0 = next(r for r in history if r["_step"] == 0 and "grad_flow/log10_ratio" in r)
    assert row.log10_ratio == pytest.approx(step0["grad_flow/log10_ratio"], rel=1e-9, abs=1e-12)
    norms = row.measurement.layer_norms()
    assert norms[0] == pytest.approx(step0["grad_flow/first"], rel=1e-9)
    assert norms[-1] == pytest.approx(step0["grad_flow/last"], rel=1e-9)
    # Every weight layer, by depth as the run logged it.
    assert len(norms) == len(row.measurement.layers)
    for index, value in enumerate(norms):
        assert value == pytest.approx(step0[f"grad_flow/layer_{index:03d}"], rel=1e-9)


def test_small_grid_predicts_vanishing_and_prune_keeps_the_rest(tmp_path, capsys) -> None:
    kept_file = tmp_path / "kept.txt"
    grid = ["activation=sigmoid,relu", "init=default,kaiming", "clipping=none,norm", *SMALL]
    options = ["--seeds", "2", "--format", "json", "--out", str(tmp_path / "out")]
    code = main(["scan", *grid, *options, "--prune", str(kept_file)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)  # stdout holds the JSON document and nothing else
    assert len(rows) == 8
    by_choice = {(r["activation"], r["init"], r["clipping"]): r for r in rows}
    for clipping in ("none", "norm"):
        assert by_choice["sigmoid", "default", clipping]["verdict"] == "vanishing"
        assert by_choice["sigmoid", "default", clipping]["log10_ratio"] < -10
        assert by_choice["relu", "kaiming", clipping]["verdict"] != "vanishing"
        assert abs(by_choice["relu", "kaiming", clipping]["log10_ratio"]) < 1
    # Clipping is measured once and reported for each of its choices.
    assert (
        by_choice["relu", "default", "none"]["log10_ratio_seeds"]
        == (by_choice["relu", "default", "norm"]["log10_ratio_seeds"])
    )
    first = rows[0]
    assert {k: type(first[k]) for k in ("activation", "init", "norm", "skip", "clipping")} == {
        k: str for k in ("activation", "init", "norm", "skip", "clipping")
    }
    assert len(first["log10_ratio_seeds"]) == 2
    assert first["log10_ratio"] == pytest.approx(
        sorted(first["log10_ratio_seeds"])[0] + first["log10_ratio_spread"] / 2
    )
    assert [r["log10_ratio"] for r in rows] == sorted(r["log10_ratio"] for r in rows)
    assert len(first["grad_norms"]) == 21 and len(first["activation_std"]) == 20

    kept = [shlex.split(line) for line in kept_file.read_text().splitlines()]
    vanishing = {tuple(r["overrides"].split()) for r in rows if r["verdict"] == "vanishing"}
    assert kept and not vanishing & {tuple(k) for k in kept}
    assert len(kept) + len(vanishing) == 8
    assert any({"activation=relu", "init=kaiming"} <= set(k) for k in kept)
    assert not any({"activation=sigmoid", "init=default"} <= set(k) for k in kept)
    # Each kept line composes as train.py would run it.
    assert compose(kept[0]).activation.name in {"sigmoid", "relu"}

    out = tmp_path / "out"
    assert json.loads((out / "scan.json").read_text()) == rows
    assert (out / "scan_heatmap.png").stat().st_size > 5000
    # The other formats, from the same records.
    csv_lines = render(rows, "csv").splitlines()
    assert csv_lines[0].startswith("activation,init,norm,skip,clipping,verdict,log10_ratio")
    assert len(csv_lines) == 9
    md_lines = render(rows, "md").splitlines()
    assert md_lines[0].startswith("| activation | init |") and len(md_lines) == 10
    table = render(rows, "table").splitlines()
    assert "vanishing" in table[1] and len(table) == 9


def test_activation_probe_sees_saturated_and_dead_units() -> None:
    saturating = nn.Sequential(nn.Linear(4, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Tanh())
    relu = nn.Sequential(nn.Linear(4, 64), nn.ReLU())
    with torch.no_grad():
        saturating[0].weight.fill_(10.0)  # |x| >> 4: sigmoid flat
        saturating[2].weight.zero_()
        saturating[2].bias.zero_()  # tanh(0): its steepest point
        relu[0].weight.zero_()
        relu[0].bias.fill_(1.0)
        relu[0].bias[:16] = -1.0  # a quarter of the units never fire
    x = torch.randn(32, 4).abs() + 1
    for model in (saturating, relu):
        probe = ActivationProbe(model)
        model(x)
        probe.end_pass()
        probe.close()
        std, saturated, dead = probe.medians()
        if model is saturating:
            assert saturated == (1.0, 0.0) and all(math.isnan(d) for d in dead)
            assert std[1] == 0.0
        else:
            assert dead == (0.25,) and math.isnan(saturated[0])


def test_sweep_files_and_override_grids(tmp_path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "method: random\nparameters:\n"
        "  activation: {values: [relu, tanh]}\n"
        "  model.depth: {values: [4, 6]}\n"
        "  init: {value: kaiming}\n"
        "  data.root: {value: /tmp/my data}\n"
        "  logger.tags: {value: null}\n"
    )
    grid = load_grid([str(sweep), "model.depth=8", "norm=none,batch"])
    assert grid.size == 4 and list(grid.axes) == ["activation", "norm"]
    assert "model.depth=8" in grid.fixed and "init=kaiming" in grid.fixed
    assert "logger.tags=null" in grid.fixed
    assert OmegaConf.select(compose(grid.fixed), "data.root") == "/tmp/my data"
    # The project's own sweep: the 6 x 3 x 4 x 2 x 2 fix grid.
    default = load_grid([])
    assert default.size == 288 and set(default.axes) == {
        "activation",
        "init",
        "norm",
        "skip",
        "clipping",
    }
    for bad in (
        "parameters:\n  optimizer.lr: {min: 0.001, max: 0.1}\n",
        "parameters:\n  optimizer: {parameters: {lr: {value: 0.1}}}\n",
    ):
        sweep.write_text(bad)
        with pytest.raises(ConfigError):
            load_grid([str(sweep)])
    with pytest.raises(ConfigError, match="interval"):
        parse_grid(["optimizer.lr=interval(0.1,1)"])
    assert is_inert("clipping") and is_inert("optimizer.lr") and is_inert("trainer.max_steps")
    assert not is_inert("trainer.device") and not is_inert("norm")


def test_grid_composition_equals_hydra_for_every_configuration() -> None:
    independent = parse_grid(["activation=relu,tanh", "norm=none,group", "model.depth=4"])
    # Both axes change the model node: each configuration is composed in full.
    interacting = parse_grid(["model=mlp,cnn", "model.depth=4,6"])
    for grid, factorized in ((independent, True), (interacting, False)):
        composer = GridComposer(grid, list(grid.axes))
        assert composer.factorized is factorized
        for job in grid.jobs()[:: 1 if factorized else 3]:
            expected = OmegaConf.to_container(compose([*grid.fixed, *job]), resolve=False)
            assert OmegaConf.to_container(composer(job), resolve=False) == expected
            assert OmegaConf.is_struct(composer(job))


def test_a_configuration_that_cannot_build_is_reported_not_fatal(tmp_path, capsys) -> None:
    grid = ["norm=none,group", "model.width=12", "model.depth=3", *SMALL]
    assert main(["scan", *grid, "--seeds", "1", "--format", "csv", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    error = next(line for line in lines if ",group," in line)
    assert ",error," in error
    # The others are measured: this one's first layer gets 10^-1.3 of the last's.
    assert ",weak," in next(line for line in lines if ",none,none," in line)


@pytest.mark.slow  # the W&B writer process
def test_scan_logs_one_wandb_run_with_the_table_and_the_heatmap(tmp_path, offline_wandb) -> None:
    grid = ["activation=relu,tanh", "model.depth=3", "data.source=bundled", "logger.mode=offline"]
    assert main(["scan", *grid, "--seeds", "1", "--format", "md", "--out", str(tmp_path)]) == 0
    run = read_run(tmp_path)
    (row,) = [r for r in run.history if "scan/table" in r]
    assert row["scan/table"]["_type"] == "table-file" and row["scan/table"]["nrows"] == 2
    assert row["scan/heatmap"]["_type"] == "image-file"
    assert run.config["scan/axes"] == {"activation": ["relu", "tanh"]}
    assert sum(v for k, v in run.summary.items() if k in {"scan/healthy", "scan/vanishing"}) == 2
    assert run.exit_code == 0
