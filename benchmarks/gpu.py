"""The GPU learner on a lent device, in one call: the ``cuda`` tests, delivery, the CLI, and Atari.

Run on the device (one call of under 8 minutes). It has PyTorch but not gymnasium, optree or
ale-py (nor pytest): download their cp312 wheels here into ``.whl`` (ignored by ``.git/info/exclude``;
no opencv needed: the Atari step uses ale-py's native vector env), carry ``.whl`` and install them
first::

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform any -d .whl \
        gymnasium==1.4.0 optree==0.20.0 ale-py==0.12.1 cloudpickle farama-notifications tqdm \
        pytest==9.0.3 pytest-timeout iniconfig pluggy packaging pygments psutil   # 5.9 MiB in all
    # on the device:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu --out "$OUT/gpu"

and here, on the CPU, the same steps with the CPU standing in for the device, short (under a
minute)::

    python -m benchmarks.gpu --dry-run --out /tmp/gpu

Steps, each measured side by side in the same call, written to ``OUT/gpu.json`` and
``OUT/gpu.png``:

1. ``pytest -m cuda tests/test_cuda.py`` (skipped without CUDA, so the dry run reports skips);
2. delivery: env steps/s of ``same`` and ``multi`` (cores - 2 workers) delivering to the device
   against delivering to the CPU, CartPole and the MLP actor-critic; the same with a PPO update per
   batch, the learner on the device against the learner on the CPU, with ``stats()``'s learner
   idle fraction (``wait_fraction``: the learner waiting for data);
3. the CLI: ``python -m zoo train ppo --env CartPole-v1 --device DEVICE``: its wall clock and the
   first env step at which the deterministic evaluation reached 475;
4. Atari: the ``ppo-pong`` preset's learner fed by ``multi`` (cores - 2 workers, CPU inference) for
   ``--atari-seconds`` (default 240), then by ``same`` with the actor on the device: env steps/s,
   idle fraction, policy lag and the training-return curve (skipped, with the reason, without
   ale-py).
"""

import argparse
import csv
import functools
import itertools
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List

import gymnasium
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_tests(dry_run: bool) -> Dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else "", "tail": done.stdout[-3000:]}


def _cartpole():
    return gymnasium.make("CartPole-v1")


def delivery(device: str, n_workers: int, seconds: float) -> List[Dict[str, Any]]:
    """Env steps/s delivering to ``device`` against the CPU, without and with a PPO update per batch."""
    from learners import ppo
    from rollout import multi, same
    from zoo.actors import CategoricalMLP

    def measure(collector: str, to: str, learn: bool) -> Dict[str, Any]:
        torch.manual_seed(0)
        actor = CategoricalMLP(n_obs=4, n_act=2).to(to)
        optim = torch.optim.Adam(actor.parameters(), lr=3e-4)
        if collector == "same":
            feed = same.rollout(_cartpole, actor, 128, n_envs=16, seed=0, device=to)
        else:
            feed = multi.rollout(
                _cartpole, actor, 128, n_workers, 16, n_workers, seed=0, device=to, start_method="fork"
            )
        with feed:
            next(feed)
            feed.stats()
            start, steps = time.perf_counter(), 0
            for batch in feed:
                if learn:
                    prepared = ppo.prepare(batch, actor, gamma=0.99, lam=0.95)
                    for minibatch in ppo.minibatches(prepared, 4):
                        loss, _ = ppo.loss(minibatch, actor, clip=0.2)
                        optim.zero_grad()
                        loss.backward()
                        optim.step()
                steps += batch.state.fin[1:].numel()  # T x B env steps
                if time.perf_counter() - start >= seconds:
                    break
            elapsed = time.perf_counter() - start
            recent = feed.stats()["recent"]
        return {
            "collector": collector,
            "delivered_to": to,
            "learner": f"ppo on {to}" if learn else None,
            "env_steps_per_s": steps / elapsed,
            "wait_fraction": recent["wait_fraction"],
        }

    rows = []
    for collector, learn in itertools.product(("same", "multi"), (False, True)):
        for to in (device, "cpu"):  # side by side
            rows.append(measure(collector, to, learn))
            print(f"  delivery {rows[-1]}", flush=True)
    return rows


