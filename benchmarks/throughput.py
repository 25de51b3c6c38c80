"""Throughput of every collector against the best alternatives, measured side by side.

Run ``python -m benchmarks.throughput --help``. Examples::

    python -m benchmarks.throughput                       # the recorded suite (about 40 min)
    python -m benchmarks.throughput --quick               # a smoke run (CI), about a minute on 2 idle cores
    python -m benchmarks.throughput --env cartpole --policy mlp --collectors hand same multi \\
        --n-envs 8 64 --n-actors 1 2

Method. A configuration is (env, policy, collector, envs per actor ``n_envs``, ``n_actors``).
Collectors in one process step ``n_envs * n_actors`` envs; pool collectors (ours, gymnasium's
``AsyncVectorEnv``, TorchRL's multi-process collector) run ``n_actors`` workers of ``n_envs``
envs (``AsyncVectorEnv`` always has one process per env). On a batched env (one object stepping B
envs), each worker of a pool collector steps one batched env of ``n_envs``. Each measurement runs in a fresh
interpreter (a child process: no measurement inherits another's threads, children or imports);
it builds the collector, warms up (startup, first batches), counts env steps over at least
``--seconds`` of steady state, and closes it. Configurations are interleaved (A B C A B C ...) ``--repeats`` times, since
the machine is shared and noisy; we report the median and min-max of env-steps/s, and ratios to
the in-run baselines with the same env, policy and total envs, computed per round (the
measurements of one round ran next to each other) and summarised by median and min-max. One torch
thread per process. Results go to ``--out`` as JSON and a PNG plot.

Collectors:

=================  ================================================================================
``hand``           a hand-written loop over a list of envs (or one batched env) with the actor
                   forward, recording obs, actions, rewards, dones and actor outputs into
                   preallocated buffers: the ceiling for ``same``
``lean``           the leanest loop a user writes (``--policy lean`` only): the network called
                   directly, recording only obs, action, reward, terminated and truncated (over
                   a list of envs, or one batched env)
``ceiling``        ``n_actors`` lean loops of ``n_envs`` envs in as many processes, no IPC: what
                   the worker collectors could reach at best (a pool collector)
``gym-sync``       gymnasium ``SyncVectorEnv`` + the actor, recorded the same way
``gym-async``      gymnasium ``AsyncVectorEnv(shared_memory=True)`` + the actor
``same``           :func:`rollout.same.rollout`
``single``         :func:`rollout.single.rollout` (one worker, double-buffered; ``n_actors == 1``)
``multi``          :func:`rollout.multi.rollout`, ``n_per_batch = n_actors``
``distributed``    :func:`rollout.distributed.rollout` on a local Ray instance it starts (the optional
                   ``ray`` extra), ``n_per_batch = n_actors``: multi's layout over Ray's IPC
``torchrl-sync``   TorchRL ``SyncDataCollector`` (optional ``bench`` extra)
``torchrl-multi``  TorchRL ``MultiSyncDataCollector`` (optional ``bench`` extra)
``envpool``        envpool's sync batched env + the actor (when installed)
=================  ================================================================================
"""

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import gymnasium as gym
import numpy as np
import optree
import torch

import rollout
from rollout import multi, same, single
from zoo.actors import AtariConv, CategoricalGRU, CategoricalMLP, RandomActor

from . import envs as bench_envs

T_DEFAULT = 128


# -------------------------------------------------------------------------------------- envs
@dataclass
class Env:
    """How to build one benchmark env, and what it takes."""

    name: str
    factory: Callable[[], Any]
    pixels: bool = False
    batched: Optional[Callable[[int], Any]] = None  # builds one object stepping B envs
    gym_id: Optional[str] = None  # for the external baselines
    needs: Optional[str] = None  # an optional module

    def skip_reason(self) -> Optional[str]:
        if self.needs is not None:
            try:
                __import__(self.needs)
            except ImportError:
                return f"{self.needs} is not installed (pip install -e '.[bench]')"
        return None


def _pong():
    from zoo.atari import make_atari

    return make_atari("ALE/Pong-v5")


ENVS = {
    "cartpole": Env("cartpole", lambda: gym.make("CartPole-v1"), gym_id="CartPole-v1"),
    "cartpole-batched": Env(
        "cartpole-batched",
        lambda: bench_envs.BatchedCartPole(num_envs=1),
        batched=lambda n: bench_envs.BatchedCartPole(num_envs=n),
    ),
    "busy50": Env("busy50", lambda: bench_envs.BusyEnv(50e-6)),
    "busy500": Env("busy500", lambda: bench_envs.BusyEnv(500e-6)),
    "pixels": Env("pixels", lambda: bench_envs.PixelEnv(), pixels=True),
    "pong": Env("pong", _pong, pixels=True, gym_id="ALE/Pong-v5", needs="ale_py"),
}


class LeanMLP(rollout.Actor):
    """The lightest useful actor: an MLP 4-64-64-2 (tanh), ``multinomial(softmax(logits))``, no value, no info.

    With it the collector's own per-step work is what is measured, not the actor's forward.
    """

    def __init__(self, n_obs: int, n_act: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_obs, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, n_act),
        )

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        with torch.inference_mode():
            logits = self.net(obs[0].float())  # (B, n_act): rows of one time step
            action = torch.multinomial(torch.softmax(logits, -1), 1).view(1, -1)
        return action, (), {}


