"""What per-step gradient telemetry costs, as ratios against the bare training step.

    python bench/telemetry_overhead.py [--rounds 20] [--steps 100] [--threads N] [--profile]

The default 20-layer sigmoid MLP (784-256x20-10), batch 128, SGD, on the CPU. Every
variant trains its own copy of the same model. Each round gives every variant a turn of
`--steps` steps, in a new random order each round, so machine noise hits them all alike.
A turn's figure is its mean step time, wall clock over the whole turn: gradsweep's W&B
writer takes rows in bursts (wandb_writer.BATCH_S), so a per-step median would miss the
steps a burst slows, and the turn ends with a flush of the writer, timed, so that its
backlog is paid inside the turn instead of by the next variant's. Reported per variant:
the mean step over all turns, and its ratio to the bare loop as the median over rounds
of (the variant's turn) / (the bare loop's turn in the same round), with the quartiles
of those per-round ratios. For gradsweep's W&B variants, the share of the turn spent in that
final flush is reported too: the rows the writer had not logged by then.

Variants:
  bare          forward, backward, optimizer step: the floor
  bare-again    a second, identical bare loop: the control, whose ratio to bare shows how
                far this machine's noise moves a ratio
  norms-only    + one fused norm pass over the gradients and one transfer of the norms, and
                nothing else (no clipping, no row): the least per-layer telemetry costs
  gradsweep     + GradientMonitor as train.py runs it by default: every weight layer's grad
                norm (grad_flow/layer_NNN), clipping=norm, clip hit stats, one host
                transfer, the layer health every 50th step, and one W&B row per step,
                through gradsweep's W&B writer process (offline, the default niceness)
  gradsweep/10  the same, a W&B row every 10th step (telemetry.log_every_n_steps=10)
  no-wandb      the same telemetry and clipping every step, logger=none, no layer health
                (telemetry.activations_every=0)
  no-wandb+health  the same, and the layer health every 50th step as train.py measures it
                (telemetry.activations_every=50, its default: activation hooks on that step's
                forward, the weights kept and the update ratios read at the next step)
  wandb.log     the same telemetry and clipping, and wandb's own `run.log` called on the
                training thread: what the writer process saves
  seed          + the seed's recipe: a Python loop of p.grad.norm(2).item() for every
                parameter, then torch.nn.utils.clip_grad_norm_
  lightning     + a Lightning-style grad_norm dict (one vector_norm per parameter, a
                total), logged as floats with clip_grad_norm_
  wandb.watch   + wandb.watch(model, log="gradients", log_freq=1) and one log per step
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsweep.run.models import mlp
from gradsweep.telemetry.gradients import Clipping
from gradsweep.telemetry.monitor import GradientMonitor
from gradsweep.tracking.tracker import start_tracking

LOGGER_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "logger" / "wandb.yaml"


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp((1, 28, 28), 10, depth=20, width=256)


def offline_tracker(run_dir: Path, name: str, niceness: int):
    """gradsweep's own W&B tracker: an offline run kept by a W&B writer process."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(LOGGER_CONFIG)
    cfg.mode, cfg.project, cfg.run_name, cfg.niceness = "offline", "gradsweep-bench", name, niceness
    tracker = start_tracking(cfg, {"bench": name}, run_dir / name)
    assert tracker.mode == "offline"
    return tracker


def in_process_run(run_dir: Path, name: str, reinit: str):
    """A wandb run in this process, as a user's own script would open it."""
    import wandb

    (run_dir / name).mkdir()
    return wandb.init(
        mode="offline",
        dir=run_dir / name,
        project="gradsweep-bench",
        name=name,
        reinit=reinit,
        settings=wandb.Settings(silent=True, console="off"),
    )


