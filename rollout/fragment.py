"""The fragment: the data contract between collectors and learners.

A fragment holds ``T = n_steps`` transitions of ``B`` environments as time-major nested torch
tensors. See :mod:`rollout.core` for the timing table (which row holds what).

``Fragment(state, actor, env, hx, final, version, worker, sequence)``

========  ===============  ===================================================================
field     shape            meaning
========  ===============  ===================================================================
state     ``(1+T, B, ...)``  :class:`State`: row t is ``z_t = (t, x_t, a_{t-1}, r_t, d_t)``
actor     ``(1+T, B, ...)``  nested dict returned by ``Actor.step`` as its reaction to ``z_t``;
                           row T is a virtual (lookahead) step, used for bootstrapping
env       ``(T, B, ...)``    declared env-info keys; ``env[t]`` comes from the step into row t+1
hx        batch at dim 1   the actor's recurrent state fed to the step at row 0 (``()`` if none)
final     ``(1+T, B, ...)``  :class:`Final`: the ended episode's data, meaningful where
                           ``final.episode_length > 0``
version   ``(B,)`` int64     version of the actor weights each column was collected with
worker    ``(B,)`` int64     index of the worker (the batch of envs) that collected each column;
                           0 for the in-process collector
sequence  ``(B,)`` int64     that worker's fragment counter (0, 1, 2, ...) for each column
========  ===============  ===================================================================

Traceability: the columns with the same ``worker`` index are the same envs across batches, and
fragment ``sequence + 1`` of a worker continues fragment ``sequence`` (its row 0 is the other's
row T). With several workers and batches in flight, a worker's fragments may reach the learner
out of collection order (a batch completes when its last slot is filled); ``(worker, sequence)``
puts them back in order.
"""

from typing import Any, NamedTuple

import optree
import torch

__all__ = ["State", "Final", "Fragment", "Episodes", "episodes", "clone"]


class State(NamedTuple):
    """Environment state rows ``z_t``, each leaf ``(1+T, B, ...)``.

    stepno : int64, the number of steps taken in the current episode (0 at an episode's start).
    obs : nested, ``x_t``, dtypes of the observation space.
    act : nested, ``a_{t-1}``, the action that led to row t (dtypes of the action space).
    rew : float32, ``r_t``, the reward of that action.
    fin : bool, ``x_t`` starts a new episode; ``act[t]``, ``rew[t]`` then belong to the ended one.
    terminated : bool, the ended episode reached a terminal state (no bootstrap). ``fin &
        ~terminated`` is a truncation (time limit), which must be bootstrapped from
        ``Final.actor``.
    """

    stepno: Any
    obs: Any
    act: Any
    rew: Any
    fin: Any
    terminated: Any


class Final(NamedTuple):
    """What the reset at an episode end would hide, each leaf ``(1+T, B, ...)``.

    Meaningful at rows where an episode ended in the transition into that row, i.e. where
    ``episode_length > 0``; zero elsewhere.

    obs : the true last observation of the ended episode (``state.obs`` holds the reset one).
    actor : at truncations, the actor's virtual reaction to ``obs`` with the recurrent state it
        had then (``actor['value']`` is the truncation bootstrap value); zero at other rows.
    episode_return : float64, the undiscounted return of the ended episode (all of it, also
        the part collected in earlier fragments): the sum of its recorded float32 rewards, each
        fragment's part summed exactly (``math.fsum``), so it is exact for integer rewards.
    episode_length : int64, its length in steps; 0 where no episode ended (including the
        frozen rows of a sticky env).
    """

    obs: Any
    actor: Any
    episode_return: Any
    episode_length: Any


class Fragment(NamedTuple):
    """A trajectory fragment; see the module docstring for the layout."""

    state: State
    actor: Any
    env: Any
    hx: Any
    final: Final
    version: Any
    worker: Any = None
    sequence: Any = None

    def clone(self) -> "Fragment":
        """A deep copy whose tensors own their memory (keep it past the next ``next()``)."""
        return clone(self)


class Episodes(NamedTuple):
    """Finished episodes of a fragment: ``returns`` float64 ``(N,)`` and ``lengths`` int64 ``(N,)``."""

    returns: torch.Tensor
    lengths: torch.Tensor


def episodes(fragment: Fragment) -> Episodes:
    """The episodes that ended inside ``fragment`` (rows 1..T), in row-major order (time, env).

    Row 0 is skipped because it repeats row T of the previous fragment, so iterating over
    consecutive fragments counts every episode exactly once, including those that straddle
    fragment boundaries.

    Parameters
    ----------
    fragment : Fragment
        A fragment (or a batch of fragments concatenated along dim 1).

    Returns
    -------
    Episodes
        ``returns`` float64 ``(N,)`` and ``lengths`` int64 ``(N,)`` of the N episodes that ended.
    """
    length = fragment.final.episode_length[1:]
    ended = length > 0
    return Episodes(fragment.final.episode_return[1:][ended], length[ended])


def clone(tree: Any) -> Any:
    """Deep-copy every tensor leaf of a nested structure (other leaves are kept as they are)."""
    return optree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree, none_is_leaf=False)