# Policies: flat-observation envs take random/lean/mlp/mlp-0.5m/gru, pixel envs random/conv (_FITS).
POLICIES = {
    "lean": LeanMLP,
    "random": lambda n_obs, n_act: RandomActor(n_act),
    "mlp": lambda n_obs, n_act: CategoricalMLP(n_obs, n_act, (64, 64)),
    "mlp-0.5m": lambda n_obs, n_act: CategoricalMLP(n_obs, n_act, (700, 700)),
    "gru": lambda n_obs, n_act: CategoricalGRU(n_obs, n_act, 64),
    "conv": lambda n_obs, n_act: AtariConv(n_act),
}
_FITS = {
    "random": (False, True),
    "lean": (False,),
    "mlp": (False,),
    "mlp-0.5m": (False,),
    "gru": (False,),
    "conv": (True,),
}  # pixels?


def make_actor(env: Env, policy: str) -> rollout.Actor:
    probe = env.factory()
    try:
        n_obs = int(np.prod(getattr(probe, "single_observation_space", probe.observation_space).shape))
        n_act = int(getattr(probe, "single_action_space", probe.action_space).n)
    finally:
        probe.close()
    torch.manual_seed(0)
    return POLICIES[policy](n_obs, n_act)


# --------------------------------------------------------------------------------- collectors
@dataclass(frozen=True)
class Config:
    env: str
    policy: str
    collector: str
    n_envs: int  # per actor
    n_actors: int
    T: int = T_DEFAULT

    @property
    def total(self) -> int:
        return self.n_envs * self.n_actors

    @property
    def label(self) -> str:
        if self.collector in POOL:
            return f"{self.collector} {self.n_actors}x{self.n_envs}"
        return f"{self.collector} {self.total}"


POOL = ("single", "multi", "torchrl-multi", "ceiling", "distributed")  # run n_actors workers of n_envs envs
IN_PROCESS = ("hand", "lean", "gym-sync", "gym-async", "same", "torchrl-sync", "envpool")
COLLECTORS = IN_PROCESS[:5] + POOL[:2] + ("distributed", "ceiling", "torchrl-sync", "torchrl-multi", "envpool")


class _Recorder:
    """Preallocated time-major buffers a careful hand loop fills: ``(1+T, B, ...)``."""

    def __init__(self, actor: rollout.Actor, space: gym.Space, B: int, T: int):
        self.actor, self.T = actor, T
        self.obs = torch.zeros((T + 1, B, *space.shape), dtype=torch.from_numpy(np.zeros(0, space.dtype)).dtype)
        self.act = torch.zeros((T + 1, B), dtype=torch.int64)
        self.rew = torch.zeros((T + 1, B))
        self.fin = torch.ones((T + 1, B), dtype=torch.bool)
        self.stepno = torch.zeros((T + 1, B), dtype=torch.int64)
        self.obs_np, self.act_np, self.rew_np, self.fin_np = (
            x.numpy() for x in (self.obs, self.act, self.rew, self.fin)
        )
        self.info: Optional[List[torch.Tensor]] = None
        self.hx: Any = None

    def act_row(self, t: int) -> np.ndarray:
        """The actor's reaction to row ``t`` (already filled): records its outputs, returns ``a_t``."""
        s = slice(t, t + 1)
        a, hx, info = self.actor.step(
            self.stepno[s], self.obs[s], self.act[s], self.rew[s], self.fin[s], hx=self.hx, virtual=False
        )
        leaves = optree.tree_leaves(info)
        if self.info is None:
            self.recurrent = bool(optree.tree_leaves(hx))
            self.info = [torch.zeros((self.T + 1, *x.shape[1:]), dtype=x.dtype) for x in leaves]
        for dst, src in zip(self.info, leaves):
            dst[s] = src
        self.act[t + 1 : t + 2] = a
        self.hx = hx
        return self.act_np[t + 1]

    def reset_hx(self, done: np.ndarray) -> None:
        if self.recurrent and done.any():
            self.hx = self.actor.reset(self.hx, torch.from_numpy(np.flatnonzero(done)))


def _hand(env: Env, actor: rollout.Actor, B: int, T: int) -> Iterator[int]:
    """A list of envs stepped in a for loop (or one batched env), the actor between steps."""
    if env.batched is not None:
        yield from _vector_loop(env.batched(B), actor, B, T, single_space=True)
        return
    envs = [env.factory() for _ in range(B)]
    try:
        rec = _Recorder(actor, envs[0].observation_space, B, T)
        for j, e in enumerate(envs):
            rec.obs_np[0, j] = e.reset(seed=j)[0]
        done = np.zeros(B, dtype=bool)
        with torch.no_grad():
            while True:
                for t in range(T):
                    actions = rec.act_row(t)
                    obs, rew, fin = rec.obs_np[t + 1], rec.rew_np[t + 1], rec.fin_np[t + 1]
                    for j, e in enumerate(envs):
                        o, r, term, trunc, _ = e.step(actions[j])
                        if term or trunc:
                            o, _ = e.reset()
                        obs[j], rew[j], done[j] = o, r, term or trunc
                    fin[:] = done
                    rec.reset_hx(done)
                rec.obs_np[0], rec.fin_np[0] = rec.obs_np[T], rec.fin_np[T]
                yield B * T
    finally:
        for e in envs:
            e.close()


