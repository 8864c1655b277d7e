"""What `gradsweep scan` reports: rows as a table, CSV, Markdown or JSON, the heatmap picture,
the pruned list of configurations, and one W&B run holding the table and the picture."""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from gradsweep.config import FIX_GROUPS
from gradsweep.files import atomic_write
from gradsweep.scan.result import ScanResult, ScanRow

# The scalar columns every format shows after the configuration's choices.
SCALARS = (
    "verdict",
    "log10_ratio",
    "log10_ratio_spread",
    "grad_first",
    "grad_last",
    "act_std_first",
    "act_std_last",
    "saturated",
    "dead",
)


def records(result: ScanResult) -> list[dict[str, Any]]:
    """One flat, JSON-ready record per configuration, sorted by ratio (most vanishing first).

    The choices come first under their group names, then the scalars, then the per-layer
    lists (weight layers for the gradients, activation calls for the activations, forward
    order), and the overrides that run the configuration with `python train.py`.
    """
    return [_record(row, result) for row in result.rows]


def _record(row: ScanRow, result: ScanResult) -> dict[str, Any]:
    record: dict[str, Any] = dict(row.choices)
    m = row.measurement
    if m is None:
        record.update({key: None for key in SCALARS})
        record["verdict"] = "error"
        record["error"] = row.error
    else:
        norms, std = m.layer_norms(), m.activation_std()
        saturated, dead = m.saturated(), m.dead()
        record.update(
            {
                "verdict": m.verdict,
                "verdict_share": m.verdict_share,
                "log10_ratio": m.log10_ratio,
                "log10_ratio_spread": m.spread,
                "log10_ratio_seeds": m.ratios,
                "seeds": [s.seed for s in m.seeds],
                "grad_first": norms[0] if norms else None,
                "grad_last": norms[-1] if norms else None,
                "act_std_first": std[0] if std else None,
                "act_std_last": std[-1] if std else None,
                # Shares averaged over the activation layers they apply to.
                "saturated": _mean(saturated),
                "dead": _mean(dead),
                "grad_norms": norms,
                "layers": list(m.layers),
                "activation_std": std,
                "saturated_layers": saturated,
                "dead_layers": dead,
            }
        )
    record["steps"] = result.steps
    record["overrides"] = " ".join(row.overrides)
    return _clean(record)


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """The records as `table` (aligned text), `csv`, `md` (Markdown) or `json`."""
    if fmt == "json":
        return json.dumps(rows, indent=1, allow_nan=False) + "\n"
    choice_keys = _choice_keys(rows)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*choice_keys, *SCALARS, "verdict_share", "overrides"])
        for row in rows:
            keys = (*choice_keys, *SCALARS, "verdict_share", "overrides")
            writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])
        return buffer.getvalue()
    header = [*choice_keys, "log10 first/last", "spread", "verdict", "grad first", "grad last"]
    header += ["act std in -> out", "saturated", "dead"]
    body = [[*(str(row.get(k, "")) for k in choice_keys), *_cells(row)] for row in rows]
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    widths = [max(len(h), *(len(c[i]) for c in body)) for i, h in enumerate(header)]
    numeric = set(range(len(choice_keys), len(choice_keys) + 2))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), *(line(cells) for cells in body)]) + "\n"


def _cells(row: dict[str, Any]) -> list[str]:
    verdict = row["verdict"]
    share = row.get("verdict_share")
    if share is not None and share < 1:
        verdict += f" ({share:.0%})"
    std_first, std_last = row.get("act_std_first"), row.get("act_std_last")
    return [
        _num(row.get("log10_ratio"), "{:+.2f}"),
        _num(row.get("log10_ratio_spread"), "{:.2f}"),
        verdict,
        _num(row.get("grad_first"), "{:.1e}"),
        _num(row.get("grad_last"), "{:.1e}"),
        f"{_num(std_first, '{:.3g}')} -> {_num(std_last, '{:.3g}')}"
        if std_first is not None
        else "-",
        _num(row.get("saturated"), "{:.0%}"),
        _num(row.get("dead"), "{:.0%}"),
    ]


def verdict_counts(result: ScanResult) -> dict[str, int]:
    return dict(Counter(row.verdict for row in result.rows).most_common())


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """The JSON document, as `--format json` prints it, next to the heatmap (atomically)."""
    with atomic_write(path) as handle:
        handle.write(json.dumps(rows, indent=1, allow_nan=False) + "\n")


def write_prune(result: ScanResult, path: Path) -> int:
    """Write the configurations the scan does not call `vanishing` (nor failed to build), one
    line of `python train.py` overrides each, in the grid's order; return how many."""
    order = {row.overrides: index for index, row in enumerate(_grid_order(result))}
    kept = [row for row in result.rows if row.verdict not in ("vanishing", "error")]
    kept.sort(key=lambda row: order[row.overrides])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(shlex.join(row.overrides) + "\n" for row in kept))
    return len(kept)


