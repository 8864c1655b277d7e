"""Pictures of a run's gradient flow, saved as PNG (matplotlib, imported on use).

Every run of a sweep draws both, so they are kept cheap: margins measured from the one text
whose width varies (the y tick labels) instead of `tight_layout`, which lays out every text
of the figure once more, and plain `1e-05` labels on the log axis instead of mathtext, which
matplotlib parses label by label: both pictures in less than half the CPU time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _fit_margins(fig, ax) -> None:
    """Margins that hold the y tick labels and axis label, the x tick labels and axis label
    and the title, whatever its lines; a colorbar beside `ax` fits in the right margin."""
    title_lines = len(ax.get_title().splitlines())
    renderer = fig.canvas.get_renderer()
    labels = [label.get_window_extent(renderer).width for label in ax.get_yticklabels()]
    width, height = fig.get_size_inches()
    left = (max(labels, default=0.0) / fig.dpi + 0.45) / width  # + the y axis label
    top = 1 - (0.1 + 0.25 * title_lines) / height
    fig.subplots_adjust(left=left, right=0.98, top=top, bottom=0.5 / height)


def gradient_heatmap(
    layer_history: Sequence[Sequence[float]],
    steps: Sequence[int],
    layer_names: Sequence[str],
    path: Path,
    title: str = "",
) -> Path:
    """Weight layers (forward order, input at the top) x steps, log10 of the grad norm."""
    import numpy as np

    plt = _pyplot()
    norms = np.asarray(layer_history, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        image = np.log10(np.where(norms > 0, norms, np.nan))
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(layer_names) + 1.5)))
    mesh = ax.imshow(
        image,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(layer_names) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(layer_names)), [f"{i} {n}" for i, n in enumerate(layer_names)])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("weight layer (forward order)")
    ax.set_title(title or "gradient norm per layer")
    fig.colorbar(mesh, ax=ax, label="log10 gradient L2 norm")
    _fit_margins(fig, ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_bars(
    medians: Sequence[float], layer_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """Each weight layer's median gradient norm over the verdict's window, log scale."""
    from matplotlib import ticker

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    values = [v if v > 0 and math.isfinite(v) else float("nan") for v in medians]
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=True))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xticks(range(len(layer_names)), [str(i) for i in range(len(layer_names))])
    ax.set_xlabel("weight layer (forward order: input -> output)")
    ax.set_ylabel("median gradient L2 norm")
    ax.set_title(title or "median gradient norm per layer")
    _fit_margins(fig, ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