def _lean_buffers(space: gym.Space, B: int, T: int) -> tuple:
    """The lean loops' records ``(1+T, B, ...)``: the obs and action tensors, and numpy views of
    obs, action, reward, terminated and truncated."""
    obs = torch.zeros((T + 1, B, *space.shape), dtype=torch.from_numpy(np.zeros(0, space.dtype)).dtype)
    act = torch.zeros((T + 1, B), dtype=torch.int64)
    rew = torch.zeros((T + 1, B))
    term, trunc = torch.zeros((T + 1, B), dtype=torch.bool), torch.zeros((T + 1, B), dtype=torch.bool)
    return obs, act, tuple(x.numpy() for x in (obs, act, rew, term, trunc))


def _lean(env: Env, actor: "LeanMLP", B: int, T: int) -> Iterator[int]:
    """The leanest loop a user writes: ``actor.net`` called directly on a ``(B, n_obs)`` row, the
    action sampled, the envs stepped in a for loop (or one batched env stepped once); records obs,
    action, reward, terminated, truncated."""
    if env.batched is not None:
        yield from _lean_batched(env.batched(B), actor, B, T)
        return
    envs = [env.factory() for _ in range(B)]
    space = envs[0].observation_space
    try:
        obs, act, (obs_np, act_np, rew_np, term_np, trunc_np) = _lean_buffers(space, B, T)
        for j, e in enumerate(envs):
            obs_np[0, j] = e.reset(seed=j)[0]
        net = actor.net
        while True:
            for t in range(T):
                with torch.inference_mode():
                    probs = torch.softmax(net(obs[t].float()), -1)
                    act[t + 1] = torch.multinomial(probs, 1).view(B)
                a, o_row, r_row, te_row, tr_row = (
                    act_np[t + 1],
                    obs_np[t + 1],
                    rew_np[t + 1],
                    term_np[t + 1],
                    trunc_np[t + 1],
                )
                for j, e in enumerate(envs):
                    o, r, te, tr, _ = e.step(a[j])
                    if te or tr:
                        o, _ = e.reset()
                    o_row[j], r_row[j], te_row[j], tr_row[j] = o, r, te, tr
            obs_np[0] = obs_np[T]
            yield B * T
    finally:
        for e in envs:
            e.close()


def _lean_batched(venv: Any, actor: "LeanMLP", B: int, T: int) -> Iterator[int]:
    """:func:`_lean` over one batched env (which resets its ended envs itself)."""
    space = venv.single_observation_space
    try:
        obs, act, (obs_np, act_np, rew_np, term_np, trunc_np) = _lean_buffers(space, B, T)
        obs_np[0] = venv.reset(seed=0)[0]
        net = actor.net
        while True:
            for t in range(T):
                with torch.inference_mode():
                    probs = torch.softmax(net(obs[t].float()), -1)
                    act[t + 1] = torch.multinomial(probs, 1).view(B)
                o, r, te, tr, _ = venv.step(act_np[t + 1])
                obs_np[t + 1], rew_np[t + 1], term_np[t + 1], trunc_np[t + 1] = o, r, te, tr
            obs_np[0] = obs_np[T]
            yield B * T
    finally:
        venv.close()


def _ceiling_worker(cfg_json: str, seconds: float, warmup: float, conn: Any) -> None:
    torch.set_num_threads(1)
    cfg = Config(**json.loads(cfg_json))
    conn.send(measure(cfg, seconds, warmup))


def _ceiling(cfg: Config, seconds: float, warmup: float) -> float:
    """Env-steps/s of ``n_actors`` lean loops of ``n_envs`` envs, each in its own (forked) process,
    measured over the same window: the ceiling of a pool of workers without any IPC."""
    import multiprocessing

    one = json.dumps({**cfg.__dict__, "collector": "lean", "n_actors": 1})
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(cfg.n_actors)]
    procs = [ctx.Process(target=_ceiling_worker, args=(one, seconds, warmup, w), daemon=True) for _, w in pipes]
    for p in procs:
        p.start()
    try:
        return sum(r.recv() for r, _ in pipes)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def _vector_loop(venv: Any, actor: rollout.Actor, B: int, T: int, *, single_space: bool = False) -> Iterator[int]:
    """A gymnasium-style vector env stepped with the actor, recorded like :func:`_hand`."""
    try:
        space = venv.single_observation_space if hasattr(venv, "single_observation_space") else venv.observation_space
        rec = _Recorder(actor, space, B, T)
        rec.obs_np[0] = venv.reset(seed=0)[0]
        with torch.no_grad():
            while True:
                for t in range(T):
                    actions = rec.act_row(t)
                    o, r, term, trunc, _ = venv.step(actions)
                    done = term | trunc
                    rec.obs_np[t + 1], rec.rew_np[t + 1], rec.fin_np[t + 1] = o, r, done
                    rec.reset_hx(done)
                rec.obs_np[0], rec.fin_np[0] = rec.obs_np[T], rec.fin_np[T]
                yield B * T
    finally:
        venv.close()


