"""Lifecycle benchmarks: everything about the collectors that is not steady throughput.

Run: ``python -m benchmarks.lifecycle [--quick] [--json PATH]``. Setting throughout: CartPole-v1,
``zoo.actors.CategoricalMLP(4, 2)`` (64-64 MLP), ``T = 128``, one torch thread in every process
(workers use ``n_threads=1``). Each function below returns a JSON-serialisable dict; ``quick=True``
shrinks repeats and durations (the whole quick set takes about 20 s on 2 cores) and uses
``fork`` where the start method does not matter, to skip spawn's interpreter starts.

- :func:`first_fragment`: seconds from calling ``multi.rollout`` to the first batch, and to close.
- :func:`sync_latency`: weight publish / pull latency for 5k, 0.5M and 5M-parameter MLPs.
- :func:`policy_lag`: histogram of ``next()`` index minus ``Fragment.version``.
- :func:`learner_idle`: collect-then-learn in one process vs. ``single.rollout`` double buffering.
- :func:`peak_pss`: peak PSS of the whole process tree, ``multi.rollout`` vs. gymnasium's
  ``AsyncVectorEnv``.

:func:`run_all` runs them all and checks the targets of the benchmark issue (``targets``).
"""

import argparse
import copy
import gc
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from multiprocessing import forkserver
from typing import Callable, Dict, List

import gymnasium
import psutil
import torch

from benchmarks import sync_latency as _sync
from learners import a2c
from rollout import multi, same, single
from zoo.actors import CategoricalMLP

T = 128
MIB = 2**20
START_METHODS = tuple(m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods())


# The env factory. A lambda, so cloudpickle sends it to workers by value: a spawned worker imports
# gymnasium (as any worker does), not this module and its imports.
make_env = lambda: gymnasium.make("CartPole-v1")  # noqa: E731


EPOCHS = 4  # Adam updates per batch in learner_idle, as PPO's epochs over one batch


def learn_step(batch, actor: torch.nn.Module, optim: torch.optim.Optimizer, epochs: int = 1) -> None:
    """``epochs`` A2C updates on ``batch`` as an A2C training loop does (loss, backward, clip, Adam)."""
    for _ in range(epochs):
        loss, _ = a2c.loss(batch, actor, gamma=0.99, lam=0.95, entropy_coef=0.01, correction="truncated_is")
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 0.5)
        optim.step()


