"""Learning results of the training CLI's default presets, seeds 0-4 per row (0-2 for the slow SAC rows; a benchmark, not a CI test).

Each run is ``python -m zoo train ALGO --env ENV --seed S`` in a fresh interpreter, with nothing
but the preset: deterministic evaluation on 10 episodes with fixed seeds every 10k env steps (2k
for SAC). From each run's ``progress.csv`` the table takes the final and best evaluation return and
the first env step (and wall-clock second) at which the evaluation reached the row's threshold;
each row's gate is checked over its seeds and must hold on all but one in five (4 of 5, 3 of 3).
Results: JSON, a markdown table and a plot of every evaluation curve.

Run::

    python -m benchmarks.learning                       # every row, its seeds
    python -m benchmarks.learning --jobs 2              # two runs at a time (wall-clock times grow)
    python -m benchmarks.learning --rows ppo-cartpole --seeds 0
    python -m benchmarks.learning --report benchmarks/recorded/learning.json --markdown
"""

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["ROWS", "Row", "summarize", "main"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    algo: str
    env: str
    threshold: float
    gate: str  # in words
    check: Callable[[List[Dict[str, Any]]], bool]
    reference: str = ""
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)


SLOW_SEEDS = (0, 1, 2)  # SAC rows take 15-40 minutes a seed here


def _count(runs, key, at_least):
    return sum(1 for r in runs if r[key] is not None and r[key] >= at_least)


def _most(runs, key, at_least):
    """Whether all runs but one in five reach ``at_least`` (4 of 5, 3 of 3)."""
    return _count(runs, key, at_least) >= len(runs) - len(runs) // 5


ROWS = [
    Row(
        "ppo-cartpole",
        "ppo",
        "CartPole-v1",
        475,
        "final >= 475 and first >= 475 within 30 s on 4/5",
        lambda runs: (
            sum(
                1
                for r in runs
                if r["final"] is not None
                and r["final"] >= 475
                and r["first_time"] is not None
                and r["first_time"] <= 30
            )
            >= len(runs) - len(runs) // 5
        ),
        "SB3 zoo 500 at 100k (1-2 min on CPU); CleanRL 490 at 500k (about 10 min)",
    ),
    Row(
        "a2c-cartpole",
        "a2c",
        "CartPole-v1",
        475,
        "final >= 475 on 4/5",
        lambda runs: _most(runs, "final", 475),
        "SB3 zoo 500 at 500k",
    ),
    Row(
        "reinforce-cartpole",
        "reinforce",
        "CartPole-v1",
        475,
        "best >= 475 on 5/5, final >= 450 on 4/5",
        lambda runs: _count(runs, "best", 475) == len(runs) and _most(runs, "final", 450),
    ),
    Row(
        "ppo-acrobot",
        "ppo",
        "Acrobot-v1",
        -100,
        "final >= -100 on 4/5",
        lambda runs: _most(runs, "final", -100),
        "CleanRL -86 at 500k",
    ),
    Row(
        "sac-pendulum",
        "sac",
        "Pendulum-v1",
        -200,
        "final >= -200 on 3/3",
        lambda runs: _most(runs, "final", -200),
        "SB3 zoo -157 at 20k",
        SLOW_SEEDS,
    ),
    Row(
        "sac-continuouscartpole",
        "sac",
        "zoo/ContinuousCartPole-v0",
        475,
        "record the first step >= 475",
        lambda runs: True,
        "BBRL SAC notebook",
        SLOW_SEEDS,
    ),
    Row(
        "ppo-cartpolenovel",
        "ppo",
        "zoo/CartPoleNoVel-v0",
        475,
        "final >= 475 on 4/5 within 100k steps",
        # a run stops at the first batch past its budget (512 env steps here)
        lambda runs: _most(runs, "final", 475) and all(r["steps"] is not None and r["steps"] <= 101_024 for r in runs),
        "sb3-contrib RecurrentPPO: 500 at about 100k",
    ),
]


def summarize(progress: pathlib.Path, threshold: float) -> Dict[str, Any]:
    """Final, best and first-reaching evaluation of one run's ``progress.csv``."""
    with open(progress, newline="") as file:
        rows = [r for r in csv.DictReader(file) if r["eval_return"]]
    curve = [(int(r["env_steps"]), float(r["eval_return"]), float(r["wall_time"])) for r in rows]
    first = next(((s, t) for s, v, t in curve if v >= threshold), (None, None))
    return {
        "final": curve[-1][1] if curve else None,
        "best": max((v for _, v, _ in curve), default=None),
        "first_step": first[0],
        "first_time": first[1],
        "steps": curve[-1][0] if curve else None,
        "wall_time": curve[-1][2] if curve else None,
        "curve": curve,
    }


def run_one(row: Row, seed: int, out: pathlib.Path, extra: List[str]) -> Dict[str, Any]:
    run_dir = out / f"{row.name}-{seed}"
    command = [
        sys.executable,
        "-m",
        "zoo",
        "train",
        row.algo,
        "--env",
        row.env,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = summarize(run_dir / "progress.csv", row.threshold)
    config = json.loads((run_dir / "config.json").read_text())
    collector = config["config"]["collector"]
    return {
        "row": row.name,
        "seed": seed,
        "process_time": time.perf_counter() - started,
        "collector": collector,
        "command": " ".join(command[1:]),
        **summary,
    }


def machine() -> Dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except Exception:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_before": os.getloadavg()[0],
    }