def _ours(kind: str) -> Callable[[Env, rollout.Actor, Config], Iterator[int]]:
    def run(env: Env, actor: rollout.Actor, cfg: Config) -> Iterator[int]:
        # A batched env is one object: a worker's factory builds one of n_envs envs.
        factory = env.factory if env.batched is None else functools.partial(env.batched, cfg.n_envs)
        if kind == "same":
            source = env.batched(cfg.total) if env.batched is not None else env.factory
            feed = same.rollout(source, actor, cfg.T, n_envs=None if env.batched else cfg.total, seed=0)
        elif kind == "single":
            feed = single.rollout(factory, actor, cfg.T, cfg.n_envs, seed=0)
        elif kind == "distributed":
            from rollout import distributed

            _ray_once(cfg.n_actors)
            feed = distributed.rollout(factory, actor, cfg.T, cfg.n_actors, cfg.n_envs, cfg.n_actors, seed=0)
        else:
            feed = multi.rollout(factory, actor, cfg.T, cfg.n_actors, cfg.n_envs, cfg.n_actors, seed=0)
        with feed:
            for fragment in feed:
                yield fragment.state.fin.shape[1] * cfg.T

    return run


def _ray_once(n_actors: int) -> None:
    """One local Ray instance for the whole benchmark run (stopped at exit): its daemons run, idle
    or not, through every round, rather than starting and stopping next to other collectors'."""
    import atexit

    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=max(os.cpu_count() or 1, n_actors),
            object_store_memory=200 * 1024**2,  # fragments of a few MB at most; fits a small /dev/shm
            include_dashboard=False,
            log_to_driver=False,
        )
        atexit.register(ray.shutdown)


def _skip(cfg: Config, env: Env) -> Optional[str]:
    """Why this configuration cannot run here, or None."""
    reason = env.skip_reason()
    if reason:
        return reason
    if env.pixels not in _FITS[cfg.policy]:
        return f"policy {cfg.policy} does not fit {'pixel' if env.pixels else 'flat'} observations"
    c = cfg.collector
    if c == "single" and cfg.n_actors != 1:
        return "single.rollout has one worker"
    if c == "distributed" and importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install -e '.[ray]')"
    if env.batched is not None and c in ("gym-sync", "gym-async", "torchrl-sync", "torchrl-multi"):
        return "a numpy-batched env is one object: not split into a vector env of single envs"
    if c in ("lean", "ceiling") and (cfg.policy != "lean" or env.pixels):
        return f"the {c} loop calls the lean policy's network on flat-observation envs"
    if c.startswith("torchrl") or c == "envpool":
        from . import external

        reason = external.torchrl_skip_reason() if c.startswith("torchrl") else external.envpool_skip_reason()
        if reason:
            return reason
        if env.gym_id is None or env.pixels:
            return f"the {c} baseline is wired for registered flat-observation ids (the MLP), not {env.name}"
        if cfg.policy != "mlp":
            return f"the {c} baseline uses the tiny MLP only"
    return None


def measure(cfg: Config, seconds: float, warmup: float) -> float:
    """Env-steps/s of one configuration over at least ``seconds`` after ``warmup`` seconds."""
    env = ENVS[cfg.env]
    c = cfg.collector
    if c == "ceiling":
        return _ceiling(cfg, seconds, warmup)
    if c.startswith("torchrl") or c == "envpool":
        from . import external

        if c == "envpool":
            return external.envpool_throughput(env.gym_id, cfg.total, cfg.T, seconds, warmup)
        kind = "sync" if c == "torchrl-sync" else "multisync"
        workers, per = (1, cfg.total) if kind == "sync" else (cfg.n_actors, cfg.n_envs)
        return external.torchrl_throughput(kind, env.gym_id, workers, per, cfg.T, seconds, warmup)
    source = _source(cfg)
    try:
        start = time.perf_counter()
        next(source)
        while time.perf_counter() - start < warmup:
            next(source)
        steps, start = 0, time.perf_counter()
        while True:
            steps += next(source)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return steps / elapsed
    finally:
        source.close()


def _source(cfg: Config) -> Iterator[int]:
    """A generator collecting one batch per ``next()`` (yields its env steps), built lazily."""
    env, c = ENVS[cfg.env], cfg.collector
    actor = make_actor(env, cfg.policy)
    if c == "hand":
        return _hand(env, actor, cfg.total, cfg.T)
    if c == "lean":
        return _lean(env, actor, cfg.total, cfg.T)
    if c == "gym-sync":
        return _vector_loop(gym.vector.SyncVectorEnv([env.factory] * cfg.total), actor, cfg.total, cfg.T)
    if c == "gym-async":
        return _vector_loop(
            gym.vector.AsyncVectorEnv([env.factory] * cfg.total, shared_memory=True), actor, cfg.total, cfg.T
        )
    return _ours(c)(env, actor, cfg)


PAIRED = ("hand", "lean", "gym-sync", "same")  # in-process collectors: suspended ones use no CPU
MLP_PAIRED = ("hand", "gym-sync", "same")


