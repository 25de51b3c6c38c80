"""Memory soak: does the learner's memory stay flat over minutes of ``multi`` collection and learning?

Run: ``python -m benchmarks.soak [--seconds N] [--json PATH] [--smaps] [--zoo]``. Setting: CartPole-v1,
``zoo.actors.CategoricalMLP(4, 2)``, ``multi.rollout`` with 2 workers x 8 envs, ``T = 128``,
``n_per_batch=2`` (16 columns a batch), one A2C step with Adam per batch, as the README's loop.

Every second the learner (this process) records its PSS and RSS (psutil), the size of Python's
own allocations (``tracemalloc``: native memory is PSS minus that) and its thread count. Samples
are taken in the loop between batches, so the sampler adds no thread of its own. The reference is
the first sample taken ``warmup`` seconds (default 2) after the first batch: by then the workers
run, the shared batch buffers and weights exist, Adam's state is allocated and every code path of
the loop has run a few times, so what grows after it is growth in steady state, not start-up.
``max_ratio`` is the largest PSS sample over that reference. ``--smaps`` also reports the
mappings of ``/proc/self/smaps`` whose PSS grew between the reference and the end.

``--zoo`` soaks the training CLI instead: ``python -m zoo train a2c --env CartPole-v1`` (its
preset is the same 2x8 ``multi`` with an A2C step per batch, plus evaluation, logging and the
curve redrawn at every evaluation), sampled from outside every second after ``warmup`` (default
10) seconds, stopped with Ctrl-C. This is where the learner's PSS grew: each redraw left a
matplotlib figure (its Agg pixel buffer is native memory) in reference cycles that only Python's
rare full collection frees, +35-45 MiB per 100 s; ``zoo.run.Curve`` now redraws one figure.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Dict, Optional

import gymnasium
import psutil
import torch

from learners import a2c
from rollout import multi
from zoo.actors import CategoricalMLP

MIB = 2**20

make_env = lambda: gymnasium.make("CartPole-v1")  # noqa: E731  (a lambda: cloudpickled by value)


def smaps() -> Dict[str, int]:
    """PSS in bytes of this process's mappings: file-backed ones summed by ``perms path``, the others
    (heap, glibc arenas, mmapped blocks, stacks) by ``start perms name``: a mapping that grows in
    place (the brk heap, an arena) keeps its start."""
    out, key = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split(maxsplit=5)
                name = fields[5].strip() if len(fields) > 5 else "[anon]"
                key = f"{fields[1]} {name}" if name.startswith("/") else f"{fields[0].split('-')[0]} {fields[1]} {name}"
            elif line.startswith("Pss:"):
                out[key] = out.get(key, 0) + int(line.split()[1]) * 1024
    return out


def rollup() -> Dict[str, float]:
    """PSS of this process by kind, MiB: ``anon`` (heap, arenas, mmapped blocks), ``file``, ``shmem``."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Pss_Anon", "Pss_File", "Pss_Shmem"):
                out[name[4:].lower()] = int(rest.split()[0]) / 1024
    return out


def grown(before: Dict[str, int], after: Dict[str, int], at_least: int = MIB) -> Dict[str, float]:
    """Mappings whose PSS grew by ``at_least`` bytes (new ones included): ``{mapping: MiB}``."""
    diff = {key: after[key] - before.get(key, 0) for key in after}
    return {key: d / MIB for key, d in sorted(diff.items(), key=lambda kv: -kv[1]) if d >= at_least}


