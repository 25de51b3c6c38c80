"""``rollout()`` with a pool of worker processes, load-balanced over shared batch buffers.

``n_actors`` workers each own ``n_per_actor`` envs, a copy of the actor and a running
:class:`rollout.core.Context`. Batches live in ``n_buffers // n_per_batch`` shared-memory batch
buffers of ``n_per_batch * n_per_actor`` columns; each is cut into ``n_per_batch`` slots of
``n_per_actor`` columns. Free slots wait in a queue that any idle worker takes from (a slow worker
stalls nobody), and a worker writes its fragment straight into the slot: no copy on the way to the
learner. When all slots of a batch buffer are full the batch is yielded as one fragment; it is
released (its slots go back to the queue) at the next ``next()``.

Weight sync and lag: every ``next()`` publishes the learner actor's weights to a versioned store
(:mod:`rollout.sync`) and workers pull before each fragment when the version changed. A fragment
whose collection starts after the publish of ``next()`` number k (counting from 0) uses weights of
version >= k, and ``Fragment.version`` records the version of each column. With one worker and two
buffers (:func:`rollout.single.rollout`) the fragment yielded by ``next()`` k has version
``k - 1`` or ``k`` (``0`` for the first): at most one update behind. With several workers a
batch buffer is refilled from slots released at an earlier ``next()``, so a batch lags by up to
the number of batch buffers in flight (``n_buffers // n_per_batch``), more only behind a worker
that is slower than the others.

Failures: an exception in a worker (factory, env, actor) is raised from ``next()`` as
:class:`~rollout.errors.WorkerError` with the worker's traceback; a worker killed by a signal is
reported within a second; every wait has a timeout and watches the workers' sentinels. Closing
(``close()``, ``with``, garbage collection, interpreter exit) stops the workers within about one
fragment and frees every shared-memory buffer.
"""

import atexit
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import traceback
from collections import deque
from typing import Any, Callable, List, Optional, Union

import cloudpickle
import numpy as np
import optree
import torch

from . import buffers, core
from .actor import Actor
from .errors import ActorContractError, ConfigurationError, WorkerError
from .feed import Feed, close_all
from .same import make_batch
from .sync import WeightStore

__all__ = ["rollout", "DEFAULT_START_METHOD"]

# spawn: a fresh interpreter per worker, safe whatever threads torch (OpenMP) or the user started
# in the parent; fork copies such threads' locks in whatever state they were. forkserver is also
# safe but leaves a server process behind, and workers must be the collector's only children.
DEFAULT_START_METHOD = "spawn"
_POLL = 0.2  # seconds between liveness checks in every wait
atexit.register(close_all)


def _positive(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, found {value!r}")
    return int(value)


def _torch_seed(seed: Union[None, int, np.random.SeedSequence]) -> int:
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return int(sequence.generate_state(2, np.uint32)[1])


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
    seed: Union[None, int, np.random.SeedSequence] = None,
    device: Union[None, str, torch.device] = None,
    pinned: bool = False,
    start_method: Optional[str] = None,
    env_info: Any = None,
    n_threads: int = 1,
    close: bool = True,
    timeout: float = 10.0,
) -> Feed:
    """Yield batches collected by a pool of worker processes.

    Parameters
    ----------
    factory : callable
        ``factory()`` or ``factory(seed)`` returning a gymnasium (or legacy gym) env; sent to the
        workers with cloudpickle, so lambdas and closures work with every start method. A factory
        may return a batched env (a ``VectorEnv``, see :class:`rollout.envs.BatchedEnv`) of
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
    seed : int or SeedSequence, optional
        Worker ``i`` seeds its envs (and torch) from child ``i`` of ``SeedSequence(seed)``, so
        each worker's stream is reproducible; the interleaving of workers is not.
    device : str or torch.device, optional
        Deliver batches on this device (through a pinned staging buffer and a non-blocking copy
        for CUDA, synchronised before the staging buffer is reused).
    pinned : bool
        Stage batches in pinned memory even without a CUDA ``device``.
    start_method : str, optional
        ``'spawn'`` (default, see ``DEFAULT_START_METHOD``), ``'fork'`` or ``'forkserver'``.
    env_info : None, sequence of str or mapping
        Env-info keys to record (see :func:`rollout.core.startup`).
    n_threads : int
        ``torch.set_num_threads`` in each worker.
    close : bool
        Close the workers' envs when the collector stops.
    timeout : float
        Seconds to wait for a worker to stop before terminating it.

    Yields
    ------
    Fragment
        Leaves ``(1+T, B, ...)``; the batch buffer itself, valid until the next ``next()``
        (``.clone()`` keeps a copy).

    Raises
    ------
    ConfigurationError, EnvError, ActorContractError
        Before any worker starts: bad arguments, or a bad env or actor (checked on a probe env
        built in this process).
    WorkerError
        From ``next()``: a worker raised (with its traceback) or died.

    Examples
    --------
    >>> feed = rollout(make_env, actor, 64, n_actors=2, n_per_actor=8, n_per_batch=2)
    >>> with feed:
    ...     for batch in itertools.islice(feed, 1000):   # B = 16 columns
    ...         loss, info = ppo.loss(batch, actor, ...)
    """
    n_actors = _positive("n_actors", n_actors)
    seeds = (seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)).spawn(n_actors)
    return _pool(factory, actor, n_steps, n_actors, n_per_actor, n_per_batch, n_buffers, seeds, sticky=sticky,
                 device=device, pinned=pinned, start_method=start_method, env_info=env_info, n_threads=n_threads,
                 close=close, timeout=timeout)


