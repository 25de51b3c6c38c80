"""``rollout()`` on a Ray cluster: :func:`rollout.multi.rollout`'s contract, with Ray actors as workers.

A training loop moves from one machine to a cluster by changing one import. Each worker is a Ray
actor wrapping the :class:`rollout.worker.Worker` that ``multi``'s worker processes run (its
envs, a copy of the actor on ``worker_device``, the CPU by default, and a running
:class:`rollout.core.Context`), kept by the same :class:`rollout.ledger.Ledger`:
with the same ``seed``, worker ``i``'s fragments equal those of ``multi``'s worker ``i`` while
the weights do not change. The batch layout, the fragment fields (``version``, ``worker``,
``sequence`` per column), the dtypes and the episode semantics are ``multi``'s.

Requests and weights. The learner keeps up to ``n_buffers`` collect requests in flight, each to
the worker with the fewest, so that workers do not wait for it; a batch is made of the first
``n_per_batch`` fragments to come back (numpy arrays read out of Ray's object store without a
copy, then written into one of two preallocated batch buffers, pinned where the batches go to a
CUDA ``device``, and delivered by :class:`rollout.delivery.Route` like every collector's). Every ``next()`` publishes the weights once (one ``ray.put``: the ``k``-th ``next()``,
from 0, publishes version ``k``); the reference travels with the collect requests issued after it,
and a worker loads it only when it is newer than what it holds. ``Fragment.version`` records the
version each column was collected with.

Lag. By default a request issued at ``next()`` ``k`` carries version ``k`` and is yielded at the
latest ``n_buffers // n_per_batch`` ``next()`` calls later while the workers are equally fast (as
in ``multi``: the number of batches in flight), more only behind a slower worker, whose fragments
are passed over by faster ones. ``sync=True`` issues no request before the publish: the batch
yielded by ``next()`` ``k`` has version ``k`` on every column (lag 0, for strict on-policy
learning) and no fragment is collected and dropped, but the workers idle while the learner trains.

Ray. ``address=None`` uses the Ray instance this process has already initialised, or else starts a
local one, which ``close()`` shuts down; ``address="auto"``, ``"host:port"`` or ``"ray://..."``
connects to a running cluster, which is never shut down (``close()`` disconnects from it only if
this collector connected). ``worker_options`` are Ray actor options (``num_cpus``, ``resources``,
``runtime_env``, ...); the default is ``num_cpus=1``. A local instance started here gets at least
one CPU per worker (as ``multi`` starts every process), so no worker waits unscheduled.

Priority: Ray starts its worker processes at a lower CPU priority than the driver (nice 15 here,
Ray's ``RAY_worker_niceness`` default), which on a busy machine lets the learner and every other
process starve the collectors. Our workers set their own niceness back to that of the process that
called ``rollout`` (nice 0 for a plain driver). An unprivileged process may raise its niceness but
not lower it: there the workers stay where Ray put them, and ``RAY_worker_niceness=0`` in the
environment of whatever starts Ray (``ray start`` on every node, or this process) is the remedy.

Failures (never a hang): an exception in a worker is raised from ``next()`` as
:class:`rollout.errors.WorkerError` with the worker's traceback; a worker whose process or node
dies (Ray's ``RayActorError`` and "actor unavailable" errors) is a ``WorkerError`` naming it; a
worker that holds requests and makes no progress (no env step) for ``stall_timeout`` seconds is
one too, even if Ray still thinks it is alive. Nothing is retried. ``close()`` asks each worker to
close its envs (waiting up to ``timeout`` seconds in total), then kills the workers; it runs at
interpreter exit before Ray's own shutdown.

Threads: the feed may be iterated from any thread, one at a time, and its first ``next()`` may
come from a thread that then exits: Ray actors belong to the driver process, not to a thread.
"""

import atexit
import os
import re
import time
import traceback
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import optree
import torch

from . import buffers, checks
from .actor import Actor
from .delivery import Route
from .errors import ConfigurationError, WorkerError
from .feed import Feed, Source
from .ledger import Ledger
from .options import DEFAULT_STALL_TIMEOUT, Options
from .worker import Worker, WorkerSpec