def measure_paired(cfgs: List[Config], seconds: float, warmup: float, slice_s: float = 0.2) -> List[float]:
    """Env-steps/s of in-process collectors alive together, run in turns of ``slice_s`` seconds
    until each has run ``seconds``: a slow patch of a noisy machine hits all of them alike."""
    if any(cfg.collector not in PAIRED for cfg in cfgs):
        raise ValueError(
            f"paired measurements take the in-process collectors {PAIRED}, found {[c.collector for c in cfgs]}"
        )
    sources = [_source(cfg) for cfg in cfgs]
    try:
        for source in sources:
            start = time.perf_counter()
            next(source)
            while time.perf_counter() - start < warmup:
                next(source)
        steps, spent = [0] * len(cfgs), [0.0] * len(cfgs)
        while min(spent) < seconds:
            for i, source in enumerate(sources):
                start = time.perf_counter()
                while time.perf_counter() - start < slice_s:
                    steps[i] += next(source)
                spent[i] += time.perf_counter() - start
        return [n / t for n, t in zip(steps, spent)]
    finally:
        for source in sources:
            source.close()


def measure_isolated_paired(cfgs: List[Config], seconds: float, warmup: float) -> List[float]:
    """:func:`measure_paired` in a fresh interpreter."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--measure-paired",
        json.dumps([c.__dict__ for c in cfgs]),
        "--seconds",
        repr(seconds),
        "--warmup",
        repr(warmup),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=len(cfgs) * (seconds + warmup) + 300)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {cfgs} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------- the run
@dataclass
class Group:
    """Configurations compared with each other (interleaved within the group)."""

    name: str
    configs: List[Config]
    paired: bool = False  # measure each load's collectors together (measure_paired)
    results: Dict[Config, List[float]] = field(default_factory=dict)
    skipped: Dict[Config, str] = field(default_factory=dict)


def cross(
    name: str,
    envs: List[str],
    policies: List[str],
    collectors: List[str],
    n_envs: List[int],
    n_actors: List[int],
    T: int,
) -> Group:
    """Every combination; in-process collectors are de-duplicated on their total envs."""
    configs, seen = [], set()
    for e in envs:
        for p in policies:
            if ENVS[e].pixels not in _FITS[p]:
                continue
            for a in n_actors:
                for n in n_envs:
                    for c in collectors:
                        cfg = Config(e, p, c, n, a, T) if c in POOL else Config(e, p, c, n * a, 1, T)
                        key = (e, p, c, cfg.n_envs, cfg.n_actors)
                        if key not in seen:
                            seen.add(key)
                            configs.append(cfg)
    return Group(name, configs)


def suite(quick: bool, T: int) -> List[Group]:
    """The recorded suite (``--quick``: a small slice of it, for CI)."""
    if quick:
        # Every measurement is a fresh interpreter (importing torch is most of its cost, multi's
        # workers import it again): 7 per round, about a minute on 2 cores. The in-process
        # collectors on 4 envs run in the paired group only, multi with 2 workers only.
        return [
            cross("cartpole", ["cartpole"], ["mlp"], ["hand", "gym-sync", "same", "multi"], [4], [2], 32),
            cross("pixels", ["pixels"], ["random"], ["hand", "same"], [2], [1], 16),
            Group("cartpole-paired", [Config("cartpole", "mlp", k, 4, 1, T=32) for k in MLP_PAIRED], paired=True),
        ]
    c = lambda *args: Config(*args, T=T)  # noqa: E731
    # Compared configurations sit next to each other in a round: less drift between them.
    workers = Group(
        "cartpole-mlp-workers",
        [
            cfg
            for n in (8, 64)
            for cfg in (
                c("cartpole", "mlp", "same", n, 1),
                c("cartpole", "mlp", "multi", n, 2),
                c("cartpole", "mlp", "single", n, 1),
                c("cartpole", "mlp", "torchrl-multi", n, 2),
                c("cartpole", "mlp", "gym-async", 2 * n, 1),
                c("cartpole", "mlp", "same", 2 * n, 1),
            )
        ],
    )
    return [
        cross(
            "cartpole-mlp",
            ["cartpole"],
            ["mlp"],
            ["hand", "gym-sync", "same", "torchrl-sync", "envpool"],
            [1, 8, 64],
            [1],
            T,
        ),
        Group(
            "cartpole-mlp-paired", [c("cartpole", "mlp", k, n, 1) for n in (1, 8, 64) for k in MLP_PAIRED], paired=True
        ),
        workers,
        cross("cartpole-batched", ["cartpole-batched"], ["mlp"], ["hand", "same"], [8, 64], [1], T),
        # Fast vectorised envs: one numpy-batched CartPole of B envs, the lean actor (the
        # collector's own cost is what shows), same against the lean loop in turns.
        Group(
            "large-batch",
            [c("cartpole-batched", "lean", k, n, 1) for n in LARGE_BATCHES for k in ("lean", "same")],
            paired=True,
        ),
        Group(
            "large-batch-workers",
            [
                c("cartpole-batched", "lean", "lean", 1024, 1),
                c("cartpole-batched", "lean", "same", 1024, 1),
                c("cartpole-batched", "lean", "single", 1024, 1),
                c("cartpole-batched", "lean", "multi", 1024, 2),
                c("cartpole-batched", "lean", "ceiling", 1024, 2),
            ],
        ),
        Group(
            "policies",
            [
                c("cartpole", p, k, 8, n)
                for p in ("random", "mlp-0.5m", "gru")
                for k, n in (("hand", 1), ("same", 1), ("multi", 2))
            ],
        ),
        Group(
            "busy",
            [c(e, "mlp", k, 8, n) for e in ("busy50", "busy500") for k, n in (("same", 1), ("multi", 1), ("multi", 2))],
        ),
        Group(
            "pixels",
            [c("pixels", "random", k, 8, n) for k, n in (("hand", 1), ("gym-sync", 1), ("same", 1), ("multi", 2))],
        ),
        Group("pong", [Config("pong", "conv", k, 8, n, T=32) for k, n in (("same", 1), ("multi", 1), ("multi", 2))]),
    ]


LARGE_BATCHES = (256, 512, 1024, 4096)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_isolated(cfg: Config, seconds: float, warmup: float) -> float:
    """:func:`measure` in a fresh interpreter (a child of this one): no measurement inherits
    another's threads, children, allocator state or imports (TorchRL changes process globals)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--measure-one",
        json.dumps(cfg.__dict__),
        "--seconds",
        repr(seconds),
        "--warmup",
        repr(warmup),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + warmup + 300)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {cfg} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    return float(lines[-1])


