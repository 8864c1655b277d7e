"""The layer health during training of two runs, as W&B recorded it: a picture.

    python bench/health_series.py --root /path/with/MNIST [--out docs/health_series.png]

Trains the default 20-layer sigmoid MLP and `activation=relu init=kaiming` for `--steps` steps
on real MNIST (W&B offline), reads each run's `act/*/layer_NNN` and `update_ratio/layer_NNN`
series back from its `.wandb` file, and draws, per run, the activation std, the saturated or
dead share, and the update-to-weight ratio of every layer over the steps (first layer dark,
last light).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsweep.config import compose
from gradsweep.run.training import train
from gradsweep.tracking.wandb_records import find_runs, read_run

RUNS = {
    "default (sigmoid, PyTorch init)": "",
    "activation=relu init=kaiming": "activation=relu init=kaiming",
}
PANELS = [
    ("act/std", "activation std", False),
    ("act/saturated|act/dead", "saturated (sigmoid) / dead (ReLU) share", False),
    ("update_ratio", "update / weight per step", True),
]


def series(history: list[dict], prefix: str) -> dict[int, tuple[list[int], list[float]]]:
    """layer index -> (steps, values) for every key matching `prefix`/layer_NNN."""
    pattern = re.compile(rf"^(?:{prefix})/layer_(\d{{3}})$")
    found: dict[int, tuple[list[int], list[float]]] = {}
    for row in history:
        for key, value in row.items():
            match = pattern.match(key)
            if match and isinstance(value, int | float):
                steps, values = found.setdefault(int(match.group(1)), ([], []))
                steps.append(row["_step"])
                values.append(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10, help="telemetry.activations_every")
    parser.add_argument("--out", default="docs/health_series.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PANELS), len(RUNS), figsize=(11, 9), sharex=True)
    with tempfile.TemporaryDirectory() as tmp:
        for column, (title, overrides) in enumerate(RUNS.items()):
            cfg = compose(
                [
                    *overrides.split(),
                    f"data.root={args.root}",
                    "data.download=true",
                    "data.source=full",
                    f"trainer.max_steps={args.steps}",
                    f"telemetry.activations_every={args.every}",
                    "logger.mode=offline",
                ]
            )
            run_dir = Path(tmp) / str(column)
            summary = train(cfg, run_dir=run_dir).summary
            history = read_run(find_runs(run_dir / "wandb")[0]).history
            for row, (prefix, label, log_y) in enumerate(PANELS):
                ax = axes[row][column]
                layers = dict(sorted(series(history, prefix).items()))
                colors = plt.cm.viridis([i / max(1, len(layers) - 1) for i in range(len(layers))])
                for color, (index, (steps, values)) in zip(
                    colors, sorted(layers.items()), strict=True
                ):
                    ax.plot(steps, values, color=color, linewidth=1, label=f"{index}")
                ax.set_ylabel(label, fontsize=8)
                if log_y:
                    ax.set_yscale("log")
                if row == 0:
                    verdict, accuracy = summary["diagnosis/verdict"], summary["val/acc"]
                    ax.set_title(f"{title}\n{verdict}, val/acc {accuracy:.3f}", fontsize=9)
            axes[-1][column].set_xlabel("step")
            print(f"{title}: {summary['diagnosis/verdict']} ({summary['diagnosis/reason']})")
    fig.suptitle("layer health during training (first layer dark, last light)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
