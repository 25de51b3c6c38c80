"""The worker's side of the protocol, one copy for the process pool and for Ray.

A worker owns ``n_per_actor`` envs (or the one VectorEnv its factory returns), a copy of the actor
on ``WorkerSpec.device`` (the CPU unless the user asked otherwise) and a running
:class:`rollout.core.Context`. :class:`Worker` is that state and its one operation, ``collect``
(pull the weights if newer, fill a fragment). Whatever carries the requests builds the same
:class:`Worker` from the same :class:`WorkerSpec`:

- a worker process of :mod:`rollout.pool` runs :func:`main`: it waits for a slot on its pipe,
  collects straight into that slot of the shared batch buffers and reports it;
- a Ray actor of :mod:`rollout.distributed` wraps a :class:`Worker` and answers ``collect``
  requests with numpy views of its own fragment buffer.

Progress: a worker counts env steps and phase changes in a ``(heartbeat, state)`` record (shared
memory for a process, read by the learner; a local array under Ray, read by a ``heartbeat``
request), which the learner's :class:`rollout.ledger.Ledger` turns into stall reports.

Death: a worker process asks Linux for SIGKILL when the thread that started it exits; that thread
is :mod:`rollout.launch`'s launcher, which lives as long as the learner process, so workers die
within milliseconds of the learner, even stuck in a C call that holds the GIL. Every wait in a
worker also checks the learner (for forkserver, whose workers are the server's children).
"""

import ctypes
import dataclasses
import multiprocessing
import os
import signal
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional

import cloudpickle
import numpy as np
import torch

from . import buffers, core
from .checks import Probe
from .envs import make_envs
from .seeds import seed_sequence
from .fragment import Fragment
from .options import Options
from .sync import WeightStore, WriterGone

__all__ = ["WorkerSpec", "Worker", "Shared", "main", "DOING", "LAUNCHED", "STARTING", "IDLE", "PULLING", "STEPPING"]

POLL = 0.2  # seconds between liveness checks in a worker's waits
# What a worker is doing, in its progress record: (heartbeat, state).
LAUNCHED, STARTING, IDLE, PULLING, STEPPING = 0, 1, 2, 3, 4
DOING = {
    LAUNCHED: "launched, not yet running its code",
    STARTING: "starting (building and resetting its envs)",
    IDLE: "idle",
    PULLING: "pulling weights",
    STEPPING: "stepping envs",
}


@dataclasses.dataclass
class WorkerSpec:
    """What every worker receives at its start, whatever the transport (pickled once per worker)."""

    factory: bytes  # the env factory, cloudpickled
    actor: bytes  # the actor's copy for workers, already on the worker device, cloudpickled
    n_steps: int  # T
    n_per_actor: int  # envs per worker
    sticky: bool
    env_info: Dict[str, np.ndarray]  # env-info keys and examples, as the probe found them
    batched: bool  # the factory returns a VectorEnv (the worker's whole batch)
    n_threads: int  # torch threads per worker
    close: bool  # close the envs when the worker stops
    nice: Optional[int] = None  # the learner's niceness, taken back by a worker started lower (Ray)

    @classmethod
    def of(cls, options: Options, probe: Probe, *, close: bool, nice: Optional[int] = None) -> "WorkerSpec":
        """The spec from a collector's options and what the probe found."""
        return cls(
            factory=probe.factory,
            actor=probe.actor,
            n_steps=options.n_steps,
            n_per_actor=options.n_per_actor,
            sticky=options.sticky,
            env_info=probe.env_info,
            batched=probe.batched,
            n_threads=options.n_threads,
            close=close,
            nice=nice,
        )


def torch_seed(seed: Any) -> int:
    """The torch seed a worker derives from its ``seed``: a word of the seed's own state (its envs'
    seeds come from the seed's children)."""
    return int(seed_sequence(seed).generate_state(2, np.uint32)[1])


