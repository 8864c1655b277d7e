"""train(cfg): one run, from a composed config to a verdict.

    data -> model -> fixes -> loop (forward, backward, telemetry + clipping, step)
         -> eval -> verdict, pictures, summary.json

Tests call `train(cfg, run_dir)` directly with a config from `hydra.compose`;
`train.py` is a thin `@hydra.main` wrapper over it.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from gradsweep.config import flat_config
from gradsweep.data.batches import Batches, iterate_eval
from gradsweep.data.load import load_data
from gradsweep.data.tensors import Data
from gradsweep.errors import ConfigError
from gradsweep.files import write_json_atomic
from gradsweep.run.build import build_model, pick_device, stream_seed
from gradsweep.run.checkpoint import (
    checkpoint_path,
    config_hash,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from gradsweep.run.console import Progress, report
from gradsweep.run.optimizers import create_optimizer
from gradsweep.run.record import build_summary
from gradsweep.run.validate import check_config
from gradsweep.signals import StopRequest
from gradsweep.telemetry.diagnosis import thresholds_from_config
from gradsweep.telemetry.gradients import Clipping
from gradsweep.telemetry.monitor import GradientMonitor
from gradsweep.tracking.tracker import Tracker, start_tracking

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss and accuracy on (x, y) in eval mode; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for xb, yb in iterate_eval(x, y, 1024):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    loss, hits = torch.stack([loss_sum, correct]).tolist()  # host sync: once per eval
    return {"loss": loss / len(y), "acc": hits / len(y)}


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports back: train.py turns it into an exit code."""

    val_acc: float
    verdict: str
    non_finite_step: int | None
    summary: dict[str, object]


def train(cfg: DictConfig, run_dir: Path | None = None) -> RunResult:
    """Train one configuration, resuming from `run_dir`'s checkpoint if it holds one.

    `run_dir` holds summary.json, the pictures, checkpoints/ and the W&B folder; by
    default Hydra's output folder for this job.
    """
    check_config(cfg)  # before anything heavy: bad values fail in milliseconds
    run_dir = _writable_run_dir(run_dir)
    device = pick_device(cfg.trainer.device)
    saved = _saved_state(cfg, run_dir)  # a corrupt or foreign checkpoint fails here, early

    data = load_data(cfg.data, device)

    # The W&B run starts now, in its writer process, while the model is built here. A run
    # folder that held a run before continues its W&B run, checkpoint or not.
    record = {**flat_config(cfg), **data.record()}  # the data source, and any class names
    tracker = start_tracking(cfg.logger, record, run_dir, args=_hydra_overrides())
    tracker.save_files(sorted((run_dir / ".hydra").glob("*.yaml")), base_path=run_dir)
    try:
        result = _train(cfg, run_dir, device, data, saved, tracker)
    except BaseException as error:
        try:
            tracker.finish(exit_code=1)  # the history logged so far stays, marked failed
        except Exception as wandb_error:  # the run's own error is the one to raise
            error.add_note(f"and ending its W&B run failed too: {wandb_error}")
        raise
    # A run stopped by NaN/inf is recorded in full, and marked failed in W&B.
    tracker.finish(exit_code=0 if result.non_finite_step is None else 1)
    return result


