"""Evaluation of an actor: returns and lengths of whole episodes."""

import contextlib
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from . import core
from .actor import Actor
from .errors import ConfigurationError
from .envs import make_envs
from .seeds import env_seeds

__all__ = ["evaluate", "Evaluation"]


class Evaluation(NamedTuple):
    """``returns`` float64 ``(N,)`` and ``lengths`` int64 ``(N,)``, episode k of env ``k % B`` first."""

    returns: torch.Tensor
    lengths: torch.Tensor


@contextlib.contextmanager
def _mode(actor: Actor, deterministic: bool):
    old = actor.deterministic, actor.training
    actor.deterministic = deterministic
    actor.eval()
    try:
        yield
    finally:
        actor.deterministic = old[0]
        actor.train(old[1])


def evaluate(
    envs: Union[Callable, Sequence[Any], Any],
    actor: Actor,
    n_episodes: int,
    *,
    n_envs: Optional[int] = None,
    deterministic: bool = True,
    seed: Union[None, int, Sequence[int], np.random.SeedSequence] = None,
    n_steps: int = 64,
    max_steps: int = 1_000_000,
) -> Evaluation:
    """Run ``actor`` for ``n_episodes`` whole episodes on a batch of envs.

    Each env runs its share of the episodes (env ``j`` runs ``ceil`` or ``floor`` of
    ``n_episodes / B``), so short episodes are not favoured by stopping at the first ones to end.

    Parameters
    ----------
    envs : callable, list of envs, or a batched env
        As for :func:`rollout.same.rollout`; envs created from a factory are closed afterwards.
    actor : Actor
        Run in ``eval()`` mode with ``actor.deterministic`` set to ``deterministic``
        (restored afterwards).
    n_episodes : int
        N, the number of episodes to run.
    n_envs : int, optional
        ``B`` when ``envs`` is a factory.
    deterministic : bool
        Value of ``actor.deterministic`` during the evaluation.
    seed : int or SeedSequence, optional
        Seeds the envs.
    n_steps : int
        Steps per internal fragment (a tuning knob, not a limit).
    max_steps : int
        Give up with an error after this many steps per env (an episode that never ends).

    Returns
    -------
    Evaluation
        ``returns`` float64 ``(N,)`` and ``lengths`` int64 ``(N,)``.
    """
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ConfigurationError(f"n_episodes must be a positive int, found {n_episodes!r}")
    batch_of_envs = make_envs(envs, n_envs, seed)
    try:
        with _mode(actor, deterministic):
            # Env j's evaluation episodes start from child j of the seed (child 0 also derives a
            # factory's seeds): the episodes of every recorded evaluation.
            seeds = env_seeds(seed, len(batch_of_envs))
            context = core.startup(batch_of_envs, actor, n_steps, seed=seed, env_info=(), reset_seeds=seeds)
            B = context.n_envs
            quota = np.full(B, n_episodes // B) + (np.arange(B) < n_episodes % B)
            done = [[] for _ in range(B)]
            fragment = context.allocate()
            for _ in range(0, max_steps, n_steps):
                core.collect(context, fragment)
                length = fragment.final.episode_length[1:].numpy()
                returns = fragment.final.episode_return[1:].numpy()
                for t, j in zip(*np.nonzero(length)):  # in time order per env
                    if len(done[j]) < quota[j]:
                        done[j].append((returns[t, j], length[t, j]))
                if all(len(d) >= q for d, q in zip(done, quota)):
                    break
            else:
                raise RuntimeError(f"evaluate: {n_episodes} episodes did not end within {max_steps} steps per env")
    finally:
        batch_of_envs.close()
    order = [done[j][k] for k in range(max(quota)) for j in range(B) if k < len(done[j])]
    return Evaluation(
        torch.tensor([r for r, _ in order], dtype=torch.float64), torch.tensor([n for _, n in order], dtype=torch.int64)
    )
