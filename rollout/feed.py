"""``Feed``: the iterator every ``rollout()`` returns; a generator that is also a context manager.

Closing it (``close()``, leaving a ``with`` block, garbage collection, interpreter exit) runs the
generator's ``finally`` block, which releases what the collector holds.
"""

import weakref
from typing import Any, Callable, Generator, Iterator, Optional

__all__ = ["Feed"]

_OPEN: "weakref.WeakSet[Feed]" = weakref.WeakSet()


class Feed(Iterator):
    """Wraps a collector's generator; iterate it, then close it (or use ``with``)."""

    def __init__(self, generator: Generator, on_close: Optional[Callable[[Optional[float]], None]] = None):
        self._generator = generator
        self._on_close = on_close  # receives close()'s timeout before the generator is closed
        _OPEN.add(self)

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> Any:
        return next(self._generator)

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


def close_all() -> None:
    """Close every open feed (registered with :mod:`atexit` by the worker collectors)."""
    for feed in list(_OPEN):
        feed.close()