class Variant:
    """One training loop; `step(x, y)` runs one timed step."""

    def __init__(self, name: str, run_dir: Path, niceness: int) -> None:
        self.name = name
        self.model = make_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.rounds: list[float] = []  # the mean step of each turn
        self.flushes: list[float] = []  # of it, the flush that ends the turn, a step
        self.tracker = None
        self.monitor = None
        self.step_index = 0
        # gradsweep's own W&B writer: its backlog is flushed, and timed, at the end of a turn.
        self.writer = name in ("gradsweep", "gradsweep/10")
        sample = torch.zeros(2, 1, 28, 28)
        clipping = Clipping("norm", max_norm=1.0)
        if self.writer:
            self.tracker = offline_tracker(run_dir, name.replace("/", "_"), niceness)
            every = 10 if name == "gradsweep/10" else 1
            self.monitor = GradientMonitor(
                self.model, sample, clipping, log_every_n_steps=every, tracker=self.tracker
            )
        elif name == "wandb.log":
            # A wandb Run has the log(metrics, step=) a GradientMonitor tracker needs.
            # Beside the other in-process run (wandb.watch's) rather than in place of it.
            self.tracker = in_process_run(run_dir, "wandb.log", reinit="create_new")
            self.monitor = GradientMonitor(self.model, sample, clipping, tracker=self.tracker)
        elif name == "no-wandb":
            self.monitor = GradientMonitor(self.model, sample, clipping, activations_every=0)
        elif name == "no-wandb+health":
            self.monitor = GradientMonitor(self.model, sample, clipping, activations_every=50)
        elif name == "wandb.watch":
            # The global run (wandb.watch logs through it), made before the other in-process one.
            self.run = in_process_run(run_dir, name, reinit="default")
            self.run.watch(self.model, log="gradients", log_freq=1)
        self.named = list(self.model.named_parameters())

    def turn(self, xs: torch.Tensor, ys: torch.Tensor, first: int, steps: int) -> None:
        """`steps` timed steps on batches from `first` on; the turn's mean step joins rounds."""
        start = time.perf_counter()
        for i in range(first, first + steps):
            self.step(xs[i % len(xs)], ys[i % len(ys)])
        flush = time.perf_counter()
        if self.writer:
            self.tracker.flush()  # the W&B writer's backlog, paid in this turn
        end = time.perf_counter()
        self.rounds.append((end - start) / steps)
        self.flushes.append((end - flush) / steps)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.monitor is not None:
            with self.monitor.activations(self.monitor.steps):  # hooks on measured steps only
                logits = self.model(x)
        else:
            logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.monitor is not None:
            self.monitor.step(loss, (logits.argmax(1) == y).float().mean())
        elif self.name == "norms-only":
            torch.stack(torch._foreach_norm([p.grad for _, p in self.named], 2.0)).tolist()
        elif self.name == "seed":
            norms = {f"grad_norm/{n}": p.grad.norm(2).item() for n, p in self.named}
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=1.0)
            norms["train/loss"] = loss.item()
        elif self.name == "lightning":
            norms = {
                f"grad_2.0_norm/{n}": torch.linalg.vector_norm(p.grad, 2.0) for n, p in self.named
            }
            norms["grad_2.0_norm_total"] = torch.linalg.vector_norm(
                torch.stack(list(norms.values())), 2.0
            )
            logged = {k: v.item() for k, v in norms.items()}  # what self.log_dict does
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=1.0)
            logged["train/loss"] = loss.item()
        elif self.name == "wandb.watch":
            self.run.log({"train/loss": loss.item()}, step=self.step_index)
        self.optimizer.step()
        self.step_index += 1

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()
        if self.name == "wandb.watch":
            self.run.finish()