@dataclass
class _Run:
    """What changes as a run trains, and so what its checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    monitor: GradientMonitor
    tracker: Tracker
    # The latest evaluation and the best validation accuracy so far.
    progress: dict = field(
        default_factory=lambda: {"val": {}, "val_best": -math.inf, "val_history": []}
    )

    @classmethod
    def build(cls, cfg: DictConfig, data: Data, device: torch.device, tracker: Tracker) -> _Run:
        model = build_model(cfg, data, device)
        generator = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "data"))
        monitor = GradientMonitor(
            model,
            data.train_x[:2],
            clipping=Clipping.from_config(cfg.clipping),
            params=cfg.telemetry.params,
            log_every_n_steps=cfg.telemetry.log_every_n_steps,
            window=cfg.telemetry.window,
            thresholds=thresholds_from_config(cfg.telemetry),
            tracker=tracker,
            activations_every=cfg.telemetry.activations_every,
        )
        return cls(
            model=model,
            optimizer=create_optimizer(cfg.optimizer, model.parameters()),
            batches=Batches(data, cfg.data.batch_size, generator, augment=cfg.data.augment),
            monitor=monitor,
            tracker=tracker,
        )

    def restore(self, saved: dict) -> int:
        """Continue from a checkpoint's state; the step to train next."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.batches.load_state_dict(saved["batches"])
        self.monitor.load_state_dict(saved["monitor"])
        restore_rng_state(saved["rng"])
        self.progress = saved["progress"]
        if not saved["clean_stop"]:
            self.tracker.replay(saved["recent_rows"])  # what a killed run may not have written
        return saved["step"]

    def checkpoint(self, cfg: DictConfig, run_dir: Path, next_step: int, clean_stop: bool) -> None:
        # Every row up to here reaches wandb before the checkpoint says it was logged.
        self.monitor.flush()
        self.tracker.flush()
        state = {
            "config_hash": config_hash(cfg),
            "step": next_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "monitor": self.monitor.state_dict(),
            "rng": rng_state(),
            "progress": self.progress,
            "recent_rows": self.tracker.recent_rows(),
            # A stop we handled ends the W&B run in order: nothing to log again.
            "clean_stop": clean_stop,
        }
        save_checkpoint(checkpoint_path(run_dir), state)

    def evaluate(self, data: Data, step: int) -> None:
        """Validate the weights after `step`'s update; W&B merges it into the step's row."""
        val = self.progress["val"] = evaluate(self.model, data.val_x, data.val_y)
        self.progress["val_best"] = max(self.progress["val_best"], val["acc"])
        self.progress.setdefault("val_history", []).append(val["acc"])  # for the learning
        self.tracker.log({"val/loss": val["loss"], "val/acc": val["acc"]}, step)


def _train(
    cfg: DictConfig,
    run_dir: Path,
    device: torch.device,
    data: Data,
    saved: dict | None,
    tracker: Tracker,
) -> RunResult:
    """Build the model, train it, write the summary: the whole run between W&B's ends."""
    run = _Run.build(cfg, data, device, tracker)
    first_step = 0
    if saved is not None:
        first_step = run.restore(saved)
        log.info("resuming from %s at step %d", checkpoint_path(run_dir), first_step)
    tracker.update_summary({"telemetry/layers": dict(enumerate(run.monitor.layers))})
    max_steps = cfg.trainer.max_steps or cfg.trainer.max_epochs * run.batches.steps_per_epoch
    log.info(
        "training steps %d..%d (%d per epoch) on %s; telemetry on %d weight layers; W&B %s",
        first_step,
        max_steps,
        run.batches.steps_per_epoch,
        device,
        len(run.monitor.layers),
        tracker.mode,  # waits for the W&B run to start, and raises if online cannot be had
    )
    steps = _loop(cfg, run, data, run_dir, first_step, max_steps)
    return _conclude(cfg, run, data, run_dir, steps)