def _pool(factory, actor, n_steps, n_actors, n_per_actor, n_per_batch, n_buffers, seeds, *, sticky, device, pinned,
          start_method, env_info, n_threads, close, timeout) -> Feed:
    """Validate everything in this process, then start the workers (shared by single and multi)."""
    n_per_actor = _positive("n_per_actor", n_per_actor)
    n_per_batch = _positive("n_per_batch", n_per_batch)
    _positive("n_steps", n_steps)
    _positive("n_threads", n_threads)
    if n_buffers is None:
        n_buffers = n_per_batch * max(2, -(-(n_actors + n_per_batch) // n_per_batch))
    n_buffers = _positive("n_buffers", n_buffers)
    if n_buffers % n_per_batch or n_buffers < 2 * n_per_batch:
        raise ConfigurationError(
            f"n_buffers must be a multiple of n_per_batch={n_per_batch} and at least 2 * n_per_batch = "
            f"{2 * n_per_batch} (one batch for the learner, one being filled); found n_buffers={n_buffers}"
        )
    start_method = start_method or DEFAULT_START_METHOD
    if start_method not in multiprocessing.get_all_start_methods():
        raise ConfigurationError(f"start_method must be one of {multiprocessing.get_all_start_methods()}, found {start_method!r}")
    if not callable(factory) or hasattr(factory, "step"):
        raise ConfigurationError(f"worker collectors need an env factory (a callable returning an env), found {type(factory).__name__}")
    if not isinstance(actor, Actor):
        raise ActorContractError(f"expected an actor subclassing rollout.Actor, found {type(actor).__name__}")
    try:
        payload_factory, payload_actor = cloudpickle.dumps(factory), cloudpickle.dumps(actor)
    except Exception as error:
        raise ConfigurationError(f"the factory and the actor must be picklable with cloudpickle: {error}") from error

    # Validate the env and the actor on a probe env built here, before any worker starts.
    probe = make_batch(factory, 1, 0)
    try:
        if probe.batched and len(probe) != n_per_actor:
            raise ConfigurationError(
                f"the factory returns a VectorEnv of {len(probe)} envs: each worker steps one, so n_per_actor must be "
                f"{len(probe)}, found n_per_actor={n_per_actor}"
            )
        spec = core.startup(probe, actor, n_steps, sticky=sticky, seed=0, env_info=env_info).spec
    finally:
        probe.close()
    env_info = {key: np.zeros(x.shape[2:], dtype=x.numpy().dtype) for key, x in spec.env.items()}

    device = torch.device(device) if device is not None else None
    context = torch.multiprocessing.get_context(start_method)
    pool = _Pool(context, n_actors, n_per_actor, n_per_batch, n_buffers // n_per_batch, spec, n_steps, timeout)
    pool.store = WeightStore(actor, context.Lock())
    common = dict(factory=payload_factory, actor=payload_actor, store=pool.store, batches=pool.batches, jobs=pool.jobs,
                  stop=pool.stop_event, n_steps=n_steps, n_per_actor=n_per_actor, n_per_batch=n_per_batch, sticky=sticky,
                  env_info=env_info, n_threads=n_threads, close=close, batched=probe.batched)
    return Feed(_generate(pool, actor, seeds, common, device, pinned))


class _Pool:
    """The processes, queues and shared buffers of one collector."""

    def __init__(self, context, n_actors, n_per_actor, n_per_batch, n_batches, spec, n_steps, timeout):
        self.context, self.n_actors, self.n_per_batch, self.timeout = context, n_actors, n_per_batch, timeout
        self.batches = [buffers.allocate(spec, n_steps, n_per_batch * n_per_actor, shared=True) for _ in range(n_batches)]
        self.jobs = context.Queue()
        self.stop_event = context.Event()
        self.processes: List[Any] = []
        self.pipes: List[Any] = []

    def start(self, seeds, common) -> None:
        for index, seed in enumerate(seeds):
            parent, child = self.context.Pipe(duplex=False)
            process = self.context.Process(target=_worker_main, args=(index, seed, child, common), daemon=True,
                                           name=f"rollout-worker-{index}")
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)

    def receive(self) -> tuple:
        """The next message from any worker; raises WorkerError for a failure or a death.

        A dead worker is reported even while the others keep delivering.
        """
        while True:
            ready = multiprocessing.connection.wait(self.pipes + [p.sentinel for p in self.processes], _POLL)
            for index, process in enumerate(self.processes):
                if process.sentinel in ready:
                    self._raise_for(index)
            for index, pipe in enumerate(self.pipes):
                if pipe in ready:
                    try:
                        message = pipe.recv()
                    except (EOFError, OSError):  # it died; under forkserver its exit shows up later
                        self._raise_for(index, wait=self.timeout)
                    if message[0] == "error":
                        raise WorkerError(f"worker {index} failed:\n{message[1]}")
                    return message

    def _raise_for(self, index: int, wait: float = 1.0) -> None:
        """Raise the error a dead worker reported, or say how it died (waiting up to ``wait`` s)."""
        pipe, process = self.pipes[index], self.processes[index]
        try:
            while pipe.poll():
                message = pipe.recv()
                if message[0] == "error":
                    raise WorkerError(f"worker {index} failed:\n{message[1]}")
        except (EOFError, OSError):
            pass
        process.join(wait)  # reap it, so that exitcode is known
        code = process.exitcode
        how = f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        raise WorkerError(f"worker {index} (pid {process.pid}) {how} without reporting an error")

    def shutdown(self) -> None:
        self.stop_event.set()
        for _ in self.processes:
            try:
                self.jobs.put_nowait(None)
            except Exception:
                pass
        for process in self.processes:
            process.join(self.timeout)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(1.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)
        for pipe in self.pipes:
            pipe.close()
        self.jobs.cancel_join_thread()
        self.jobs.close()
        # Named semaphores (spawn/forkserver) are unlinked when their objects are collected: drop
        # every reference now, even if a traceback keeps this object alive.
        self.processes, self.pipes, self.batches = [], [], []
        self.jobs = self.stop_event = self.store = None


def _generate(pool: _Pool, actor: Actor, seeds, common, device, pinned):
    staging, event = None, None
    try:
        pool.store.publish(actor)  # version 0: the weights as they are at the first next()
        pool.start(seeds, common)
        n_batches, n_per_batch = len(pool.batches), pool.n_per_batch
        for slot in range(n_batches * n_per_batch):
            pool.jobs.put(slot)
        filled = [0] * n_batches
        ready, held = deque(), None
        while True:
            if held is not None:
                pool.store.publish(actor)
                filled[held] = 0
                for k in range(n_per_batch):
                    pool.jobs.put(held * n_per_batch + k)
            while not ready:
                message = pool.receive()
                if message[0] == "done":
                    batch = message[1] // n_per_batch
                    filled[batch] += 1
                    if filled[batch] == n_per_batch:
                        ready.append(batch)
            held = ready.popleft()
            batch = pool.batches[held]
            if device is None or (device.type == "cpu" and not pinned):
                yield batch
                continue
            if event is not None:
                event.synchronize()  # the previous asynchronous copy has left the staging buffer
            if staging is None:
                staging = optree.tree_map(lambda x: torch.empty_like(x).pin_memory() if torch.cuda.is_available() else torch.empty_like(x), batch)
            optree.tree_map(lambda dst, src: dst.copy_(src), staging, batch)
            if device.type == "cuda":
                out = optree.tree_map(lambda x: x.to(device, non_blocking=True), staging)
                event = torch.cuda.Event()
                event.record()
                yield out
            else:
                yield staging
    finally:
        pool.shutdown()
        common.clear()  # it holds the queue, the event and the store's lock too


def _worker_main(*args) -> None:
    """The worker process: :func:`_work`, then exit without the interpreter's teardown.

    The worker has cleaned up (envs closed, pipe closed) and sends nothing more; skipping the
    teardown (module and torch finalisers) makes ``close()`` under spawn about 0.4 s faster.
    """
    try:
        _work(*args)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)


def _work(index: int, seed, pipe, common: dict) -> None:
    """A worker's main loop: take a free slot, pull weights if they changed, collect, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    torch.set_num_threads(common["n_threads"])
    batch = None
    try:
        torch.manual_seed(_torch_seed(seed))
        factory = cloudpickle.loads(common["factory"])
        actor = cloudpickle.loads(common["actor"])
        n_per_actor, n_per_batch = common["n_per_actor"], common["n_per_batch"]
        slots = [
            buffers.narrow(b, k * n_per_actor, n_per_actor) for b in common["batches"] for k in range(n_per_batch)
        ]
        batch = make_batch(factory, 1 if common["batched"] else n_per_actor, seed)  # a VectorEnv is the worker's batch
        context = core.startup(batch, actor, common["n_steps"], sticky=common["sticky"], seed=seed,
                               env_info=common["env_info"])
        store, jobs, stop = common["store"], common["jobs"], common["stop"]
        parent = multiprocessing.parent_process()
        have = -1
        while not stop.is_set():
            try:
                slot = jobs.get(timeout=_POLL)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    break
                continue
            if slot is None:
                break
            have = store.pull(actor, have)
            context.version = have
            core.collect(context, slots[slot])
            pipe.send(("done", slot, index))
    except BaseException:
        try:
            pipe.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        if batch is not None and common["close"]:
            try:
                batch.close()
            except Exception:
                pass
        pipe.close()