__all__ = ["rollout", "DEFAULT_STALL_TIMEOUT"]

_POLL = 0.2  # seconds between checks while the learner waits for fragments
_BEAT = 1.0  # seconds between heartbeat questions to busy workers


def _ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError(
            "rollout.distributed needs Ray, an optional dependency: pip install -e '.[ray]' (or pip install ray)"
        ) from error
    return ray


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
    address: Optional[str] = None,
    sync: bool = False,
    worker_options: Optional[Dict[str, Any]] = None,
    env_info: Any = None,
    n_threads: int = 1,
    timeout: float = 10.0,
    stall_timeout: Optional[float] = DEFAULT_STALL_TIMEOUT,
) -> Feed:
    """Yield batches of ``n_per_batch`` fragments collected by ``n_actors`` Ray actors.

    Parameters are :func:`rollout.multi.rollout`'s (``n_buffers``: collect requests in flight,
    default as ``multi``'s), without ``start_method`` and ``close``, plus:

    address : str, optional
        None: this process's Ray instance, or a new local one (shut down at ``close()``).
        ``"auto"``, ``"host:port"`` or ``"ray://host:port"``: a running cluster (never shut down).
    sync : bool
        Collect each batch with the weights published by the same ``next()`` (lag 0): no request
        is in flight while the learner trains.
    worker_options : dict, optional
        Ray actor options for every worker (default ``{"num_cpus": 1}``).

    Yields
    ------
    Fragment
        A batch: leaves ``(1+T, n_per_batch * n_per_actor, ...)``, each block of ``n_per_actor``
        columns one worker's fragment (``Fragment.worker``, ``Fragment.sequence`` and
        ``Fragment.version`` per column). On the CPU it is one of the collector's two buffers,
        overwritten by the ``next()`` after the next one: ``clone()`` it to keep it longer.

    Raises
    ------
    ImportError
        Ray is not installed (the message names the extra).
    ConfigurationError, EnvError, ActorContractError
        Before Ray is started or any worker created: the same checks and messages as ``multi``
        (a probe env is built and stepped in this process).
    WorkerError
        From ``next()``: a worker raised (with its traceback), died, or stalled.
    """
    ray = _ray()
    options = Options.of(locals())
    if worker_options is not None and not isinstance(worker_options, dict):
        raise ConfigurationError(f"worker_options must be a dict of Ray actor options, found {worker_options!r}")
    if address is not None and not isinstance(address, str):
        raise ConfigurationError(f"address must be None or a string such as 'auto', found {address!r}")
    probe = checks.probe(factory, actor, options)
    nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
    spec = WorkerSpec.of(options, probe, close=True, nice=nice)
    cluster = _Cluster(ray, address, options, dict(worker_options or {"num_cpus": 1}))
    source = Source(version=lambda: cluster.version, n_workers=options.n_actors, last_seen=cluster.ledger.last_seen)
    route = Route(options.device, options.pinned)
    generator = _generate(cluster, actor, options, spec, probe.spec, route, sync)
    return Feed(generator, on_close=cluster.ledger.set_close_timeout, source=source)


