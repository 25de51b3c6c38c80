"""The worker pool behind :mod:`rollout.single` and :mod:`rollout.multi`: processes, slots, failures.

:func:`collector` validates everything in the calling process, allocates the shared batch buffers
and returns the feed; the workers start at its first ``next()``. The parent owns the free fragment
slots and hands them out over each worker's own pipe, to the workers holding the fewest (at most
two each: the one being filled and the next), so no lock is shared between processes and a slow
worker stalls nobody. Weights go through :class:`rollout.sync.WeightStore`, a sequence lock. Each
worker keeps a ``(heartbeat, state)`` record in shared memory that the parent watches.

Failures, each reported by ``next()`` as :class:`~rollout.errors.WorkerError`, never a hang:

- an exception in a worker (factory, env, actor): with the worker's traceback, as soon as it is
  raised;
- a worker that dies (killed by a signal, ``os._exit``): within ``0.2`` s, naming the signal;
- a worker that dies before it runs our code (an import error in the main module, a script
  without an ``if __name__ == "__main__":`` guard under spawn): with the tail of its stderr, and
  for the missing guard, the fix;
- a worker that holds a slot and makes no progress (no env step, no weight copy) for
  ``stall_timeout`` seconds (default 60; a frozen process, SIGSTOP, a debugger, an env stuck in
  ``step``): naming it, its pid and what it was doing. A slow env is not a stuck one: the deadline
  is on progress, not on how long a fragment takes. A spawned (or forkserver) worker that has not
  started its code within ``max(stall_timeout, 60)`` s of its launch is reported the same way (a
  new interpreter imports torch first); a forked one within ``stall_timeout``.

No orphans: on Linux each worker asks the kernel for SIGKILL when the process that started it
dies (``PR_SET_PDEATHSIG``; strictly, when the *thread* that started the workers, the one that
first called ``next()``, exits), and every wait in a worker also checks its parent, so workers
exit within about a second when the learner dies, whatever they are doing. Closing
(``close(timeout=t)``, ``with``, garbage collection, interpreter exit) lets workers finish their
fragment, then terminates those still running when ``t`` (default: the collector's ``timeout``)
has passed, ``t`` in total however many are stuck, and frees every shared-memory buffer.
"""

import atexit
import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cloudpickle
import numpy as np
import optree
import torch

from . import buffers, checks, core
from .actor import Actor
from .envs import is_factory, make_batch, seed_sequence
from .errors import ActorContractError, ConfigurationError, WorkerError
from .feed import Feed, Source, close_all
from .fragment import Fragment
from .sync import WeightStore, WriterGone

__all__ = [
    "collector",
    "check",
    "Checked",
    "worker_context",
    "WorkerConfig",
    "positive",
    "DEFAULT_START_METHOD",
    "DEFAULT_STALL_TIMEOUT",
]

# spawn: a fresh interpreter per worker, safe whatever threads torch (OpenMP) or the user started
# in the parent; fork copies such threads' locks in whatever state they were. forkserver is also
# safe but leaves a server process behind, and workers must be the collector's only children.
DEFAULT_START_METHOD = "spawn"
DEFAULT_STALL_TIMEOUT = 60.0  # seconds without progress before a worker holding a slot is reported
_POLL = 0.2  # seconds between liveness checks in every wait
_DEPTH = 2  # slots a worker may hold: the one it fills and the next
_BOOT = 60.0  # seconds a spawned worker may take to start running our code (interpreter, imports)
# What a worker is doing, in its progress record: (heartbeat, state).
_LAUNCHED, _STARTING, _IDLE, _PULLING, _STEPPING = 0, 1, 2, 3, 4
_DOING = {
    _LAUNCHED: "launched, not yet running its code",
    _STARTING: "starting (building and resetting its envs)",
    _IDLE: "idle",
    _PULLING: "pulling weights",
    _STEPPING: "stepping envs",
}
_GUARD = (
    'the main module starts the collector without an `if __name__ == "__main__":` guard; under the spawn start '
    "method each worker imports the main module again and must not start collectors itself. Put the code that "
    'starts the collector under the guard:\n\n    if __name__ == "__main__":\n        main()\n'
)
atexit.register(close_all)


