"""``Feed``: the iterator every ``rollout()`` returns; a generator that is also a context manager.

Closing it (``close()``, leaving a ``with`` block, garbage collection, interpreter exit) runs the
generator's ``finally`` block, which releases what the collector holds.

``stats()`` answers "am I env-bound or learner-bound?": the feed times each ``next()`` (the
learner waiting for data) and the time between calls (the learner working), and counts env steps,
episodes, per-worker steps and the lag of every yielded column, from the fragments themselves.
The counts stay on the fragments' device (numpy arrays on CPU, tensors elsewhere: no
synchronisation per batch); ``stats()`` reads them.
"""

import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional

import numpy as np
import torch

__all__ = ["Feed", "Source"]

_OPEN: "weakref.WeakSet[Feed]" = weakref.WeakSet()


_LAGS = 32  # lag histogram bins; the last one counts lags of 31 or more


@dataclass
class Source:
    """What a collector tells :meth:`Feed.stats` beyond the fragments.

    ``version()``: the latest published weight version (a column's lag is that minus its
    ``Fragment.version``, at the moment it is yielded); ``n_workers``: workers (1 for in-process
    collectors); ``last_seen()``: per worker, seconds since it last made progress (or None).
    """

    version: Callable[[], int]
    n_workers: int = 1
    last_seen: Optional[Callable[[], List[float]]] = None


