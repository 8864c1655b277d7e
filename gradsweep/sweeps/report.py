"""`gradsweep report`: a W&B report comparing a sweep's runs, built with `wandb-workspaces`.

The runs are a W&B sweep's (`--sweep ID`) or a group's (`--group NAME`): runs of an offline
sweep carry the sweep's name as their group once `wandb sync` has uploaded them. The report
holds, over those runs:

    per-layer gradient norms   the first weight layer's `grad_flow/layer_000` grouped by each fix
                               (one line per choice: mean and range over its runs), every
                               `grad_flow/layer_NNN` averaged over the run set (one line per
                               layer), the first/last layer per run; log y
    first/last ratio           `grad_flow/log10_ratio` per configuration, and over the steps
    fixes -> accuracy          parallel coordinates from the five fix choices to val/acc
    clipping                   `clip/hit_rate` per configuration, and over the steps

`--dry-run` builds the same report with no server and prints its structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradsweep.config import FIX_GROUPS
from gradsweep.errors import SweepError, first_line

TITLE = "Vanishing gradients: the fix sweep"
# The per-layer series (gradsweep.telemetry.monitor.layer_key), 000 the first weight layer.
FIRST_LAYER = "grad_flow/layer_000"
LAYER_REGEX = r"^grad_flow/layer_\d{3}$"


@dataclass(frozen=True)
class Selection:
    """Which runs the report shows: a sweep's or a group's."""

    entity: str
    project: str
    sweep: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if (self.sweep is None) == (self.group is None):
            raise SweepError("give the runs as --sweep ID or as --group NAME (one of them)")

    @property
    def label(self) -> str:
        return f"sweep {self.sweep}" if self.sweep else f"group {self.group}"


def build_report(selection: Selection, title: str = TITLE) -> Any:
    """The report as a `wandb_workspaces.reports.v2.Report`, not yet saved."""
    wr, expr = _import_workspaces()
    field = "Sweep" if selection.sweep else "Group"
    runset = wr.Runset(
        entity=selection.entity,
        project=selection.project,
        name=selection.label,
        filters=[expr.Metric(field) == (selection.sweep or selection.group)],
    )
    fixes = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(g)) for g in FIX_GROUPS]
    accuracy = wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("val/acc"))
    # Per-layer series are named by depth, so runs of every configuration share them. Grouped
    # by one fix at a time, a panel has a line per choice, not one per run of a 288-run grid.
    first_layer_by_fix = [
        wr.LinePlot(
            title=f"first weight layer by {group} (log scale; mean, min-max band)",
            y=[FIRST_LAYER],
            groupby=wr.Config(group),
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            log_y=True,
            title_y="L2 norm",
        )
        for group in FIX_GROUPS
    ]
    gradients = [
        *first_layer_by_fix,
        wr.LinePlot(
            title="every weight layer, mean over the run set (filter it to a configuration)",
            metric_regex=LAYER_REGEX,
            aggregate=True,
            groupby_aggfunc="mean",
            log_y=True,
            title_y="L2 norm",
        ),
        wr.LinePlot(
            title="first and last weight layer (log scale)",
            y=["grad_flow/first", "grad_flow/last"],
            log_y=True,
            title_y="L2 norm",
        ),
    ]
    ratio = [
        wr.BarPlot(
            title="log10 first/last per configuration (-7: the first layer gets 10^7 less)",
            metrics=["grad_flow/log10_ratio"],
            orientation="h",
        ),
        wr.LinePlot(title="log10 first/last over the steps", y=["grad_flow/log10_ratio"]),
    ]
    outcome = [
        wr.ParallelCoordinatesPlot(title="fix choices -> val/acc", columns=[*fixes, accuracy]),
        wr.BarPlot(title="val/acc per configuration", metrics=["val/acc"], orientation="h"),
    ]
    clipping = [
        wr.BarPlot(title="clip hit rate per configuration", metrics=["clip/hit_rate"]),
        wr.LinePlot(title="clip hit rate over the steps", y=["clip/hit_rate"]),
    ]

    def grid(panels: list[Any]) -> Any:
        return wr.PanelGrid(runsets=[runset], panels=panels)

    return wr.Report(
        entity=selection.entity,
        project=selection.project,
        title=title,
        description=f"Gradient flow and the standard fixes across the runs of {selection.label}.",
        blocks=[
            wr.H1(text="Does the gradient reach the first layer?"),
            wr.P(
                text="The L2 norm of each weight layer's gradient, every step. Vanishing "
                "shows as the first layers' lines orders of magnitude below the last's."
            ),
            grid(gradients),
            wr.H2(text="First/last ratio per configuration"),
            grid(ratio),
            wr.H2(text="Which fixes buy accuracy"),
            grid(outcome),
            wr.H2(text="Clipping"),
            wr.P(
                text="A hit rate near 1 means clipping does the init's or the architecture's job."
            ),
            grid(clipping),
        ],
    )


def describe(report: Any) -> list[str]:
    """The report's structure, one line per block and panel, for --dry-run."""
    lines = [f"report {report.title!r} in {report.entity}/{report.project}"]
    for block in report.blocks:
        kind = type(block).__name__
        if kind == "PanelGrid":
            for runset in block.runsets:
                lines.append(f"  PanelGrid over runs where {_filter_text(runset.filters)}")
            for panel in block.panels:
                lines.append(f"    {_panel_text(panel)}")
        else:
            lines.append(f"  {kind}: {getattr(block, 'text', '')}")
    return lines


def panel_specs(report: Any) -> list[dict[str, Any]]:
    """Each panel as W&B stores it in the report's spec, built with no server.

    The run sets are left out: wandb-workspaces asks the server for the project's internal id
    when it serializes one.
    """
    return [
        panel._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
        for block in report.blocks
        if type(block).__name__ == "PanelGrid"
        for panel in block.panels
    ]


def save_report(report: Any) -> str:
    """Save the report on the W&B server; its URL."""
    try:
        report.save()
    except Exception as error:  # no API key, no network, no such entity
        raise SweepError(
            f"W&B did not save the report ({first_line(error, with_type=True)}); check "
            "`wandb login` and --entity/--project, or use --dry-run"
        ) from error
    return str(report.url)


def _panel_text(panel: Any) -> str:
    kind = type(panel).__name__
    if kind == "ParallelCoordinatesPlot":
        columns = " -> ".join(_metric_name(c.metric) for c in panel.columns)
        return f"{kind} {panel.title!r}: {columns}"
    metrics = getattr(panel, "y", None) or getattr(panel, "metrics", None) or []
    names = [_metric_name(m) for m in metrics]
    if getattr(panel, "metric_regex", None):
        names.append(f"/{panel.metric_regex}/")
    scale = ", log y" if getattr(panel, "log_y", None) else ""
    return f"{kind} {panel.title!r}: {', '.join(names)}{scale}"


def _metric_name(metric: Any) -> str:
    name = getattr(metric, "name", metric)
    section = type(metric).__name__
    return f"{section.lower()}.{name}" if section in ("Config", "SummaryMetric") else str(name)


def _filter_text(filters: Any) -> str:
    """wandb-workspaces turns a Runset's filters into one expression string; older versions
    keep the list."""
    if isinstance(filters, str):
        return filters
    return " and ".join(str(item) for item in filters)


def _import_workspaces() -> tuple[Any, Any]:
    try:
        import wandb_workspaces.expr as expr
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise SweepError(
            "gradsweep report needs wandb-workspaces: pip install 'gradsweep[report]'"
        ) from None
    return wr, expr
