"""The checks a collector makes before anything starts: its arguments, this machine, the env and the actor.

Each raises :class:`~rollout.errors.ConfigurationError` (or the env's and actor's own error types)
with what was asked, what was found and how to fix it, so that a bad argument, device, env or
actor, or too small a file-descriptor limit, is reported in the learner before any worker starts,
not from inside a worker. :func:`probe` builds one env from the factory and steps it with the
workers' copy of the actor, here.
"""

import copy
import dataclasses
import multiprocessing
import os
import sys
from typing import Any, Dict, Optional, Union

import cloudpickle
import numpy as np
import torch

from . import core
from .actor import Actor
from .envs import is_factory, make_envs
from .errors import ActorContractError, ConfigurationError
from .fragment import Fragment

__all__ = [
    "device",
    "positive",
    "seconds",
    "start_method",
    "file_descriptors",
    "open_file_descriptors",
    "worker_copy",
    "probe",
    "Probe",
]


def positive(name: str, value: Any) -> int:
    """``value`` as an int, checked to be a positive int."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, found {value!r}")
    return int(value)


def seconds(name: str, value: Any, *, optional: bool = False, zero: bool = True) -> Optional[float]:
    """``value`` as a number of seconds (``optional``: None allowed; ``zero``: 0 allowed)."""
    if value is None and optional:
        return None
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not (value >= 0 if zero else value > 0):
        kind = "a non-negative" if zero else "a positive"
        raise ConfigurationError(
            f"{name} must be {kind} number of seconds{' or None' if optional else ''}, found {value!r}"
        )
    return float(value)


def start_method(value: Optional[str], default: str) -> str:
    """A multiprocessing start method this platform has (None: ``default``)."""
    value = value or default
    if value not in multiprocessing.get_all_start_methods():
        raise ConfigurationError(
            f"start_method must be one of {multiprocessing.get_all_start_methods()}, found {value!r}"
        )
    return value


def device(value: Union[None, str, torch.device]) -> Optional[torch.device]:
    """``value`` as a ``torch.device`` (None stays None), checked to exist on this machine."""
    if value is None:
        return None
    try:
        result = torch.device(value)
    except (RuntimeError, TypeError) as error:
        raise ConfigurationError(
            f"device: expected a torch device such as 'cpu' or 'cuda:0', found {value!r} ({error})"
        ) from None
    if result.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device={value!r}, but CUDA is not available on this machine (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda}): pass device=None or 'cpu'"
            )
        count = torch.cuda.device_count()
        if result.index is not None and result.index >= count:
            raise ConfigurationError(f"device={value!r}, but this machine has {count} CUDA device(s): 0 to {count - 1}")
    return result


def open_file_descriptors() -> Optional[int]:
    """How many file descriptors this process has open (None where it cannot be told)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return None


def file_descriptors(n_tensors: int, n_other: int, n_buffers: int) -> None:
    """Check that ``n_tensors`` more shared tensors (plus ``n_other`` descriptors) fit the limit.

    With torch's default sharing strategy on Linux (``file_descriptor``) every shared-memory
    tensor keeps a file descriptor open, in this process and in each worker; beyond the soft
    ``RLIMIT_NOFILE`` torch fails with "Too many open files" and nothing about why.
    """
    if sys.platform == "win32" or torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    now = open_file_descriptors() or 0
    needed = n_tensors + n_other
    if now + needed > soft:
        suggest = max(4096, 2 * (now + needed))
        suggest = suggest if hard == resource.RLIM_INFINITY else min(hard, suggest)
        raise ConfigurationError(
            f"the shared buffers need about {needed} file descriptors ({n_tensors} shared tensors for n_buffers={n_buffers} "
            f"fragment slots and the weights, {n_other} for pipes and locks), {now} are open already, and this process's "
            f"limit is {soft} (hard limit {hard}): lower n_buffers, raise the limit before starting Python "
            f"(`ulimit -n {suggest}`) or in it "
            f"(resource.setrlimit(resource.RLIMIT_NOFILE, (new_limit, {hard}))), or call "
            f"torch.multiprocessing.set_sharing_strategy('file_system')"
        )


def worker_copy(actor: Actor, device: torch.device) -> Actor:
    """The actor as workers receive it: ``actor`` itself if its tensors are on ``device`` already,
    else a copy moved there (a CUDA learner's actor is not pickled with its CUDA tensors: a
    forked worker could not initialise CUDA, a spawned one would open a CUDA context each)."""
    tensors = list(actor.parameters()) + list(actor.buffers())
    if all(t.device == device for t in tensors):
        return actor
    return copy.deepcopy(actor).to(device)


@dataclasses.dataclass
class Probe:
    """What :func:`probe` found: the layout of one row and column, and the payloads for workers."""

    spec: Fragment  # example leaves of one row and column (see rollout.core.Context.spec)
    env_info: Dict[str, np.ndarray]  # env-info keys and examples, as the probe found them
    batched: bool  # the factory returns a VectorEnv (a worker's whole batch)
    factory: bytes  # cloudpickled
    actor: bytes  # the workers' copy of the actor, cloudpickled


def probe(factory: Any, actor: Actor, options: Any) -> Probe:
    """Check a worker collector's env factory and actor here: both picklable, and one env from the
    factory stepped (in place) with the workers' copy of the actor (on ``options.worker_device``;
    ``options`` is the collector's :class:`rollout.options.Options`)."""
    if not is_factory(factory):
        raise ConfigurationError(
            f"worker collectors need an env factory (an env class, or a callable returning an env), found {type(factory).__name__}"
        )
    if not isinstance(actor, Actor):
        raise ActorContractError(f"expected an actor subclassing rollout.Actor, found {type(actor).__name__}")
    actor = worker_copy(actor, options.worker_device)
    try:
        payload_factory, payload_actor = cloudpickle.dumps(factory), cloudpickle.dumps(actor)
    except Exception as error:
        raise ConfigurationError(f"the factory and the actor must be picklable with cloudpickle: {error}") from error
    envs = make_envs(factory, 1, 0)
    try:
        n_per_actor = options.n_per_actor
        if envs.batched and len(envs) != n_per_actor:
            raise ConfigurationError(
                f"the factory returns a VectorEnv of {len(envs)} envs: each worker steps one, so n_per_actor must be "
                f"{len(envs)}, found n_per_actor={n_per_actor}"
            )
        spec = core.startup(
            envs, actor, options.n_steps, sticky=options.sticky, seed=0, env_info=options.env_info, disposable=True
        ).spec
    finally:
        envs.close()
    return Probe(
        spec=spec,
        env_info={key: np.zeros(x.shape[2:], dtype=x.numpy().dtype) for key, x in spec.env.items()},
        batched=envs.batched,
        factory=payload_factory,
        actor=payload_actor,
    )