class Feed(Iterator):
    """Wraps a collector's generator; iterate it, then close it (or use ``with``)."""

    def __init__(
        self,
        generator: Generator,
        on_close: Optional[Callable[[Optional[float]], None]] = None,
        source: Optional[Source] = None,
    ):
        self._generator = generator
        self._on_close = on_close  # receives close()'s timeout before the generator is closed
        self._source = source or Source(version=lambda: 0)
        self._start = self._returned = None  # perf_counter at the first next() and at the last return
        self._wait = self._work = 0.0  # seconds inside next(), and between next() calls
        self._fragments = 0
        self._counts: Optional[Dict[str, Any]] = None  # numpy arrays, or tensors on the fragments' device
        self._last: Optional[Dict[str, Any]] = None  # totals at the previous stats() call
        _OPEN.add(self)

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> Any:
        called = time.perf_counter()
        if self._returned is None:
            self._start = called
        else:
            self._work += called - self._returned
        fragment = next(self._generator)
        self._returned = time.perf_counter()
        self._wait += self._returned - called
        self._fragments += 1
        self._count(fragment)
        return fragment

    def _count(self, fragment: Any) -> None:
        """Add the fragment's env steps, episodes, per-worker steps and lags to the running counts
        (numpy on CPU, a fraction of torch's cost on such small arrays; torch, unsynchronised, else)."""
        fin, length, worker, version = (
            fragment.state.fin,
            fragment.final.episode_length,
            fragment.worker,
            fragment.version,
        )
        if self._counts is None:
            self._counts = self._zeros(fin.device)
        counts, cpu = self._counts, self._cpu
        if cpu:
            fin, length, version = fin.numpy(), length.numpy(), version.numpy()
            worker = worker.numpy() if worker is not None else None
        fin, ended = fin[1:], length[1:] > 0
        # A step into row t is real unless that row is a frozen (sticky) row: fin without an episode end.
        frozen = fin > ended  # fin & ~ended
        lag = self._source.version() - version
        if cpu:  # ufuncs called directly: their wrappers (sum, clip) cost more than the work here
            steps = fin.shape[0] - np.add.reduce(frozen, 0)  # (B,)
            counts["env_steps"] += np.add.reduce(steps)
            counts["episodes"] += np.count_nonzero(ended)
            if worker is not None:
                np.add.at(counts["worker_steps"], worker, steps)
            counts["lag"] += np.bincount(np.minimum(np.maximum(lag, 0), _LAGS - 1), minlength=_LAGS)
        else:
            steps = fin.shape[0] - frozen.sum(0)
            counts["env_steps"] += steps.sum()
            counts["episodes"] += ended.sum()
            if worker is not None:
                counts["worker_steps"].index_add_(0, worker.to(fin.device), steps)
            counts["lag"] += torch.bincount(lag.clip(0, _LAGS - 1).to(fin.device), minlength=_LAGS)

    def _zeros(self, device: torch.device) -> Dict[str, Any]:
        """The running counts, zero: numpy arrays for CPU fragments, else tensors on their device."""
        self._cpu = device.type == "cpu"
        if self._cpu:
            zeros = lambda n: np.zeros(n, dtype=np.int64)  # noqa: E731
        else:
            zeros = lambda n: torch.zeros(n, dtype=torch.int64, device=device)  # noqa: E731
        return {
            "env_steps": zeros(()),
            "episodes": zeros(()),
            "worker_steps": zeros(self._source.n_workers),
            "lag": zeros(_LAGS),
        }

    def stats(self) -> Dict[str, Any]:
        """Plain numbers on the collection so far and since the previous call.

        Returns a dict: ``elapsed_s`` since the first ``next()``; ``total`` and ``recent`` (since
        the previous ``stats()``), each with ``env_steps``, ``env_steps_per_s``, ``fragments``,
        ``episodes``, ``wait_s`` (time the learner spent inside ``next()`` waiting for data),
        ``learner_s`` (time between ``next()`` calls: the learner's own work) and
        ``wait_fraction`` (``wait_s / (wait_s + learner_s)``: near 1 env-bound, near 0
        learner-bound); ``lag``: ``{versions behind: columns}`` over all yielded columns (the
        last bin, 31, counts 31 or more); ``workers``: per worker, ``env_steps``,
        ``env_steps_per_s`` and ``last_seen_s`` (seconds since its last progress; None for
        in-process collectors).
        """
        now = time.perf_counter()
        elapsed = 0.0 if self._start is None else now - self._start
        counts = {k: v.tolist() for k, v in self._counts.items()} if self._counts is not None else None
        total = {
            "elapsed_s": elapsed,
            "env_steps": counts["env_steps"] if counts else 0,
            "fragments": self._fragments,
            "episodes": counts["episodes"] if counts else 0,
            "wait_s": self._wait,
            "learner_s": self._work + (now - self._returned if self._returned is not None else 0.0),
        }
        last = self._last or {key: 0 for key in total}
        self._last = total
        recent = {key: total[key] - last[key] for key in total}
        worker_steps = counts["worker_steps"] if counts else [0] * self._source.n_workers
        seen = self._source.last_seen() if self._source.last_seen is not None else [None] * len(worker_steps)
        return {
            "elapsed_s": elapsed,
            "total": _rates(total),
            "recent": _rates(recent),
            "lag": {k: n for k, n in enumerate(counts["lag"]) if n} if counts else {},
            "workers": [
                {"worker": i, "env_steps": n, "env_steps_per_s": n / elapsed if elapsed > 0 else 0.0, "last_seen_s": s}
                for i, (n, s) in enumerate(zip(worker_steps, seen))
            ],
        }

    def send(self, value: Any) -> Any:
        return self._generator.send(value)

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop collection and release envs, workers and shared memory; idempotent.

        ``timeout``: seconds to wait, in total, for worker processes to stop before they are
        terminated (default: the collector's ``timeout``); in-process collectors ignore it.
        """
        if self._on_close is not None:
            self._on_close(timeout)
        self._generator.close()
        _OPEN.discard(self)

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _rates(window: Dict[str, Any]) -> Dict[str, Any]:
    busy = window["wait_s"] + window["learner_s"]
    out = {key: value for key, value in window.items() if key != "elapsed_s"}
    out["env_steps_per_s"] = window["env_steps"] / window["elapsed_s"] if window["elapsed_s"] > 0 else 0.0
    out["wait_fraction"] = window["wait_s"] / busy if busy > 0 else 0.0
    return out


def close_all() -> None:
    """Close every open feed (registered with :mod:`atexit` by the worker collectors)."""
    for feed in list(_OPEN):
        feed.close()
