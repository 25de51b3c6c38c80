"""A fixed-capacity replay buffer of transitions, fed by fragments (for off-policy losses such as SAC).

A fragment's ``T`` transitions ``t = 0 .. T-1`` go from row ``t`` to row ``t+1`` (DESIGN §4):

==============  ==============================================================================
field           taken from the fragment
==============  ==============================================================================
``obs``         ``state.obs[t]``
``act``         ``state.act[t+1]`` (the action the actor chose at row t)
``rew``         ``state.rew[t+1]``
``terminated``  ``state.terminated[t+1]`` (a truncation is not terminal: it is bootstrapped)
``next_obs``    ``state.obs[t+1]``, or ``final.obs[t+1]`` where ``fin[t+1]`` (the true last
                observation; ``state.obs[t+1]`` is already the next episode's reset observation)
==============  ==============================================================================

Only real transitions are kept (:func:`learners.returns.valid_mask` drops the frozen padding of
sticky environments). Since row 0 of fragment k+1 repeats row T of fragment k, adding consecutive
fragments stores every transition exactly once.
"""

from typing import Any, NamedTuple, Optional, Union

import optree
import torch

from rollout.fragment import Fragment

from .returns import valid_mask

__all__ = ["Transitions", "transitions", "ReplayBuffer"]


class Transitions(NamedTuple):
    """A batch of ``N`` transitions, each leaf ``(N, ...)``; ``obs``, ``act``, ``next_obs`` may be nested.

    rew : float, ``(N,)``. terminated : bool, ``(N,)``.
    """

    obs: Any
    act: Any
    rew: torch.Tensor
    terminated: torch.Tensor
    next_obs: Any


def transitions(fragment: Fragment) -> Transitions:
    """The real transitions of a fragment, in row-major order (time, then env).

    Parameters
    ----------
    fragment : Fragment
        ``state`` and ``final`` leaves ``(1+T, B, ...)``; never modified.

    Returns
    -------
    Transitions
        Leaves ``(N, ...)``, ``N`` the number of valid transitions (at most ``T * B``); new tensors.
    """
    state, final = fragment.state, fragment.final
    valid = valid_mask(fragment)
    fin = state.fin[1:]

    def next_obs(obs: torch.Tensor, final_obs: torch.Tensor) -> torch.Tensor:
        ended = fin.view(*fin.shape, *[1] * (obs.dim() - fin.dim()))
        return torch.where(ended, final_obs, obs)

    pick = lambda x: x[valid]  # noqa: E731 - boolean index over (T, B) -> (N, ...), a copy
    return Transitions(
        obs=optree.tree_map(lambda x: pick(x[:-1]), state.obs),
        act=optree.tree_map(lambda x: pick(x[1:]), state.act),
        rew=pick(state.rew[1:]),
        terminated=pick(state.terminated[1:]),
        next_obs=optree.tree_map(lambda x, f: pick(next_obs(x[1:], f[1:])), state.obs, final.obs),
    )


def _describe(tree: Any) -> Any:
    paths, leaves, spec = optree.tree_flatten_with_path(tree)
    return spec, {path: (tuple(x.shape[1:]), x.dtype) for path, x in zip(paths, leaves)}


class ReplayBuffer:
    """A ring of the last ``capacity`` transitions, sampled uniformly.

    Storage is allocated at the first :meth:`add` from the transitions' structure, shapes and dtypes;
    later additions must match them.

    Parameters
    ----------
    capacity : int
        Maximum number of transitions kept; the oldest are overwritten first.
    device : torch.device or str, optional
        Where the storage lives; by default the device of the first transitions added.

    Raises
    ------
    ValueError
        When ``capacity < 1``.

    Examples
    --------
    >>> buffer = ReplayBuffer(100_000)
    >>> for fragment in feed:
    ...     buffer.add(fragment)
    ...     batch = buffer.sample(256, generator=g)
    ...     loss, info = sac.critic_loss(batch, policy, q1, q2, q1_target, q2_target, log_alpha=log_alpha)
    """

    def __init__(self, capacity: int, *, device: Optional[Union[torch.device, str]] = None) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ReplayBuffer: `capacity` must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.device = None if device is None else torch.device(device)
        self._storage: Optional[Transitions] = None
        self._layout: Any = None
        self._next = 0  # the slot the next transition goes to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"ReplayBuffer(capacity={self.capacity}, size={self._size}, device={self.device})"

    def add(self, fragment: Fragment) -> int:
        """Store the real transitions of a fragment (see :func:`transitions`).

        Parameters
        ----------
        fragment : Fragment
            Leaves ``(1+T, B, ...)``; copied, never modified.

        Returns
        -------
        int
            The number of transitions added.
        """
        return self.extend(transitions(fragment))

    def extend(self, batch: Transitions) -> int:
        """Store ``N`` transitions (leaves ``(N, ...)``); beyond ``capacity`` only the last ones stay.

        Raises
        ------
        ValueError
            When the leaves do not share one leading size ``N``, or the structure, a leaf's shape
            after ``N`` or its dtype differ from what is stored.
        """
        leaves = optree.tree_leaves(batch)
        n = leaves[0].shape[0]
        if any(x.dim() == 0 or x.shape[0] != n for x in leaves):
            shapes = [tuple(x.shape) for x in leaves]
            raise ValueError(f"ReplayBuffer: every leaf needs the same leading size N, got {shapes}")
        if self._storage is None:
            self._allocate(batch)
        spec, layout = _describe(batch)
        if spec != self._layout[0] or layout != self._layout[1]:
            raise ValueError(
                "ReplayBuffer: the transitions do not match the stored ones; expected structure "
                f"{self._layout[0]} with leaves (shape, dtype) {self._layout[1]}, got {spec} with {layout}"
            )
        kept = min(n, self.capacity)
        slots = (self._next + (n - kept) + torch.arange(kept)) % self.capacity
        slots = slots.to(self.device)
        newest = optree.tree_map(lambda x: x[n - kept :].to(self.device), batch)
        optree.tree_map(lambda store, x: store.index_copy_(0, slots, x), self._storage, newest)
        self._next = (self._next + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        return n

    def _allocate(self, batch: Transitions) -> None:
        if self.device is None:
            self.device = optree.tree_leaves(batch)[0].device
        self._storage = optree.tree_map(
            lambda x: torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype, device=self.device), batch
        )
        self._layout = _describe(batch)

    def sample(self, batch_size: int, *, generator: Optional[torch.Generator] = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement.

        Parameters
        ----------
        batch_size : int
            At least 1.
        generator : torch.Generator, optional
            The source of the indices (the global generator if None), for reproducible sampling.

        Returns
        -------
        Transitions
            Leaves ``(batch_size, ...)`` on the buffer's device (copies).

        Raises
        ------
        ValueError
            When the buffer is empty or ``batch_size < 1``.
        """
        if self._size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty; add fragments first")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ReplayBuffer.sample: `batch_size` must be an int >= 1, got {batch_size!r}")
        device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(self._size, (batch_size,), generator=generator, device=device).to(self.device)
        return optree.tree_map(lambda store: store[index], self._storage)

    def contents(self) -> Transitions:
        """Every stored transition, oldest first (copies); leaves ``(len(self), ...)``.

        Raises
        ------
        ValueError
            When the buffer is empty.
        """
        if self._size == 0:
            raise ValueError("ReplayBuffer.contents: the buffer is empty")
        order = (self._next - self._size + torch.arange(self._size)) % self.capacity
        order = order.to(self.device)
        return optree.tree_map(lambda store: store[order], self._storage)
