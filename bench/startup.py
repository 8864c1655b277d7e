"""The fixed cost of a run: wall time from process start to the first training step.

    python bench/startup.py [--root /tmp/gsdata] [--repeats 7] [--extra OVERRIDE ...]

--extra adds overrides to every train.py run, e.g. `--root /work/shared/data/cifar10-test-images
--extra data=folder model=cnn` for a folder of class folders.

Each measurement starts a fresh process, as a sweep does for every run:

  import torch      `python -c "import torch"`, start to exit: the anchor (the floor any
                    torch program pays)
  + an optimizer    `import torch` and `torch.optim.SGD(...)`: the floor of any torch training
                    script, since constructing a torch.optim optimizer imports torch._dynamo
                    (add_param_group is wrapped in torch._disable_dynamo, which imports it)
  cold              `python train.py data.root=ROOT logger.mode=offline` with an empty
                    processed-data cache: torchvision reads and decodes the dataset, the
                    cache is written
  warm              the same with the cache in place: the dataset is one torch.load
  warm, no W&B      the same with logger=none: what W&B's import and offline init add

"First training step" is the line train() logs just before its loop ("training steps
0..N ..."): every import, the config, the data, the model, the fixes, the W&B run and the
monitor are ready then, and nothing but the loop follows. Its time comes from the log
record itself: Hydra's log format is overridden on the command line to print
`%(created)f` (epoch seconds), which is compared with the wall clock read just before
the process was started. The data and W&B lines are read the same way, for the
breakdown. Each run gets a fresh run folder (a folder holding a checkpoint would
resume) and trains one step; the cache lives in a temp folder (GRADSWEEP_CACHE_DIR), so
the shared data root is left as it is. The OS page cache is warm in every case: "cold"
means no processed-data cache, not a cold disk.

The variants run interleaved (anchors, cold, warm, warm no W&B, anchors, ...), so machine
noise hits them alike; reported are medians and ratios to both anchors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Epoch seconds first, so the marks can be read back exactly.
LOG_FORMAT = "hydra.job_logging.formatters.simple.format='@%(created).6f %(name)s %(message)s'"
MARKS = {
    "data": "gradsweep.data.tensors data:",
    "wandb": "gradsweep.tracking.tracker W&B:",
    "first step": "gradsweep.run.training training steps",
}


def run_train(root: str, cache: Path, run_dir: Path, extra: list[str]) -> dict[str, float]:
    """Start train.py, wait for it to finish, return seconds from start to each mark."""
    command = [
        sys.executable,
        "train.py",
        f"data.root={root}",
        "trainer.max_steps=1",
        f"hydra.run.dir={run_dir}",
        LOG_FORMAT,
        *extra,
    ]
    env = {**os.environ, "GRADSWEEP_CACHE_DIR": str(cache), "WANDB_MODE": "offline"}
    start = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    marks = {}
    for line in done.stderr.splitlines():
        for name, prefix in MARKS.items():
            if name not in marks and line.startswith("@") and prefix in line:
                marks[name] = float(line[1:].split(" ", 1)[0]) - start
    if "first step" not in marks:
        raise SystemExit(f"no 'training steps' line in the log of {' '.join(command)}")
    return marks


ANCHORS = {
    "import torch": "import torch",
    "import torch + an optimizer": (
        "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
    ),
}


def run_anchor(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/gsdata", help="folder holding MNIST/raw/")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every train.py run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gradsweep-startup-") as tmp:
        work = Path(tmp)
        warm_cache = work / "warm-cache"
        runs = iter(range(10**6))

        def fresh_dir() -> Path:
            return work / f"run-{next(runs)}"

        offline = ["logger.mode=offline", *args.extra]
        run_train(args.root, warm_cache, fresh_dir(), offline)  # fills the warm cache; not timed
        results: dict[str, list[dict[str, float]]] = {}
        variants = {
            **{
                name: (lambda code=code: {"first step": run_anchor(code)})
                for name, code in ANCHORS.items()
            },
            "cold (no cache), W&B offline": lambda: run_train(
                args.root, work / f"cold-cache-{next(runs)}", fresh_dir(), offline
            ),
            "warm (cached), W&B offline": lambda: run_train(
                args.root, warm_cache, fresh_dir(), offline
            ),
            "warm (cached), logger=none": lambda: run_train(
                args.root, warm_cache, fresh_dir(), ["logger=none", *args.extra]
            ),
        }
        for repeat in range(args.repeats):
            for name, measure in variants.items():
                results.setdefault(name, []).append(measure())
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
            for old in work.glob("run-*"):
                shutil.rmtree(old, ignore_errors=True)

    anchors = [statistics.median(r["first step"] for r in results[name]) for name in ANCHORS]
    extra = f" {' '.join(args.extra)}" if args.extra else ""
    print(f"Median of {args.repeats} interleaved runs each; data.root={args.root}{extra}.\n")
    print(
        "| run | data loaded (s) | W&B run ready (s) | first step (s) "
        "| x import torch | x torch + optimizer |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, runs_ in results.items():
        cells = []
        for mark in ("data", "wandb"):
            values = [r[mark] for r in runs_ if mark in r]
            cells.append(f"{statistics.median(values):.2f}" if values else "")
        first = statistics.median(r["first step"] for r in runs_)
        ratios = " | ".join(f"{first / anchor:.2f}x" for anchor in anchors)
        print(f"| {name} | {' | '.join(cells)} | {first:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
