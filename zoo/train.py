"""The training loop of ``python -m zoo train``: the library's advertised way of use.

Everything here is public API: a collector from :mod:`rollout` yields batches, a learner from
:mod:`zoo.learning` (built on the losses of :mod:`learners`) takes its gradient steps, and
:func:`rollout.evaluate` measures the deterministic policy on separate envs with fixed seeds.
Copy :func:`train` into a script of your own and it does the same thing.

Counting: every budget and frequency is in total env steps; a batch counts its real transitions
(:func:`learners.returns.valid_mask`), so the frozen rows of sticky envs are not steps. The lag of
a batch is the number of updates between the weights it was collected with and the learner's
(``fragment.version``), 0 for ``same``.
"""

import dataclasses
import functools
import math
import time
from typing import Any, Dict, List, Optional

import gymnasium
import numpy as np
import torch
import tqdm

import rollout
from learners import returns
from rollout import multi, same, single
from zoo import learning
from zoo.run import Run, rng_state, set_rng_state

__all__ = ["make_env", "make_collector", "count_steps", "evaluate", "train", "Counters", "EVAL_SEED"]

EVAL_SEED = 1_000_003  # evaluation envs are seeded with EVAL_SEED + the run's seed: the same episodes every time


def make_env(env_id: str, seed: Optional[int] = None, render_mode: Optional[str] = None) -> gymnasium.Env:
    """``gymnasium.make(env_id)``; ``ALE/...`` ids get the standard Atari preprocessing (:mod:`zoo.atari`)."""
    if env_id.startswith("ALE/"):
        from zoo.atari import make_atari

        return make_atari(env_id, seed, render_mode=render_mode)
    import zoo.envs  # noqa: F401 - registers the zoo's envs (also in spawned workers)

    env = gymnasium.make(env_id, render_mode=render_mode)
    if seed is not None:
        env.reset(seed=seed)
    return env


def count_steps(batch: rollout.Fragment) -> int:
    """The env steps a batch holds: its real transitions (the frozen rows of sticky envs are not steps)."""
    return int(returns.valid_mask(batch).sum())


@dataclasses.dataclass
class Counters:
    """Where a run stands; saved in every checkpoint."""

    env_steps: int = 0
    updates: int = 0  # batches learned from
    wall_time: float = 0.0  # seconds of training, summed over resumed sessions
    next_eval: int = 0
    next_log: int = 0
    next_checkpoint: int = 0
    best_eval: float = -math.inf
    last_eval: float = math.nan
    sessions: int = 0  # 1 + the number of resumes


def make_collector(config: Dict[str, Any], actor: rollout.Actor, seed: np.random.SeedSequence) -> rollout.feed.Feed:
    """The collector a configuration asks for: ``same``, ``single`` or ``multi``."""
    factory = functools.partial(make_env, config["env"])
    T, B, sticky = config["n_steps"], config["n_envs"], config.get("sticky", False)
    device = None if config["device"] == "cpu" else config["device"]
    if config["collector"] == "same":
        if config["env"].startswith("ALE/") and not sticky:
            from zoo.atari import make_atari_vector, native_vector_available

            if native_vector_available():  # ale-py's C++ vector env: 1.22x the collection speed (benchmarks/README.md)
                vector = functools.partial(make_atari_vector, config["env"], B)
                return same.rollout(vector, actor, T, n_envs=1, seed=seed, device=device)
        return same.rollout(factory, actor, T, n_envs=B, sticky=sticky, seed=seed, device=device)
    if config["collector"] == "single":
        return single.rollout(
            factory, actor, T, B, sticky=sticky, seed=seed, device=device, start_method=config["start_method"]
        )
    A = config["n_actors"]
    return multi.rollout(
        factory, actor, T, A, B // A, A, sticky=sticky, seed=seed, device=device, start_method=config["start_method"]
    )


class _Window:
    """Episodes, losses and lags since the last progress row."""

    def __init__(self):
        self.returns: List[float] = []
        self.lengths: List[int] = []
        self.infos: List[Dict[str, float]] = []
        self.lags: List[float] = []
        self.recent: List[float] = []  # the last 100 training returns, for the progress bar

    def add(self, batch: rollout.Fragment, info: Dict[str, float], *, lag: torch.Tensor) -> None:
        episodes = rollout.episodes(batch)
        self.returns += episodes.returns.tolist()
        self.lengths += episodes.lengths.tolist()
        self.recent = (self.recent + episodes.returns.tolist())[-100:]
        if info:
            self.infos.append(info)
        self.lags += lag.tolist()

    def row(self) -> Dict[str, Any]:
        r, n = self.returns, self.lengths
        row = {
            "episodes": len(r),
            "return_mean": np.mean(r) if r else math.nan,
            "return_min": min(r) if r else math.nan,
            "return_max": max(r) if r else math.nan,
            "length_mean": np.mean(n) if n else math.nan,
            "lag_mean": np.mean(self.lags) if self.lags else math.nan,
            "lag_max": max(self.lags, default=math.nan),
        }
        for key in sorted({key for info in self.infos for key in info}):
            values = [info[key] for info in self.infos if key in info]
            row[key] = float(np.mean(values))
        self.returns, self.lengths, self.infos, self.lags = [], [], [], []
        return row


def _next(mark: int, every: int, steps: int) -> int:
    """The first multiple of ``every`` past ``mark`` that is beyond ``steps``."""
    while mark <= steps:
        mark += every
    return mark