def _stats(samples: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def leftover_workers(wait: float = 2.0) -> List[int]:
    """Pids of live (non-zombie) descendants of this process, other than Python's helpers.

    The helpers are direct children whose command line names ``resource_tracker`` or
    ``forkserver`` (the server; its children, forkserver's workers, do count). Waits up to
    ``wait`` seconds for descendants to go, and includes ``multiprocessing.active_children()``.
    """
    deadline = time.monotonic() + wait
    while True:
        me, found = psutil.Process(), set()
        for child in me.children(recursive=True):
            try:
                helper = child.ppid() == me.pid and any(
                    name in " ".join(child.cmdline()) for name in ("resource_tracker", "forkserver")
                )
                if child.status() != psutil.STATUS_ZOMBIE and not helper:
                    found.add(child.pid)
            except psutil.Error:
                pass
        found |= {p.pid for p in multiprocessing.active_children()}
        if not found or time.monotonic() > deadline:
            return sorted(found)
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Time to first fragment and shutdown


def _start_once(method: str, more: int = 0) -> Dict[str, float]:
    """One ``multi.rollout(make_env, actor, 128, n_actors=2, n_per_actor=8)``: call, first batch,
    ``more`` further batches, close (``shutdown_s``)."""
    actor = CategoricalMLP(4, 2)
    t0 = time.perf_counter()
    feed = multi.rollout(make_env, actor, T, n_actors=2, n_per_actor=8, start_method=method)
    t1 = time.perf_counter()
    next(feed)
    t2 = time.perf_counter()
    for _ in range(more):
        next(feed)
    t2 = time.perf_counter() if more else t2
    feed.close()
    t3 = time.perf_counter()
    return {"call_s": t1 - t0, "first_s": t2 - t0, "shutdown_s": t3 - t2, "leftover": len(leftover_workers())}


def _summarise(runs: List[Dict[str, float]]) -> dict:
    out = {key: _stats([r[key] for r in runs]) for key in ("call_s", "first_s", "shutdown_s")}
    out["leftover_workers"] = max(r["leftover"] for r in runs)
    return out


_PROFILE = r"""
import json, sys, time
t = {"start": float(sys.argv[1]), "interpreter": time.time()}
import torch; torch.set_num_threads(1); t["import_torch"] = time.time()
import cloudpickle, rollout.multi, rollout.envs; from rollout import core, same; t["import_rollout_gymnasium"] = time.time()
import gymnasium; from zoo.actors import CategoricalMLP; t["import_actor_module"] = time.time()
import benchmarks.lifecycle; t["import_main_module"] = time.time()  # spawn re-imports the parent's __main__
envs = rollout.envs.make_envs(lambda: gymnasium.make("CartPole-v1"), 8, 0)
context = core.startup(envs, CategoricalMLP(4, 2), 128, seed=0); t["build_envs_startup"] = time.time()
core.collect(context, context.allocate()); t["collect_fragment"] = time.time()
print(json.dumps(t), flush=True)
"""


def spawn_breakdown() -> Dict[str, float]:
    """Where a spawned worker's time goes: a worker's steps, timed in 2 fresh interpreters.

    Starts two ``python -c`` processes at once (as ``multi.rollout`` starts 2 workers on 2 cores)
    that import what a worker imports, build 8 envs, run ``core.startup``, collect one 128-step
    fragment and exit normally (a spawned worker's exit runs the interpreter's finalisation, which
    ``feed.close()`` waits for). Returns the seconds of each phase for the slower process,
    ``total`` from ``Popen`` to the fragment, and ``interpreter_exit`` from there to its end.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = time.time()
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROFILE, repr(start)], cwd=root, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    stamps = [json.loads(p.stdout.readline()) for p in procs]
    deadline = time.time() + 60
    while any("exit" not in s for s in stamps) and time.time() < deadline:
        for p, s in zip(procs, stamps):
            if "exit" not in s and p.poll() is not None:
                s["exit"] = time.time()
        time.sleep(0.005)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    slow = max(stamps, key=lambda s: s["collect_fragment"])
    keys = [k for k in slow if k != "exit"]
    return {k: slow[k] - slow[prev] for prev, k in zip(keys, keys[1:])} | {
        "total": slow[keys[-1]] - slow["start"],
        "interpreter_exit": slow.get("exit", math.inf) - slow[keys[-1]],
    }


def _forkserver_variant(preload: List[str], repeats: int) -> dict:
    """forkserver with ``set_forkserver_preload(preload)``: a cold start (the server's), then repeats."""
    try:
        forkserver._forkserver._stop()  # private API: so that the next use starts a server
        multiprocessing.set_forkserver_preload(preload)
        cold = _start_once("forkserver")
        runs = [_start_once("forkserver") for _ in range(repeats)]
        steady = _start_once("forkserver", more=3)
    finally:
        multiprocessing.set_forkserver_preload(["__main__"])
        forkserver._forkserver._stop()
    return _summarise(runs) | {"cold": cold, "steady_shutdown_s": steady["shutdown_s"]}


def first_fragment(quick: bool = False) -> dict:
    """Seconds from calling ``multi.rollout(..., 128, n_actors=2, n_per_actor=8)`` to the first
    ``next()`` returning (``first_s``; ``call_s`` is the ``rollout()`` call alone: argument checks
    and the probe env built in this process), and for ``feed.close()`` right after it
    (``shutdown_s``), per start method; median/min/max over repeats, which go round-robin over the
    methods (the machine's load drifts), and the most worker processes found alive after a close
    (``leftover_workers``, expected 0). ``steady_shutdown_s`` (full mode, one run) closes after 3
    more batches, when both workers are surely running.

    forkserver: the first use in a process starts the server, a fresh interpreter. Its default
    preload, ``['__main__']``, imports nothing on Python 3.11 (the server is never given the main
    path), so forked workers still import torch themselves. The server is stopped first, so
    ``cold`` is that first use (server start included) and the repeats reuse the running server.
    ``forkserver_preload`` (full mode) does the same with ``multiprocessing.set_forkserver_preload(
    ['torch', 'gymnasium', 'rollout.multi', 'zoo.actors'])``: the server imports those once and
    workers fork from it. The server is stopped, and the preload list restored, at the end.
    ``spawn_breakdown`` (full mode) profiles a spawned worker's start-up, see :func:`spawn_breakdown`.
    Quick mode: one run per method, forkserver's cold one only.
    """
    repeats = 1 if quick else 5
    runs: Dict[str, list] = {m: [] for m in START_METHODS}
    cold = steady = {}
    try:
        if "forkserver" in START_METHODS:
            forkserver._forkserver._stop()  # private API: so that the next use starts a server
            cold = _start_once("forkserver")
        for _ in range(repeats):
            for method in START_METHODS:
                if not (quick and method == "forkserver"):
                    runs[method].append(_start_once(method))
        if not quick:
            steady = {m: _start_once(m, more=3)["shutdown_s"] for m in START_METHODS}
    finally:
        forkserver._forkserver._stop()
    out: dict = {m: _summarise(runs[m] or [cold]) for m in START_METHODS}
    for method, seconds in steady.items():
        out[method]["steady_shutdown_s"] = seconds
    if cold:
        out["forkserver"]["cold"] = cold
    if not quick and "forkserver" in START_METHODS:
        out["forkserver_preload"] = _forkserver_variant(["torch", "gymnasium", "rollout.multi", "zoo.actors"], repeats)
    if not quick and "spawn" in START_METHODS:
        out["spawn_breakdown"] = spawn_breakdown()
    out["leftover_workers"] = len(leftover_workers())
    return out


# ---------------------------------------------------------------------------------------------
# Weight sync


SYNC_SIZES = {"5k": (50, 2), "0.5M": (500, 2), "5M": (1000, 5)}


def sync_latency(quick: bool = False) -> dict:
    """``WeightStore`` publish and pull latency (ms, median/min/max) for MLPs of 5.1k, 0.5M and 5M
    parameters (:func:`benchmarks.sync_latency.measure`, in this process: the copy is the cost, the
    lock is uncontended), and the cost of a pull when the version did not change (the worker
    already holds it: one counter read) with ``nochange_copied`` False when that pull left
    poisoned worker weights untouched."""
    repeats = 10 if quick else 100
    return {name: _sync.measure(w, d, repeats, pickle=False) for name, (w, d) in SYNC_SIZES.items()}


# ---------------------------------------------------------------------------------------------
# Policy lag


def _lag_configs(method: str) -> Dict[str, Callable]:
    return {
        "single_8": lambda a: single.rollout(make_env, a, T, 8, seed=0, start_method=method),
        "multi_2x8_batch1": lambda a: multi.rollout(make_env, a, T, 2, 8, 1, seed=0, start_method=method),
        "multi_2x8_batch2": lambda a: multi.rollout(make_env, a, T, 2, 8, 2, seed=0, start_method=method),
    }


# The documented bound on the lag: single: 1; multi: batch buffers in flight, n_buffers // n_per_batch
# with the default n_buffers = n_per_batch * max(2, ceil((n_actors + n_per_batch) / n_per_batch)).
_LAG_BOUNDS = {"single_8": 1, "multi_2x8_batch1": 3, "multi_2x8_batch2": 2}


def policy_lag(quick: bool = False) -> dict:
    """Histogram of the policy lag ``k - fragment.version[b]`` over all columns ``b`` of the batch
    yielded by ``next()`` number ``k`` (from 0), with one A2C step (:func:`learn_step`) between
    batches, for ``single.rollout`` (8 envs) and ``multi.rollout`` (2 workers x 8 envs,
    ``n_per_batch`` 1 and 2, default ``n_buffers``). ``hist`` maps lag -> columns; ``bound`` is the
    documented maximum (``within_bound`` checks it): strict for single; for multi it holds for
    workers of equal speed, and the docs allow more behind a slower (e.g. descheduled) worker.
    Workers start with fork (the lag does not depend on the start method)."""
    n_batches = 12 if quick else 150
    out = {}
    for name, make in _lag_configs("fork").items():
        torch.manual_seed(0)
        actor = CategoricalMLP(4, 2)
        optim = torch.optim.Adam(actor.parameters(), lr=3e-3)
        counts: Counter = Counter()
        with make(actor) as feed:
            for k in range(n_batches):
                batch = next(feed)
                counts.update((k - batch.version).tolist())
                learn_step(batch, actor, optim)
        n = sum(counts.values())
        out[name] = {
            "hist": {str(lag): counts[lag] for lag in sorted(counts)},
            "mean": sum(lag * c for lag, c in counts.items()) / n,
            "max": max(counts),
            "min": min(counts),
            "n_batches": n_batches,
            "n_columns": n,
            "bound": _LAG_BOUNDS[name],
            "within_bound": max(counts) <= _LAG_BOUNDS[name] and min(counts) >= 0,
        }
    out["leftover_workers"] = len(leftover_workers())
    return out


# ---------------------------------------------------------------------------------------------
# Learner idle time: collect-then-learn vs. double buffering


def _segment(feed, actor, optim, n: int) -> Dict[str, float]:
    """Time ``n`` x (learn on the batch in hand, then ``next()``), starting right after a ``next()``."""
    batch = next(feed)  # untimed: a double-buffered worker now starts on the next fragment
    blocked, learn = 0.0, []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        learn_step(batch, actor, optim, EPOCHS)
        learn.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch = next(feed)
        blocked += time.perf_counter() - t
    elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "blocked": blocked, "learn": statistics.median(learn)}


def learner_idle(quick: bool = False, n_envs: int = 8, n_steps: int = T) -> dict:
    """Env-steps/s with a real learning step (:func:`learn_step`: ``EPOCHS`` A2C updates) per fragment of ``n_envs`` x
    ``n_steps``: (a) ``same.rollout``, collect then learn in sequence, vs. (b) ``single.rollout``,
    one worker collecting the next fragment while the learner learns.

    Both feeds stay open; timed segments of ``n`` fragments alternate A B A B ... (after one
    untimed warm-up segment each). A segment starts right after an untimed ``next()``, so (b)'s
    worker has no head start. Reports steps/s median/min/max of each, ``ratio`` = median(b) /
    median(a) (target >= 1.10), ``pair_ratio`` (median of per-pair ratios), the learner's idle
    fraction in (b) (time blocked in ``next()`` / segment time), ``collect_ms`` (one fragment in
    this process: (a)'s ``next()``), ``learn_ms`` (one update), ``bound`` =
    (collect + learn) / max(collect, learn), the ratio perfect overlap would give if the worker
    collected as fast as this process does (it can be faster: it does nothing else), and the wall
    time per fragment of each (``same_fragment_ms``, ``single_fragment_ms``).
    """
    repeats, n = (2, 4) if quick else (7, 15)
    method = "fork" if quick else None  # start-up is not timed; full mode uses the default (spawn)
    torch.manual_seed(0)
    actor_a = CategoricalMLP(4, 2)
    actor_b = copy.deepcopy(actor_a)
    optim_a = torch.optim.Adam(actor_a.parameters(), lr=3e-3)
    optim_b = torch.optim.Adam(actor_b.parameters(), lr=3e-3)
    steps = n * n_envs * n_steps
    runs: Dict[str, List[dict]] = {"same": [], "single": []}
    with (
        same.rollout(make_env, actor_a, n_steps, n_envs=n_envs, seed=0) as feed_a,
        single.rollout(make_env, actor_b, n_steps, n_envs, seed=1, start_method=method) as feed_b,
    ):
        _segment(feed_a, actor_a, optim_a, 2)  # warm-up
        _segment(feed_b, actor_b, optim_b, 2)
        for _ in range(repeats):
            runs["same"].append(_segment(feed_a, actor_a, optim_a, n))
            runs["single"].append(_segment(feed_b, actor_b, optim_b, n))
    rate = {k: [steps / r["elapsed"] for r in v] for k, v in runs.items()}
    collect = statistics.median(r["blocked"] / n for r in runs["same"])
    learn = statistics.median(r["learn"] for r in runs["same"] + runs["single"])
    return {
        "n_envs": n_envs,
        "n_steps": n_steps,
        "fragments_per_segment": n,
        "epochs": EPOCHS,
        "same_steps_per_s": _stats(rate["same"]),
        "single_steps_per_s": _stats(rate["single"]),
        "ratio": statistics.median(rate["single"]) / statistics.median(rate["same"]),
        "pair_ratio": statistics.median(b / a for a, b in zip(rate["same"], rate["single"])),
        "idle_fraction": _stats([r["blocked"] / r["elapsed"] for r in runs["single"]]),
        "collect_ms": collect * 1e3,
        "learn_ms": learn * 1e3,
        "bound": (collect + learn) / max(collect, learn),
        "same_fragment_ms": statistics.median(r["elapsed"] / n for r in runs["same"]) * 1e3,
        "single_fragment_ms": statistics.median(r["elapsed"] / n for r in runs["single"]) * 1e3,
        "leftover_workers": len(leftover_workers()),
    }


# ---------------------------------------------------------------------------------------------
# Peak memory of the process tree


def tree_pss() -> tuple:
    """(bytes, processes): psutil ``memory_full_info().pss`` summed over this process and all descendants."""
    me = psutil.Process()
    total = count = 0
    for p in [me] + me.children(recursive=True):
        try:
            total += p.memory_full_info().pss
            count += 1
        except psutil.Error:
            pass
    return total, count


class PeakPss(threading.Thread):
    """Samples :func:`tree_pss` every ``interval`` seconds (plus the time a sample takes) in the background."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.peak, self.processes, self.samples = interval, 0, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            pss, count = tree_pss()
            self.peak, self.processes, self.samples = max(self.peak, pss), max(self.processes, count), self.samples + 1
            if self.done.wait(self.interval):
                return

    def __enter__(self) -> "PeakPss":
        self.started = time.perf_counter()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()
        self.seconds = time.perf_counter() - self.started


def _run_multi(n_envs: int, duration: float, method: str) -> int:
    with multi.rollout(make_env, CategoricalMLP(4, 2), T, 2, n_envs // 2, start_method=method) as feed:
        next(feed)
        end, steps = time.perf_counter() + duration, 0
        while time.perf_counter() < end:
            steps += next(feed).state.rew[1:].numel()
    return steps


def _run_async(n_envs: int, duration: float) -> int:
    envs = gymnasium.vector.AsyncVectorEnv([make_env] * n_envs, shared_memory=True)  # default context: fork
    try:
        actor, steps = CategoricalMLP(4, 2), 0
        obs, _ = envs.reset(seed=0)
        end = time.perf_counter() + duration
        while time.perf_counter() < end:
            with torch.no_grad():
                act = actor.step(None, torch.as_tensor(obs)[None], None, None, None, hx=(), virtual=False)[0][0]
            obs, *_ = envs.step(act.numpy())
            steps += n_envs
    finally:
        envs.close()
    return steps


def peak_pss(quick: bool = False) -> dict:
    """Peak PSS (MiB) of this process plus all its descendants, sampled every ~50 ms by
    :class:`PeakPss` from just before the collector is built to just after it is closed, while it
    runs ``duration`` seconds after its first batch: ``multi.rollout`` with 2 workers x
    ``n_envs / 2`` envs (spawn, the default, and fork) vs. gymnasium ``AsyncVectorEnv(shared_memory=
    True)`` stepping ``n_envs`` envs with the same actor (its default context, fork: one process per
    env). ``baseline_mib`` is the tree before any of them; ``over_baseline_mib`` the difference;
    ``processes`` the most processes seen in one sample, ``sample_ms`` the mean sampling period
    (reading PSS costs ~2 ms per torch-importing process), ``steps_per_s`` the collection speed
    (only to show the work ran: the sampler's CPU, ~0.25 s per sample with 130 processes, slows
    the AsyncVectorEnv run on 2 cores)."""
    n_envs, duration = (16, 1.0) if quick else (128, 4.0)
    gc.collect()
    baseline = tree_pss()[0]
    runs = {
        "multi_fork": lambda: _run_multi(n_envs, duration, "fork"),
        "async_vector_env": lambda: _run_async(n_envs, duration),
    }
    if not quick:
        runs = {"multi_spawn": lambda: _run_multi(n_envs, duration, "spawn")} | runs
    out = {"n_envs": n_envs, "duration_s": duration, "baseline_mib": baseline / MIB}
    for name, fn in runs.items():
        with PeakPss() as sampler:
            steps = fn()
        out[name] = {
            "peak_mib": sampler.peak / MIB,
            "over_baseline_mib": (sampler.peak - baseline) / MIB,
            "processes": sampler.processes,
            "samples": sampler.samples,
            "sample_ms": sampler.seconds / sampler.samples * 1e3,
            "steps_per_s": steps / duration,
        }
        leftover_workers()
    out["leftover_workers"] = len(leftover_workers())
    return out


# ---------------------------------------------------------------------------------------------


def targets(results: dict) -> Dict[str, dict]:
    """The issue's targets: ``{name: {value, limit, met}}`` (values in the units of the name)."""
    checks = {}

    def check(name, value, limit, at_least=False):
        checks[name] = {"value": value, "limit": limit, "met": bool(value >= limit if at_least else value <= limit)}

    if "learner_idle" in results:
        check("double_buffering_ratio", results["learner_idle"]["ratio"], 1.10, at_least=True)
    for name, limit in (("5k", 0.1), ("0.5M", 0.3), ("5M", 2.0)):
        if name in results.get("sync_latency", {}):
            check(f"publish_ms_{name}", results["sync_latency"][name]["publish_ms"]["median"], limit)
    if "sync_latency" in results:
        copied = any(r["nochange_copied"] for r in results["sync_latency"].values())
        checks["pull_only_on_change"] = {"value": not copied, "limit": True, "met": not copied}
    for method, limit in (("fork", 0.25), ("spawn", 1.5)):
        if method in results.get("first_fragment", {}):
            check(f"first_fragment_s_{method}", results["first_fragment"][method]["first_s"]["median"], limit)
    return checks


def run_all(quick: bool = False) -> dict:
    """Run every benchmark here (see the module docstring); adds ``loadavg_before/after``, the
    ``seconds`` each benchmark took, and ``targets``."""
    torch.set_num_threads(1)
    out = {"quick": quick, "loadavg_before": os.getloadavg(), "seconds": {}}
    for fn in (first_fragment, sync_latency, policy_lag, learner_idle, peak_pss):
        start = time.perf_counter()
        out[fn.__name__] = fn(quick)
        out["seconds"][fn.__name__] = time.perf_counter() - start
    out["loadavg_after"] = os.getloadavg()
    out["targets"] = targets(out)
    return out


def _mmm(s: dict, scale: float = 1.0, fmt: str = ".3f") -> str:
    return f"{s['median'] * scale:{fmt}} [{s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}}]"


def report(r: dict) -> str:
    """A readable text table of :func:`run_all`'s result."""
    load = lambda key: " ".join(f"{x:.2f}" for x in r[key])  # noqa: E731
    lines = [
        f"load average (1, 5, 15 min) before {load('loadavg_before')}, after {load('loadavg_after')}; seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items()),
        "",
        "time to first fragment, multi.rollout(2 workers x 8 envs, T=128): seconds, median [min-max]",
        f"{'method':<20}{'rollout()':>10}{'first fragment':>24}{'close()':>24}{'close() later':>14}{'leftover':>9}",
    ]
    ff = r["first_fragment"]
    for name, v in ff.items():
        if isinstance(v, dict) and "first_s" in v:
            lines.append(
                f"{name:<20}{v['call_s']['median']:>10.3f}{_mmm(v['first_s']):>24}{_mmm(v['shutdown_s']):>24}"
                f"{v.get('steady_shutdown_s', math.nan):>14.3f}{v['leftover_workers']:>9}"
            )
            if "cold" in v:
                c = v["cold"]
                lines.append(
                    f"{'  first use (server)':<20}{c['call_s']:>10.3f}{c['first_s']:>24.3f}{c['shutdown_s']:>24.3f}"
                    f"{'':>14}{c['leftover']:>9}"
                )
    if "spawn_breakdown" in ff:
        phases = ", ".join(f"{k} {v:.3f}" for k, v in ff["spawn_breakdown"].items())
        lines.append(f"a spawned worker's phases (s, 2 at once): {phases}")
    lines += [
        "",
        "weight sync (ms, median [min-max])",
        f"{'actor':<7}{'params':>11}{'publish':>26}{'pull':>26}{'no-change pull':>26}{'copied?':>9}",
    ]
    for name, v in r["sync_latency"].items():
        lines.append(
            f"{name:<7}{v['params']:>11,}{_mmm(v['publish_ms']):>26}{_mmm(v['pull_ms']):>26}"
            f"{_mmm(v['nochange_pull_ms'], fmt='.4f'):>26}{str(v['nochange_copied']):>9}"
        )
    lines += ["", "policy lag = next() index - fragment.version (columns per lag)"]
    for name, v in r["policy_lag"].items():
        if isinstance(v, dict):
            lines.append(f"{name:<18} {v['hist']}  mean {v['mean']:.2f}  max {v['max']} (bound {v['bound']})")
    li = r["learner_idle"]
    lines += [
        "",
        f"learner idle: {li.get('epochs', 1)} A2C update(s) per fragment of {li['n_envs']} envs x T={li['n_steps']} "
        f"(collect {li['collect_ms']:.1f} ms, learn {li['learn_ms']:.1f} ms, perfect-overlap bound {li['bound']:.3f}x; "
        f"per fragment: same {li['same_fragment_ms']:.1f} ms, single {li['single_fragment_ms']:.1f} ms)",
        f"  same (collect, then learn)  {_mmm(li['same_steps_per_s'], fmt=',.0f')} steps/s",
        f"  single (double-buffered)    {_mmm(li['single_steps_per_s'], fmt=',.0f')} steps/s",
        f"  ratio {li['ratio']:.3f} (per pair {li['pair_ratio']:.3f}); learner idle fraction {_mmm(li['idle_fraction'])}",
    ]
    pss = r["peak_pss"]
    lines += [
        "",
        f"peak PSS of the process tree, {pss['n_envs']} envs, {pss['duration_s']} s "
        f"(baseline {pss['baseline_mib']:.0f} MiB)",
        f"{'collector':<18}{'peak MiB':>10}{'+baseline':>10}{'processes':>10}{'sample ms':>10}{'steps/s':>10}",
    ]
    for name, v in pss.items():
        if isinstance(v, dict):
            lines.append(
                f"{name:<18}{v['peak_mib']:>10.0f}{v['over_baseline_mib']:>10.0f}{v['processes']:>10}"
                f"{v['sample_ms']:>10.0f}{v['steps_per_s']:>10,.0f}"
            )
    lines += ["", "targets"]
    for name, v in r["targets"].items():
        lines.append(f"  {name:<28} {v['value']!s:>10.10} (limit {v['limit']}) {'met' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs (~20 s)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = run_all(args.quick)
    print(report(results))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
