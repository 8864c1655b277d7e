"""GradientMonitor: gradient telemetry, clipping and the verdict for any training loop.

    monitor = GradientMonitor(model, sample, clipping=Clipping("norm", max_norm=1.0))
    for step, (x, y) in enumerate(batches):
        with monitor.activations(step):   # hooks on every activations_every-th step only
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward()
        monitor.step(loss)            # norms, clipping, one host transfer, one log call
        optimizer.step()
    print(monitor.diagnosis())

The device side lives in gradsweep.telemetry.gradients; this module turns each step's vector
into a row of named metrics, keeps what the verdict and the pictures need, and hands
the row to the tracker (W&B or nothing).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from gradsweep.fixes.layers import weight_layers
from gradsweep.telemetry.diagnosis import (
    Diagnosis,
    GradientFlow,
    Thresholds,
    combine,
    diagnose,
    log10_ratio,
)
from gradsweep.telemetry.gradients import Clipping, GradientTelemetry, select_params
from gradsweep.telemetry.health import LayerHealth
from gradsweep.telemetry.learning import judge_learning


@dataclass(frozen=True)
class ClipStats:
    steps: int = 0
    hits: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.steps if self.steps else 0.0


class LaggedTransfer:
    """Brings one device vector per step to the host without making the host wait for it.

    On CUDA the copy goes to pinned memory asynchronously and is read one step later, when
    it has long finished: `push` returns the previous step's values. Elsewhere (the CPU,
    where tests run this path) the values are kept as they are and read a step later too.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: tuple[object, torch.Tensor, object] | None = None

    def push(self, tag: object, values: torch.Tensor) -> tuple[object, list[float]] | None:
        """Start moving `values`; return the previous (tag, values) pair, if any."""
        host, event = values, None
        if self.cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        ready, self._pending = self.flush(), (tag, host, event)
        return ready

    def flush(self) -> tuple[object, list[float]] | None:
        """The values still in flight, if any (call once after the last step)."""
        if self._pending is None:
            return None
        tag, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # host sync, on a copy issued a step ago
        return tag, host.tolist()


def global_norm(norms: list[float], missing: tuple[int, ...]) -> float:
    """The L2 norm of all gradients, from their norms; those missing take no part."""
    if missing:
        absent = set(missing)
        norms = [n for i, n in enumerate(norms) if i not in absent]
    return math.sqrt(math.fsum(n * n for n in norms))


def layer_key(index: int) -> str:
    """The series of weight layer `index` (0: the first in forward order): `grad_flow/layer_000`.
    Named by depth, not by parameter, so that the runs of a sweep line up whatever their fixes
    add (norms, shortcuts) or rename (`1.weight` becomes `1.body.0.weight` under a residual)."""
    return f"grad_flow/layer_{index:03d}"


