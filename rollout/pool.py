"""The learner's side of the worker processes behind :mod:`rollout.single` and :mod:`rollout.multi`.

:func:`collector` checks everything in the calling process (:mod:`rollout.checks`), allocates the
shared batch buffers and returns the feed; the workers (:func:`rollout.worker.main`) start at its
first ``next()``. The learner owns the free fragment slots and hands them out over each worker's
own pipe, to the workers holding the fewest (at most two each: the one being filled and the
next; :class:`rollout.ledger.Ledger`), so no lock is shared between processes and a slow worker
stalls nobody. Weights go through :class:`rollout.sync.WeightStore`, a sequence lock. Each worker
keeps a ``(heartbeat, state)`` record in shared memory that the learner watches. Batches reach the
learner's ``device`` through :class:`rollout.delivery.Route`.

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

Threads and lifetime: the feed may be iterated from any thread, one at a time, and its first
``next()`` (which starts the workers) may come from a thread that then exits. Workers are started
by :mod:`rollout.launch`'s launcher thread, which lives as long as the learner process, and on
Linux each asks the kernel for SIGKILL when that thread ends (``PR_SET_PDEATHSIG``): workers die
within milliseconds when the learner process dies (``kill -9`` included), even in a C call that
holds the GIL, and every wait in a worker also checks the learner. Closing (``close(timeout=t)``,
``with``, garbage collection, interpreter exit) lets workers finish their fragment, then
terminates those still running when ``t`` (default: the collector's ``timeout``) has passed, ``t``
in total however many are stuck, and frees every shared-memory buffer.
"""

import atexit
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import tempfile
import time
from collections import deque
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optree
import torch

from . import buffers, checks, launch, worker
from .actor import Actor
from .delivery import Route
from .errors import WorkerError
from .feed import Feed, Source, close_all
from .ledger import Ledger
from .options import Options
from .sync import WeightStore
from .worker import LAUNCHED, DOING, Shared, WorkerSpec

__all__ = ["collector"]

_POLL = 0.2  # seconds between liveness checks in the learner's waits
_DEPTH = 2  # slots a worker may hold: the one it fills and the next
_BOOT = 60.0  # seconds a spawned worker may take to start running our code (interpreter, imports)
_GUARD = (
    'the main module starts the collector without an `if __name__ == "__main__":` guard; under the spawn start '
    "method each worker imports the main module again and must not start collectors itself. Put the code that "
    'starts the collector under the guard:\n\n    if __name__ == "__main__":\n        main()\n'
)
atexit.register(close_all)


def collector(factory: Any, actor: Actor, options: Options, seeds: Sequence[Any]) -> Feed:
    """The feed of a pool of ``options.n_actors`` workers, worker ``i`` seeded with ``seeds[i]``
    (see :func:`rollout.multi.rollout`). Checks everything here; the workers start at the first ``next()``."""
    probe = checks.probe(factory, actor, options)
    n_tensors = options.n_batches * len(optree.tree_leaves(buffers.allocate(probe.spec, 0, 1)))
    checks.file_descriptors(n_tensors + len(actor.state_dict()) + 2, 4 * options.n_actors + 8, options.n_buffers)
    spec = WorkerSpec.of(options, probe, close=options.close)
    pool = _Pool(options, probe.spec)
    pool.store = WeightStore(actor)
    source = Source(version=pool.version, n_workers=options.n_actors, last_seen=pool.last_seen)
    route = Route(options.device, options.pinned)
    return Feed(_generate(pool, actor, seeds, spec, route), on_close=pool.ledger.set_close_timeout, source=source)