def run_group(group: Group, repeats: int, seconds: float, warmup: float, log: Callable[[str], None]) -> None:
    active = []
    for cfg in group.configs:
        reason = _skip(cfg, ENVS[cfg.env])
        if reason:
            group.skipped[cfg] = reason
            log(f"  skip {cfg.env}/{cfg.policy} {cfg.label}: {reason}")
        else:
            active.append(cfg)
            group.results[cfg] = []
    loads: Dict[tuple, List[Config]] = {}
    for cfg in active:
        loads.setdefault((cfg.env, cfg.policy, cfg.total) if group.paired else cfg, []).append(cfg)
    for r in range(repeats):
        for cfgs in loads.values():
            values = (
                measure_isolated_paired(cfgs, seconds, warmup)
                if group.paired
                else [measure_isolated(cfgs[0], seconds, warmup)]
            )
            for cfg, value in zip(cfgs, values):
                group.results[cfg].append(value)
                log(f"  [{r + 1}/{repeats}] {cfg.env}/{cfg.policy} {cfg.label:<22} {value:>10,.0f} steps/s")


def _summary(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


BASELINES = ("hand", "lean", "ceiling", "gym-sync", "gym-async", "same", "torchrl-sync", "torchrl-multi", "envpool")
OWN_BASELINES = {"distributed": ("multi",)}  # baselines for one collector only


def ratios(group: Group) -> Dict[Config, Dict[str, Dict[str, float]]]:
    """Per configuration, its ratio to each baseline with the same env, policy and total envs,
    round by round (and, for pool collectors, to one actor of the same size: ``scaling``)."""
    out: Dict[Config, Dict[str, Dict[str, float]]] = {}
    for cfg, values in group.results.items():
        entry = {}
        for other, base in group.results.items():
            same_load = (other.env, other.policy, other.total) == (cfg.env, cfg.policy, cfg.total)
            baseline = other.collector in BASELINES or other.collector in OWN_BASELINES.get(cfg.collector, ())
            if other is not cfg and baseline and same_load and other.collector != cfg.collector:
                entry[other.collector] = _summary([a / b for a, b in zip(values, base)])
            if (
                cfg.collector in POOL
                and cfg.n_actors > 1
                and other.collector in BASELINES
                and other.collector in IN_PROCESS
                and (other.env, other.policy, other.total) == (cfg.env, cfg.policy, cfg.n_envs)
            ):
                entry[f"{other.collector} per worker"] = _summary([a / b for a, b in zip(values, base)])
            if (
                cfg.collector in POOL
                and cfg.n_actors > 1
                and other.collector == cfg.collector
                and other.n_actors == 1
                and (other.env, other.policy, other.n_envs) == (cfg.env, cfg.policy, cfg.n_envs)
            ):
                entry["scaling"] = _summary([a / b for a, b in zip(values, base)])
        out[cfg] = entry
    return out


# ----------------------------------------------------------------------------- environment
def machine() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in ("torch", "numpy", "gymnasium", "optree", "torchrl", "tensordict", "envpool", "ale-py"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["rollout (git)"] = (
            subprocess.run(
                ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["rollout (git)"] = None
    return out


def plot(groups: List[Group], path: str) -> Optional[str]:
    """One panel per group: median env-steps/s (dots, log scale) with min-max bars per collector and load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    groups = [g for g in groups if g.results]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.6 * len(groups)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        cfgs = list(group.results)
        loads = sorted({(c.env, c.policy, c.total) for c in cfgs}, key=lambda x: (x[0], x[1], x[2]))
        names = list(dict.fromkeys(c.collector + (f" x{c.n_actors}" if c.collector in POOL else "") for c in cfgs))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            xs, ys, lo, hi = [], [], [], []
            for k, load in enumerate(loads):
                for c in cfgs:
                    if (c.env, c.policy, c.total) == load and c.collector + (
                        f" x{c.n_actors}" if c.collector in POOL else ""
                    ) == name:
                        s = _summary(group.results[c])
                        xs.append(k + (i - (len(names) - 1) / 2) * width)
                        ys.append(s["median"])
                        lo.append(s["median"] - s["min"])
                        hi.append(s["max"] - s["median"])
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", label=name, capsize=3, markersize=5)
        ax.set_xticks(range(len(loads)), [f"{e}/{p}\n{n} envs" for e, p, n in loads], fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.set_ylabel("env steps / s")
        ax.set_title(group.name)
        ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def to_json(groups: List[Group]) -> List[Dict[str, Any]]:
    out = []
    for group in groups:
        r = ratios(group)
        out.append(
            {
                "name": group.name,
                "paired": group.paired,
                "results": [
                    {
                        **cfg.__dict__,
                        "total_envs": cfg.total,
                        "label": cfg.label,
                        "samples": values,
                        **_summary(values),
                        "ratios": r[cfg],
                    }
                    for cfg, values in group.results.items()
                ],
                "skipped": [{**cfg.__dict__, "label": cfg.label, "reason": why} for cfg, why in group.skipped.items()],
            }
        )
    return out


# The issues' throughput targets: (name, env, policy, collector, n_envs, n_actors, ratio key, limit).
TARGETS = [
    *((f"same >= 0.9x hand, {n} envs", "cartpole", "mlp", "same", n, 1, "hand", 0.9) for n in (1, 8, 64)),
    *((f"same >= 1.0x gym-sync, {n} envs", "cartpole", "mlp", "same", n, 1, "gym-sync", 1.0) for n in (1, 8, 64)),
    *(
        (f"multi 2x{n} >= 1.75x same with {n} envs", "cartpole", "mlp", "multi", n, 2, "same per worker", 1.75)
        for n in (8, 64)
    ),
    *(
        (f"multi 2x{n} >= 10x gym-async, {2 * n} envs", "cartpole", "mlp", "multi", n, 2, "gym-async", 10.0)
        for n in (8, 64)
    ),
    *(
        (f"multi 2x{n} >= 15x torchrl-multi 2x{n}", "cartpole", "mlp", "multi", n, 2, "torchrl-multi", 15.0)
        for n in (8, 64)
    ),
    ("busy500: multi 2x8 >= 1.8x multi 1x8", "busy500", "mlp", "multi", 8, 2, "scaling", 1.8),
    *(
        (f"batched {n}: same >= 0.95x lean", "cartpole-batched", "lean", "same", n, 1, "lean", 0.95)
        for n in (512, 1024, 4096)
    ),
    (
        "batched: multi 2x1024 >= 1.8x lean 1024 (0.9x two lean loops)",
        "cartpole-batched",
        "lean",
        "multi",
        1024,
        2,
        "lean per worker",
        1.8,
    ),
]


def targets(groups: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Check :data:`TARGETS` on the JSON groups: ``{name: {value, limit, met}}`` (median ratios)."""
    out: Dict[str, Dict[str, Any]] = {}
    for name, env, policy, collector, n_envs, n_actors, key, limit in TARGETS:
        for group in sorted(groups, key=lambda g: bool(g.get("paired"))):  # paired measurements win
            for r in group["results"]:
                if (r["env"], r["policy"], r["collector"], r["n_envs"], r["n_actors"]) == (
                    env,
                    policy,
                    collector,
                    n_envs,
                    n_actors,
                ) and key in r["ratios"]:
                    value = r["ratios"][key]["median"]
                    out[name] = {
                        "value": value,
                        "min": r["ratios"][key]["min"],
                        "max": r["ratios"][key]["max"],
                        "limit": limit,
                        "met": value >= limit,
                        "group": group.get("name"),
                    }
    return out


def print_report(report: Dict[str, Any]) -> None:
    """The tables, the targets and (when measured) the lifecycle results of a saved report."""
    m, settings = report["machine"], report["settings"]
    print(f"command: {report['command']}")
    print(
        f"machine: {m['cores']} cores, {m['cpu']}; load average before {m['loadavg'][0]:.2f}, after {m['loadavg_after'][0]:.2f}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    for group in report["groups"]:
        print(
            f"\n== {group['name']} (env-steps/s, {settings['repeats']} interleaved rounds of >= {settings['seconds']:g} s)"
        )
        print(f"{'env/policy':<20} {'collector':<22} {'median':>10} {'min-max':>21}  ratios (median [min-max])")
        for r in group["results"]:
            rs = ", ".join(f"/{k} {v['median']:.2f} [{v['min']:.2f}-{v['max']:.2f}]" for k, v in r["ratios"].items())
            print(
                f"{r['env'] + '/' + r['policy']:<20} {r['label']:<22} {r['median']:>10,.0f} {r['min']:>10,.0f}-{r['max']:<10,.0f}  {rs}"
            )
        for r in group["skipped"]:
            print(f"{r['env'] + '/' + r['policy']:<20} {r['label']:<22} {'skipped':>10}  {r['reason']}")
    checks = targets(report["groups"])
    if checks:
        print("\n== targets (median ratio [min-max over rounds])")
        for name, c in checks.items():
            print(f"{'met   ' if c['met'] else 'MISSED'} {name:<42} {c['value']:.2f} [{c['min']:.2f}-{c['max']:.2f}]")
    if "lifecycle" in report:
        from . import lifecycle

        print()
        print(lifecycle.report(report["lifecycle"]))


def markdown(report: Dict[str, Any]) -> str:
    """The targets and the result tables of a saved run as Markdown (for benchmarks/README.md)."""
    mmm = lambda v, fmt: f"{v['median']:{fmt}} [{v['min']:{fmt}}-{v['max']:{fmt}}]"  # noqa: E731
    lines = ["| target | median ratio [min-max] | met | measured in |", "|---|---:|:-:|---|"]
    lines += [
        f"| {name} | {c['value']:.2f} [{c['min']:.2f}-{c['max']:.2f}] | {'yes' if c['met'] else '**no**'} | {c.get('group')} |"
        for name, c in targets(report["groups"]).items()
    ]
    for group in report["groups"]:
        lines += [
            "",
            f"**{group['name']}**",
            "",
            "| env / policy | collector | env-steps/s, median [min-max] | ratios, median [min-max] |",
            "|---|---|---:|---|",
        ]
        for r in group["results"]:
            # the baselines' own ratios are in the JSON
            ours = r["collector"] in ("same", "single", "multi", "distributed")
            rs = "; ".join(f"/{k} {mmm(v, '.2f')}" for k, v in r["ratios"].items()) if ours else ""
            lines.append(
                f"| {r['env']} / {r['policy']} | {'**' + r['label'] + '**' if ours else r['label']} | {mmm(r, ',.0f')} | {rs} |"
            )
        lines += [f"| {r['env']} / {r['policy']} | {r['label']} | skipped | {r['reason']} |" for r in group["skipped"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--env", nargs="+", choices=sorted(ENVS), help="envs (default: the recorded suite)")
    parser.add_argument("--policy", nargs="+", choices=sorted(POLICIES), default=["mlp"])
    parser.add_argument("--collectors", nargs="+", choices=COLLECTORS, default=list(COLLECTORS))
    parser.add_argument("--n-envs", nargs="+", type=int, default=[1, 8, 64], help="envs per actor")
    parser.add_argument("--n-actors", nargs="+", type=int, default=[1, 2], help="worker processes of pool collectors")
    parser.add_argument("--T", type=int, default=T_DEFAULT, help="steps per fragment")
    parser.add_argument("--seconds", type=float, default=3.0, help="steady-state seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (startup included)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--groups", nargs="+", metavar="NAME", help="run only these groups of the recorded suite")
    parser.add_argument("--quick", action="store_true", help="a small, short run (a smoke test, not a measurement)")
    parser.add_argument(
        "--lifecycle", action="store_true", help="also measure startup, shutdown, sync, lag, idle, memory"
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for throughput.json and throughput.png")
    parser.add_argument("--measure-one", metavar="CONFIG", help=argparse.SUPPRESS)  # a child of measure_isolated
    parser.add_argument("--measure-paired", metavar="CONFIGS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--paired", action="store_true", help="with --env: measure each load's in-process collectors together"
    )
    parser.add_argument("--report", metavar="JSON", help="print the tables and targets of a saved run (no measuring)")
    parser.add_argument("--markdown", action="store_true", help="with --report: as Markdown tables")
    args = parser.parse_args(argv)
    if args.measure_one:
        torch.set_num_threads(1)
        print(measure(Config(**json.loads(args.measure_one)), args.seconds, args.warmup), flush=True)
        return {}
    if args.measure_paired:
        torch.set_num_threads(1)
        print(
            json.dumps(
                measure_paired([Config(**c) for c in json.loads(args.measure_paired)], args.seconds, args.warmup)
            ),
            flush=True,
        )
        return {}
    if args.report:
        with open(args.report) as f:
            report = json.load(f)
        print(markdown(report)) if args.markdown else print_report(report)
        return report
    if args.quick:
        args.seconds, args.warmup, args.repeats = 0.3, 0.1, 2
    torch.set_num_threads(1)
    log = lambda line: print(line, flush=True)  # noqa: E731

    report: Dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.throughput", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": versions(),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "repeats": args.repeats, "torch_threads": 1},
    }
    if args.env:
        groups = [cross("custom", args.env, args.policy, args.collectors, args.n_envs, args.n_actors, args.T)]
        groups[0].paired = args.paired
    else:
        groups = suite(args.quick, args.T)
        if args.groups:
            unknown = set(args.groups) - {g.name for g in groups}
            if unknown:
                parser.error(f"unknown groups {sorted(unknown)}; the suite has {[g.name for g in groups]}")
            groups = [g for g in groups if g.name in args.groups]
    started = time.perf_counter()
    for group in groups:
        log(f"== {group.name}")
        run_group(group, args.repeats, args.seconds, args.warmup, log)
    if args.lifecycle:
        from . import lifecycle

        report["lifecycle"] = lifecycle.run_all(args.quick)
    report["machine"]["loadavg_after"] = list(os.getloadavg())
    report["wall_seconds"] = time.perf_counter() - started
    report["groups"] = to_json(groups)
    report["targets"] = targets(report["groups"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "throughput.json"), "w") as f:
        json.dump(report, f, indent=1)
    why = plot(groups, os.path.join(args.out, "throughput.png"))
    print()
    print_report(report)
    print(
        f"\nwrote {os.path.join(args.out, 'throughput.json')}"
        + (f"; no plot: {why}" if why else f" and {os.path.join(args.out, 'throughput.png')}")
    )
    return report


if __name__ == "__main__":
    main()