def cli(device: str, steps: int, out: pathlib.Path) -> Dict[str, Any]:
    run = out / "cli-ppo-cartpole"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "zoo", "train", "ppo", "--env", "CartPole-v1", "--device", device, "--no-progress"]
        + ["--steps", str(steps), "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - started
    rows = list(csv.DictReader(open(run / "progress.csv"))) if (run / "progress.csv").exists() else []
    first = next((r for r in rows if r.get("eval_return") and float(r["eval_return"]) >= 475), None)
    return {
        "returncode": done.returncode,
        "wall_s": wall,
        "first_step_at_475": int(first["env_steps"]) if first else None,
        "first_time_at_475_s": float(first["wall_time"]) if first else None,
        "last_line": done.stdout.strip().splitlines()[-4:] if done.stdout else done.stderr[-2000:],
    }


def atari(device: str, n_workers: int, seconds: float) -> Dict[str, Any]:
    """The ppo-pong learner for ``seconds`` fed by ``multi`` (CPU workers), then by ``same`` on ``device``.

    Both step ale-py's native vector env (8 emulators per worker in ``multi``, the preset's 8 in
    ``same``): no opencv needed, so the device carries only small wheels.
    """
    try:
        import ale_py  # noqa: F401
    except ImportError:
        return {"skipped": "ale-py is not installed (the 'atari' extra)"}
    from rollout import multi, same
    from zoo import learning, presets
    from zoo.atari import make_atari_vector, native_vector_available

    if not native_vector_available():
        return {"skipped": "ale-py's native vector env needs ale-py >= 0.12"}
    env_id, per_worker = "ALE/Pong-v5", 8
    _, config = presets.resolve("ppo", env_id, {"device": device})
    config = {"algo": "ppo", "env": env_id, "seed": 0, **config}
    results = {}
    for name in ("multi", "same"):
        torch.manual_seed(0)
        probe = make_atari_vector(env_id, 1)
        learner = learning.build(config, probe.single_observation_space, probe.single_action_space).to(device)
        probe.close()
        T, seed = config["n_steps"], np.random.SeedSequence([0, 1])
        if name == "multi":
            factory = functools.partial(make_atari_vector, env_id, per_worker)
            feed = multi.rollout(factory, learner.actor, T, n_workers, per_worker, n_workers, seed=seed, device=device)
        else:
            factory = functools.partial(make_atari_vector, env_id, config["n_envs"])
            feed = same.rollout(factory, learner.actor, T, n_envs=1, seed=seed, device=device)
        curve, lags, steps = [], [], 0
        with feed:
            start = time.perf_counter()
            for index, batch in enumerate(feed):
                learner.update(batch, progress=min(1.0, steps / config["steps"]))
                steps += int(batch.state.fin[1:].numel())
                lags += (index - batch.version).tolist()
                ended = batch.final.episode_length[1:] > 0
                if bool(ended.any()):
                    curve += [(steps, float(r)) for r in batch.final.episode_return[1:][ended].tolist()]
                if time.perf_counter() - start >= seconds:
                    break
            elapsed = time.perf_counter() - start
            stats = feed.stats()["total"]
        results[name] = {
            "env_steps": steps,
            "env_steps_per_s": steps / elapsed,
            "wait_fraction": stats["wait_fraction"],
            "lag_mean": float(np.mean(lags)) if lags else None,
            "episodes": len(curve),
            "curve": curve,
            "columns": int(batch.state.fin.shape[1]),
        }
        print(
            f"  atari {name}: {results[name]['env_steps_per_s']:.0f} steps/s, idle {stats['wait_fraction']:.2f}",
            flush=True,
        )
    return results


def plot(result: Dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    rows = result["delivery"]
    labels = [f"{r['collector']}->{r['delivered_to']}{'+ppo' if r['learner'] else ''}" for r in rows]
    left.barh(labels, [r["env_steps_per_s"] for r in rows])
    left.set_xlabel("env steps/s")
    for name, run in (result.get("atari") or {}).items():
        if isinstance(run, dict) and run.get("curve"):
            x, y = zip(*run["curve"])
            right.plot(x, y, ".", label=name, alpha=0.6)
    right.set_xlabel("env steps")
    right.set_ylabel("Pong training return")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, short (under a minute)")
    parser.add_argument("--atari-seconds", type=float, default=240.0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --dry-run")
    n_workers = 2 if args.dry_run else max(2, (os.cpu_count() or 4) - 2)
    seconds = 1.0 if args.dry_run else 6.0
    result: Dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)",
            "driver": torch.version.cuda,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("1. cuda tests", flush=True)
    result["tests"] = run_tests(args.dry_run)
    print(f"  {result['tests']['summary']}", flush=True)
    print("2. delivery", flush=True)
    result["delivery"] = delivery(device, n_workers, seconds)
    print("3. the CLI", flush=True)
    result["cli"] = cli(device, 4096 if args.dry_run else 100_000, args.out)
    print(f"  {result['cli']['wall_s']:.1f} s, first >= 475 at {result['cli']['first_step_at_475']}", flush=True)
    print("4. Atari", flush=True)
    result["atari"] = atari(device, n_workers, 5.0 if args.dry_run else args.atari_seconds)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "gpu.png")
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.png'}")


if __name__ == "__main__":
    main()
