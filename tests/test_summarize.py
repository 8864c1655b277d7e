"""`gradsweep summarize` over run folders, and the report builder in dry-run.

The run folders here hold summary.json and .hydra/overrides.yaml written as training and
Hydra write them; test_sweep_runner.py and test_multirun.py summarize real runs."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from gradsweep.cli.main import main
from gradsweep.config import FIX_GROUPS
from gradsweep.errors import SweepError
from gradsweep.sweeps.compare import collect, compare
from gradsweep.sweeps.report import Selection, build_report, describe, panel_specs
from gradsweep.sweeps.summarize import render, summarize

BASELINE = {"activation": "sigmoid", "init": "default", "norm": "none", "skip": "none"}
BASELINE = {**BASELINE, "clipping": "none"}


def write_run(
    folder: Path,
    verdict: str,
    acc: float,
    ratio: float,
    overrides: list[str] = (),
    seed: int = 0,
    **choices: str,
) -> Path:
    summary = {
        **BASELINE,
        **choices,
        "model": "mlp",
        "data": "mnist",
        "optimizer": "sgd",
        "data.source": "full",
        "seed": seed,
        "val/acc": acc,
        "val/acc_best": acc + 0.01,
        "grad_flow/log10_ratio": ratio,
        "diagnosis/gradient_flow": verdict if verdict == "vanishing" else "healthy",
        "diagnosis/learning": "stalled" if verdict == "vanishing" else "learning",
        "diagnosis/verdict": verdict,
        "diagnosis/advice": "...",
    }
    if summary["clipping"] != "none":
        summary["clip/hit_rate"] = 0.25
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    return folder


LADDER = [  # rung, verdict, val/acc, log10 ratio, the fixes on
    ("ladder/0_baseline", "vanishing", 0.11, -16.0, {}),
    ("ladder/1_activation", "vanishing", 0.30, -4.1, {"activation": "gelu"}),
    ("ladder/2_init", "healthy", 0.85, -0.9, {"activation": "gelu", "init": "kaiming"}),
    (
        "ladder/3_norm",
        "healthy",
        0.90,
        -0.3,
        {"activation": "gelu", "init": "kaiming", "norm": "batch"},
    ),
]


@pytest.fixture
def ladder(tmp_path) -> Path:
    for index, (rung, verdict, acc, ratio, fixes) in enumerate(LADDER):
        write_run(tmp_path / str(index), verdict, acc, ratio, [f"experiment={rung}"], **fixes)
    return tmp_path


def test_ladder_names_the_first_rung_that_cures(ladder) -> None:
    text, comparison = summarize(ladder)
    assert [row.choices["experiment"] for row in comparison.rows] == [
        "ladder/3_norm",
        "ladder/2_init",
        "ladder/1_activation",
        "ladder/0_baseline",
    ]  # by val/acc, best first
    assert comparison.columns == [*FIX_GROUPS, "experiment"]
    cure = comparison.cure
    assert cure.change() == "init=kaiming"
    assert cure.before.choices["experiment"] == "ladder/1_activation"
    assert "first cure: init=kaiming (ladder/1_activation -> ladder/2_init)" in text
    assert "turns vanishing (log10 first/last -4.10, val/acc 0.3000) into healthy" in text


def test_ablation_names_the_earliest_fix_and_the_others(tmp_path) -> None:
    write_run(tmp_path / "base", "vanishing", 0.11, -16.0)
    write_run(tmp_path / "act", "healthy", 0.80, -1.0, activation="relu")
    write_run(tmp_path / "norm", "healthy", 0.88, -0.5, norm="batch")
    write_run(tmp_path / "clip", "vanishing", 0.11, -16.0, clipping="norm")
    _, comparison = summarize(tmp_path)
    assert comparison.cure.change() == "activation=relu"  # the advised order, not val/acc
    assert [f"{k}={row.choices[k]}" for k, row in comparison.cure.also] == ["norm=batch"]
    assert comparison.rows[0].choices["norm"] == "batch"
    assert comparison.rows[-1].choices["clipping"] == "norm"  # ties keep folder order


def test_seeds_fold_into_one_row_with_mean_and_spread(tmp_path) -> None:
    for seed, acc in enumerate([0.80, 0.84, 0.88]):
        write_run(
            tmp_path / f"r{seed}", "healthy", acc, -1.0, [f"seed={seed}"], seed, activation="relu"
        )
    write_run(tmp_path / "s0", "vanishing", 0.1, -9.0, ["seed=0"], 0)
    write_run(tmp_path / "s1", "healthy", 0.2, -2.5, ["seed=1"], 1)
    text, comparison = summarize(tmp_path)
    assert [row.n for row in comparison.rows] == [3, 2]
    relu, sigmoid = comparison.rows
    assert relu.metric("val/acc") == pytest.approx(0.84)
    assert relu.spread("val/acc") == pytest.approx(0.04)
    assert "0.8400 ± 0.0400" in text
    assert "seed" not in comparison.columns
    assert sigmoid.verdict in {"vanishing", "healthy"} and sigmoid.verdicts["vanishing"] == 1
    assert "/2" in text  # a split verdict says so


def test_formats_parse(ladder) -> None:
    rows = list(csv.DictReader(io.StringIO(summarize(ladder, "csv")[0])))
    assert len(rows) == 4 and rows[0]["experiment"] == "ladder/3_norm"
    assert float(rows[0]["val/acc"]) == pytest.approx(0.90)
    data = json.loads(summarize(ladder, "json")[0])
    assert data["cure"]["change"] == "init=kaiming"
    assert data["runs"][-1]["diagnosis/verdict"] == "vanishing"
    # The two findings the verdict is made of, beside it.
    assert data["runs"][-1]["diagnosis/learning"] == "stalled"
    assert (rows[0]["diagnosis/gradient_flow"], rows[0]["diagnosis/learning"]) == (
        "healthy",
        "learning",
    )
    md = summarize(ladder, "md")[0].splitlines()
    assert md[0].startswith("| activation | init |") and md[1].startswith("|---|")
    with pytest.raises(SweepError, match="--format"):
        summarize(ladder, "xml")


def test_cli_summarize_prints_json_on_stdout(ladder, capsys) -> None:
    assert main(["summarize", str(ladder), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cure"]["key"] == "init"


def test_no_cure_and_unfinished_runs_are_said(tmp_path) -> None:
    write_run(tmp_path / "a", "vanishing", 0.1, -16.0)
    write_run(tmp_path / "b", "vanishing", 0.1, -12.0, activation="tanh")
    failed = tmp_path / "c"
    failed.mkdir()
    (failed / "sweep_run.json").write_text(json.dumps({"params": {}, "state": "failed"}))
    results, incomplete = collect(tmp_path)
    comparison = compare(results, incomplete, defaults=BASELINE)
    assert comparison.cure is None and comparison.vanishing == 2
    text = render(comparison)
    assert "no single change turns a vanishing configuration healthy" in text
    assert f"{failed}: failed" in text


def test_nothing_to_summarize_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SweepError, match="no finished run"):
        summarize(tmp_path)


@pytest.mark.parametrize("runs", [{"sweep": "abc123"}, {"group": "fix_ladder"}])
def test_report_builds_without_a_server(runs) -> None:
    report = build_report(Selection("me", "gradsweep", **runs))
    lines = describe(report)
    field, value = ("Sweep", "abc123") if "sweep" in runs else ("Group", "fix_ladder")
    grids = [line for line in lines if line.startswith("  PanelGrid")]
    assert grids and all(field in line and value in line for line in grids)
    specs = panel_specs(report)
    kinds = [spec["viewType"] for spec in specs]
    assert "Parallel Coordinates Plot" in kinds and "Bar Chart" in kinds
    # Per-layer series by depth: one regex panel, one line a layer; and the first layer grouped
    # by each fix, one line a choice.
    [layers] = [
        s["config"] for s in specs if "grad_flow/layer_" in s["config"].get("metricRegex", "")
    ]
    assert layers["yLogScale"] is True and layers["aggregate"] is True
    assert re.fullmatch(layers["metricRegex"], "grad_flow/layer_012")
    assert not re.fullmatch(layers["metricRegex"], "grad_norm/1.weight")
    grouped = [s["config"] for s in specs if s["config"].get("metrics") == ["grad_flow/layer_000"]]
    assert [g["groupBy"] for g in grouped] == [f"{group}.value" for group in FIX_GROUPS]
    parallel = next(s for s in specs if s["viewType"] == "Parallel Coordinates Plot")
    accessors = [column["accessor"] for column in parallel["config"]["columns"]]
    assert accessors == [*(f"config:{g}.value" for g in FIX_GROUPS), "summary:val/acc"]
    metrics = {m for s in specs for m in s["config"].get("metrics", [])}
    assert {
        "grad_flow/log10_ratio",
        "clip/hit_rate",
        "grad_flow/first",
        "grad_flow/last",
    } <= metrics


def test_report_cli_dry_run_and_its_usage_errors(capsys) -> None:
    args = ["report", "--entity", "me", "--project", "p", "--group", "g", "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ParallelCoordinatesPlot" in out and "log y" in out
    with pytest.raises(SystemExit):
        main(["report", "--entity", "me", "--project", "p", "--dry-run"])
