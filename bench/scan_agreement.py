"""Does the preflight scan's verdict at initialization hold after training? A confusion table.

    gradsweep scan conf/sweep.yaml data.root=/tmp/gsdata --format json > scan.json
    python bench/scan_agreement.py scan.json --sample 32 --out /tmp/agreement

Draws a sample of the scanned configurations, stratified by predicted verdict (each verdict
gets its share of the sample, at least a few when it has them; the draw is seeded), trains
each one alone with `python train.py <its overrides> logger=none hydra.run.dir=...` (the
steps its overrides name: 300 in conf/sweep.yaml), reads the verdict from its summary.json
and prints the table of predicted (rows) against trained (columns) verdicts, in Markdown.
Runs already finished in --out are read, not trained again.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("vanishing", "exploding", "uniformly_small", "healthy", "non_finite", "error")


def stratified(rows: list[dict], size: int, seed: int, floor: int = 6) -> list[dict]:
    """`size` rows: each predicted verdict gets at least `floor` (or all it has), the rest
    in proportion to how many rows it has."""
    rng = random.Random(seed)
    by_verdict: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_verdict[row["verdict"]].append(row)
    quota = {v: min(len(rs), floor) for v, rs in by_verdict.items()}
    left = max(0, size - sum(quota.values()))  # a small sample is trimmed below
    spare = {v: len(rs) - quota[v] for v, rs in by_verdict.items()}
    total_spare = sum(spare.values()) or 1
    for verdict in sorted(spare, key=spare.get, reverse=True):
        extra = min(spare[verdict], round(left * spare[verdict] / total_spare))
        quota[verdict] += extra
    while sum(quota.values()) > size:
        quota[max(quota, key=quota.get)] -= 1
    picked = []
    for verdict, rs in by_verdict.items():
        picked += rng.sample(rs, quota[verdict])
    return picked


def train_one(overrides: str, run_dir: Path, extra: list[str]) -> dict:
    summary = run_dir / "summary.json"
    if not summary.exists():
        command = [sys.executable, "train.py", *shlex.split(overrides), *extra]
        command.append(f"hydra.run.dir={run_dir}")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        print(f"  {seconds:5.1f} s  exit {done.returncode}  {overrides}", file=sys.stderr)
        if not summary.exists():
            return {"diagnosis/verdict": "error", "error": done.stderr[-500:]}
    return json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan_json", type=Path, help="`gradsweep scan --format json` output")
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("/tmp/scan_agreement"))
    parser.add_argument("extra", nargs="*", help="overrides added to every run (logger=none)")
    args = parser.parse_args()

    rows = json.loads(args.scan_json.read_text())
    sample = stratified(rows, args.sample, args.seed)
    extra = args.extra or ["logger=none"]
    print(f"training {len(sample)} of {len(rows)} configurations", file=sys.stderr)
    pairs = []
    records = []
    for index, row in enumerate(sample):
        summary = train_one(row["overrides"], args.out / f"{index:03d}", extra)
        trained = summary["diagnosis/verdict"]
        pairs.append((row["verdict"], trained))
        records.append(
            {
                "overrides": row["overrides"],
                "predicted": row["verdict"],
                "log10_ratio_at_init": row["log10_ratio"],
                "trained": trained,
                "log10_ratio_trained": summary.get("grad_flow/log10_ratio"),
                "val/acc": summary.get("val/acc"),
            }
        )
    (args.out / "agreement.json").write_text(json.dumps(records, indent=1) + "\n")

    counts = Counter(pairs)
    predicted = [v for v in ORDER if any(p == v for p, _ in pairs)]
    trained = [v for v in ORDER if any(t == v for _, t in pairs)]
    print("| predicted at init \\ after training | " + " | ".join(trained) + " | total |")
    print("|---|" + "---:|" * (len(trained) + 1))
    for p in predicted:
        cells = [str(counts[p, t]) for t in trained]
        print(f"| {p} | " + " | ".join(cells) + f" | {sum(counts[p, t] for t in trained)} |")
    same = sum(n for (p, t), n in counts.items() if p == t)
    hit = sum(n for (p, t), n in counts.items() if (p == "vanishing") == (t == "vanishing"))
    print(f"\nexact verdict agreement: {same}/{len(pairs)}")
    print(f"vanishing vs not vanishing agreement: {hit}/{len(pairs)}")


if __name__ == "__main__":
    main()