def markdown(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| env | algorithm (collector) | seeds | final | best | first step >= threshold | wall-clock to it "
        "| total wall-clock | gate | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row.name]
        if not runs:
            continue

        def show(key, fmt):
            return " / ".join("-" if r[key] is None else format(r[key], fmt) for r in runs)

        met = "yes" if row.check(runs) else "**no**"
        lines.append(
            f"| {row.env} | {row.algo} ({runs[0]['collector']}) | {len(runs)} | {show('final', '.1f')} | "
            f"{show('best', '.1f')} | {show('first_step', ',')} | {show('first_time', '.1f')} s | "
            f"{show('wall_time', '.0f')} s | {row.gate} | {met} |"
        )
    return "\n".join(lines)


def record_presets(results: List[Dict[str, Any]], when: str) -> None:
    """Write each row's results into the ``[recorded]`` table of its preset file (shown by ``zoo list``)."""
    from zoo import presets

    for row in ROWS:
        runs = [r for r in results if r["row"] == row.name]
        if not runs:
            continue
        preset = presets.find(row.algo, row.env)
        text = preset.path.read_text()
        text = text.split("\n[recorded]\n")[0].rstrip("\n") + "\n"
        finals = ", ".join(f"{r['final']:.1f}" for r in runs)
        firsts = ", ".join("none" if r["first_step"] is None else str(r["first_step"]) for r in runs)
        minutes = max(r["wall_time"] for r in runs) / 60
        text += (
            f'\n[recorded]\nseeds = {len(runs)}\nfinal_eval = "{finals}"\nfirst_step_at_{row.threshold:g} = "{firsts}"\n'
            f'wall_clock = "up to {minutes:.1f} min on 2 CPU cores"\ngate = "{row.gate}: {"met" if row.check(runs) else "missed"}"\n'
            f'measured = "{when}, python -m benchmarks.learning"\n'
        )
        preset.path.write_text(text)


def plot(results: List[Dict[str, Any]], path: pathlib.Path) -> None:
    """A grid of panels, one per row: every seed's evaluation curve, steps in k/M, the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = [row for row in ROWS if any(r["row"] == row.name for r in results)]
    n_cols = min(3, len(rows))
    n_rows = -(-len(rows) // n_cols)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, 3.4 * n_rows), squeeze=False)
    steps_label = FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k")
    for ax, row in zip(axes.flat, rows):
        for r in (r for r in results if r["row"] == row.name):
            steps, values, _ = zip(*r["curve"]) if r["curve"] else ((), (), ())
            ax.plot(steps, values, marker=".", linewidth=1, label=f"seed {r['seed']}")
        ax.axhline(row.threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {row.threshold:g}")
        ax.set_title(f"{row.algo} on {row.env}: {row.gate}", fontsize=8)
        ax.xaxis.set_major_formatter(steps_label)
        ax.set_xlabel("env steps")
        ax.set_ylabel("deterministic evaluation return", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=[row.name for row in ROWS], help="rows to run")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds (default: each row's, 0-4 or 0-2 for SAC)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "learning")
    parser.add_argument("--json", type=pathlib.Path, help="results file (default OUT/learning.json); merged by row")
    parser.add_argument("--report", type=pathlib.Path, help="print the table of a saved results file")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--record-presets", action="store_true", help="with --report: write results into the presets")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="arguments passed to zoo train")
    args = parser.parse_args(argv)
    if args.report is not None:
        data = json.loads(args.report.read_text())
        print(markdown(data["results"]))
        if args.record_presets:
            record_presets(data["results"], data["machines"][-1]["time"][:10])
        return
    unknown = set(args.rows) - {row.name for row in ROWS}
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; expected some of {[row.name for row in ROWS]}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.json or args.out / "learning.json"
    data = json.loads(path.read_text()) if path.exists() else {"results": [], "machines": []}
    data["machines"].append({**machine(), "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%d %H:%M")})
    data["machines"][-1]["jobs"] = args.jobs
    work = [(row, seed) for row in ROWS if row.name in args.rows for seed in (args.seeds or row.seeds)]

    def one(item):
        row, seed = item
        result = run_one(row, seed, args.out, args.extra)
        print(
            f"{row.name} seed {seed}: final {result['final']}, best {result['best']}, first >= "
            f"{row.threshold} at step {result['first_step']} ({result['first_time']} s), "
            f"{result['wall_time']:.0f} s",
            flush=True,
        )
        return row, seed, result

    with ThreadPoolExecutor(args.jobs) as pool:
        for row, seed, result in pool.map(one, work):
            data["results"] = [r for r in data["results"] if (r["row"], r["seed"]) != (row.name, seed)] + [result]
            path.write_text(json.dumps(data, indent=1) + "\n")
    data["results"].sort(key=lambda r: ([row.name for row in ROWS].index(r["row"]), r["seed"]))
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data["results"]))
    plot(data["results"], path.with_suffix(".png"))


if __name__ == "__main__":
    main()
