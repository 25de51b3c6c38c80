"""Preallocated fragment buffers: nested torch tensors, optionally shared or pinned.

A *spec* is a :class:`~rollout.fragment.Fragment` whose leaves are example tensors for one time
row and one env column: ``(1, 1, ...)`` for time-major fields, the recurrent state with batch 1 at
dim 1, and ``(1,)`` for ``version`` (``worker`` and ``sequence`` are made alike). :func:`allocate` expands it to ``T`` steps and ``B`` envs.

dtype rules: rewards float32, ``fin``/``terminated`` bool, ``stepno``, ``version``, ``worker`` and ``sequence`` int64,
episode returns float64 and lengths int64; observations and actions keep the dtypes of their
spaces; actor outputs keep the dtypes the actor returns.
"""

from typing import Any

import numpy as np
import optree
import torch

from .fragment import Final, Fragment

__all__ = ["allocate", "numpy_view", "narrow"]


def _zeros(shape: tuple, dtype: torch.dtype, shared: bool, pinned: bool) -> torch.Tensor:
    tensor = torch.zeros(shape, dtype=dtype)
    if shared:
        # Made shared before any numpy view is taken: share_memory_ moves the storage.
        tensor.share_memory_()
    elif pinned:
        tensor = tensor.pin_memory()
    return tensor


def allocate(spec: Fragment, n_steps: int, n_envs: int, *, shared: bool = False, pinned: bool = False) -> Fragment:
    """Zero-filled fragment buffers for ``n_steps`` steps of ``n_envs`` envs.

    Parameters
    ----------
    spec : Fragment
        Example leaves for one row and one column (see the module docstring).
    n_steps, n_envs : int
        ``T`` and ``B``: time-major leaves get shape ``(1+T, B, ...)`` (``env``: ``(T, B, ...)``).
    shared : bool
        Allocate in shared memory (for worker processes).
    pinned : bool
        Allocate in page-locked memory (fast, asynchronous copies to CUDA).

    Returns
    -------
    Fragment
        The buffers; ``version``, ``worker`` and ``sequence`` are int64 ``(B,)``, ``hx`` has ``B``
        at dim 1.
    """

    def rows(n: int):
        return lambda x: _zeros((n, n_envs, *x.shape[2:]), x.dtype, shared, pinned)

    def column(x: torch.Tensor) -> torch.Tensor:
        return _zeros((x.shape[0], n_envs, *x.shape[2:]), x.dtype, shared, pinned)

    return Fragment(
        state=optree.tree_map(rows(1 + n_steps), spec.state),
        actor=optree.tree_map(rows(1 + n_steps), spec.actor),
        env=optree.tree_map(rows(n_steps), spec.env),
        hx=optree.tree_map(column, spec.hx),
        final=optree.tree_map(rows(1 + n_steps), spec.final),
        version=_zeros((n_envs,), torch.int64, shared, pinned),
        worker=_zeros((n_envs,), torch.int64, shared, pinned),
        sequence=_zeros((n_envs,), torch.int64, shared, pinned),
    )


def narrow(fragment: Fragment, start: int, length: int) -> Fragment:
    """Columns ``start:start+length`` of a fragment (views sharing its memory; batch is dim 1)."""
    columns = [x.narrow(0, start, length) if x is not None else None for x in fragment[5:]]
    return Fragment(*(optree.tree_map(lambda x: x.narrow(1, start, length), field) for field in fragment[:5]), *columns)


def numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array sharing the memory of a CPU tensor."""
    return tensor.numpy()


def final_spec(obs: Any, actor: Any) -> Final:
    one = (1, 1)
    return Final(
        obs=obs,
        actor=actor,
        episode_return=torch.zeros(one, dtype=torch.float64),
        episode_length=torch.zeros(one, dtype=torch.int64),
    )
