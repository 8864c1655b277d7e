"""A W&B sweep definition (conf/sweep*.yaml): load it, check it, count it, and build the
command line each of its runs gets, exactly as `wandb agent` builds it.

The agent renders every parameter value with `str()` and hands it to the program as
`key=value` (`${args_no_hyphens}`), so only flat parameters reach Hydra intact: a group
choice (`activation`) or a dotted key (`clipping.max_norm`). A nested `parameters:` block
would arrive as `key={'a': 1}`, and `None` as the string "None"; W&B's own engine
(`sweeps` 0.2.0) even drops nested blocks without a word. `check_definition` refuses
those before any run starts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gradsweep.errors import SweepError

# The command wandb uses when a definition has none: `--key=value`, which Hydra rejects.
AGENT_DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# Argument macros whose `key=value` form Hydra accepts as overrides.
HYDRA_ARG_MACROS = ("${args_no_hyphens}", "${args_override_hydra}", "${args_append_hydra}")


@dataclass(frozen=True)
class SweepDefinition:
    """A validated sweep definition: the YAML as loaded, plus where it came from."""

    path: Path
    config: dict[str, Any]
    # The same, validated and filled with defaults by W&B's engine: what it proposes from.
    engine_config: dict[str, Any]

    @property
    def name(self) -> str:
        """The sweep's `name:`, else the file's stem: the W&B group of its offline runs."""
        return str(self.config.get("name") or self.path.stem)

    @property
    def method(self) -> str:
        return str(self.config["method"])

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.config["parameters"]

    @property
    def varying(self) -> list[str]:
        """The parameters that take more than one value, sorted as the engine sorts them."""
        return [name for name in sorted(self.parameters) if _choices(self.parameters[name]) != 1]

    @property
    def command(self) -> list[str]:
        return [str(part) for part in self.config.get("command") or AGENT_DEFAULT_COMMAND]


def load_definition(path: str | Path) -> SweepDefinition:
    """Read and check a sweep definition; raise SweepError naming every problem."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep definition") from None
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise SweepError(f"{path}: a sweep definition is a mapping (program, method, parameters)")
    problems, engine_config = _check(config)
    if problems:
        raise SweepError(f"{path}:\n  - " + "\n  - ".join(problems))
    return SweepDefinition(path=path, config=config, engine_config=engine_config)


def check_definition(config: Mapping[str, Any]) -> list[str]:
    """Every problem with `config`: what Hydra would refuse, then W&B's schema."""
    return _check(config)[0]


