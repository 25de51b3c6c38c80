"""``rollout()`` in the calling process."""

from typing import Any, Callable, Generator, Optional, Sequence, Union

import numpy as np
import optree
import torch

from . import checks, core
from .actor import Actor
from .envs import make_batch
from .feed import Feed, Source
from .fragment import Fragment

__all__ = ["rollout"]


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
    # The actor is the learner's own module: a yielded fragment is never behind (the generator
    # counts the version up before it yields).
    source = Source(version=lambda: context.version - 1)
    return Feed(_generate(context, device, pinned or to_cuda), source=source)


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