class _Worker:
    """The Ray actor: a :class:`rollout.worker.Worker` and its own fragment buffer (in a Ray worker process)."""

    def __init__(self, spec: WorkerSpec, index: int, seed: Any):
        self.worker: Optional[Worker] = None
        self.error: Optional[str] = None  # a failed start is reported by the first collect, with its traceback
        try:
            self.worker = Worker(spec, index, seed)
            self.fragment = self.worker.allocate()
            self.leaves = [_as_numpy(x) for x in optree.tree_leaves(self.fragment)]
        except Exception:
            self.error = traceback.format_exc()

    def collect(self, version: int, weights: List[Any]) -> Union[List[np.ndarray], str]:
        """One fragment with the weights of ``version`` (``weights``: ``[ref]`` of a state dict,
        fetched only if newer than what this worker holds): its leaves as numpy arrays, or the
        traceback of what failed (as multi's workers report it)."""
        if self.error is not None:
            return self.error

        def pull(actor: torch.nn.Module, have: int) -> int:
            if version > have:
                import ray

                actor.load_state_dict(ray.get(weights[0]))
                return version
            return have

        try:
            self.worker.collect(self.fragment, pull)
        except Exception:
            self.error = traceback.format_exc()
            return self.error
        return self.leaves

    def heartbeat(self) -> int:
        """Env steps so far (answered while ``collect`` runs: its own concurrency group)."""
        return int(self.worker.progress[0]) if self.worker is not None else -1

    def identity(self) -> Dict[str, Any]:
        """Where this worker runs: ``pid`` and Ray ``node`` id (answered while ``collect`` runs)."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def _remote_worker(ray):
    """:class:`_Worker` as a Ray actor class whose ``heartbeat`` runs beside ``collect``."""

    class RolloutWorker(_Worker):
        @ray.method(concurrency_group="health")
        def heartbeat(self) -> int:
            return _Worker.heartbeat(self)

        @ray.method(concurrency_group="health")
        def identity(self) -> Dict[str, Any]:
            return _Worker.identity(self)

    return ray.remote(concurrency_groups={"health": 1})(RolloutWorker)


def _traceback(error: Exception) -> str:
    """The worker's traceback in a Ray task error, without Ray's terminal colours."""
    text = getattr(error, "traceback_str", None) or str(error)
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip()


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; dtypes numpy lacks (bfloat16) as an integer of their size."""
    try:
        return x.numpy()
    except TypeError:
        return x.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]).numpy()