class GradientMonitor:
    """Per-layer gradient norms, clipping with hit stats and a verdict, in a few lines.

    `sample` is a batch the model accepts; one forward pass of it (eval mode, no
    grad) finds the weight layers in forward order. `tracker` is anything with a
    `log(metrics, step)` method (gradsweep.tracking.tracker), or None. `sync_free` (default: on
    CUDA) keeps the host from ever waiting for the device: clipping is decided on the
    device and each step's values are read a step later. Elsewhere the host reads them at
    once and decides clipping itself, which spares the device work on steps that do not
    clip.
    """

    def __init__(
        self,
        model: nn.Module,
        sample: torch.Tensor,
        clipping: Clipping | None = None,
        params: str = "none",
        log_every_n_steps: int = 1,
        window: int = 50,
        thresholds: Thresholds | None = None,
        tracker=None,
        sync_free: bool | None = None,
        activations_every: int = 50,
    ) -> None:
        self.layers = weight_layers(model, sample)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no Linear or conv layer to monitor")
        self.clipping = clipping or Clipping()
        device = next(model.parameters()).device
        if sync_free is None:
            sync_free = device.type == "cuda"
        self.telemetry = GradientTelemetry(
            model,
            select_params(model, params, self.layers),
            self.layers,
            self.clipping,
            sync_free=sync_free,
        )
        self.log_every_n_steps = log_every_n_steps
        self.window = window
        self.thresholds = thresholds or Thresholds()
        self.health = LayerHealth(model, self.layers, activations_every)
        self.losses: list[float] = []  # every logged step's, for the learning finding
        self.tracker = tracker
        self.clip = ClipStats()
        self.steps = 0
        self.non_finite_step: int | None = None
        # Every measured step's weight-layer norms, for the heatmap; the most recent
        # window of them, for the verdict.
        self.layer_history: list[list[float]] = []
        self.steps_measured: list[int] = []
        self._window: deque[list[float]] = deque(maxlen=window)
        self._totals: deque[float] = deque(maxlen=window)

        self._no_accuracy = torch.full((), math.nan, device=device)
        self._transfer = LaggedTransfer(device)
        self._extra: dict[int, dict[str, float]] = {}
        self._health: dict[str, float] = {}
        self._grad_keys = [f"grad_norm/{n}" for n in self.telemetry.logged]
        self.layer_keys = [layer_key(index) for index in range(len(self.layers))]
        # Position among all parameters -> the keys of its series, for those logged.
        self._keys_at: dict[int, list[str]] = {}
        for index, key in zip(self.telemetry.logged_index, self._grad_keys, strict=True):
            self._keys_at.setdefault(index, []).append(key)
        for index, key in zip(self.telemetry.layer_index, self.layer_keys, strict=True):
            self._keys_at.setdefault(index, []).append(key)

    def step(
        self,
        loss: torch.Tensor,
        accuracy: torch.Tensor | None = None,
        step: int | None = None,
        extra: dict[str, float] | None = None,
    ) -> dict[str, float] | None:
        """Measure (and clip) the gradients now in `.grad`, then log the step's row.

        Call after `backward()` and before `optimizer.step()`. Clipping happens on
        every step; the norms are logged every `log_every_n_steps` steps, and on any
        step with `extra` (e.g. validation metrics, which join the same row). Returns
        the row logged now, if any: when `sync_free`, a row is logged one step late.
        """
        step = self.steps if step is None else step
        self.steps = step + 1
        if extra:
            self._extra[step] = {**self._extra.get(step, {}), **extra}
        # Activations and update ratios (measured steps only) join the next logged row.
        self._health.update(self.health.at_step(step))
        logged = step % self.log_every_n_steps == 0 or step in self._extra
        if logged and self._health:
            self._extra[step] = {**self._extra.get(step, {}), **self._health}
            self._health = {}
        if not logged and self.clipping.name == "none":
            return None  # nothing to measure, nothing to clip
        telemetry = self.telemetry
        norms = telemetry.norms()
        accuracy = self._no_accuracy if accuracy is None else accuracy
        head = [t if t.dim() == 0 else t.reshape(()) for t in (loss, accuracy)]
        tag = (step, telemetry.missing, logged)
        if telemetry.sync_free:
            statistic = telemetry.clip(norms)
            with torch.no_grad():  # [loss, accuracy, every parameter's norm, statistic]
                values = torch.stack([*head, *norms, *([] if statistic is None else [statistic])])
            ready = self._transfer.push(tag, values.float())
            return self._record(*ready) if ready else None
        with torch.no_grad():
            values = torch.stack([*head, *norms]).tolist()  # host sync: the step's one transfer
        total = global_norm(values[2:], telemetry.missing)
        statistic = telemetry.clip(norms, total)  # the host decides, knowing the total
        return self._record(tag, values + ([] if statistic is None else [statistic]), total)

    def flush(self) -> dict[str, float] | None:
        """Log the row still in flight (`sync_free` only); call once after the last step."""
        ready = self._transfer.flush()
        return self._record(*ready) if ready else None

    def _record(
        self,
        tag: tuple[int, tuple[int, ...], bool],
        values: list[float],
        total: float | None = None,
    ) -> dict[str, float] | None:
        """Count the step's clip, and log its row if it is a logged step."""
        (step, missing, logged), (loss, accuracy, *rest) = tag, values
        count = len(self.telemetry.params)
        norms = rest[:count]
        total = global_norm(norms, missing) if total is None else total
        clipping = self.clipping.name != "none"
        if clipping:
            hit = rest[count] > self.telemetry.limit
            self.clip = ClipStats(steps=self.clip.steps + 1, hits=self.clip.hits + hit)
        if not logged:
            return None
        row = {"train/loss": loss}
        if not math.isnan(accuracy):
            row["train/acc"] = accuracy
        logged_norms = [norms[i] for i in self.telemetry.logged_index]
        row.update(zip(self._grad_keys, logged_norms, strict=True))
        layer_norms = [norms[i] for i in self.telemetry.layer_index]
        row.update(zip(self.layer_keys, layer_norms, strict=True))
        for position in missing:  # no gradient this step: nothing to log for it
            for key in self._keys_at.get(position, ()):
                del row[key]
        row["grad_norm/total"] = total
        row["grad_flow/first"] = layer_norms[0]
        row["grad_flow/last"] = layer_norms[-1]
        row["grad_flow/log10_ratio"] = log10_ratio(layer_norms[0], layer_norms[-1])
        if clipping:
            row["clip/hit"] = float(hit)
            row["clip/hit_rate"] = self.clip.hit_rate
        row.update(self._extra.pop(step, {}))

        self.layer_history.append(layer_norms)
        self.steps_measured.append(step)
        self.losses.append(loss)
        self._window.append(layer_norms)
        self._totals.append(total)
        if self.non_finite_step is None and not (math.isfinite(loss) and math.isfinite(total)):
            self.non_finite_step = step
        if self.tracker is not None:
            self.tracker.log(row, step=step)
        return row

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the counts, the window and the pictures.

        Logs the row still in flight first (`sync_free`), so the state covers every step so far.
        """
        self.flush()
        return {
            "steps": self.steps,
            "clip": (self.clip.steps, self.clip.hits),
            "layer_history": torch.tensor(self.layer_history, dtype=torch.float64),
            "steps_measured": list(self.steps_measured),
            "totals": list(self._totals),
            "non_finite_step": self.non_finite_step,
            "losses": list(self.losses),
            "health": self.health.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.clip = ClipStats(*state["clip"])
        self.layer_history = state["layer_history"].tolist()
        self.steps_measured = list(state["steps_measured"])
        window = self._window.maxlen
        self._window.clear()
        self._window.extend(self.layer_history[-window:] if window else [])
        self._totals.clear()
        self._totals.extend(state["totals"])
        self.non_finite_step = state["non_finite_step"]
        self.losses = list(state.get("losses", []))
        self.health.load_state_dict(state.get("health", {}))

    def activations(self, step: int):
        """Wrap the forward pass of `step` in this: on every `activations_every`-th step, forward
        hooks measure each hidden layer's activations (`act/*/layer_NNN` in that step's row)."""
        return self.health.watch(step)

    def gradient_flow(self) -> GradientFlow:
        """The gradient-flow finding over the most recent window of measured steps."""
        return diagnose(list(self._window), list(self._totals), self.thresholds)

    def diagnosis(self, val_accuracy=(), classes: int | None = None) -> Diagnosis:
        """Both findings and the verdict: the gradient flow, and the learning from every logged
        step's loss and `val_accuracy` (each evaluation's, in order)."""
        learning = judge_learning(
            self.losses, val_accuracy, self.thresholds, self.window, classes=classes
        )
        activations = self.health.evidence(self.thresholds.flagged_units)
        return combine(self.gradient_flow(), learning, activations)
