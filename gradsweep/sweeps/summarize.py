"""`gradsweep summarize PATH`: the comparison of a sweep's runs (gradsweep.sweeps.compare) as a
table, CSV, JSON or Markdown, with its conclusion: the change that cured the vanishing."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from gradsweep.errors import SweepError
from gradsweep.sweeps.compare import FINDINGS, VERDICT, Comparison, Row, collect, compare

FORMATS = ("table", "csv", "json", "md")

METRICS = ("grad_flow/log10_ratio", "val/acc", "val/acc_best", "clip/hit_rate")


def render(comparison: Comparison, fmt: str = "table") -> str:
    """The comparison as a table, CSV, JSON or Markdown."""
    if fmt == "json":
        return json.dumps(_as_json(comparison), indent=2, default=str) + "\n"
    header, lines = _cells(comparison, fmt)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(lines)
        return buffer.getvalue()
    if fmt == "md":
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(table) + "\n\n" + "\n\n".join(conclusions(comparison)) + "\n"
    if fmt != "table":
        raise SweepError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    text = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    text += [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join(text) + "\n\n" + "\n".join(conclusions(comparison)) + "\n"


def conclusions(comparison: Comparison) -> list[str]:
    """What the comparison shows, in sentences: the cure, or why there is none."""
    lines = []
    cure = comparison.cure
    if cure is not None:
        before, after = cure.before, cure.after
        label = ""
        if "experiment" in comparison.columns:
            label = f" ({before.choices['experiment']} -> {after.choices['experiment']})"
        lines.append(
            f"first cure: {cure.change()}{label}: {cure.key} {before.choices[cure.key]} -> "
            f"{after.choices[cure.key]} turns vanishing "
            f"(log10 first/last {_fmt(before.metric('grad_flow/log10_ratio'), '+.2f')}, "
            f"val/acc {_fmt(before.metric('val/acc'), '.4f')}) into healthy "
            f"(log10 {_fmt(after.metric('grad_flow/log10_ratio'), '+.2f')}, "
            f"val/acc {_fmt(after.metric('val/acc'), '.4f')})"
        )
        if cure.also:
            others = ", ".join(f"{k}={row.choices[k]}" for k, row in cure.also)
            lines.append(f"also curing that configuration alone: {others}")
    elif comparison.vanishing:
        lines.append(
            f"no single change turns a vanishing configuration healthy among these runs "
            f"({comparison.vanishing} vanishing)"
        )
    else:
        lines.append("no configuration here is vanishing")
    if comparison.incomplete:
        lines.append(f"{len(comparison.incomplete)} run(s) without a result:")
        lines += [f"  {note}" for note in comparison.incomplete]
    return lines


def _cells(comparison: Comparison, fmt: str) -> tuple[list[str], list[list[str]]]:
    repeated = any(row.n > 1 for row in comparison.rows)
    machine = fmt == "csv"
    header = [*comparison.columns]
    if repeated:
        header.append("n")
    header += ["gradient flow", "learning", "verdict"]
    header += ["log10 first/last", "val/acc", "val/acc best", "clip hit rate"]
    if machine:
        header = [*comparison.columns, "n", *FINDINGS, VERDICT, *METRICS]
        header += [f"{m}_std" for m in METRICS] + ["runs"]
    lines = []
    for row in comparison.rows:
        line = [str(row.choices[c]) for c in comparison.columns]
        findings = [_count_text(row, key) for key in (*FINDINGS, VERDICT)]
        if machine:
            line += [str(row.n), *findings]
            line += [_fmt(row.metric(m), "") for m in METRICS]
            line += [_fmt(row.spread(m), "") for m in METRICS]
            line.append(";".join(str(run.source) for run in row.runs))
        else:
            if repeated:
                line.append(str(row.n))
            line += findings
            line += [
                _mean_spread(row, "grad_flow/log10_ratio", "+.2f"),
                _mean_spread(row, "val/acc", ".4f"),
                _mean_spread(row, "val/acc_best", ".4f"),
                _mean_spread(row, "clip/hit_rate", ".2f"),
            ]
        lines.append(line)
    return header, lines


def _count_text(row: Row, key: str) -> str:
    """The configuration's most common value of `key`, with its count when runs disagree."""
    value, count = row.counts(key).most_common(1)[0]
    value = "-" if value == "?" else value
    return value if count == row.n else f"{value} {count}/{row.n}"


def _mean_spread(row: Row, key: str, spec: str) -> str:
    mean, spread = row.metric(key), row.spread(key)
    if math.isnan(mean):
        return "-"
    text = format(mean, spec)
    return text if math.isnan(spread) else f"{text} ± {spread:{spec.lstrip('+')}}"


def _fmt(value: float, spec: str) -> str:
    if math.isnan(value):
        return "" if spec == "" else "-"
    return format(value, spec) if spec else repr(value)


def _as_json(comparison: Comparison) -> dict[str, Any]:
    def row_json(row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {**row.choices, "n": row.n, VERDICT: row.verdict}
        for key in FINDINGS:
            value = row.counts(key).most_common(1)[0][0]
            out[key] = None if value == "?" else value
        out["verdicts"] = dict(row.verdicts)
        for metric in METRICS:
            out[metric] = _nan_to_none(row.metric(metric))
            out[f"{metric}_std"] = _nan_to_none(row.spread(metric))
        out["runs"] = [str(run.source) for run in row.runs]
        return out

    cure = comparison.cure
    return {
        "columns": comparison.columns,
        "runs": [row_json(row) for row in comparison.rows],
        "cure": None
        if cure is None
        else {
            "change": cure.change(),
            "key": cure.key,
            "from": cure.before.choices[cure.key],
            "to": cure.after.choices[cure.key],
            "before": row_json(cure.before),
            "after": row_json(cure.after),
            "also": [f"{k}={row.choices[k]}" for k, row in cure.also],
        },
        "incomplete": comparison.incomplete,
    }


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def summarize(path: str | Path, fmt: str = "table") -> tuple[str, Comparison]:
    """The comparison of every run under path, rendered in fmt."""
    if fmt not in FORMATS:
        raise SweepError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    results, incomplete = collect(path)
    if not results:
        raise SweepError(
            f"{path}: no finished run found (no summary.json, no .wandb file with a verdict)"
            + (f"; {len(incomplete)} without a result" if incomplete else "")
        )
    comparison = compare(results, incomplete)
    return render(comparison, fmt), comparison