def evaluate(
    config: Dict[str, Any], actor: rollout.Actor, n_episodes: Optional[int] = None, seed: Optional[int] = None
):
    """Deterministic evaluation of ``actor`` on fresh envs seeded with ``EVAL_SEED + seed``."""
    n_episodes = n_episodes or config["eval_episodes"]
    seed = EVAL_SEED + (config["seed"] if seed is None else seed)
    make = functools.partial(make_env, config["env"])
    return rollout.evaluate(make, actor, n_episodes, n_envs=min(n_episodes, 5), seed=seed, deterministic=True)


def train(
    config: Dict[str, Any], run: Run, *, checkpoint: Optional[Dict[str, Any]] = None, progress: bool = True, echo=print
) -> Counters:
    """Train ``config['algo']`` on ``config['env']`` for ``config['steps']`` env steps into ``run``.

    ``checkpoint`` (a ``last.pt``) continues a run: models, optimisers, counters and generator
    states are restored and the envs start new episodes (env states are not checkpointed). Ctrl-C
    saves ``last.pt``, stops the collector and re-raises ``KeyboardInterrupt``.
    """
    torch.set_num_threads(1)  # small nets: more intra-op threads only fight the envs for the cores
    seed, total = config["seed"], config["steps"]
    torch.manual_seed(seed)
    probe = make_env(config["env"])
    learner = learning.build(config, probe.observation_space, probe.action_space)
    probe.close()
    counters = Counters()
    learner.to(config["device"])  # before loading: the optimisers' state goes where the parameters are
    if checkpoint is not None:
        learner.load_state_dict(checkpoint["learner"])  # saved on any device, loaded on the CPU first
        counters = Counters(**checkpoint["counters"])
        set_rng_state(checkpoint["rng"])
    counters.sessions += 1
    actor, window = learner.actor, _Window()
    eval_every, log_every = config["eval_every"] or total, config["log_every"]
    checkpoint_every = config["checkpoint_every"] or eval_every
    counters.next_eval = counters.next_eval or min(eval_every, total)
    counters.next_log = counters.next_log or log_every
    counters.next_checkpoint = counters.next_checkpoint or checkpoint_every

    def save(name: str) -> None:
        run.save(
            name,
            {
                "config": config,
                "learner": learner.state_dict(with_buffer=name == "last.pt"),
                "counters": dataclasses.asdict(counters),
                "rng": rng_state(),
            },
        )

    bar = tqdm.tqdm(total=total, initial=min(counters.env_steps, total), unit="step", disable=not progress)
    say = tqdm.tqdm.write if progress else echo
    started, steps_at_start, wall_at_start = time.perf_counter(), counters.env_steps, counters.wall_time

    def due(mark: int) -> bool:
        return counters.env_steps >= mark or counters.env_steps >= total

    def report(evaluate_now: bool) -> None:
        """A progress.csv row; with an evaluation, also best.pt, the curve and a line for the user."""
        speed = (counters.env_steps - steps_at_start) / max(1e-9, time.perf_counter() - started)
        row = {
            "env_steps": counters.env_steps,
            "updates": counters.updates,
            "wall_time": counters.wall_time,
            "steps_per_s": speed,
            "lr": learning.schedule(config, "lr", counters.env_steps / total),
        }
        row.update(window.row())
        if evaluate_now:
            result = evaluate(config, actor)
            counters.last_eval = float(result.returns.mean())
            row.update(eval_return=counters.last_eval, eval_return_std=float(result.returns.std(correction=0)))
            say(
                f"step {counters.env_steps:>9,}  eval {counters.last_eval:8.1f} ± {row['eval_return_std']:.1f}  "
                f"train {row['return_mean']:8.1f}  {speed:,.0f} steps/s  {counters.wall_time:6.1f} s"
            )
            if counters.last_eval > counters.best_eval:
                counters.best_eval = counters.last_eval
                save("best.pt")
        run.log(row)
        if evaluate_now:
            run.plot()

    env_seed = np.random.SeedSequence([seed, counters.sessions])  # a resumed session starts new episodes
    try:
        with make_collector(config, actor, env_seed) as feed:
            for index, batch in enumerate(feed):
                if counters.env_steps >= total:
                    break
                steps = count_steps(batch)  # frozen rows of sticky envs are not steps
                info = learner.update(batch, progress=counters.env_steps / total)
                counters.env_steps += steps
                counters.updates += 1
                counters.wall_time = wall_at_start + time.perf_counter() - started
                window.add(batch, info, lag=(index - batch.version).float())  # updates behind the learner
                bar.update(min(steps, total - bar.n))
                if due(counters.next_log) or due(counters.next_eval):
                    report(evaluate_now=due(counters.next_eval))
                    counters.next_log = _next(counters.next_log, log_every, counters.env_steps)
                    counters.next_eval = _next(counters.next_eval, eval_every, counters.env_steps)
                if due(counters.next_checkpoint):
                    counters.next_checkpoint = _next(counters.next_checkpoint, checkpoint_every, counters.env_steps)
                    save("last.pt")
                recent = np.mean(window.recent) if window.recent else math.nan
                bar.set_postfix_str(f"return {recent:.1f}  eval {counters.last_eval:.1f}", refresh=False)
                if counters.env_steps >= total:
                    break
    except KeyboardInterrupt:
        counters.wall_time = wall_at_start + time.perf_counter() - started
        save("last.pt")  # the collector was closed when the with block exited
        run.plot()
        raise
    finally:
        bar.close()
        run.close()
    save("last.pt")
    return counters
