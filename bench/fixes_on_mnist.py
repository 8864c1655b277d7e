"""Each fix alone against the vanishing default, on real MNIST: the README's table.

    python bench/fixes_on_mnist.py --root /path/with/MNIST [--steps 300] [--seeds 0 1 2]

`--root` is a folder holding MNIST/raw/ (the four original .gz files are enough: they
are verified and extracted with no network). Each configuration trains for `--steps`
steps from each seed; a row per configuration and seed gives the diagnosis's two findings
(gradient flow, learning) and the verdict, the median log10(first/last) gradient ratio over
the verdict's window, the clip hit rate where clipping is on, and the validation accuracy at
the last step and at its best. `--reasons` prints each run's reason below the table.
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
    "activation=gelu norm=layer",
    "activation=tanh",
    "activation=relu init=kaiming clipping=norm",
    "model=cnn",
    "model=cnn activation=relu init=kaiming norm=batch",
    # A deep tanh conv net of a user's, as given (examples/deep_tanh_cnn.py).
    "model=custom model._target_=examples.deep_tanh_cnn.DeepTanhCNN",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--logger", default="none", choices=["none", "wandb"])
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--reasons", action="store_true", help="print each run's reason")
    args = parser.parse_args()

    print(
        f"| overrides ({args.steps} steps) | seed | gradient flow | learning | verdict "
        "| log10 first/last | clip hit rate | val/acc | best | s |"
    )
    print("| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    reasons = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, overrides in enumerate(args.configs):
            for seed in args.seeds:
                cfg = compose(
                    [
                        *overrides.split(),
                        f"data.root={args.root}",
                        "data.download=true",
                        "data.source=full",
                        f"trainer.max_steps={args.steps}",
                        f"logger={args.logger}",
                        *(["logger.mode=offline"] if args.logger == "wandb" else []),
                        f"seed={seed}",
                    ]
                )
                run_dir = Path(tmp) / f"{index}-{seed}"
                start = time.perf_counter()
                train(cfg, run_dir=run_dir)
                seconds = time.perf_counter() - start
                s = json.loads((run_dir / "summary.json").read_text())
                clip = f"{s['clip/hit_rate']:.2f}" if "clip/hit_rate" in s else "-"
                name = overrides or "(default)"
                print(
                    f"| `{name}` | {seed} | {s['diagnosis/gradient_flow']} "
                    f"| {s['diagnosis/learning']} | **{s['diagnosis/verdict']}** "
                    f"| {s['grad_flow/log10_ratio']:+.2f} | {clip} | {s['val/acc']:.3f} "
                    f"| {s['val/acc_best']:.3f} | {seconds:.0f} |",
                    flush=True,
                )
                reasons.append(f"`{name}` seed {seed}: {s['diagnosis/reason']}")
    if args.reasons:
        print()
        print("\n".join(f"- {reason}" for reason in reasons))


if __name__ == "__main__":
    main()