def _check(config: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    problems = _flat_problems(config)
    if problems:  # the schema's messages about the same nodes only repeat these
        return problems, {}
    try:
        return [], sweep_config(config)
    except Exception as error:  # jsonschema.ValidationError, or ValueError for odd nodes
        return [f"W&B's sweep schema: {line}" for line in str(error).splitlines() if line], {}


def sweep_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` validated and filled with defaults by W&B's engine (`sweeps.SweepConfig`)."""
    return import_sweeps().SweepConfig(dict(config))


def import_sweeps() -> Any:
    """The `sweeps` package, without the two pydantic deprecation warnings its import emits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def _flat_problems(config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        return ["`parameters:` must map each parameter name to its values"]
    for name, spec in parameters.items():
        if not isinstance(spec, dict):
            problems.append(f"parameter {name!r}: give `value:` or `values:`, not {spec!r}")
            continue
        if "parameters" in spec:
            problems.append(
                f"parameter {name!r} holds a nested `parameters:` block: the agent would pass "
                f"{name}={{...}}, which Hydra rejects. Use dotted names instead ({name}.KEY)"
            )
        for value in _listed_values(spec):
            if value is None:
                problems.append(
                    f"parameter {name!r}: a null value reaches Hydra as the string 'None'; "
                    "write 'null' (quoted) for Hydra's null"
                )
            elif isinstance(value, dict):
                problems.append(
                    f"parameter {name!r}: a mapping value reaches Hydra as {name}={value}, "
                    "which it rejects; use one dotted parameter per key"
                )
    for name in parameters:
        group = name.split(".", 1)[0]
        if name != group and group in parameters and _choices(parameters[group]) != 1:
            problems.append(
                f"parameter {name!r} sets a key of group {group!r}, which the grid also "
                f"varies: an option without that key is rejected by Hydra "
                f"(`{group}=none {name}=...`). Fix {group!r} with `value:`, or drop {name!r}"
            )
    command = config.get("command") or list(AGENT_DEFAULT_COMMAND)
    if not any(str(part) in HYDRA_ARG_MACROS for part in command):
        problems.append(
            "`command:` passes no arguments Hydra accepts: use "
            "[${env}, ${interpreter}, ${program}, ${args_no_hyphens}] "
            "(wandb's default ${args} writes --key=value)"
        )
    return problems


def _listed_values(spec: Mapping[str, Any]) -> list[Any]:
    if "values" in spec and isinstance(spec["values"], list):
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return []


def _choices(spec: Mapping[str, Any]) -> int | float:
    """How many values a parameter takes in a grid (inf for a continuous distribution)."""
    if "values" in spec:
        return len(spec["values"])
    if "value" in spec:
        return 1
    if spec.get("distribution") == "int_uniform":
        return int(spec["max"]) - int(spec["min"]) + 1
    if spec.get("distribution") == "q_uniform":
        return len(_q_uniform_values(spec))
    return math.inf


def _q_uniform_values(spec: Mapping[str, Any]) -> list[float]:
    import numpy as np  # as the grid engine spells the range

    return np.arange(spec["min"], spec["max"], spec["q"]).tolist()


def grid_size(definition: SweepDefinition) -> int | None:
    """How many runs a grid holds (the product of each parameter's choices); None otherwise."""
    if definition.method != "grid":
        return None
    size = math.prod(_choices(spec) for spec in definition.parameters.values())
    return int(size) if math.isfinite(size) else None


def agent_command(
    definition: SweepDefinition,
    params: Mapping[str, Any],
    program: str,
    interpreter: str = "python",
) -> list[str]:
    """The command `wandb agent` would run for one proposed run, built by wandb's own code.

    `params` maps each parameter to its value (`{"activation": "relu"}`). The macros are
    replaced as the agent replaces them (wandb/wandb_agent.py, `Agent._command_run`): only
    whole list elements, each by a list of words.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    template = create_sweep_command(definition.command)  # ${envvar:NAME} substitutions
    words = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    words.update(env=["/usr/bin/env"], interpreter=[interpreter], program=[program])
    command: list[str] = []
    for part in template:
        part = str(part)
        if part.startswith("${") and part.endswith("}"):
            macro = part[2:-1]
            if macro not in words or macro == "args_dict":
                raise SweepError(f"command macro {part} is not supported offline")
            command += [str(word) for word in words[macro]]
        else:
            command.append(part)
    return command


def agent_args(params: Mapping[str, Any]) -> list[str]:
    """Just the `${args_no_hyphens}` words for `params` (`key=value`, values via `str()`)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})[
        "args_no_hyphens"
    ]


def grid_params(definition: SweepDefinition, done: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """The runs of a grid not in `done`, in the engine's order, proposed by the engine itself."""
    sweeps = import_sweeps()
    size = grid_size(definition)
    if size is None:
        raise SweepError(f"{definition.path}: method {definition.method!r} is not a grid")
    finished = [
        sweeps.SweepRun(config={k: {"value": v} for k, v in params.items()}, state="finished")
        for params in done
    ]
    # One call for the whole grid: the engine hashes every known run on each call.
    proposals = sweeps.next_runs(definition.engine_config, finished, n=size)
    return [{k: v["value"] for k, v in run.config.items()} for run in proposals if run is not None]


def find_program(definition: SweepDefinition, cwd: Path | None = None) -> Path:
    """The definition's `program:`, as the agent finds it (the working directory), else
    beside the definition or in a folder above it (conf/sweep.yaml -> ./train.py)."""
    program = Path(str(definition.config.get("program") or "train.py"))
    if program.is_absolute():
        candidates: Sequence[Path] = [program]
    else:
        here = definition.path.resolve().parent
        candidates = [(cwd or Path.cwd()) / program, *(d / program for d in (here, *here.parents))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise SweepError(f"program {program} not found in the working directory or above the sweep")