def _loop(
    cfg: DictConfig, run: _Run, data: Data, run_dir: Path, first_step: int, max_steps: int
) -> int:
    """Train steps first_step..max_steps-1, evaluating and checkpointing on their schedules;
    stop early on a non-finite loss or gradient, or on a stop signal (after a checkpoint).
    Returns how many steps the model has taken."""
    model, optimizer, monitor = run.model, run.optimizer, run.monitor
    meter = Progress(max_steps, first_step)
    step = first_step - 1
    model.train()
    stream = iter(run.batches)
    forward = _compiled(model, cfg.trainer.compile)  # shares the model's parameters
    bf16 = str(cfg.trainer.precision) == "bf16"
    autocast = torch.autocast(data.train_x.device.type, dtype=torch.bfloat16, enabled=bf16)
    # Read once: two config lookups a step are ~30 us of host time, a few percent of a
    # launch-bound GPU step.
    eval_every, checkpoint_every = cfg.trainer.eval_every, cfg.trainer.checkpoint_every
    with StopRequest() as stop:
        for step in range(first_step, max_steps):
            x, y = next(stream)
            # A measured step runs the model itself, hooked: a compiled forward runs no hooks.
            measured = monitor.health.measures(step)
            with autocast, monitor.activations(step):
                logits = (model if measured else forward)(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            accuracy = (logits.argmax(1) == y).float().mean()
            # Norms, clipping, the step's one host transfer and its W&B row.
            row = monitor.step(loss, accuracy, step=step)
            optimizer.step()
            if row is not None:
                meter.update(step, row)
            if step == max_steps - 1 or (step + 1) % eval_every == 0:
                run.evaluate(data, step)
            if monitor.non_finite_step is not None:
                log.error("non-finite loss or gradient at step %d: stopping", step)
                break
            # Read once: a signal that lands during this step's checkpoint stops the run at the
            # next step, after a checkpoint that says so, not after this one, which does not.
            stopping = stop.requested
            if stopping:
                run.tracker.mark_preempting()  # a sweep requeues the run, which resumes here
            if stopping or (step + 1) % checkpoint_every == 0:
                run.checkpoint(cfg, run_dir, step + 1, clean_stop=stopping)
            if stopping:
                log.warning(
                    "signal %d: checkpoint saved at step %d; stopping", stop.signum, step + 1
                )
                run.tracker.finish(exit_code=128 + stop.signum)
                stop.handover()
        monitor.flush()
        meter.close()
        if monitor.non_finite_step is None:
            # A re-run of a finished run trains no more.
            run.checkpoint(cfg, run_dir, max_steps, clean_stop=True)
    return step + 1


def _conclude(cfg: DictConfig, run: _Run, data: Data, run_dir: Path, steps: int) -> RunResult:
    """The test score, the verdict and its advice, the pictures and summary.json."""
    model, monitor = run.model, run.monitor
    test = evaluate(model, data.test_x, data.test_y) if data.test_x is not None else None
    evals = {"val_history": [], **run.progress, "test": test}
    summary = build_summary(cfg, model, data, monitor, evals, steps=steps)
    report(monitor, summary, run_dir, run.tracker)
    write_json_atomic(run_dir / "summary.json", summary)
    run.tracker.update_summary(summary)
    return RunResult(
        val_acc=float(run.progress["val"].get("acc", math.nan)),
        verdict=str(summary["diagnosis/verdict"]),
        non_finite_step=monitor.non_finite_step,
        summary=summary,
    )


def _compiled(model: nn.Module, setting: bool | str):
    """The training forward: the model itself, or torch.compile of it (`true`: inductor)."""
    if setting is False:
        return model
    return torch.compile(model, backend="inductor" if setting is True else setting)


def _writable_run_dir(run_dir: Path | None) -> Path:
    """The run folder, created and checked writable before any work is done in it."""
    run_dir = Path(run_dir) if run_dir is not None else _hydra_output_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to the run folder {run_dir} ({error.strerror}): "
            "pick a writable hydra.run.dir (or hydra.sweep.dir for -m)"
        ) from error
    return run_dir


def _saved_state(cfg: DictConfig, run_dir: Path) -> dict | None:
    path = checkpoint_path(run_dir)
    return load_checkpoint(path, config_hash(cfg)) if path.exists() else None


def _hydra_overrides() -> list[str] | None:
    """This job's command-line overrides (in a multirun, its own, not the whole grid's); None
    outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("train(cfg) outside a Hydra app needs run_dir=")
    return Path(HydraConfig.get().runtime.output_dir)