class _Cluster:
    """The learner's side: Ray itself, the worker actors, the requests they hold (a :class:`Ledger`)."""

    def __init__(self, ray, address: Optional[str], options: Options, actor_options: Dict[str, Any]):
        self.ray, self.address, self.n_actors = ray, address, options.n_actors
        self.actor_options = actor_options
        self.ledger = Ledger(options.n_actors, None, options.stall_timeout, options.timeout)
        self.started = False  # this collector called ray.init (and shuts down or disconnects)
        self.workers: List[Any] = []
        self.inflight: Dict[Any, int] = {}  # collect ref -> worker index
        self.version = -1
        self.weights: Optional[List[Any]] = None  # [ref] of the latest published state dict
        self.asked: Dict[int, Any] = {}  # worker index -> heartbeat ref not yet answered
        self.last_ask = 0.0

    def start(self, seeds: Sequence[Any], spec: WorkerSpec) -> None:
        ray = self.ray
        if not ray.is_initialized():
            if self.address is None:  # room for every worker, as multi starts every process
                wanted = self.n_actors * self.actor_options.get("num_cpus", 1)
                ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(wanted))), include_dashboard=False)
            else:
                ray.init(address=self.address)
            self.started = True
        _register_exit_hook()  # after ray.init: atexit runs it before Ray's own shutdown
        remote = _remote_worker(ray)
        options = {"max_restarts": 0, "max_task_retries": 0, **self.actor_options}
        for index, seed in enumerate(seeds):
            self.workers.append(remote.options(**options).remote(spec, index, seed))
            self.ledger.moved(index, None, force=True)

    def publish(self, actor: Actor) -> None:
        """Put the learner's weights in the object store as the next version."""
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in actor.state_dict().items()}
        self.weights = [self.ray.put(state)]
        self.version += 1

    def request(self) -> None:
        """One collect request, to the worker with the fewest in flight."""
        index = self.ledger.pick()
        ref = self.workers[index].collect.remote(self.version, self.weights)
        self.ledger.give(index, ref)
        self.inflight[ref] = index

    def receive(self) -> tuple:
        """The next fragment a worker finished: ``(worker index, numpy leaves)``; raises WorkerError."""
        ray = self.ray
        while True:
            done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=_POLL)
            if done:
                ref = done[0]
                index = self.inflight.pop(ref)
                self.ledger.take(index, ref, in_order=False)  # Ray may report a later request first
                try:
                    leaves = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    raise WorkerError(f"worker {index} failed:\n{_traceback(error)}") from None
                except ray.exceptions.RayError as error:  # the actor, its process or its node is gone
                    raise WorkerError(
                        f"worker {index} died or became unreachable ({type(error).__name__}): {error}"
                    ) from None
                if isinstance(leaves, str):
                    raise WorkerError(f"worker {index} failed:\n{leaves}")
                return index, leaves
            self._check_stalls()

    def _check_stalls(self) -> None:
        """Ask busy workers for their heartbeat; report one that has not moved for ``stall_timeout``."""
        ray, ledger = self.ray, self.ledger
        for index, ref in list(self.asked.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                del self.asked[index]
                try:
                    ledger.moved(index, ray.get(ready[0]))
                except ray.exceptions.RayError:
                    continue  # its collect request reports what happened
        now = time.monotonic()
        if now - self.last_ask >= _BEAT:
            self.last_ask = now
            for index in range(self.n_actors):
                if ledger.load(index) and index not in self.asked:
                    self.asked[index] = self.workers[index].heartbeat.remote()
        overdue = ledger.overdue()
        if overdue is not None:
            index, seconds = overdue
            raise WorkerError(
                f"worker {index} made no progress for {seconds:.1f} s while holding {ledger.load(index)} collect "
                f"request(s) (stall_timeout={ledger.stall_timeout} s): an env that hangs in step/reset, a stopped "
                f"process, or an unreachable node. If its envs can legitimately pause for longer, raise "
                f"stall_timeout (None disables the check)."
            )

    def shutdown(self) -> None:
        """Ask the workers to close their envs (the close timeout in total), kill them, and stop or
        disconnect from Ray if this collector started it. Safe at interpreter exit."""
        ray, workers = self.ray, self.workers
        self.workers, self.inflight, self.asked = [], {}, {}
        self.ledger.closed = True
        if not ray.is_initialized():
            return
        try:
            if workers:
                closing = [w.close.remote() for w in workers]
                ray.wait(closing, num_returns=len(closing), timeout=self.ledger.timeout)
                for worker in workers:
                    ray.kill(worker, no_restart=True)
        finally:
            if self.started:
                self.started = False
                ray.shutdown()


_LIVE: "weakref.WeakSet[_Cluster]" = weakref.WeakSet()
_hooked = False


def _register_exit_hook() -> None:
    global _hooked
    if not _hooked:
        atexit.register(_shutdown_all)
        _hooked = True


def _shutdown_all() -> None:
    for cluster in list(_LIVE):
        try:
            cluster.shutdown()
        except Exception:
            pass


def _generate(cluster: _Cluster, actor: Actor, options: Options, spec: WorkerSpec, layout, route: Route, sync: bool):
    n_per_batch, n_per_actor = options.n_per_batch, options.n_per_actor
    try:
        _LIVE.add(cluster)
        cluster.start(options.seed.spawn(options.n_actors), spec)
        # Two batch buffers: the one the learner holds, and the one being filled.
        batches = [route.allocate(layout, options.n_steps, n_per_batch * n_per_actor) for _ in range(2)]
        blocks = [
            [
                [_as_numpy(x) for x in optree.tree_leaves(buffers.narrow(b, k * n_per_actor, n_per_actor))]
                for k in range(n_per_batch)
            ]
            for b in batches
        ]
        current = 0
        while True:
            cluster.publish(actor)
            wanted = n_per_batch if sync else options.n_buffers
            while len(cluster.inflight) < wanted:
                cluster.request()
            route.free(batches[current])  # no copy to the device still reads it
            for block in blocks[current]:
                _, leaves = cluster.receive()
                for dst, src in zip(block, leaves):
                    np.copyto(dst, src)
            batch = batches[current]
            current = 1 - current
            yield route.deliver(batch)
    finally:
        _LIVE.discard(cluster)
        route.close()
        cluster.shutdown()
