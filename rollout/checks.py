"""Checks of a collector's arguments against this machine, made before anything starts.

Each raises :class:`~rollout.errors.ConfigurationError` with what was asked, what the machine has
and how to fix it, so that a bad device or too small a file-descriptor limit is reported in the
parent, not by torch from inside a worker.
"""

import os
import sys
from typing import Optional, Union

import torch

from .errors import ConfigurationError

__all__ = ["device", "file_descriptors", "open_file_descriptors"]


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
