"""``rollout()`` with one worker process, double-buffered.

The worker owns the envs and its own copy of the actor and fills one of two shared-memory
fragment buffers while the learner trains on the other. The yielded fragment is the shared buffer
itself (zero copy): it is valid until the next ``next()``, when the worker may start refilling it;
call ``fragment.clone()`` to keep it.

Lag: every ``next()`` publishes the learner's weights; the fragment yielded by ``next()`` number
k (from 0) was collected with the weights published at ``next()`` k - 1 or k: at most one update
behind (``Fragment.version`` records which).

Timeline (buffers A and B; ``vK`` = the weights published at ``next()`` K; the worker pulls
before each fragment, so which version it gets depends on whether that ``next()`` came first):

=================  ===========================  ==================================  ===========
``next()`` number  publishes, then yields        meanwhile the worker fills          its version
=================  ===========================  ==================================  ===========
0                  v0; A (waits for it)          A, then B                           A: v0
1                  v1; B (ready or waits)        A again once ``next()`` 1 freed it   B: v0 or v1
2                  v2; A                         B again once ``next()`` 2 freed it   A: v1 or v2
k                  vk; A if k even, else B       the other buffer                    vk-1 or vk
=================  ===========================  ==================================  ===========

The learner trains on one buffer while the worker fills the other; a buffer is handed back to the
worker at the ``next()`` after the one that yielded it, which is why a fragment is valid only until
then. With the same ``seed``, a deterministic actor whose
weights do not change, and a deterministic env, it yields exactly the fragments of
:func:`rollout.same.rollout`.
"""

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .actor import Actor
from .feed import Feed
from .options import DEFAULT_STALL_TIMEOUT, Options
from .pool import collector

__all__ = ["rollout"]


def rollout(
    factory: Callable,
    actor: Actor,
    n_steps: int,
    n_envs: int,
    *,
    sticky: bool = False,
    seed: Union[None, int, Sequence[int], np.random.SeedSequence] = None,
    device: Union[None, str, torch.device] = None,
    pinned: bool = False,
    worker_device: Union[str, torch.device] = "cpu",
    start_method: Optional[str] = None,
    env_info: Any = None,
    n_threads: int = 1,
    close: bool = True,
    timeout: float = 10.0,
    stall_timeout: Optional[float] = DEFAULT_STALL_TIMEOUT,
) -> Feed:
    """Yield fragments collected by one worker process while the learner trains.

    Parameters
    ----------
    factory : callable
        ``factory()`` or ``factory(seed)`` returning an env (cloudpickled to the worker).
    actor : Actor
        Copied into the worker; its weights are published at every ``next()``.
    n_steps : int
        ``T``, steps per fragment.
    n_envs : int
        ``B``, envs stepped by the worker.
    sticky, seed, device, pinned, worker_device, start_method, env_info, n_threads, close, timeout, stall_timeout
        As for :func:`rollout.multi.rollout`; ``seed`` seeds the envs exactly as
        :func:`rollout.same.rollout` does.

    Yields
    ------
    Fragment
        Leaves ``(1+T, B, ...)``, valid until the next ``next()``.

    Examples
    --------
    >>> with rollout(make_env, actor, 64, 8, seed=0) as feed:
    ...     for fragment in itertools.islice(feed, 100):
    ...         loss, info = a2c.loss(fragment, actor, gamma=0.99)
    """
    options = Options.of(locals(), n_per_actor=n_envs, n_buffers=2)
    return collector(factory, actor, options, [options.seed])
