"""The learner's bookkeeping of its workers, one copy for the process pool and for Ray.

:class:`Ledger` knows, per worker, what it holds (fragment slots handed out over a pipe, or
collect requests sent to a Ray actor), in the order it was given them; it hands work to the
worker holding the fewest (round robin among equals, up to ``depth`` each); it keeps each
worker's progress clock (the last heartbeat seen and when it moved, restarted when an idle
worker is given work, since idling is no stall); and it holds the close timeout. What a
transport adds is only how work travels and how a worker is seen to die.
"""

import time
from collections import deque
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["Ledger"]


class Ledger:
    """Who holds what, and when each worker last made progress.

    Parameters
    ----------
    n_workers : int
    depth : int, optional
        Most items a worker may hold (None: no limit).
    stall_timeout : float, optional
        Seconds a worker holding work may go without progress (None: never reported).
    timeout : float
        Seconds closing may take in total (``set_close_timeout`` changes it once).
    """

    def __init__(self, n_workers: int, depth: Optional[int], stall_timeout: Optional[float], timeout: float):
        self.n_workers, self.depth = n_workers, depth
        self.stall_timeout, self.timeout = stall_timeout, timeout
        self.held: List[deque] = [deque() for _ in range(n_workers)]
        self.beat = [-1] * n_workers  # the last heartbeat seen
        self.since = [time.monotonic()] * n_workers  # when it last moved (or the worker was given work)
        self.next_worker = 0  # round robin among the least loaded
        self.closed = False

    def set_close_timeout(self, timeout: Optional[float]) -> None:
        if timeout is not None:
            self.timeout = timeout

    # --------------------------------------------------------------------------- hand-out
    def pick(self) -> Optional[int]:
        """The worker to give the next item: the one holding the fewest (None: all are full)."""
        order = [(self.next_worker + k) % self.n_workers for k in range(self.n_workers)]
        index = min(order, key=lambda i: len(self.held[i]))
        if self.depth is not None and len(self.held[index]) >= self.depth:
            return None
        return index

    def give(self, index: int, item: Any, beat: Optional[int] = None) -> None:
        """Note that worker ``index`` now holds ``item`` (its clock starts if it held nothing)."""
        if not self.held[index]:
            self.moved(index, beat, force=True)
        self.held[index].append(item)
        self.next_worker = (index + 1) % self.n_workers

    def take(self, index: int, item: Any, *, in_order: bool, beat: Optional[int] = None) -> None:
        """Worker ``index`` delivered ``item`` (its clock restarts; ``beat``: its heartbeat now);
        ``in_order``: it must be the oldest it holds.

        Raises ``LookupError`` if it does not hold it (or, in order, it is not the oldest).
        """
        held = self.held[index]
        if item not in held or (in_order and held[0] != item):
            raise LookupError(f"worker {index} delivered {item!r}, but holds {list(held)}")
        held.remove(item)
        self.moved(index, beat, force=True)

    def load(self, index: int) -> int:
        return len(self.held[index])

    # --------------------------------------------------------------------------- progress
    def moved(self, index: int, beat: Optional[int], *, force: bool = False, now: Optional[float] = None) -> None:
        """Record worker ``index``'s heartbeat ``beat``; its clock restarts if it changed (or ``force``)."""
        if force or (beat is not None and beat != self.beat[index]):
            self.since[index] = time.monotonic() if now is None else now
        if beat is not None:
            self.beat[index] = beat

    def overdue(self, limit: Optional[Callable[[int], Optional[float]]] = None) -> Optional[Tuple[int, float]]:
        """The first worker whose clock passed its limit: ``(index, seconds)``, or None.

        ``limit(index)``: that worker's allowance in seconds, None if it is not watched; by
        default ``stall_timeout`` for a worker holding work.
        """
        if limit is None:
            if self.stall_timeout is None:
                return None
            limit = self._holding
        now = time.monotonic()
        for index in range(self.n_workers):
            allowance = limit(index)
            if allowance is not None and now - self.since[index] > allowance:
                return index, now - self.since[index]
        return None

    def _holding(self, index: int) -> Optional[float]:
        return self.stall_timeout if self.held[index] else None

    def last_seen(self) -> List[Optional[float]]:
        """Per worker, seconds since its heartbeat last moved (None once closed)."""
        if self.closed:
            return [None] * self.n_workers
        now = time.monotonic()
        return [now - since for since in self.since]

    def deadline(self) -> float:
        """The monotonic time by which closing must be done."""
        return time.monotonic() + self.timeout