def soak(
    seconds: float = 180.0,
    *,
    warmup: float = 2.0,
    interval: float = 1.0,
    n_per_batch: int = 2,
    threads: Optional[int] = None,
    with_smaps: bool = False,
    start_method: Optional[str] = None,
) -> dict:
    """Run the soak; returns the samples, the reference (first sample) and ``max_ratio``.

    ``threads``: ``torch.set_num_threads`` in the learner first (None: leave torch's default).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    actor = CategoricalMLP(n_obs=4, n_act=2)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    me = psutil.Process()
    samples, before, batches = [], None, 0
    tracemalloc.start()
    try:
        with multi.rollout(
            make_env,
            actor,
            n_steps=128,
            n_actors=2,
            n_per_actor=8,
            n_per_batch=n_per_batch,
            seed=0,
            start_method=start_method,
        ) as feed:
            start = next_sample = None
            for batch in feed:
                loss, _ = a2c.loss(batch, actor, gamma=0.99, lam=0.95)
                optim.zero_grad()
                loss.backward()
                optim.step()
                batches += 1
                now = time.monotonic()
                if start is None:
                    start = now
                    next_sample = now + warmup
                if now < next_sample:
                    continue
                memory = me.memory_full_info()
                samples.append(
                    {
                        "t_s": round(now - start, 1),
                        "batches": batches,
                        "pss_mib": memory.pss / MIB,
                        "rss_mib": memory.rss / MIB,
                        "python_mib": tracemalloc.get_traced_memory()[0] / MIB,
                        "threads": me.num_threads(),
                        **{f"{kind}_mib": mib for kind, mib in rollup().items()},
                    }
                )
                if with_smaps and before is None:
                    before = smaps()
                next_sample += interval * (1 + (now - next_sample) // interval)
                if now - start >= warmup + seconds:
                    break
            after = smaps() if with_smaps else None
    finally:
        tracemalloc.stop()
    first = samples[0]["pss_mib"]
    out = {
        "seconds": seconds,
        "warmup_s": warmup,
        "n_per_batch": n_per_batch,
        "threads": threads,
        "start_method": start_method or multi.DEFAULT_START_METHOD,
        "first_pss_mib": first,
        "max_pss_mib": max(s["pss_mib"] for s in samples),
        "max_ratio": max(s["pss_mib"] for s in samples) / first,
        "samples": samples,
    }
    if with_smaps:
        out["grown_mappings_mib"] = grown(before, after)
    return out


def zoo_soak(seconds: float = 180.0, *, warmup: float = 10.0, interval: float = 1.0) -> dict:
    """Soak ``python -m zoo train a2c --env CartPole-v1`` (a child process) for ``seconds`` after
    ``warmup``; its PSS, RSS and USS every ``interval`` seconds, as :func:`soak` returns them."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "zoo", "train", "a2c", "--env", "CartPole-v1", "--steps", "100000000"]
        learner = subprocess.Popen(
            command + ["--no-progress", "--run-dir", run_dir],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        samples = []
        try:
            process, start = psutil.Process(learner.pid), time.monotonic()
            while learner.poll() is None:
                now = time.monotonic() - start
                if now >= warmup:
                    memory = process.memory_full_info()
                    samples.append(
                        {
                            "t_s": round(now - warmup, 1),
                            "pss_mib": memory.pss / MIB,
                            "rss_mib": memory.rss / MIB,
                            "uss_mib": memory.uss / MIB,
                            "threads": process.num_threads(),
                        }
                    )
                    if now >= warmup + seconds:
                        break
                time.sleep(interval)
        finally:
            learner.send_signal(signal.SIGINT)  # the CLI saves, stops its workers and exits
            try:
                _, stderr = learner.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                learner.kill()
                _, stderr = learner.communicate()
        if not samples or samples[-1]["t_s"] < seconds:
            raise RuntimeError(f"zoo train ended early (exit code {learner.returncode}):\n{stderr.decode()[-3000:]}")
    first = samples[0]["pss_mib"]
    return {
        "command": " ".join(command[1:]),
        "seconds": seconds,
        "warmup_s": warmup,
        "first_pss_mib": first,
        "max_pss_mib": max(s["pss_mib"] for s in samples),
        "max_ratio": max(s["pss_mib"] for s in samples) / first,
        "samples": samples,
    }


def table(result: dict, every: int = 10) -> str:
    """Every ``every``-th sample (and the last) as a text table, then the summary line."""
    samples = result["samples"]
    columns = list(samples[0])
    rows = [" ".join(f"{c:>10}" for c in columns)]
    for i, s in enumerate(samples):
        if i % every == 0 or i == len(samples) - 1:
            rows.append(" ".join(f"{s[c]:10.1f}" if isinstance(s[c], float) else f"{s[c]:10d}" for c in columns))
    rows.append(
        f"first PSS {result['first_pss_mib']:.1f} MiB, max {result['max_pss_mib']:.1f} MiB, "
        f"max ratio {result['max_ratio']:.3f}"
    )
    for name, mib in result.get("grown_mappings_mib", {}).items():
        rows.append(f"  grew {mib:7.1f} MiB  {name}")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="soak length after the warm-up (default 180)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after the first batch before the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the learner")
    parser.add_argument("--start-method", default=None, help="the collector's start_method (default: spawn)")
    parser.add_argument("--n-per-batch", type=int, default=2, help="fragments per batch (default 2: 16 columns)")
    parser.add_argument("--every", type=int, default=10, help="print every N-th sample")
    parser.add_argument("--smaps", action="store_true", help="report the mappings whose PSS grew")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--zoo", action="store_true", help="soak `python -m zoo train a2c --env CartPole-v1` instead")
    args = parser.parse_args(argv)
    if args.zoo:
        result = zoo_soak(args.seconds, warmup=10.0 if args.warmup == 2.0 else args.warmup)
        print(table(result, args.every))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        return
    result = soak(
        args.seconds,
        warmup=args.warmup,
        n_per_batch=args.n_per_batch,
        threads=args.threads,
        with_smaps=args.smaps,
        start_method=args.start_method,
    )
    result["env"] = {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "OMP_", "GLIBC_"))}
    print(table(result, args.every))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
