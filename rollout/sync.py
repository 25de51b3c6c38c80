"""A versioned weight store in shared memory: the learner publishes, workers pull.

``publish`` copies every parameter and persistent buffer of the learner's module into
preallocated shared tensors (one ``copy_`` per tensor, no pickling) and bumps the version;
``pull`` copies them into a worker's module only when the version changed. Both hold a
process-shared lock while copying, so a worker never reads a half-written set of weights.
"""

from typing import Any, Dict

import torch

__all__ = ["WeightStore"]


def _tensors(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    # state_dict holds parameters and *persistent* buffers, exactly what defines the policy.
    return {name: tensor for name, tensor in module.state_dict(keep_vars=True).items()}


class WeightStore:
    """Shared copy of a module's weights with a version counter.

    Parameters
    ----------
    module : torch.nn.Module
        The learner's module; its current weights are held (as version -1) until the first
        :meth:`publish`, which is version 0.
    lock : multiprocessing lock
        A lock from the multiprocessing context the workers use.
    """

    def __init__(self, module: torch.nn.Module, lock: Any):
        self.lock = lock
        with torch.no_grad():
            self.tensors = {name: t.detach().to("cpu", copy=True).share_memory_() for name, t in _tensors(module).items()}
        self.counter = torch.full((1,), -1, dtype=torch.int64).share_memory_()

    @property
    def version(self) -> int:
        """The version of the last publish: 0 for the first, -1 before it."""
        return int(self.counter[0])

    def publish(self, module: torch.nn.Module) -> int:
        """Copy ``module``'s weights into the store; returns the new version."""
        sources = _tensors(module)
        with torch.no_grad(), self.lock:
            for name, dst in self.tensors.items():
                dst.copy_(sources[name].detach())
            self.counter += 1
            return int(self.counter[0])

    def pull(self, module: torch.nn.Module, have: int) -> int:
        """Load the store into ``module`` if its version differs from ``have``; returns the version held."""
        if int(self.counter[0]) == have:  # the common case: no lock, no copy
            return have
        targets = _tensors(module)
        with torch.no_grad(), self.lock:
            for name, src in self.tensors.items():
                targets[name].copy_(src)
            return int(self.counter[0])
