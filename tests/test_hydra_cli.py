"""`python train.py` as a Hydra command line: gradsweep's own `--help`, and exit 2 (bad input)
for a command line Hydra cannot compose, with Hydra's message, which lists the options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from gradsweep.cli.main import main as gradsweep_main
from gradsweep.errors import EXIT_NON_FINITE, EXIT_USER_ERROR
from gradsweep.run.entry import user_error_on_bad_overrides
from gradsweep.telemetry.diagnosis import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def train_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def conf_groups() -> dict[str, list[str]]:
    """Every config group under conf/ (a folder holding .yaml files) and its options, as
    Hydra names them: `experiment/ablation`; Hydra's own groups under conf/hydra/ left out."""
    groups = {}
    for folder in sorted(path for path in CONF.rglob("*") if path.is_dir()):
        group = folder.relative_to(CONF).as_posix()
        options = sorted(path.stem for path in folder.glob("*.yaml"))
        if options and group.split("/")[0] != "hydra":
            groups[group] = options
    return groups


@pytest.fixture(scope="module")
def help_run() -> subprocess.CompletedProcess:
    # -X importtime lists on stderr every module the help path imports.
    return train_py("-X", "importtime", "train.py", "--help")


@pytest.mark.slow  # starts python train.py
def test_help_exits_0_without_importing_torch(help_run: subprocess.CompletedProcess) -> None:
    assert help_run.returncode == 0, help_run.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in help_run.stderr.splitlines()}
    assert "torch" not in imported
    assert help_run.stdout.startswith("gradsweep: ")


@pytest.mark.slow  # starts python train.py
def test_help_names_every_group_and_option(help_run: subprocess.CompletedProcess) -> None:
    lines = help_run.stdout.splitlines()
    groups = conf_groups()
    assert {"activation", "model", "data", "experiment/ladder"} <= set(groups)
    for group, options in groups.items():
        assert f"{group}: {', '.join(options)}" in lines
    assert "keep" in groups["activation"]  # the choice model=custom defaults to
    for launcher in (CONF / "hydra" / "launcher").glob("*.yaml"):
        assert launcher.stem in help_run.stdout


@pytest.mark.slow  # starts python train.py
def test_help_names_the_verdicts_outputs_and_exit_codes(
    help_run: subprocess.CompletedProcess,
) -> None:
    text = help_run.stdout
    for verdict in VERDICTS:
        assert verdict in text
    # The folders' fixed part, before any interpolation: `outputs/`, `multirun/`.
    hydra_dirs = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").hydra)
    for folder in (hydra_dirs["run"]["dir"], hydra_dirs["sweep"]["dir"]):
        fixed = folder.split("${")[0]
        assert fixed in text, "the help's folders differ from hydra.run.dir or hydra.sweep.dir"
    for name in ("summary.json", "checkpoints/last.pt", "wandb/", "--hydra-help"):
        assert name in text
    assert f"{EXIT_USER_ERROR} bad input" in text and f"{EXIT_NON_FINITE} NaN" in text


@pytest.mark.slow  # starts python train.py
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["activation=gelx"], "Could not find 'activation/gelx'"),
        (["-m", "activation=gelx,relu"], "Could not find 'activation/gelx'"),
        (["--help", "activation=gelx"], "Could not find 'activation/gelx'"),
        (["trainer.max_stepz=3"], "Could not override 'trainer.max_stepz'"),
        (["activation=[gelu"], "no viable alternative at input '[gelu'"),
    ],
    ids=["option", "option-multirun", "option-help", "key", "malformed"],
)
def test_a_command_line_hydra_cannot_compose_exits_2(
    args: list[str], message: str, tmp_path: Path
) -> None:
    dirs = [f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/multirun"]
    done = train_py("train.py", *args, *dirs)
    assert done.returncode == EXIT_USER_ERROR, done.stderr[-3000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if "gelx" in message:  # Hydra's message lists the options to pick from
        assert all(f"\t{option}\n" in done.stderr for option in conf_groups()["activation"])


@pytest.mark.slow  # starts python train.py
def test_hydra_full_error_keeps_the_traceback_and_exits_2(tmp_path: Path) -> None:
    done = train_py(
        "train.py", "activation=gelx", f"hydra.run.dir={tmp_path}", env={"HYDRA_FULL_ERROR": "1"}
    )
    assert done.returncode == EXIT_USER_ERROR
    assert "Traceback" in done.stderr and "MissingConfigException" in done.stderr


def hydra_reports(error: Exception) -> None:
    """What Hydra's run_and_report does with an error: reports it, then exits 1."""
    try:
        raise error
    except Exception:
        sys.exit(1)


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (lambda: hydra_reports(MissingConfigException("no activation/gelx")), EXIT_USER_ERROR),
        (lambda: hydra_reports(ConfigCompositionException("no key")), EXIT_USER_ERROR),
        (lambda: hydra_reports(RuntimeError("a crash in training")), 1),
        (lambda: sys.exit(EXIT_NON_FINITE), EXIT_NON_FINITE),
        (lambda: sys.exit(EXIT_USER_ERROR), EXIT_USER_ERROR),
    ],
    ids=["missing-option", "bad-key", "crash", "non-finite", "user-error"],
)
def test_only_composition_errors_become_exit_2(raised, code: int) -> None:
    with pytest.raises(SystemExit) as stop, user_error_on_bad_overrides():
        raised()
    assert stop.value.code == code


def test_a_composition_error_hydra_does_not_report_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop, user_error_on_bad_overrides():
        raise MissingConfigException("Could not find 'activation/gelx'")
    assert stop.value.code == EXIT_USER_ERROR
    assert "Could not find 'activation/gelx'" in capsys.readouterr().err


def test_gradsweep_show_exits_2_on_a_mistyped_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert gradsweep_main(["show", "activation=gelx"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Could not find 'activation/gelx'" in err and "\tgelu\n" in err
