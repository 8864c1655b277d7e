"""The sweep definitions under conf/: W&B's schema accepts them, the grid is the size its
choices say, and every command wandb's agent builder makes from them is one Hydra composes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from gradsweep.config import FIX_GROUPS
from gradsweep.sweeps.definition import (
    SweepError,
    agent_args,
    agent_command,
    check_definition,
    grid_params,
    grid_size,
    import_sweeps,
    load_definition,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DEFINITIONS = sorted(CONF.glob("sweep*.yaml"))


def hydra_args(definition, params) -> list[str]:
    """The words of the agent's command after the program: what Hydra receives."""
    command = agent_command(definition, params, "train.py")
    return command[command.index("train.py") + 1 :]


def composed(args_list: list[list[str]]) -> list:
    """Each argument list composed by Hydra, as `python train.py ARGS` would compose it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return [compose(config_name="train", overrides=args) for args in args_list]


def pairwise_cover(values: dict[str, list]) -> list[dict]:
    """Rows of the grid such that every pair of values of any two parameters is in one.

    Hydra overrides interact in pairs here (a group and its own key, an experiment and a
    group), so composing these rows checks every interaction the full grid holds.
    """
    names = list(values)
    uncovered = {
        (a, va, b, vb)
        for a, b in itertools.combinations(names, 2)
        for va in values[a]
        for vb in values[b]
    }
    grid = [dict(zip(names, row, strict=True)) for row in itertools.product(*values.values())]
    pairs = list(itertools.combinations(names, 2))
    rows = []
    while uncovered:
        left = uncovered
        best = max(grid, key=lambda row: sum((a, row[a], b, row[b]) in left for a, b in pairs))
        rows.append(best)
        uncovered = uncovered - {(a, best[a], b, best[b]) for a, b in pairs}
    return rows


def test_the_three_definitions_exist() -> None:
    names = {path.name for path in DEFINITIONS}
    assert {"sweep.yaml", "sweep_ablation.yaml", "sweep_ladder.yaml"} <= names


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_definition_validates_and_every_agent_command_is_flat(path: Path) -> None:
    sweeps = import_sweeps()
    raw = yaml.safe_load(path.read_text())
    sweeps.SweepConfig(raw)  # W&B's own schema: raises on a violation
    definition = load_definition(path)
    assert definition.method == "grid"
    expected = math.prod(len(spec.get("values", [None])) for spec in raw["parameters"].values())
    runs = grid_params(definition)
    assert grid_size(definition) == len(runs) == expected
    assert len({tuple(sorted(r.items())) for r in runs}) == expected  # no run twice
    for params in runs:
        args = hydra_args(definition, params)
        assert sorted(a.split("=", 1)[0] for a in args) == sorted(raw["parameters"])
        for arg in args:
            value = arg.split("=", 1)[1]
            assert value != "None" and not value.startswith("{"), arg


def test_full_grid_is_288_runs_of_flat_fix_choices() -> None:
    definition = load_definition(CONF / "sweep.yaml")
    assert grid_size(definition) == 6 * 3 * 4 * 2 * 2 == 288
    assert set(definition.varying) == set(FIX_GROUPS)
    fixed = {k: v["value"] for k, v in definition.parameters.items() if "value" in v}
    assert fixed["data.source"] == "full" and fixed["trainer.max_steps"] == 300
    assert definition.command[-1] == "${args_no_hyphens}"


def test_every_pair_of_the_full_grid_composes_with_hydra() -> None:
    definition = load_definition(CONF / "sweep.yaml")
    runs = grid_params(definition)
    values = {name: sorted({str(r[name]) for r in runs}) for name in definition.parameters}
    rows = pairwise_cover(values)
    assert len(rows) < 40  # a cover, not the grid
    by_key = {tuple(str(r[n]) for n in values): r for r in runs}
    chosen = [by_key[tuple(row[n] for n in values)] for row in rows]
    for params, cfg in zip(
        chosen, composed([hydra_args(definition, p) for p in chosen]), strict=True
    ):
        for group in FIX_GROUPS:
            assert cfg[group].name == params[group]
        assert cfg.data.source == "full" and cfg.trainer.max_steps == 300


def test_ladder_adds_one_fix_per_rung_in_the_advised_order() -> None:
    definition = load_definition(CONF / "sweep_ladder.yaml")
    runs = grid_params(definition)
    cfgs = composed([hydra_args(definition, p) for p in runs])
    rungs = sorted(zip((p["experiment"] for p in runs), cfgs, strict=True))
    choices = [{g: cfg[g].name for g in FIX_GROUPS} for _, cfg in rungs]
    assert choices[0] == {
        "activation": "sigmoid",
        "init": "default",
        "norm": "none",
        "skip": "none",
        "clipping": "none",
    }
    changed = []
    for before, after in itertools.pairwise(choices):
        diff = [g for g in FIX_GROUPS if before[g] != after[g]]
        assert len(diff) == 1, (before, after)
        changed.append(diff[0])
    assert changed == list(FIX_GROUPS)
    # The record names the rung under the sweep's parameter name.
    assert [cfg.experiment for _, cfg in rungs] == [name for name, _ in rungs]


def test_ablation_changes_exactly_one_fix_from_the_baseline() -> None:
    definition = load_definition(CONF / "sweep_ablation.yaml")
    runs = grid_params(definition)
    cfgs = composed([hydra_args(definition, p) for p in runs])
    choices = {
        p["experiment"]: {g: cfg[g].name for g in FIX_GROUPS}
        for p, cfg in zip(runs, cfgs, strict=True)
    }
    baseline = choices.pop("ablation/baseline")
    changed = []
    for name, fixes in choices.items():
        diff = [g for g in FIX_GROUPS if fixes[g] != baseline[g]]
        assert diff == [name.split("/")[1]], name
        changed += diff
    assert sorted(changed) == sorted(FIX_GROUPS)


def test_the_agent_renders_values_with_str() -> None:
    """Why definitions stay flat: what wandb's builder makes of None, a dict and a list."""
    assert agent_args({"a": None, "b": {"c": 1}, "d": [1, 2], "e": True}) == [
        "a=None",
        "b={'c': 1}",
        "d=[1, 2]",
        "e=True",
    ]


def base_definition(**parameters) -> dict:
    return {
        "program": "train.py",
        "method": "grid",
        "parameters": parameters or {"activation": {"values": ["relu"]}},
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    }


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (
            base_definition(clipping={"parameters": {"max_norm": {"values": [1, 2]}}}),
            "nested `parameters:` block",
        ),
        (base_definition(seed={"values": [0, None]}), "'None'"),
        (base_definition(optimizer={"value": {"lr": 0.1}}), "mapping value"),
        (
            base_definition(
                clipping={"values": ["none", "norm"]}, **{"clipping.max_norm": {"value": 1}}
            ),
            "which the grid also varies",
        ),
        ({**base_definition(), "command": None}, "${args_no_hyphens}"),
        ({**base_definition(), "method": "gridd"}, "W&B's sweep schema"),
    ],
    ids=["nested", "none", "dict", "group-and-its-key", "default-command", "schema"],
)
def test_definitions_hydra_would_refuse_are_refused(definition, message, tmp_path) -> None:
    problems = check_definition(definition)
    assert any(message in p for p in problems), problems
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(definition))
    with pytest.raises(SweepError, match=r"bad\.yaml"):
        load_definition(path)


def test_a_fixed_group_may_set_its_own_keys() -> None:
    definition = base_definition(
        clipping={"value": "norm"}, **{"clipping.max_norm": {"values": [0.5, 1.0]}}
    )
    assert check_definition(definition) == []