class _Pool:
    """The processes, pipes and shared buffers of one collector, and the learner's side of the protocol.

    The learner owns the free slots and hands them out (``ledger.held[i]``: the slots worker ``i``
    was given and has not reported yet, in order). ``progress[i] = (heartbeat, state)`` lives in
    shared memory: the worker counts env steps and phase changes, the learner watches it.
    """

    def __init__(self, options: Options, spec):
        n_actors, n_per_batch = options.n_actors, options.n_per_batch
        self.mp = torch.multiprocessing.get_context(options.start_method)
        self.n_actors, self.n_per_batch = n_actors, n_per_batch
        self.ledger = Ledger(n_actors, _DEPTH, options.stall_timeout, options.timeout)
        B = n_per_batch * options.n_per_actor
        self.batches = [buffers.allocate(spec, options.n_steps, B, shared=True) for _ in range(options.n_batches)]
        self.progress = torch.zeros((n_actors, 2), dtype=torch.int64).share_memory_()
        self.watch = self.progress.numpy()  # the learner's cheap view of it
        self.stop = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.store: Optional[WeightStore] = None
        self.shared: Optional[Shared] = None  # what the workers receive besides their pipes
        self.processes: List[Any] = []
        self.pipes: List[Any] = []
        self.stderr: List[Any] = []  # per worker: a file holding what it wrote before running our code
        self.free: deque = deque()
        self.stalled: set = set()  # workers reported as stuck
        # One poll object over every pipe and process sentinel, built once: building a selector at
        # every wait (multiprocessing.connection.wait) was a third of the learner's work per batch.
        self.poller: Optional[select.poll] = None
        self.fds: Dict[int, Tuple[str, int]] = {}  # fd -> ("pipe" or "exit", worker index)

    def version(self) -> int:
        return self.store.version if self.store is not None else -1

    def start(self, seeds: Sequence[Any], spec: WorkerSpec) -> None:
        """Start the workers from the launcher thread (see :mod:`rollout.launch`)."""
        self.shared = Shared(self.store, self.batches, self.n_per_batch, self.progress, self.stop, os.getpid())
        launch.run(lambda: self._start(seeds, spec))
        self.poller = select.poll()
        for index, (pipe, process) in enumerate(zip(self.pipes, self.processes)):
            for kind, fd in (("pipe", pipe.fileno()), ("exit", process.sentinel)):
                self.fds[fd] = (kind, index)
                self.poller.register(fd, select.POLLIN)

    def _start(self, seeds: Sequence[Any], spec: WorkerSpec) -> None:
        capture = self.mp.get_start_method() == "spawn" and sys.platform != "win32"
        shared = self.shared
        for index, seed in enumerate(seeds):
            learner_end, worker_end = self.mp.Pipe(duplex=True)
            log, stderr = (tempfile.TemporaryFile(), _stderr_handle()) if capture else (None, None)
            process = self.mp.Process(
                target=worker.main,
                args=(index, seed, worker_end, spec, shared, stderr),
                daemon=True,
                name=f"rollout-worker-{index}",
            )
            try:
                if log is None:
                    process.start()
                else:
                    with _stderr_to(log):  # the child's stderr until it runs worker.main, which restores ours
                        process.start()
            except BaseException:
                for end in (learner_end, log):
                    if end is not None:
                        end.close()
                raise
            finally:
                worker_end.close()
                if stderr is not None:
                    stderr.close()
            self.processes.append(process)
            self.pipes.append(learner_end)
            self.stderr.append(log)
            self.ledger.moved(index, None, force=True)

    # ------------------------------------------------------------------------------- slots
    def release(self, slots) -> None:
        """Make ``slots`` free and hand out what can be handed out."""
        self.free.extend(slots)
        while self.free:
            index = self.ledger.pick()
            if index is None:
                return
            slot = self.free.popleft()
            self.ledger.give(index, slot, beat=int(self.watch[index, 0]))
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
                        self._raise_for(index, wait=max(self.ledger.timeout, 1.0))
                    if message[0] == "error":
                        raise WorkerError(f"worker {index} (pid {self.processes[index].pid}) failed:\n{message[1]}")
                    slot = message[1]
                    try:
                        self.ledger.take(index, slot, in_order=True, beat=int(self.watch[index, 0]))
                    except LookupError as error:
                        raise WorkerError(str(error)) from None
                    self.release(())
                    return slot

    def _limit(self, index: int) -> Optional[float]:
        """Seconds worker ``index`` may go without progress now (None: not watched)."""
        state = int(self.watch[index, 1])
        if not self.ledger.held[index] and state != LAUNCHED:
            return None  # idle, and nobody waits for it
        booting = state == LAUNCHED and self.mp.get_start_method() != "fork"  # fork runs our code at once
        return max(self.ledger.stall_timeout, _BOOT) if booting else self.ledger.stall_timeout

    def _check_stalls(self) -> None:
        if self.ledger.stall_timeout is None:
            return
        self._refresh()
        overdue = self.ledger.overdue(self._limit)
        if overdue is None:
            return
        index, seconds = overdue
        process = self.processes[index]
        if not process.is_alive():
            self._raise_for(index)
        self.stalled.add(index)  # shutdown will not wait for it
        state = int(self.watch[index, 1])
        raise WorkerError(
            f"worker {index} (pid {process.pid}) made no progress for {seconds:.1f} s while {DOING[state]}, holding "
            f"fragment slot(s) {list(self.ledger.held[index])} (stall_timeout={self.ledger.stall_timeout} s). It is "
            f"alive but stuck or stopped: an env or simulator that hangs in step/reset, a debugger, SIGSTOP. If its "
            f"envs can legitimately pause for longer, raise stall_timeout (None disables the check)."
        )

    def _refresh(self) -> None:
        """Tell the ledger every worker's heartbeat (from the shared progress record)."""
        for index in range(self.n_actors):
            self.ledger.moved(index, int(self.watch[index, 0]))

    def last_seen(self) -> List[Optional[float]]:
        if self.watch is not None:
            self._refresh()
        return self.ledger.last_seen()

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
        message = f"worker {index} (pid {process.pid}) {how} while {DOING[state]}, without reporting an error"
        tail = _tail(self.stderr[index]) if state == LAUNCHED else ""
        if tail:
            message += f"; the end of its stderr:\n\n{tail}"
            if "bootstrapping phase" in tail:
                message += f"\n\nThe cause: {_GUARD}"
        raise WorkerError(message)

    # ------------------------------------------------------------------------------- closing
    def shutdown(self) -> None:
        """Stop every worker within the close timeout in total, then free everything."""
        deadline = self.ledger.deadline()
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
        if self.shared is not None:
            self.shared.release()
        self.ledger.closed = True


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


def _generate(pool: _Pool, actor: Actor, seeds: Sequence[Any], spec: WorkerSpec, route: Route):
    try:
        pool.store.publish(actor)  # version 0: the weights as they are at the first next()
        pool.start(seeds, spec)
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
            yield route.deliver(pool.batches[held])  # a staged copy is taken before the buffer is released
    finally:
        route.close()
        pool.shutdown()
