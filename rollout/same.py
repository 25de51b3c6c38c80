"""``rollout()`` in the calling process."""

from typing import Any, Callable, Generator, Optional, Sequence, Union

import numpy as np
import torch

from . import core
from .actor import Actor
from .delivery import Route
from .envs import make_envs
from .feed import Feed, Source
from .fragment import Fragment
from .options import Options

__all__ = ["rollout"]


def rollout(
    envs: Union[Callable, Sequence[Any], Any],
    actor: Actor,
    n_steps: int,
    *,
    n_envs: Optional[int] = None,
    sticky: bool = False,
    seed: Union[None, int, Sequence[int], np.random.SeedSequence] = None,
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
        Called with ``n_seq = 1`` inputs ``(1, B, ...)`` under ``torch.no_grad()``, where its
        parameters are: for a CUDA actor the observations go up and the actions come down once
        per step, for the whole batch.
    n_steps : int
        ``T``: each fragment has ``1+T`` rows (row 0 repeats the previous fragment's row T).
    n_envs : int, optional
        ``B`` when ``envs`` is a factory.
    sticky : bool
        Freeze an env from its episode end until the fragment ends (see :mod:`rollout.core`).
    seed : int, sequence of ints or SeedSequence, optional
        Derives every env's seed: the same seed gives bit-identical fragments for a
        deterministic env and actor. Pure: a ``SeedSequence`` given is never changed.
    device : str or torch.device, optional
        Where fragments are delivered. CUDA: the collector collects into pinned memory and
        yields fresh device tensors copied from it without blocking; it does not write that
        buffer again before the copy is done (:mod:`rollout.delivery`).
    pinned : bool
        Collect into pinned memory (implied by a CUDA ``device``).
    env_info : None, sequence of str or mapping
        Which env-info keys to record in ``Fragment.env`` (see :func:`rollout.core.startup`).

    Yields
    ------
    Fragment
        Leaves ``(1+T, B, ...)`` (``env``: ``(T, B, ...)``), see :mod:`rollout.fragment`. On
        the CPU the fragment is the collector's own buffer: it is overwritten by the next
        ``next()``; call ``fragment.clone()`` to keep it (device tensors are the learner's to
        keep). ``version[b]`` counts the fragments yielded before it
        (the actor is the learner's own module, so each fragment uses the current weights).

    Examples
    --------
    >>> feed = rollout(lambda: gymnasium.make("CartPole-v1"), actor, 32, n_envs=8, seed=0)
    >>> with feed:
    ...     for fragment in itertools.islice(feed, 100):
    ...         loss, info = a2c.loss(fragment, actor, gamma=0.99)
    """
    options = Options(n_steps=n_steps, sticky=sticky, seed=seed, device=device, pinned=pinned, env_info=env_info)
    built = make_envs(envs, n_envs, options.seed)
    try:
        context = core.startup(built, actor, options.n_steps, sticky=sticky, seed=options.seed, env_info=env_info)
    except BaseException:
        built.close()
        raise
    # The actor is the learner's own module: a yielded fragment is never behind (the generator
    # counts the version up before it yields).
    source = Source(version=lambda: context.version - 1)
    return Feed(_generate(context, Route(options.device, options.pinned)), source=source)


def _generate(context: core.Context, route: Route) -> Generator[Fragment, None, None]:
    try:
        fragment = route.allocate(context.spec, context.n_steps, context.n_envs)
        while True:
            route.free(fragment)  # no copy to the device still reads it
            core.collect(context, fragment)
            context.version += 1
            yield route.deliver(fragment)
    finally:
        route.close()
        context.close()
