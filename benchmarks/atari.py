"""Atari Pong collection: B Python envs against ale-py's native (C++) vector env, side by side.

Run ``python -m benchmarks.atari`` (needs the ``atari`` extra). Both sources give the same
observations (uint8 ``(4, 84, 84)``, :mod:`zoo.atari`) and are collected by
:func:`rollout.same.rollout` with :class:`zoo.actors.AtariConv` (sampled actions), T = 128:

==============  ===============================================================================
``python``      ``n_envs`` gymnasium envs from the factory :func:`zoo.atari.make_atari`, stepped
                one by one (ALE + ``AtariPreprocessing`` + frame stack, in Python)
``native``      one :func:`zoo.atari.make_atari_vector` of ``n_envs`` emulators: emulation and
                preprocessing in C++ threads (ale-py's default: one per core), one call per step
``native-1t``   the same with a single C++ thread
==============  ===============================================================================

``--training`` measures instead the env-steps/s of the training loop, :func:`zoo.train.train`
with the ``ppo-pong`` preset (collection plus PPO's 4 epochs on every batch), once with the
CLI's collector (``python``: ``same.rollout`` over ``make_atari`` envs) and once with
:func:`native_collector` in its place (``native``), for ``--train-steps`` env steps each.

Method (as :mod:`benchmarks.throughput`): each measurement runs in a fresh interpreter, builds
the collector, warms up, counts env steps over at least ``--seconds`` and closes it; the sources
are interleaved (A B C A B C ...) over ``--repeats`` rounds, since the machine is shared and
noisy. One torch thread. We report the median and min-max of env-steps/s and, round by round,
the ratio to ``python``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch

KINDS = ("python", "native", "native-1t")
ENV_ID = "ALE/Pong-v5"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(kind: str, n_envs: int, n_steps: int, seconds: float, warmup: float) -> float:
    """Env-steps/s of ``same.rollout`` on one source over at least ``seconds`` after ``warmup``."""
    from rollout import same
    from zoo.actors import AtariConv
    from zoo.atari import make_atari, make_atari_vector

    torch.set_num_threads(1)
    torch.manual_seed(0)
    actor = AtariConv(6)
    if kind == "python":
        feed = same.rollout(lambda seed: make_atari(ENV_ID, seed), actor, n_steps, n_envs=n_envs, seed=0)
    else:
        threads = 1 if kind == "native-1t" else 0
        feed = same.rollout(
            lambda seed: make_atari_vector(ENV_ID, n_envs, seed, num_threads=threads), actor, n_steps, n_envs=1, seed=0
        )
    with feed:
        start = time.perf_counter()
        next(feed)
        while time.perf_counter() - start < warmup:
            next(feed)
        steps, start = 0, time.perf_counter()
        for fragment in feed:
            steps += fragment.state.fin.shape[1] * n_steps
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return steps / elapsed
    raise RuntimeError("the feed ended")  # pragma: no cover - collectors never end by themselves


def native_collector(config: Dict[str, Any], actor, seed):
    """What ``zoo.train.make_collector`` builds for an ``ALE/...`` id with the ``same`` collector
    when it takes ale-py's native vector env (the change benchmarks/README.md proposes)."""
    import functools

    from rollout import same
    from zoo.atari import make_atari_vector

    if not config["env"].startswith("ALE/") or config["collector"] != "same" or config.get("sticky", False):
        raise ValueError("native_collector: an ALE/... id, the same collector and no sticky envs only")
    device = None if config["device"] == "cpu" else config["device"]
    factory = functools.partial(make_atari_vector, config["env"], config["n_envs"])
    return same.rollout(factory, actor, config["n_steps"], n_envs=1, seed=seed, device=device)


def measure_training(kind: str, n_envs: int, steps: int) -> float:
    """Env-steps/s of :func:`zoo.train.train` (preset ``ppo-pong``) over ``steps`` env steps."""
    import tempfile
    from unittest import mock

    from zoo import presets, train
    from zoo.run import Run

    preset, config = presets.resolve(
        "ppo", ENV_ID, {"steps": steps, "n_envs": n_envs, "eval_every": 0, "eval_episodes": 1}
    )
    config = {"algo": "ppo", "env": ENV_ID, "seed": 0, "preset": preset.name, **config}
    collector = native_collector if kind == "native" else train.make_collector
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(train, "make_collector", collector):
        run = Run(folder, config, [])
        counters = train.train(config, run, progress=False, echo=lambda *args: None)
    return counters.env_steps / counters.wall_time  # wall_time stops before the final evaluation


def measure_isolated(kind: str, args: argparse.Namespace) -> float:
    """:func:`measure` (or :func:`measure_training`) in a fresh interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.atari",
        "--measure-one",
        kind,
        "--n-envs",
        str(args.n_envs),
        "--n-steps",
        str(args.n_steps),
        "--seconds",
        repr(args.seconds),
        "--warmup",
        repr(args.warmup),
        "--train-steps",
        str(args.train_steps),
    ] + (["--training"] if args.training else [])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.seconds + args.warmup + 3600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {kind} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    return float(lines[-1])


def _summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.atari", description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=128, help="T, steps per fragment")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--training",
        action="store_true",
        help="measure zoo.train.train with the ppo-pong preset (python and native sources)",
    )
    parser.add_argument("--train-steps", type=int, default=16_384, help="env steps per training measurement")
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument("--measure-one", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_one:
        if args.training:
            print(measure_training(args.measure_one, args.n_envs, args.train_steps))
        else:
            print(measure(args.measure_one, args.n_envs, args.n_steps, args.seconds, args.warmup))
        return {}
    if args.training:
        args.kinds = [kind for kind in args.kinds if kind != "native-1t"]
    from benchmarks.throughput import machine, versions

    results: Dict[str, List[float]] = {kind: [] for kind in args.kinds}
    for r in range(args.repeats):
        for kind in args.kinds:
            value = measure_isolated(kind, args)
            results[kind].append(value)
            print(f"[{r + 1}/{args.repeats}] {kind:<10} {args.n_envs} envs {value:>8,.0f} env-steps/s", flush=True)
    what = (
        {"measured": "zoo.train.train, preset ppo-pong", "train_steps": args.train_steps}
        if args.training
        else {"measured": "same.rollout", "n_steps": args.n_steps, "seconds": args.seconds}
    )
    report = {
        "env": ENV_ID,
        "actor": "AtariConv",
        "n_envs": args.n_envs,
        **what,
        "repeats": args.repeats,
        "machine": machine(),
        "versions": versions(),
        "results": {kind: {"values": values, **_summary(values)} for kind, values in results.items()},
    }
    if "python" in results:
        for kind, values in results.items():
            if kind != "python":
                report["results"][kind]["/python"] = _summary([a / b for a, b in zip(values, results["python"])])
    print("\n| source | env-steps/s, median [min-max] | /python, median [min-max] |\n|---|---:|---|")
    for kind, entry in report["results"].items():
        ratio = entry.get("/python")
        text = f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]" if ratio else ""
        print(f"| {kind} {args.n_envs} | {entry['median']:,.0f} [{entry['min']:,.0f}-{entry['max']:,.0f}] | {text} |")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(report, file, indent=1)
    return report


if __name__ == "__main__":
    main()