def _grid_order(result: ScanResult) -> list[ScanRow]:
    by_overrides = {row.overrides: row for row in result.rows}
    fixed = result.grid.fixed
    return [by_overrides[(*fixed, *job)] for job in result.grid.jobs()]


def heatmap(result: ScanResult, path: Path) -> Path:
    """Configurations (sorted by ratio, most vanishing at the top) x weight layers, log10 of
    each layer's gradient norm at initialization (median over seeds). Configurations that
    share a measurement (the clipping choices) share a row."""
    import numpy as np

    from gradsweep.run.pictures import _pyplot

    seen: dict[tuple[str, ...], ScanRow] = {}
    for row in result.rows:
        if row.measurement is not None:
            seen.setdefault(row.key, row)
    rows = list(seen.values())
    plt = _pyplot()
    width = max((len(r.measurement.layers) for r in rows), default=1)
    matrix = np.full((max(len(rows), 1), width), np.nan)
    labels = []
    varying = _measured_keys(rows)
    # The axes measured once for all their choices (clipping), named in the title.
    shared = [k for k in result.grid.axes if k not in varying]
    shown = [k for k in rows[0].choices if k in varying] if varying else list(FIX_GROUPS[:4])
    for i, row in enumerate(rows):
        norms = np.asarray(row.measurement.layer_norms(), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            matrix[i, : len(norms)] = np.log10(np.where(norms > 0, norms, np.nan))
        choices = " / ".join(row.choices.get(k, "") for k in shown)
        labels.append(f"{choices}  {row.log10_ratio:+.1f} {row.verdict}")
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.13 * len(rows) + 1.6)))
    mesh = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels)
    ax.tick_params(axis="y", labelsize=6 if len(rows) > 40 else 8)
    ax.set_xticks(range(width), [str(i) for i in range(width)])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("weight layer (forward order: input -> output)")
    ax.set_ylabel(" / ".join(shown) + ", log10 first/last, verdict", fontsize=8)
    note = f"; same for every {', '.join(shared)}" if shared else ""
    ax.set_title(
        f"gradient norm at initialization ({result.seeds} seed{'s' if result.seeds > 1 else ''}"
        f" x {result.steps} pass"
        f"{'es' if result.steps > 1 else ''}{note})",
        fontsize=9,
    )
    # A bar of about 4 inches whatever the figure's height: long enough to read.
    shrink = min(1.0, 4.0 / fig.get_figheight())
    fig.colorbar(mesh, ax=ax, label="log10 gradient L2 norm", fraction=0.04, shrink=shrink)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _measured_keys(rows: list[ScanRow]) -> set[str]:
    """The choice keys that differ between measured configurations."""
    keys: set[str] = set()
    if rows:
        for key in rows[0].choices:
            if len({row.choices[key] for row in rows}) > 1:
                keys.add(key)
    return keys


def log_to_wandb(result: ScanResult, rows: list[dict[str, Any]], picture: Path, out: Path) -> str:
    """With the grid's logger on, log the table and the heatmap to one W&B run under `out`.

    Returns the tracker's mode ("none" or "disabled" when nothing was logged).
    """
    from gradsweep.tracking.tracker import start_tracking

    config = {
        "scan/source": result.grid.source,
        "scan/configurations": len(rows),
        "scan/measured": result.measured,
        "scan/seeds": result.seeds,
        "scan/steps": result.steps,
        "scan/fixed": list(result.grid.fixed),
        "scan/axes": {
            key: [v.split("=", 1)[1] for v in vs] for key, vs in result.grid.axes.items()
        },
    }
    tracker = start_tracking(result.base.logger, config, out)
    if tracker.mode not in ("online", "offline"):
        return tracker.mode
    columns = [*_choice_keys(rows), *SCALARS, "verdict_share", "overrides"]
    table = [[row.get(c) for c in columns] for row in rows]
    tracker.log_table("scan/table", columns, table, step=0)
    tracker.log_images({"scan/heatmap": picture}, step=0)
    summary: dict[str, object] = {f"scan/{v}": n for v, n in verdict_counts(result).items()}
    summary["scan/seconds"] = result.seconds["total"]
    tracker.update_summary(summary)
    tracker.finish()
    return tracker.mode


def _choice_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The choice columns: everything before `verdict` in a record."""
    if not rows:
        return []
    keys = []
    for key in rows[0]:
        if key == "verdict":
            break
        keys.append(key)
    return keys


def _mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def _clean(value: Any) -> Any:
    """NaN and inf as null, tuples as lists: valid JSON for any reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
