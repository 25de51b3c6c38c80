"""The options of a collector: its public keyword arguments, checked and turned into one object once.

Each public ``rollout()`` builds one :class:`Options` from its arguments (the checks run in
``__post_init__``, before anything starts) and passes it down; nothing below retypes the
arguments. The parameters are documented on :func:`rollout.multi.rollout`.
"""

import dataclasses
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from . import checks
from .seeds import seed_sequence
from .errors import ConfigurationError

__all__ = ["Options", "DEFAULT_START_METHOD", "DEFAULT_STALL_TIMEOUT"]

# spawn: a fresh interpreter per worker, safe whatever threads torch (OpenMP) or the user started
# in the learner; fork copies such threads' locks in whatever state they were. forkserver is also
# safe but leaves a server process behind, and workers must be the collector's only children.
DEFAULT_START_METHOD = "spawn"
DEFAULT_STALL_TIMEOUT = 60.0  # seconds without progress before a worker holding work is reported


@dataclasses.dataclass
class Options:
    """A collector's options, normalised (see :func:`rollout.multi.rollout` for their meaning).

    After construction: the counts are ints, ``n_buffers`` is set, ``seed`` is the root
    ``SeedSequence`` (fresh entropy drawn once for ``None``; never the caller's object),
    ``device`` and ``worker_device`` are ``torch.device`` (``device`` None: delivered where
    collected), ``start_method`` is a method this platform has, and the timeouts are floats.
    """

    n_steps: int
    n_actors: int = 1
    n_per_actor: int = 1
    n_per_batch: int = 1
    n_buffers: Optional[int] = None
    sticky: bool = False
    seed: Union[None, int, Any, np.random.SeedSequence] = None
    device: Union[None, str, torch.device] = None  # where batches are delivered
    pinned: bool = False
    worker_device: Union[str, torch.device] = "cpu"  # where workers run their copies of the actor
    start_method: Optional[str] = None
    env_info: Any = None
    n_threads: int = 1
    close: bool = True
    timeout: float = 10.0
    stall_timeout: Optional[float] = DEFAULT_STALL_TIMEOUT

    def __post_init__(self) -> None:
        self.n_steps = checks.positive("n_steps", self.n_steps)
        self.n_actors = checks.positive("n_actors", self.n_actors)
        self.n_per_actor = checks.positive("n_per_actor", self.n_per_actor)
        self.n_per_batch = checks.positive("n_per_batch", self.n_per_batch)
        self.n_threads = checks.positive("n_threads", self.n_threads)
        n_per_batch = self.n_per_batch
        if self.n_buffers is None:  # every worker has one slot while the learner holds a batch
            self.n_buffers = n_per_batch * max(2, -(-(self.n_actors + n_per_batch) // n_per_batch))
        self.n_buffers = checks.positive("n_buffers", self.n_buffers)
        if self.n_buffers % n_per_batch or self.n_buffers < 2 * n_per_batch:
            raise ConfigurationError(
                f"n_buffers must be a multiple of n_per_batch={n_per_batch} and at least 2 * n_per_batch = "
                f"{2 * n_per_batch} (one batch for the learner, one being filled); found n_buffers={self.n_buffers}"
            )
        self.seed = seed_sequence(self.seed)
        self.device = checks.device(self.device)
        self.worker_device = checks.device(self.worker_device)
        self.start_method = checks.start_method(self.start_method, DEFAULT_START_METHOD)
        self.timeout = checks.seconds("timeout", self.timeout)
        self.stall_timeout = checks.seconds("stall_timeout", self.stall_timeout, optional=True, zero=False)

    @classmethod
    def of(cls, arguments: Dict[str, Any], **overrides: Any) -> "Options":
        """The options among a ``rollout()``'s ``arguments`` (its ``locals()``), with ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in arguments.items() if k in names}, **overrides})

    @property
    def n_batches(self) -> int:
        """Batch buffers: ``n_buffers // n_per_batch``."""
        return self.n_buffers // self.n_per_batch
