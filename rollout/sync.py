"""A versioned weight store in shared memory: the learner publishes, workers pull, nobody locks.

``publish`` copies every parameter and persistent buffer of the learner's module into
preallocated shared tensors (one ``copy_`` per tensor, no pickling); ``pull`` copies them into a
worker's module only when the version changed. There is no lock a dead process could keep: the
store is a *sequence lock*. A sequence counter is odd while the (single) writer copies and even
otherwise; a reader copies, then re-reads the counter and starts again if it changed or was odd,
so it never keeps a half-written set of weights, and a writer never waits for readers. A reader
killed in the middle of a copy blocks nobody; a writer killed in the middle leaves the counter odd,
and readers wait for it only while ``alive()`` says their learner lives.

Ordering: the counter and the tensors are plain stores to shared memory. The writer's stores
become visible in program order on x86-64 (TSO); elsewhere the interpreter's and torch's own
atomics between the copies act as the fences a sequence lock needs. The torn-read test checks it
at 5M parameters.

``_write`` and ``_read`` are the two copy loops, the only code that runs inside the critical
section; tests replace them to inject faults there.
"""

import time
from typing import Callable, Dict, Optional

import torch

__all__ = ["WeightStore", "WriterGone"]

_BACKOFF = 5e-4  # seconds a reader sleeps before it retries behind a writer


class WriterGone(RuntimeError):
    """``pull`` gave up: the writer is gone (``alive()`` returned False) while the store was unstable."""


def _tensors(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # state_dict holds parameters and *persistent* buffers, exactly what defines the policy.
    return {name: tensor for name, tensor in module.state_dict(keep_vars=True).items()}


class WeightStore:
    """Shared copy of a module's weights with a version counter (a sequence lock, one writer).

    Parameters
    ----------
    module : torch.nn.Module
        The learner's module; its current weights are held (as version -1) until the first
        :meth:`publish`, which is version 0.

    The store is shared with worker processes by pickling it through ``multiprocessing`` (its
    tensors live in shared memory). Exactly one process may :meth:`publish`.
    """

    def __init__(self, module: torch.nn.Module):
        with torch.no_grad():
            self.tensors = {
                name: t.detach().to("cpu", copy=True).share_memory_() for name, t in _tensors(module).items()
            }
        # sequence: 2 * (version + 1) when stable, odd while the writer copies.
        self.sequence = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._counter = self.sequence.numpy()  # the same memory: a numpy item costs 0.1 us, a tensor's 5-30

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_counter"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._counter = self.sequence.numpy()

    @property
    def version(self) -> int:
        """The version of the last complete publish: 0 for the first, -1 before it."""
        return int(self._counter[0]) // 2 - 1

    def publish(self, module: torch.nn.Module) -> int:
        """Copy ``module``'s weights into the store; returns the new version. Never waits."""
        sources, counter = _tensors(module), self._counter
        start = int(counter[0])
        with torch.no_grad():
            counter[0] = start + 1  # odd: readers will not keep what they copy now
            self._write(sources)
            counter[0] = start + 2
        return (start + 2) // 2 - 1

    def pull(self, module: torch.nn.Module, have: int, alive: Optional[Callable[[], bool]] = None) -> int:
        """Load the store into ``module`` if its version differs from ``have``; returns the version held.

        Retries while the writer is copying. Raises :class:`WriterGone` if ``alive()`` (checked
        between retries) returns False, so a reader never waits forever on a dead writer.
        """
        counter = self._counter
        if int(counter[0]) == 2 * (have + 1):  # the common case: nothing new, one read, no copy
            return have
        targets = _tensors(module)
        while True:
            start = int(counter[0])
            if start % 2 == 0:
                if start // 2 - 1 == have:
                    return have
                with torch.no_grad():
                    self._read(targets)
                if int(counter[0]) == start:
                    return start // 2 - 1
            if alive is not None and not alive():
                raise WriterGone("the process publishing the weights is gone")
            time.sleep(_BACKOFF)

    def _write(self, sources: Dict[str, torch.Tensor]) -> None:
        """The writer's copy loop (the sequence is odd meanwhile)."""
        for name, dst in self.tensors.items():
            dst.copy_(sources[name].detach())

    def _read(self, targets: Dict[str, torch.Tensor]) -> None:
        """A reader's copy loop; kept only if the sequence did not change meanwhile."""
        for name, src in self.tensors.items():
            targets[name].copy_(src)
