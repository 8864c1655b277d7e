"""What a person watching a run sees on stderr: progress while training, a report at the end."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

from gradsweep.telemetry.monitor import GradientMonitor

log = logging.getLogger("gradsweep.run.training")


class Progress:
    """Progress on stderr, never stdout: a bar redrawn in place on a terminal, else a log
    line every `every_seconds` (cluster logs stay readable)."""

    def __init__(self, total: int, first: int = 0, every_seconds: float = 5.0) -> None:
        self.total, self.first = total, first
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else every_seconds
        self.start = self.last = time.perf_counter()

    def update(self, step: int, row: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step + 1 < self.total:
            return
        self.last = now
        rate = (step + 1 - self.first) / max(now - self.start, 1e-9)
        parts = [
            f"loss {row['train/loss']:.4f}",
            f"acc {row.get('train/acc', math.nan):.3f}",
            f"log10 first/last {row['grad_flow/log10_ratio']:+.1f}",
        ]
        if "clip/hit_rate" in row:
            parts.append(f"clip {row['clip/hit_rate']:.0%}")
        parts.append(f"{rate:.0f} steps/s")
        if self.tty:
            done = (step + 1) / self.total
            bar = "#" * round(20 * done)
            sys.stderr.write(f"\r[{bar:<20}] {step + 1}/{self.total} | " + " | ".join(parts))
            sys.stderr.flush()
        else:
            log.info("step %d/%d | %s", step + 1, self.total, " | ".join(parts))

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        log.info("trained in %.1f s", time.perf_counter() - self.start)


def report(monitor: GradientMonitor, summary: dict[str, object], run_dir: Path, tracker) -> None:
    """The end of a run, for people: the per-layer table, both findings and the verdict, the
    advice, the run folder and the pictures (saved in `run_dir` and logged to the tracker)."""
    flow = monitor.gradient_flow()
    log.info("\n".join([*layer_table(monitor, flow.layer_medians), *verdict_lines(summary)]))
    log.info("run folder: %s", run_dir)
    if not monitor.layer_history:
        return
    from gradsweep.run.pictures import gradient_heatmap, layer_bars

    fixes = " ".join(f"{g}={summary[g]}" for g in ("activation", "init", "norm", "skip"))
    title = (
        f"{fixes}\n{summary['diagnosis/verdict']} "
        f"(log10 first/last {summary['grad_flow/log10_ratio']:+.2f})"
    )
    images = {
        "grad_flow/heatmap": gradient_heatmap(
            monitor.layer_history,
            monitor.steps_measured,
            monitor.layers,
            run_dir / "grad_flow_heatmap.png",
            title=title,
        ),
        "grad_flow/median_per_layer": layer_bars(
            flow.layer_medians, monitor.layers, run_dir / "grad_flow_layers.png", title=title
        ),
    }
    tracker.log_images(images)


def layer_table(monitor: GradientMonitor, medians) -> list[str]:
    """One line per weight layer: its index, name and median gradient norm over the verdict's
    window, and the activation after it at the last measurement (std, saturated or dead
    share), where measured."""
    activations = monitor.health.activations
    columns = [kind for kind in ("std", "saturated", "dead") if _any_value(activations.get(kind))]
    header = f"  {'#':>3}  {'layer':<28} {'grad norm':>10}"
    header += "".join(f" {'act ' + kind:>13}" for kind in columns)
    window = min(monitor.window, len(monitor.layer_history))
    intro = f"per weight layer: the median gradient norm over the last {window} measured steps"
    if columns:
        intro += f"; the activation after it, at step {monitor.health.measured_at}"
    lines = [intro, header]
    for index, (name, value) in enumerate(zip(monitor.layers, medians, strict=True)):
        line = f"  {index:>3}  {name:<28} {value:>10.3e}"
        for kind in columns:
            values = activations[kind]
            line += f" {_share(kind, values[index]) if index < len(values) else '':>13}"
        lines.append(line)
    return lines


def verdict_lines(summary: dict[str, object]) -> list[str]:
    return [
        f"gradient flow: {summary['diagnosis/gradient_flow']} "
        f"(log10 first/last = {summary['grad_flow/log10_ratio']:+.2f})",
        f"learning: {summary['diagnosis/learning']}",
        f"verdict: {summary['diagnosis/verdict']} ({summary['diagnosis/reason']})",
        f"advice: {summary['diagnosis/advice']}",
        f"val/acc {summary['val/acc']:.4f} (best {summary['val/acc_best']:.4f}) "
        f"after {summary['steps']} steps",
    ]


def _any_value(values) -> bool:
    return bool(values) and any(not math.isnan(v) for v in values)


def _share(kind: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if kind == "std" else f"{value:.0%}"
