"""Rollout engine: step batches of gymnasium environments with an actor into nested tensors.

- :mod:`rollout.same`, :mod:`rollout.single`, :mod:`rollout.multi`: the collectors, ``rollout()``
  in this process, in one double-buffered worker, in a load-balanced pool of workers; each returns
  a :class:`~rollout.feed.Feed` (iterate, ``close()``, ``stats()``);
- :mod:`rollout.distributed`: ``multi``'s contract on Ray actors, across machines (the ``ray``
  extra; import it explicitly: ``from rollout import distributed``);
- :mod:`rollout.fragment`: the data contract (``Fragment``, ``State``, ``Final``, ``episodes``);
- :mod:`rollout.actor`: the ``Actor`` base class and its contract;
- :mod:`rollout.sequence`: ``unroll``, a GRU or LSTM replayed over fragment rows with fused calls
  (the state zeroed at ``fin``), for recurrent actors;
- :mod:`rollout.options`: a collector's keyword arguments, checked once into one ``Options``;
- :mod:`rollout.checks`: everything checked before anything starts (arguments, this machine's
  device and file descriptors, the env and the actor on a probe env);
- :mod:`rollout.core`: the stepping kernel every collector runs (``startup``, ``collect``);
- :mod:`rollout.record`: the actor's outputs of a step, checked and copied into their rows;
- :mod:`rollout.envs`: gymnasium and legacy gym envs, batches of them, validation;
- :mod:`rollout.seeds`: one seed of any type to every env's and worker's seed, purely;
- :mod:`rollout.buffers`: preallocated (shared, pinned) fragment buffers;
- :mod:`rollout.delivery`: the one route from a collector's buffers to the learner's ``device``;
- :mod:`rollout.worker`: the worker's side of the protocol, shared by worker processes and Ray;
- :mod:`rollout.ledger`: the learner's bookkeeping of its workers (hand-out, progress, closing),
  shared by the process pool and Ray;
- :mod:`rollout.pool`: the learner's side of the worker processes behind ``single`` and ``multi``,
  and their failures;
- :mod:`rollout.launch`: the thread that starts worker processes, so they outlive no learner and
  die with no thread;
- :mod:`rollout.sync`: the weight store (a sequence lock in shared memory);
- :mod:`rollout.evaluate`: deterministic evaluation episodes;
- :mod:`rollout.errors`: the exception types.
"""

from . import errors
from .actor import Actor
from .sequence import unroll
from .fragment import Episodes, Final, Fragment, State, clone, episodes
from . import multi, same, single, sync
from .evaluate import Evaluation, evaluate

__all__ = [
    "Actor",
    "unroll",
    "Fragment",
    "State",
    "Final",
    "Episodes",
    "episodes",
    "clone",
    "errors",
    "same",
    "single",
    "multi",
    "sync",
    "evaluate",
    "Evaluation",
]