class Worker:
    """A worker's envs, actor copy and running context.

    Parameters
    ----------
    spec : WorkerSpec
    index : int
        The worker's number, written into ``Fragment.worker``.
    seed : int, sequence of ints or SeedSequence
        Seeds its envs (as :func:`rollout.same.rollout` with this seed would) and torch.
    progress : np.ndarray, optional
        ``(2,)`` int64 ``(heartbeat, state)``; a local one if not given.
    """

    def __init__(self, spec: WorkerSpec, index: int, seed: Any, progress: Optional[np.ndarray] = None):
        self.progress = progress if progress is not None else np.zeros(2, dtype=np.int64)
        self.mark(STARTING)
        if spec.nice is not None and hasattr(os, "setpriority"):
            try:  # Ray nices its workers; come back to the learner's priority where allowed
                os.setpriority(os.PRIO_PROCESS, 0, spec.nice)
            except OSError:
                pass
        torch.set_num_threads(spec.n_threads)
        self.spec, self.have = spec, -1
        self.actor = cloudpickle.loads(spec.actor)
        factory = cloudpickle.loads(spec.factory)
        torch.manual_seed(torch_seed(seed))
        envs = make_envs(factory, 1 if spec.batched else spec.n_per_actor, seed)
        try:
            self.context = core.startup(
                envs, self.actor, spec.n_steps, sticky=spec.sticky, seed=seed, env_info=spec.env_info
            )
        except BaseException:
            if spec.close:
                envs.close()
            raise
        self.context.worker = index
        self.context.progress = self.progress[0:1]

    def mark(self, state: int) -> None:
        self.progress[1] = state
        self.progress[0] += 1

    def collect(self, fragment: Fragment, pull: Callable[[torch.nn.Module, int], int]) -> Fragment:
        """Load newer weights (``pull(actor, have) -> version held``), then fill ``fragment``."""
        self.mark(PULLING)
        self.have = pull(self.actor, self.have)
        self.mark(STEPPING)
        self.context.version = self.have
        return core.collect(self.context, fragment)

    def allocate(self) -> Fragment:
        """A fragment buffer of this worker's own (``(1+T, n_per_actor, ...)`` leaves)."""
        return self.context.allocate()

    def close(self) -> None:
        """Close the envs, if the spec says so."""
        if self.spec.close:
            self.context.close()


# ----------------------------------------------------------------------------------- processes
@dataclasses.dataclass
class Shared:
    """What a worker process shares with the learner besides its pipe (set up by :mod:`rollout.pool`)."""

    store: Optional[WeightStore]  # the weights
    batches: List[Fragment]  # the shared batch buffers; slot k of batch b is columns k*n_per_actor...
    n_per_batch: int  # slots per batch buffer
    progress: Optional[torch.Tensor]  # (n_actors, 2) int64: heartbeat and state per worker
    stop: Optional[torch.Tensor]  # (1,) int64: 1 = stop after the current fragment (no semaphore to leak)
    parent: int  # the learner's pid

    def release(self) -> None:
        """Drop the shared objects (freed when collected), even if a traceback keeps this record alive."""
        self.store = self.progress = self.stop = None
        self.batches = []


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the learner dies; exit now if it already has.

    Only where the learner is this process's parent (spawn, fork); under forkserver the parent is
    the server, and the worker's waits check the learner instead.
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


def main(index: int, seed: Any, pipe, spec: WorkerSpec, shared: Shared, stderr) -> None:
    """A worker process: :func:`serve`, then exit without the interpreter's teardown.

    The worker has cleaned up (envs closed, pipe closed) and sends nothing more; skipping the
    teardown (module and torch finalisers) makes ``close()`` under spawn about 0.4 s faster.
    """
    try:
        if stderr is not None:  # our code runs: back to the learner's stderr
            sys.stderr.flush()
            os.dup2(stderr.fileno(), 2)
            stderr.close()
        serve(index, seed, pipe, spec, shared)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)


def serve(index: int, seed: Any, pipe, spec: WorkerSpec, shared: Shared) -> None:
    """A worker process's loop: wait for a slot, collect into it, report ``("done", slot)``;
    an error is reported as ``("error", traceback)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle
    die_with_parent(shared.parent)
    progress = shared.progress.numpy()[index]  # (heartbeat, state), shared with the learner
    learner = multiprocessing.parent_process()  # its sentinel closes when the learner dies

    def alive() -> bool:
        return learner is None or learner.is_alive()

    worker = None
    try:
        n, k = spec.n_per_actor, shared.n_per_batch
        slots = [buffers.narrow(batch, j * n, n) for batch in shared.batches for j in range(k)]
        store, stop = shared.store, shared.stop.numpy()
        worker = Worker(spec, index, seed, progress)

        def pull(actor: torch.nn.Module, have: int) -> int:
            return store.pull(actor, have, alive)

        while True:
            worker.mark(IDLE)
            if not pipe.poll(POLL):
                if stop[0] or not alive():
                    break
                continue
            try:
                slot = pipe.recv()
            except EOFError:  # the learner closed its end
                break
            if slot is None or stop[0]:
                break
            worker.collect(slots[slot], pull)
            pipe.send(("done", slot))
    except WriterGone:
        pass  # the learner died while publishing: nobody to report to
    except BaseException:
        try:
            pipe.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        if worker is not None:
            try:
                worker.close()
            except Exception:
                pass
        pipe.close()
