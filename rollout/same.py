"""``rollout()`` in the calling process."""

from typing import Any, Callable, Generator, Optional, Sequence, Union

import numpy as np
import optree
import torch

from . import checks, core
from .actor import Actor
from .envs import BatchedEnv, EnvList, adapt, env_seeds, is_batched, is_factory, make_env
from .errors import ConfigurationError
from .feed import Feed
from .fragment import Fragment

__all__ = ["rollout", "make_batch"]


def make_batch(
    envs: Union[Callable, Sequence[Any], Any],
    n_envs: Optional[int],
    seed: Union[None, int, np.random.SeedSequence],
) -> Union[EnvList, BatchedEnv]:
    """Build a batch of envs from a factory, a list of envs, or one batched env.

    A factory is called ``n_envs`` times as ``factory(seed)`` (or ``factory()``), each with its
    own seed derived from ``seed``; those envs are owned (closed with the collector). A factory
    that returns a gymnasium ``VectorEnv`` is called once and must not be given ``n_envs > 1``.
    """
    if isinstance(envs, (list, tuple)):
        if n_envs is not None and n_envs != len(envs):
            raise ConfigurationError(f"n_envs={n_envs} does not match the {len(envs)} envs given")
        return EnvList(list(envs), owned=False)
    if is_batched(envs):
        return BatchedEnv(envs, owned=False)
    if is_factory(envs):
        if n_envs is None:
            raise ConfigurationError("n_envs is required with an env factory")
        if not isinstance(n_envs, int) or n_envs < 1:
            raise ConfigurationError(f"n_envs must be a positive int, found {n_envs!r}")
        seeds = env_seeds(np.random.SeedSequence(seed).spawn(1)[0] if not isinstance(seed, np.random.SeedSequence) else seed.spawn(1)[0], n_envs)
        built = []
        try:
            for s in seeds:
                env = make_env(envs, s)
                if is_batched(env):
                    if n_envs != 1:
                        raise ConfigurationError(f"the factory returned a VectorEnv; pass n_envs=1 (found n_envs={n_envs})")
                    return BatchedEnv(env, owned=True)
                built.append(env)
        except BaseException:
            for env in built:
                env.close()
            raise
        return EnvList(built, owned=True)
    return EnvList([adapt(envs)], owned=False)


def rollout(
    envs: Union[Callable, Sequence[Any], Any],
    actor: Actor,
    n_steps: int,
    *,
    n_envs: Optional[int] = None,
    sticky: bool = False,
    seed: Union[None, int, np.random.SeedSequence] = None,
    device: Union[None, str, torch.device] = None,
    pinned: bool = False,
    env_info: Any = None,
) -> Feed:
    """Yield fragments collected in this process, one ``next()`` at a time.

    Parameters
    ----------
    envs : callable, list of envs, or a batched env
        A factory ``factory()`` or ``factory(seed)`` (with ``n_envs``), a list of gymnasium or
        legacy gym envs, or one ``VectorEnv`` (see :class:`rollout.envs.BatchedEnv`) stepped
        with one call per step.
    actor : Actor
        Called with ``n_seq = 1`` inputs ``(1, B, ...)`` under ``torch.no_grad()``.
    n_steps : int
        ``T``: each fragment has ``1+T`` rows (row 0 repeats the previous fragment's row T).
    n_envs : int, optional
        ``B`` when ``envs`` is a factory.
    sticky : bool
        Freeze an env from its episode end until the fragment ends (see :mod:`rollout.core`).
    seed : int or SeedSequence, optional
        Derives every env's seed: the same seed gives bit-identical fragments for a
        deterministic env and actor.
    device : str or torch.device, optional
        Deliver each fragment on this device (a copy from pinned staging buffers when CUDA).
    pinned : bool
        Collect into pinned memory (implied by a CUDA ``device``).
    env_info : None, sequence of str or mapping
        Which env-info keys to record in ``Fragment.env`` (see :func:`rollout.core.startup`).

    Yields
    ------
    Fragment
        Leaves ``(1+T, B, ...)`` (``env``: ``(T, B, ...)``), see :mod:`rollout.fragment`. The
        fragment is the collector's own buffer: it is overwritten by the next ``next()``; call
        ``fragment.clone()`` to keep it. ``version[b]`` counts the fragments yielded before it
        (the actor is the learner's own module, so each fragment uses the current weights).

    Examples
    --------
    >>> feed = rollout(lambda: gymnasium.make("CartPole-v1"), actor, 32, n_envs=8, seed=0)
    >>> with feed:
    ...     for fragment in itertools.islice(feed, 100):
    ...         loss, info = a2c.loss(fragment, actor, gamma=0.99)
    """
    device = checks.device(device)
    batch = make_batch(envs, n_envs, seed)
    try:
        context = core.startup(batch, actor, n_steps, sticky=sticky, seed=seed, env_info=env_info)
    except BaseException:
        batch.close()
        raise
    to_cuda = device is not None and device.type != "cpu"
    return Feed(_generate(context, device, pinned or to_cuda))


def _generate(context: core.Context, device: Optional[torch.device], pinned: bool) -> Generator[Fragment, None, None]:
    try:
        fragment = context.allocate(pinned=pinned and torch.cuda.is_available())
        while True:
            core.collect(context, fragment)
            context.version += 1
            if device is None or device.type == "cpu":
                yield fragment
            else:
                yield optree.tree_map(lambda x: x.to(device, non_blocking=True), fragment)
    finally:
        context.close()
