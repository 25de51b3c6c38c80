"""One route from a collector's CPU buffers to the learner's ``device``, for every collector.

Words: ``device`` is where batches are *delivered* (the learner's device); the actor of
:func:`rollout.same.rollout` steps where its parameters are (``Context.actor_device``); workers
run a copy of the actor on ``worker_device`` (the CPU by default).

:class:`Route` delivers a collected buffer:

- ``device`` None or CPU, not pinned: the buffer itself (zero copy), valid until the next
  ``next()``;
- pinned, on the CPU: the buffer in page-locked memory (a buffer the collector collected into
  is one already; any other is copied into the route's staging buffer, allocated once);
- CUDA: from pinned memory to the device with one non-blocking copy per leaf on the current
  stream, and an event recorded after it. The tensors yielded are fresh device tensors that
  belong to the learner; the pinned buffer they were read from is not written again until that
  event has completed (:meth:`Route.free` waits for it), so a learner that never synchronises
  sees exactly the fragments that were collected.

Staging is allocated once per route (pinned where CUDA exists), and only where the collector's
own buffers cannot be pinned (shared memory: :mod:`rollout.pool`); :mod:`rollout.same` and
:mod:`rollout.distributed` collect into pinned buffers the route allocates, then copy once.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import optree
import torch

from . import buffers
from .fragment import Fragment

__all__ = ["Route"]


def _transfer(source: Fragment, device: torch.device) -> Tuple[Fragment, Any]:
    """Non-blocking copies of ``source`` (pinned) to ``device``, and an event recorded after them on
    the current stream. (Tests replace it with a stand-in whose copies are late on purpose.)"""
    out = optree.tree_map(lambda x: x.to(device, non_blocking=True), source)
    event = torch.cuda.Event()
    event.record()
    return out, event


class Route:
    """Deliver CPU fragment buffers to ``device`` (see the module docstring).

    Parameters
    ----------
    device : torch.device, optional
        Where batches are delivered (None: where they are, the CPU).
    pinned : bool
        Deliver CPU batches from page-locked memory (implied by a CUDA ``device``).
    """

    def __init__(self, device: Optional[torch.device], pinned: bool = False):
        self.device = device
        on_cpu = device is None or device.type == "cpu"
        self.transfer: Optional[Callable[[Fragment, torch.device], Tuple[Fragment, Any]]] = (
            None if on_cpu else _transfer
        )
        self.pin = (pinned or not on_cpu) and torch.cuda.is_available()
        self.direct = on_cpu and not pinned  # the buffer itself is delivered
        self.staging: Optional[Fragment] = None
        self.owned: Dict[int, Fragment] = {}  # id -> the pinned buffers this route allocated
        self.pending: Dict[int, Any] = {}  # id of a pinned buffer -> the event of the copy reading it

    def allocate(self, spec: Fragment, n_steps: int, n_envs: int) -> Fragment:
        """A buffer for a collector to collect into: pinned where the route copies from it."""
        buffer = buffers.allocate(spec, n_steps, n_envs, pinned=self.pin and not self.direct)
        if not self.direct:
            self.owned[id(buffer)] = buffer
        return buffer

    def free(self, buffer: Fragment) -> None:
        """Wait until no copy reads ``buffer`` any more (call before writing into it)."""
        event = self.pending.pop(id(buffer), None)
        if event is not None:
            event.synchronize()

    def deliver(self, buffer: Fragment) -> Fragment:
        """``buffer`` delivered to ``device``: itself, a pinned copy, or device tensors."""
        if self.direct:
            return buffer
        source = buffer
        if id(buffer) not in self.owned:  # shared memory: stage it in pinned memory first
            if self.staging is None:
                self.staging = optree.tree_map(self._empty, buffer)
            self.free(self.staging)
            optree.tree_map(lambda dst, src: dst.copy_(src), self.staging, buffer)
            source = self.staging
        if self.transfer is None:
            return source
        out, event = self.transfer(source, self.device)
        self.pending[id(source)] = event
        return out

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x).pin_memory() if self.pin else torch.empty_like(x)

    def close(self) -> None:
        """Wait for the copies in flight, then drop the buffers."""
        for event in self.pending.values():
            event.synchronize()
        self.pending, self.owned, self.staging = {}, {}, None
