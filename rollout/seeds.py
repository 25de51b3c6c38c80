"""Seeds: one seed, of any accepted type, determines every env's and worker's seed, purely.

:func:`seed_sequence` turns an int, a sequence of ints or a ``numpy.random.SeedSequence`` into a
new ``SeedSequence`` (never the caller's object, never its spawn count), and :func:`env_seeds`
derives 32-bit seeds from its children. How a collector uses them: child 0 of the seed derives
the seeds a factory is called with (:func:`rollout.envs.make_envs`), env ``j`` is reset with child
``1 + j`` (:func:`rollout.core.startup`), worker ``i`` of a pool is seeded with child ``i``.
"""

from typing import List, Sequence, Union

import numpy as np

from .errors import ConfigurationError

__all__ = ["seed_sequence", "env_seeds"]


def seed_sequence(seed: Union[None, int, Sequence[int], np.random.SeedSequence]) -> np.random.SeedSequence:
    """A new ``SeedSequence`` for ``seed``: the one root every seed derives from.

    Pure: a ``SeedSequence`` given is never changed (its entropy, spawn key and pool size are
    copied, not the count of children it has spawned), so ``seed=k`` and ``SeedSequence(k)`` give
    the same seeds however often either was used. ``None`` draws fresh entropy.
    """
    if isinstance(seed, np.random.SeedSequence):
        return np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key, pool_size=seed.pool_size)
    if isinstance(seed, (bool, float, str, bytes)):
        raise ConfigurationError(f"seed must be None, an int, a sequence of ints or a SeedSequence, found {seed!r}")
    try:
        return np.random.SeedSequence(seed)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(
            f"seed must be None, an int >= 0, a sequence of such ints or a SeedSequence, found {seed!r} ({error})"
        ) from None


def env_seeds(seed: Union[None, int, Sequence[int], np.random.SeedSequence], n: int, start: int = 0) -> List[int]:
    """``n`` independent 32-bit seeds from children ``start`` to ``start + n - 1`` of ``seed``.

    How a collector's seed is used (``make_envs``, :func:`rollout.core.startup`): child 0 derives
    the seeds a factory is called with, and env ``j`` is reset with child ``1 + j``.
    """
    children = seed_sequence(seed).spawn(start + n)[start:]
    return [int(child.generate_state(1, np.uint32)[0]) for child in children]
