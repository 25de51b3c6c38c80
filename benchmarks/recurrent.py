"""The recurrent preset's speed against the same preset without recurrence, through the CLI.

Each measurement is one ``python -m zoo train ppo --env zoo/CartPoleNoVel-v0`` run of ``--steps``
env steps in a fresh interpreter (collection and the PPO update, as a user runs it), with its
evaluation moved past the end of the run; its speed is the last ``progress.csv`` row's
``steps_per_s`` (env steps over the run's seconds, start-up excluded). The variants alternate
(A B C A B C ...) for ``--repeats`` rounds, one torch thread each, and each round's ratios are
taken against that round's MLP run.

Run::

    python -m benchmarks.recurrent                     # 5 rounds of 10k steps, about 5 minutes
    python -m benchmarks.recurrent --repeats 1 --steps 2048
"""

import argparse
import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = "zoo/CartPoleNoVel-v0"
VARIANTS: Dict[str, List[str]] = {
    "recurrent (preset)": [],
    "mlp (--set recurrent=false)": ["--set", "recurrent=false"],
    "recurrent, not sticky (--set sticky=false)": ["--set", "sticky=false"],
    "recurrent, GRU (--set cell=gru)": ["--set", "cell=gru"],
}
MLP = "mlp (--set recurrent=false)"


def measure(extra: List[str], steps: int, seed: int) -> float:
    """Env steps/s of one CLI run in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "zoo",
            "train",
            "ppo",
            "--env",
            ENV,
            "--steps",
            str(steps),
            "--seed",
            str(seed),
            "--eval-every",
            str(10 * steps),
            "--eval-episodes",
            "1",
            "--no-progress",
            "--run-dir",
            folder,
            *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        with open(os.path.join(folder, "progress.csv"), newline="") as file:
            return float(list(csv.DictReader(file))[-1]["steps_per_s"])


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recurrent", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", default="benchmarks/results/recurrent.json")
    args = parser.parse_args(argv)
    results: Dict[str, List[float]] = {name: [] for name in args.variants}
    for r in range(args.repeats):
        for name in args.variants:
            results[name].append(measure(VARIANTS[name], args.steps, args.seed))
            print(f"[{r + 1}/{args.repeats}] {name:<44} {results[name][-1]:8.0f} env steps/s", flush=True)
    report = {
        "command": " ".join(["python -m benchmarks.recurrent", *(argv if argv is not None else sys.argv[1:])]),
        "steps": args.steps,
        "results": results,
        "medians": {name: statistics.median(v) for name, v in results.items()},
    }
    if MLP in results:
        report["ratios"] = {
            name: sorted(a / b for a, b in zip(values, results[MLP])) for name, values in results.items() if name != MLP
        }
        for name, ratios in report["ratios"].items():
            print(f"{name} / mlp: median {statistics.median(ratios):.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(report, file, indent=1)
    return report


if __name__ == "__main__":
    main()
