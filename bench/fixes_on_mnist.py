"""Each fix alone against the vanishing default, on real MNIST: the README's table.

    python bench/fixes_on_mnist.py --root /path/with/MNIST [--steps 300] [--logger none]

`--root` is a folder holding MNIST/raw/ (the four original .gz files are enough: they
are verified and extracted with no network). Each configuration trains for `--steps`
steps from the same seed and batch order; the table gives the verdict, the median
log10(first/last) gradient ratio over the verdict's window, the clip hit rate where
clipping is on, and the validation accuracy at the last step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsweep.config import compose
from gradsweep.run.training import train

CONFIGS = [
    "",
    "activation=relu init=kaiming",
    "norm=batch",
    "skip=residual",
    "activation=relu init=kaiming clipping=norm",
    "model=cnn activation=relu init=kaiming norm=batch",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--logger", default="none", choices=["none", "wandb"])
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    args = parser.parse_args()

    print(
        f"| overrides ({args.steps} steps) | verdict | log10 first/last | clip hit rate "
        "| val/acc | s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for index, overrides in enumerate(args.configs):
            cfg = compose(
                [
                    *overrides.split(),
                    f"data.root={args.root}",
                    "data.download=true",
                    "data.source=full",
                    f"trainer.max_steps={args.steps}",
                    f"logger={args.logger}",
                    "logger.mode=offline" if args.logger == "wandb" else "seed=0",
                ]
            )
            run_dir = Path(tmp) / str(index)
            start = time.perf_counter()
            train(cfg, run_dir=run_dir)
            seconds = time.perf_counter() - start
            s = json.loads((run_dir / "summary.json").read_text())
            clip = f"{s['clip/hit_rate']:.2f}" if "clip/hit_rate" in s else "-"
            ratio, acc = s["grad_flow/log10_ratio"], s["val/acc"]
            name = overrides or "(default)"
            verdict = s["diagnosis/verdict"]
            print(
                f"| `{name}` | {verdict} | {ratio:+.2f} | {clip} | {acc:.3f} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
