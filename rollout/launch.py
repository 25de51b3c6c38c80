"""Start worker processes from one thread that lives as long as this process.

A worker asks Linux to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG``, see
:func:`rollout.worker.die_with_parent`), so that no worker outlives a learner killed with
``kill -9``, even one stuck in a C call that holds the GIL. The kernel's notion of the parent is
the *thread* that forked the child: had the learner's first ``next()`` (which starts the workers)
run in a prefetch thread or a thread pool that later ends, every worker would be killed with it.
So every worker process is started by the *launcher*: one daemon thread, started on first use,
that only starts processes and never exits before the process does. The collector itself may then
be iterated from any thread, one at a time.
"""

import os
import queue
import threading
from typing import Callable, Optional

__all__ = ["run"]

_lock = threading.Lock()
_jobs: Optional["queue.SimpleQueue"] = None
_thread: Optional[threading.Thread] = None


def _serve(jobs: "queue.SimpleQueue") -> None:
    while True:
        job, done, outcome = jobs.get()
        try:
            outcome.append(("ok", job()))
        except BaseException as error:  # re-raised in the caller's thread
            outcome.append(("error", error))
        finally:
            done.set()


def run(job: Callable[[], object]) -> object:
    """Run ``job()`` (which starts processes) in the launcher thread; return its result or raise its error."""
    global _jobs, _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _jobs = queue.SimpleQueue()
            _thread = threading.Thread(target=_serve, args=(_jobs,), name="rollout-launcher", daemon=True)
            _thread.start()
        jobs, thread = _jobs, _thread
    if threading.current_thread() is thread:
        return job()
    done, outcome = threading.Event(), []
    jobs.put((job, done, outcome))
    done.wait()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def _forget() -> None:
    """In a forked child the launcher thread does not exist: start a new one when needed."""
    global _jobs, _thread, _lock
    _jobs, _thread, _lock = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)