def positive(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, found {value!r}")
    return int(value)


def _torch_seed(seed: Union[None, int, np.random.SeedSequence]) -> int:
    return int(seed_sequence(seed).generate_state(2, np.uint32)[1])


@dataclasses.dataclass
class WorkerConfig:
    """What every worker receives at its start (pickled once per worker)."""

    factory: bytes  # the env factory, cloudpickled
    actor: bytes  # the actor, cloudpickled
    store: Optional[WeightStore]  # the weights, shared
    batches: List[Fragment]  # the shared batch buffers; slot k of batch b is columns k*n_per_actor...
    progress: Optional[torch.Tensor]  # (n_actors, 2) int64 shared: heartbeat and state per worker
    stop: Optional[torch.Tensor]  # (1,) int64 shared: 1 = stop after the current fragment (no semaphore to leak)
    parent: int  # the learner's pid
    n_steps: int  # T
    n_per_actor: int  # envs per worker
    n_per_batch: int  # slots per batch buffer
    sticky: bool
    env_info: Dict[str, np.ndarray]  # env-info keys and examples, as the probe found them
    n_threads: int  # torch threads per worker
    close: bool  # close the envs when the worker stops
    batched: bool  # the factory returns a VectorEnv (the worker's whole batch)

    def release(self) -> None:
        """Drop the shared objects (freed when collected), even if a traceback keeps this record alive."""
        self.store = self.progress = self.stop = None
        self.batches = []


@dataclasses.dataclass
class Checked:
    """What :func:`check` found: the arguments normalised, and the layout the probe env gave."""

    n_per_actor: int
    n_per_batch: int
    n_buffers: int
    device: Optional[torch.device]
    spec: Fragment  # example leaves of one row and column (see rollout.core.Context.spec)
    env_info: Dict[str, np.ndarray]  # env-info keys and examples, as the probe found them
    batched: bool  # the factory returns a VectorEnv (a worker's whole batch)
    factory: bytes  # cloudpickled
    actor: bytes  # cloudpickled


def check(
    factory: Any,
    actor: Actor,
    *,
    n_steps: int,
    n_actors: int,
    n_per_actor: int,
    n_per_batch: int,
    n_buffers: Optional[int],
    sticky: bool,
    device: Any,
    env_info: Any,
    n_threads: int,
    timeout: float,
    stall_timeout: Optional[float],
) -> Checked:
    """Validate a worker collector's arguments, env and actor in this process, before any worker
    starts (the env and the actor on a probe env built here and stepped in place).

    Shared by the process pool (:func:`collector`) and the Ray collector (:mod:`rollout.distributed`).
    ``n_buffers=None`` is enough for every worker to have one slot while the learner holds a batch.
    """
    n_actors = positive("n_actors", n_actors)
    n_per_actor = positive("n_per_actor", n_per_actor)
    n_per_batch = positive("n_per_batch", n_per_batch)
    positive("n_steps", n_steps)
    positive("n_threads", n_threads)
    if n_buffers is None:
        n_buffers = n_per_batch * max(2, -(-(n_actors + n_per_batch) // n_per_batch))
    n_buffers = positive("n_buffers", n_buffers)
    if n_buffers % n_per_batch or n_buffers < 2 * n_per_batch:
        raise ConfigurationError(
            f"n_buffers must be a multiple of n_per_batch={n_per_batch} and at least 2 * n_per_batch = "
            f"{2 * n_per_batch} (one batch for the learner, one being filled); found n_buffers={n_buffers}"
        )
    if stall_timeout is not None and (
        isinstance(stall_timeout, bool) or not isinstance(stall_timeout, (int, float)) or not stall_timeout > 0
    ):
        raise ConfigurationError(f"stall_timeout must be a positive number of seconds or None, found {stall_timeout!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigurationError(f"timeout must be a non-negative number of seconds, found {timeout!r}")
    if not is_factory(factory):
        raise ConfigurationError(
            f"worker collectors need an env factory (an env class, or a callable returning an env), found {type(factory).__name__}"
        )
    if not isinstance(actor, Actor):
        raise ActorContractError(f"expected an actor subclassing rollout.Actor, found {type(actor).__name__}")
    device = checks.device(device)
    try:
        payload_factory, payload_actor = cloudpickle.dumps(factory), cloudpickle.dumps(actor)
    except Exception as error:
        raise ConfigurationError(f"the factory and the actor must be picklable with cloudpickle: {error}") from error

    probe = make_batch(factory, 1, 0)
    try:
        if probe.batched and len(probe) != n_per_actor:
            raise ConfigurationError(
                f"the factory returns a VectorEnv of {len(probe)} envs: each worker steps one, so n_per_actor must be "
                f"{len(probe)}, found n_per_actor={n_per_actor}"
            )
        spec = core.startup(probe, actor, n_steps, sticky=sticky, seed=0, env_info=env_info, disposable=True).spec
    finally:
        probe.close()
    return Checked(
        n_per_actor=n_per_actor,
        n_per_batch=n_per_batch,
        n_buffers=n_buffers,
        device=device,
        spec=spec,
        env_info={key: np.zeros(x.shape[2:], dtype=x.numpy().dtype) for key, x in spec.env.items()},
        batched=probe.batched,
        factory=payload_factory,
        actor=payload_actor,
    )


def worker_context(
    factory: Any, actor: Actor, seed: Any, index: int, n_envs: int, n_steps: int, **options
) -> core.Context:
    """A worker's envs and running context: envs from ``factory`` seeded from ``seed`` (``n_envs``
    of them, or the one VectorEnv it returns), torch seeded from it too, and ``Fragment.worker``
    set to ``index``. ``options``: ``sticky``, ``env_info`` (the probe's examples), ``batched``,
    ``close`` (close the envs if the start fails)."""
    torch.manual_seed(_torch_seed(seed))
    batch = make_batch(factory, 1 if options["batched"] else n_envs, seed)
    try:
        context = core.startup(batch, actor, n_steps, sticky=options["sticky"], seed=seed, env_info=options["env_info"])
    except BaseException:
        if options["close"]:
            batch.close()
        raise
    context.worker = index
    return context


def collector(
    factory: Any,
    actor: Actor,
    *,
    n_steps: int,
    n_actors: int,
    n_per_actor: int,
    n_per_batch: int,
    n_buffers: Optional[int],
    seeds: Sequence[Any],
    sticky: bool,
    device: Any,
    pinned: bool,
    start_method: Optional[str],
    env_info: Any,
    n_threads: int,
    close: bool,
    timeout: float,
    stall_timeout: Optional[float],
) -> Feed:
    """The feed of a pool of ``n_actors`` workers, one seed each (see :func:`rollout.multi.rollout`).

    Validates everything in this process; the workers start at the first ``next()``.
    """
    start_method = start_method or DEFAULT_START_METHOD
    if start_method not in multiprocessing.get_all_start_methods():
        raise ConfigurationError(
            f"start_method must be one of {multiprocessing.get_all_start_methods()}, found {start_method!r}"
        )
    checked = check(
        factory,
        actor,
        n_steps=n_steps,
        n_actors=n_actors,
        n_per_actor=n_per_actor,
        n_per_batch=n_per_batch,
        n_buffers=n_buffers,
        sticky=sticky,
        device=device,
        env_info=env_info,
        n_threads=n_threads,
        timeout=timeout,
        stall_timeout=stall_timeout,
    )
    n_per_actor, n_per_batch, n_buffers, device, spec = (
        checked.n_per_actor,
        checked.n_per_batch,
        checked.n_buffers,
        checked.device,
        checked.spec,
    )
    n_batches = n_buffers // n_per_batch
    n_weights = len(actor.state_dict())
    checks.file_descriptors(
        n_batches * len(optree.tree_leaves(buffers.allocate(spec, 0, 1))) + n_weights + 2, 4 * n_actors + 8, n_buffers
    )

    context = torch.multiprocessing.get_context(start_method)
    pool = _Pool(context, n_actors, n_per_actor, n_per_batch, n_batches, spec, n_steps, timeout, stall_timeout)
    pool.store = WeightStore(actor)
    config = WorkerConfig(
        factory=checked.factory,
        actor=checked.actor,
        store=pool.store,
        batches=pool.batches,
        progress=pool.progress,
        stop=pool.stop,
        parent=os.getpid(),
        n_steps=n_steps,
        n_per_actor=n_per_actor,
        n_per_batch=n_per_batch,
        sticky=sticky,
        env_info=checked.env_info,
        n_threads=n_threads,
        close=close,
        batched=checked.batched,
    )
    source = Source(
        version=lambda: pool.store.version if pool.store is not None else -1,
        n_workers=n_actors,
        last_seen=pool.last_seen,
    )
    return Feed(_generate(pool, actor, seeds, config, device, pinned), on_close=pool.set_close_timeout, source=source)


class _Pool:
    """The processes, pipes and shared buffers of one collector, and the parent's side of the protocol.

    The parent owns the free slots and hands them out; ``held[i]`` are the slots worker ``i`` was
    given and has not reported yet, in order. ``progress[i] = (heartbeat, state)`` lives in shared
    memory: the worker counts env steps and phase changes, the parent watches it for stalls.
    """

    def __init__(self, context, n_actors, n_per_actor, n_per_batch, n_batches, spec, n_steps, timeout, stall_timeout):
        self.context, self.n_actors, self.n_per_batch = context, n_actors, n_per_batch
        self.timeout, self.stall_timeout = timeout, stall_timeout
        self.batches = [
            buffers.allocate(spec, n_steps, n_per_batch * n_per_actor, shared=True) for _ in range(n_batches)
        ]
        self.progress = torch.zeros((n_actors, 2), dtype=torch.int64).share_memory_()
        self.watch = self.progress.numpy()  # the parent's cheap view of it
        self.stop = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.processes: List[Any] = []
        self.pipes: List[Any] = []
        self.stderr: List[Any] = []  # per worker: a file holding what it wrote before running our code
        self.free: deque = deque()
        self.held: List[deque] = [deque() for _ in range(n_actors)]
        self.beat = [0] * n_actors  # last heartbeat seen
        self.since = [0.0] * n_actors  # when it last changed (or the worker was given work)
        self.next_worker = 0  # round robin among the least loaded
        self.stalled: set = set()  # workers reported as stuck
        # One poll object over every pipe and process sentinel, built once: building a selector at
        # every wait (multiprocessing.connection.wait) was a third of the learner's work per batch.
        self.poller: Optional[select.poll] = None
        self.fds: Dict[int, Tuple[str, int]] = {}  # fd -> ("pipe" or "exit", worker index)

    def set_close_timeout(self, timeout: Optional[float]) -> None:
        if timeout is not None:
            self.timeout = timeout

    def start(self, seeds, config: WorkerConfig) -> None:
        capture = self.context.get_start_method() == "spawn" and sys.platform != "win32"
        for index, seed in enumerate(seeds):
            parent, child = self.context.Pipe(duplex=True)
            log, stderr = (tempfile.TemporaryFile(), _stderr_handle()) if capture else (None, None)
            process = self.context.Process(
                target=_worker_main,
                args=(index, seed, child, config, stderr),
                daemon=True,
                name=f"rollout-worker-{index}",
            )
            try:
                if log is None:
                    process.start()
                else:
                    with _stderr_to(log):  # the child's stderr until it runs _worker_main, which restores ours
                        process.start()
            except BaseException:
                for end in (parent, log):
                    if end is not None:
                        end.close()
                raise
            finally:
                child.close()
                if stderr is not None:
                    stderr.close()
            self.processes.append(process)
            self.pipes.append(parent)
            self.stderr.append(log)
            self.since[index] = time.monotonic()
        self.poller = select.poll()
        for index, (pipe, process) in enumerate(zip(self.pipes, self.processes)):
            for kind, fd in (("pipe", pipe.fileno()), ("exit", process.sentinel)):
                self.fds[fd] = (kind, index)
                self.poller.register(fd, select.POLLIN)

    # ------------------------------------------------------------------------------- slots
    def release(self, slots) -> None:
        """Make ``slots`` free and hand out what can be handed out."""
        self.free.extend(slots)
        self.hand_out()

    def hand_out(self) -> None:
        """Give free slots to the workers holding the fewest, up to ``_DEPTH`` each."""
        while self.free:
            order = [(self.next_worker + k) % self.n_actors for k in range(self.n_actors)]
            index = min(order, key=lambda i: len(self.held[i]))
            if len(self.held[index]) >= _DEPTH:
                return
            slot = self.free.popleft()
            if not self.held[index]:  # its clock starts now: it was idle, which is no stall
                self.since[index] = time.monotonic()
                self.beat[index] = int(self.watch[index, 0])
            self.held[index].append(slot)
            self.next_worker = (index + 1) % self.n_actors
            try:
                self.pipes[index].send(slot)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._raise_for(index)

    # ------------------------------------------------------------------------------- waiting
    def receive(self) -> int:
        """The next slot a worker filled; raises WorkerError for a failure, a death or a stall.

        A dead or stalled worker is reported even while the others keep delivering.
        """
        while True:
            self._check_stalls()
            ready = {self.fds[fd] for fd, _ in self.poller.poll(_POLL * 1000)}  # any event: readable, hung up
            for index in range(self.n_actors):
                if ("exit", index) in ready:
                    self._raise_for(index)
            for index, pipe in enumerate(self.pipes):
                if ("pipe", index) in ready:
                    try:
                        message = pipe.recv()
                    except (EOFError, OSError):  # it died; under forkserver its exit shows up later
                        self._raise_for(index, wait=max(self.timeout, 1.0))
                    if message[0] == "error":
                        raise WorkerError(f"worker {index} (pid {self.processes[index].pid}) failed:\n{message[1]}")
                    slot = message[1]
                    if not self.held[index] or self.held[index][0] != slot:
                        raise WorkerError(f"worker {index} reported slot {slot}, but holds {list(self.held[index])}")
                    self.held[index].popleft()
                    self.since[index] = time.monotonic()
                    self.beat[index] = int(self.watch[index, 0])
                    self.hand_out()
                    return slot

    def _refresh(self, now: float) -> None:
        """Note the workers whose heartbeat moved since the last look."""
        for index in range(self.n_actors):
            beat = int(self.watch[index, 0])
            if beat != self.beat[index]:
                self.beat[index], self.since[index] = beat, now

    def last_seen(self) -> List[Optional[float]]:
        """Per worker, seconds since its heartbeat last moved (None once closed)."""
        if self.watch is None:
            return [None] * self.n_actors
        now = time.monotonic()
        self._refresh(now)
        return [now - since for since in self.since]

    def _check_stalls(self) -> None:
        if self.stall_timeout is None:
            return
        now = time.monotonic()
        self._refresh(now)
        for index in range(self.n_actors):
            state = int(self.watch[index, 1])
            if not self.held[index] and state != _LAUNCHED:
                continue  # idle, and nobody waits for it
            booting = state == _LAUNCHED and self.context.get_start_method() != "fork"  # fork runs our code at once
            limit = max(self.stall_timeout, _BOOT) if booting else self.stall_timeout
            if now - self.since[index] > limit:
                process = self.processes[index]
                if not process.is_alive():
                    self._raise_for(index)
                self.stalled.add(index)  # shutdown will not wait for it
                raise WorkerError(
                    f"worker {index} (pid {process.pid}) made no progress for {now - self.since[index]:.1f} s while "
                    f"{_DOING[state]}, holding fragment slot(s) {list(self.held[index])} (stall_timeout={self.stall_timeout} "
                    f"s). It is alive but stuck or stopped: an env or simulator that hangs in step/reset, a debugger, "
                    f"SIGSTOP. If its envs can legitimately pause for longer, raise stall_timeout (None disables the check)."
                )

    def _raise_for(self, index: int, wait: float = 1.0) -> None:
        """Raise the error a dead worker reported, or say how it died (waiting up to ``wait`` s)."""
        pipe, process = self.pipes[index], self.processes[index]
        try:
            while pipe.poll():
                message = pipe.recv()
                if message[0] == "error":
                    raise WorkerError(f"worker {index} (pid {process.pid}) failed:\n{message[1]}")
        except (EOFError, OSError):
            pass
        process.join(wait)  # reap it, so that exitcode is known
        code = process.exitcode
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exited with code {code}"
        )
        state = int(self.watch[index, 1])
        message = f"worker {index} (pid {process.pid}) {how} while {_DOING[state]}, without reporting an error"
        tail = _tail(self.stderr[index]) if state == _LAUNCHED else ""
        if tail:
            message += f"; the end of its stderr:\n\n{tail}"
            if "bootstrapping phase" in tail:
                message += f"\n\nThe cause: {_GUARD}"
        raise WorkerError(message)

    # ------------------------------------------------------------------------------- closing
    def shutdown(self) -> None:
        """Stop every worker within ``self.timeout`` seconds in total, then free everything."""
        deadline = time.monotonic() + self.timeout
        self.stop[0] = 1
        for index in self.stalled:
            self.processes[index].kill()  # stuck or stopped: it would not exit by itself
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except Exception:
                pass
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        stuck = [p for p in self.processes if p.is_alive()]
        for process in stuck:
            process.terminate()
        end = time.monotonic() + 0.5
        for process in stuck:
            process.join(max(0.0, end - time.monotonic()))
        for process in stuck:
            if process.is_alive():
                process.kill()  # SIGKILL also ends a stopped process
        for process in stuck:
            process.join(1.0)
        for pipe in self.pipes:
            pipe.close()
        for log in self.stderr:
            if log is not None:
                log.close()
        # Shared memory is freed when its tensors are collected: drop every reference now, even if a
        # traceback keeps this object alive. (The pool uses no named semaphore, which a killed
        # learner could leave in /dev/shm: stop is a flag in shared memory.)
        self.processes, self.pipes, self.batches, self.stderr = [], [], [], []
        self.poller, self.fds = None, {}
        self.stop = self.store = self.progress = self.watch = None


class _stderr_to:
    """Point this process's file descriptor 2 at ``file`` for the ``with`` block (for a child to inherit)."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        for stream in (sys.stderr, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def _stderr_handle():
    """This process's stderr as a picklable handle: a spawned child receives a duplicate of the descriptor."""
    return multiprocessing.connection.Connection(os.dup(2), readable=False, writable=True)


def _tail(log, size: int = 4000, lines: int = 25) -> str:
    """The last ``lines`` lines of a captured stderr file."""
    if log is None:
        return ""
    try:
        log.flush()
        length = log.seek(0, os.SEEK_END)
        log.seek(max(0, length - size))
        text = log.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _generate(pool: _Pool, actor: Actor, seeds, config: WorkerConfig, device, pinned):
    staging, event = None, None
    try:
        pool.store.publish(actor)  # version 0: the weights as they are at the first next()
        pool.start(seeds, config)
        n_batches, n_per_batch = len(pool.batches), pool.n_per_batch
        pool.release(range(n_batches * n_per_batch))
        filled = [0] * n_batches
        ready, held = deque(), None
        while True:
            if held is not None:
                pool.store.publish(actor)
                filled[held] = 0
                pool.release(range(held * n_per_batch, (held + 1) * n_per_batch))
            while not ready:
                batch = pool.receive() // n_per_batch
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
                staging = optree.tree_map(
                    lambda x: torch.empty_like(x).pin_memory() if torch.cuda.is_available() else torch.empty_like(x),
                    batch,
                )
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
        config.release()


# ----------------------------------------------------------------------------------- the worker
def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the learner dies; exit now if it already has.

    Only where the learner is this process's parent (spawn, fork); under forkserver the parent is
    the server, and the workers' waits check the learner instead.
    """
    if os.getppid() != parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(0)


def _worker_main(index, seed, pipe, config: WorkerConfig, stderr) -> None:
    """The worker process: :func:`_work`, then exit without the interpreter's teardown.

    The worker has cleaned up (envs closed, pipe closed) and sends nothing more; skipping the
    teardown (module and torch finalisers) makes ``close()`` under spawn about 0.4 s faster.
    """
    try:
        if stderr is not None:  # our code runs: back to the parent's stderr
            sys.stderr.flush()
            os.dup2(stderr.fileno(), 2)
            stderr.close()
        _work(index, seed, pipe, config)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)


def _work(index: int, seed, pipe, config: WorkerConfig) -> None:
    """A worker's main loop: wait for a slot, pull weights if they changed, collect, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    parent = config.parent
    _die_with_parent(parent)
    progress = config.progress.numpy()[index]  # (heartbeat, state), shared with the parent

    def mark(state: int) -> None:
        progress[1] = state
        progress[0] += 1

    learner = multiprocessing.parent_process()  # its sentinel closes when the learner dies

    def alive() -> bool:
        return learner is None or learner.is_alive()

    mark(_STARTING)
    torch.set_num_threads(config.n_threads)
    batch = None
    try:
        factory = cloudpickle.loads(config.factory)
        actor = cloudpickle.loads(config.actor)
        n_per_actor, n_per_batch = config.n_per_actor, config.n_per_batch
        slots = [buffers.narrow(b, k * n_per_actor, n_per_actor) for b in config.batches for k in range(n_per_batch)]
        mark(_STARTING)
        context = worker_context(
            factory,
            actor,
            seed,
            index,
            n_per_actor,
            config.n_steps,
            sticky=config.sticky,
            env_info=config.env_info,
            batched=config.batched,
            close=config.close,
        )
        batch = context.envs
        context.progress = progress[0:1]
        store, stop = config.store, config.stop.numpy()
        have = -1
        while True:
            mark(_IDLE)
            if not pipe.poll(_POLL):
                if stop[0] or not alive():
                    break
                continue
            try:
                slot = pipe.recv()
            except EOFError:  # the parent closed its end
                break
            if slot is None or stop[0]:
                break
            mark(_PULLING)
            have = store.pull(actor, have, alive)
            mark(_STEPPING)
            context.version = have
            core.collect(context, slots[slot])
            pipe.send(("done", slot))
    except WriterGone:
        pass  # the learner died while publishing: nobody to report to
    except BaseException:
        try:
            pipe.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        if batch is not None and config.close:
            try:
                batch.close()
            except Exception:
                pass
        pipe.close()
