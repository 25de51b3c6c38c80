"""``rollout()`` with a pool of worker processes, load-balanced over shared batch buffers.

``n_actors`` workers each own ``n_per_actor`` envs, a copy of the actor and a running
:class:`rollout.core.Context`. Batches live in ``n_buffers // n_per_batch`` shared-memory batch
buffers of ``n_per_batch * n_per_actor`` columns; each is cut into ``n_per_batch`` slots of
``n_per_actor`` columns. The parent hands free slots out over each worker's own pipe, to the
workers that hold the fewest (at most two each: the one being filled and the next), so a slow
worker stalls nobody and no lock is shared between workers. A worker writes its fragment straight
into the slot: no copy on the way to the learner. When all slots of a batch buffer are full the
batch is yielded as one fragment; its slots are handed out again at the next ``next()``.

Weight sync and lag: every ``next()`` publishes the learner actor's weights to a versioned store
(:mod:`rollout.sync`, a sequence lock) and workers pull before each fragment when the version
changed. A fragment whose collection starts after the publish of ``next()`` number k (counting
from 0) uses weights of version >= k, and ``Fragment.version`` records the version of each column.
With one worker and two buffers (:func:`rollout.single.rollout`) the fragment yielded by
``next()`` k has version ``k - 1`` or ``k`` (``0`` for the first): at most one update behind. With
several workers a batch buffer is refilled from slots released at an earlier ``next()``, so a
batch lags by up to the number of batch buffers in flight (``n_buffers // n_per_batch``), more
only behind a worker that is slower than the others.

Order: ``Fragment.worker`` and ``Fragment.sequence`` say which worker collected each block of
columns and which of its fragments it is. A worker's fragments reach the learner in collection
order within one batch buffer, but not necessarily across buffers: a batch is yielded when its
last slot is filled, so a later batch can complete first. ``(worker, sequence)`` stitches them.

Failures (a clear error in bounded time, never a hang, never an orphan), threads and how the
workers are run: see :mod:`rollout.pool` and :mod:`rollout.worker`.
"""

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .actor import Actor
from .feed import Feed
from .options import DEFAULT_START_METHOD, DEFAULT_STALL_TIMEOUT, Options
from .pool import collector

__all__ = ["rollout", "DEFAULT_START_METHOD", "DEFAULT_STALL_TIMEOUT"]


def rollout(
    factory: Callable,
    actor: Actor,
    n_steps: int,
    n_actors: int,
    n_per_actor: int,
    n_per_batch: int = 1,
    *,
    n_buffers: Optional[int] = None,
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
    """Yield batches collected by a pool of worker processes.

    Parameters
    ----------
    factory : callable
        ``factory()`` or ``factory(seed)`` returning a gymnasium (or legacy gym) env, or an env
        class (called without arguments); sent to the workers with cloudpickle, so lambdas and
        closures work with every start method. A factory may return a batched env (a ``VectorEnv``, see :class:`rollout.envs.BatchedEnv`) of
        ``n_per_actor`` envs: each worker then steps one such object.
    actor : Actor
        The learner's actor: copied into each worker; its weights are published at every
        ``next()``.
    n_steps : int
        ``T``, steps per fragment.
    n_actors : int
        Number of worker processes (more than the cores works, just slower).
    n_per_actor : int
        Envs per worker (the columns of one fragment).
    n_per_batch : int
        Fragments per batch: a batch has ``B = n_per_batch * n_per_actor`` columns, each block of
        ``n_per_actor`` columns one worker's contiguous fragment.
    n_buffers : int, optional
        Fragment slots in shared memory, a multiple of ``n_per_batch`` and at least
        ``2 * n_per_batch``; default: enough for every worker to have one slot while the learner
        holds a batch.
    sticky : bool
        See :mod:`rollout.core`.
    seed : int, sequence of ints or SeedSequence, optional
        Worker ``i`` seeds its envs (and torch) from child ``i`` of ``SeedSequence(seed)``, as
        :func:`rollout.same.rollout` with that child as its seed would, so each worker's stream
        is reproducible; the interleaving of workers is not. Pure: a ``SeedSequence`` given is
        never changed, and ``seed=k`` and ``SeedSequence(k)`` agree however often either is used.
        None: fresh entropy.
    device : str or torch.device, optional
        Where batches are delivered (the learner's device; None: the CPU buffers themselves).
        For CUDA, through a pinned staging buffer allocated once and a non-blocking copy whose
        event is waited for before the staging buffer is written again (:mod:`rollout.delivery`);
        each batch is then a fresh set of device tensors. Checked to exist.
    pinned : bool
        Stage batches in pinned memory even without a CUDA ``device``.
    worker_device : str or torch.device
        Where workers run their copies of the actor (default the CPU, whatever device the
        learner's actor is on: a CUDA actor is copied to the CPU before it is sent; the weights
        published from it reach the workers through the CPU weight store).
    start_method : str, optional
        ``'spawn'`` (default, see ``DEFAULT_START_METHOD``), ``'fork'`` or ``'forkserver'``.
    env_info : None, sequence of str or mapping
        Env-info keys to record (see :func:`rollout.core.startup`).
    n_threads : int
        ``torch.set_num_threads`` in each worker.
    close : bool
        Close the workers' envs when the collector stops.
    timeout : float
        Seconds ``close()`` waits, in total, for the workers to stop before terminating them
        (``feed.close(timeout=t)`` overrides it once).
    stall_timeout : float or None
        Seconds a worker holding a slot may go without progress (an env step, a weight copy)
        before ``next()`` raises :class:`WorkerError`; None disables the check. Default 60.

    Yields
    ------
    Fragment
        Leaves ``(1+T, B, ...)``; the batch buffer itself, valid until the next ``next()``
        (``.clone()`` keeps a copy).

    Raises
    ------
    ConfigurationError, EnvError, ActorContractError
        Before any worker starts: bad arguments (including a device this machine lacks, or more
        shared buffers than the file-descriptor limit allows), or a bad env or actor (checked by
        stepping a probe env built in this process).
    WorkerError
        From ``next()``: a worker raised (with its traceback), died, or stalled (see the module
        docstring).

    Examples
    --------
    >>> feed = rollout(make_env, actor, 64, n_actors=2, n_per_actor=8, n_per_batch=2)
    >>> with feed:
    ...     for batch in itertools.islice(feed, 1000):   # B = 16 columns
    ...         loss, info = ppo.loss(batch, actor, ...)
    """
    options = Options.of(locals())
    return collector(factory, actor, options, options.seed.spawn(options.n_actors))