def profile(xs: torch.Tensor, ys: torch.Tensor, niceness: int, steps: int = 100) -> None:
    """torch.profiler over gradsweep steps: the ops inside GradientMonitor.step (the
    telemetry, clipping, the transfer and the W&B send), by self CPU time per step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with tempfile.TemporaryDirectory() as tmp:
        variant = Variant("gradsweep", Path(tmp), niceness)
        monitor_step = variant.monitor.step

        def labelled(*args, **kwargs):
            with record_function("GradientMonitor.step"):
                return monitor_step(*args, **kwargs)

        variant.monitor.step = labelled
        for i in range(10):
            variant.step(xs[i], ys[i])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                with record_function("train_step"):
                    variant.step(xs[i % 64], ys[i % 64])
        variant.close()

    events = prof.events()
    spans = {
        name: [e for e in events if e.name == name]
        for name in ("train_step", "GradientMonitor.step")
    }
    per_step = {name: sum(e.cpu_time_total for e in found) / steps for name, found in spans.items()}
    inside: dict[str, list[float]] = {}
    for event in events:
        if event.name in spans:
            continue
        for span in spans["GradientMonitor.step"]:
            if (
                event.thread == span.thread
                and span.time_range.start <= event.time_range.start
                and event.time_range.end <= span.time_range.end
            ):
                calls_time = inside.setdefault(event.name, [0, 0.0])
                calls_time[0] += 1
                calls_time[1] += event.self_cpu_time_total
                break
    out = sys.stderr
    print(
        f"torch.profiler, {steps} gradsweep steps (profiled, so slower than the table): "
        f"train step {per_step['train_step'] / 1e3:.2f} ms, of which GradientMonitor.step "
        f"{per_step['GradientMonitor.step'] / 1e3:.2f} ms; inside it, by self CPU time:",
        file=out,
    )
    print("| op | calls a step | self CPU a step (us) |", file=out)
    print("| --- | ---: | ---: |", file=out)
    python_time = per_step["GradientMonitor.step"]
    for name, (calls, total) in sorted(inside.items(), key=lambda item: -item[1][1])[:10]:
        print(f"| `{name}` | {calls / steps:.1f} | {total / steps:.0f} |", file=out)
    python_time -= sum(total for _, total in inside.values()) / steps
    print(f"| Python (the rest: building the row, sending it) | | {python_time:.0f} |", file=out)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:  # --rounds 1: one ratio, its own quartiles
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def main() -> None:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--niceness",
        type=int,
        default=OmegaConf.load(LOGGER_CONFIG).niceness,
        help="logger.niceness of gradsweep's W&B writer (default: conf/logger/wandb.yaml's)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="then profile 100 gradsweep steps with torch.profiler: where the overhead is",
    )
    parser.add_argument(
        "--variants",
        default=(
            "bare,norms-only,gradsweep,gradsweep/10,no-wandb,no-wandb+health,wandb.log,seed,"
            "lightning,wandb.watch"
        ),
        help="comma-separated subset; the first is the baseline",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")

    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(64, 128, 1, 28, 28, generator=generator)
    ys = torch.randint(0, 10, (64, 128), generator=generator)
    order = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        names = args.variants.split(",")
        # wandb.watch logs through the global wandb.run: its run is made first, as the
        # global one; the other in-process run is opened beside it (reinit="create_new").
        made = {
            name: Variant(name, Path(tmp), args.niceness)
            for name in sorted(names, key="wandb.watch".__ne__)
        }
        variants = [made[name] for name in names]
        for variant in variants:  # warm-up, untimed
            for i in range(args.warmup):
                variant.step(xs[i % 64], ys[i % 64])
        for round_index in range(args.rounds):
            for variant in order.sample(variants, len(variants)):
                variant.turn(xs, ys, round_index * args.steps, args.steps)
        for variant in variants:
            variant.close()

    if args.profile:
        profile(xs, ys, args.niceness)
    base = variants[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, W&B writer niceness "
        f"{args.niceness}; {args.rounds} rounds x {args.steps} steps per variant, "
        "in a random order each round"
    )
    print(
        f"| variant | mean step (ms) | of it, the W&B flush (ms) | ratio to {base.name} "
        "| quartiles of the ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant in variants:
        ratios = [mine / theirs for mine, theirs in zip(variant.rounds, base.rounds, strict=True)]
        q1, q2, q3 = quartiles(ratios)
        mean = statistics.fmean(variant.rounds)
        flush = f"{statistics.fmean(variant.flushes) * 1e3:.2f}" if variant.writer else ""
        print(f"| {variant.name} | {mean * 1e3:.2f} | {flush} | {q2:.3f} | {q1:.3f}-{q3:.3f} |")


if __name__ == "__main__":
    main()
