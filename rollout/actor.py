"""The actor contract: a ``torch.nn.Module`` that reacts to environment state rows.

Subclass :class:`Actor` and implement ``step``; override ``reset`` if zeros are not the right
fresh recurrent state. The signatures are checked when the subclass is defined.
"""

import inspect
from typing import Any, Tuple

import optree
import torch

from .errors import ActorContractError

__all__ = ["Actor"]

_STEP = "step(self, stepno, obs, act, rew, fin, /, *, hx, virtual)"
_RESET = "reset(self, hx, at)"
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _check_signature(cls: type, name: str, n_positional: int, keywords: Tuple[str, ...], expected: str) -> None:
    method = cls.__dict__.get(name)
    if method is None:  # inherited: checked where it was defined
        return
    if isinstance(method, (staticmethod, classmethod)) or not callable(method):
        raise ActorContractError(f"{cls.__name__}.{name} must be a plain method; expected {expected}")
    params = list(inspect.signature(method).parameters.values())[1:]  # drop self
    var_positional = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in _POSITIONAL]
    accepted = {
        p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    problems = []
    n_pos = len(positional) - sum(p.name in keywords for p in positional)
    if n_pos < n_positional and not var_positional:
        problems.append(f"it takes {n_pos} positional arguments, not {n_positional}")
    required = [p.name for p in positional[n_positional:] if p.default is p.empty and p.name not in keywords]
    if n_pos > n_positional and required:
        problems.append(f"it requires extra positional arguments {required}")
    missing = [k for k in keywords if k not in accepted and not var_keyword]
    if missing:
        problems.append(f"it does not accept the keyword argument(s) {missing}")
    if problems:
        found = f"{name}{inspect.signature(method)}"
        raise ActorContractError(
            f"{cls.__name__}.{name} has the wrong signature: {'; '.join(problems)}. Expected {expected}, found {found}"
        )


class Actor(torch.nn.Module):
    """Base class of actors driven by the collectors.

    The contract (DESIGN §3). Every input and output leaf is time-major ``(n_seq, B, ...)``;
    during collection ``n_seq == 1``.

    ``step(stepno, obs, act, rew, fin, /, *, hx, virtual) -> (act, hx, info)``
        ``obs`` is ``x_t``, ``act`` is ``a_{t-1}``, ``rew`` is ``r_t``, ``fin`` tells that
        ``x_t`` starts a new episode (``act``, ``rew`` then belong to the ended one and must be
        ignored); ``stepno`` int64 counts steps in the episode. ``hx=None`` asks for a fresh
        recurrent state for batch B. ``virtual=True`` means the returned action will not be
        executed (a lookahead for bootstrapping; only asked of an actor with ``info``, the only
        output a virtual step records). Returns the action ``a_t`` (nested as the
        action space, leaves ``(n_seq, B, ...)`` with the space's dtype), the next recurrent
        state (new tensors, batch at dim 1; ``()`` for feed-forward actors), and ``info``, a
        nested dict of ``(n_seq, B, ...)`` tensors recorded into ``Fragment.actor`` (by
        convention ``value`` ``(n_seq, B)`` and ``logits`` or ``logp``).

    ``reset(hx, at) -> hx``
        The recurrent state with the batch entries ``at`` (int64 ``(k,)`` indices into dim 1)
        reset; the default sets them to zero, out of place.

    Attributes
    ----------
    deterministic : bool
        Actors that can act greedily read this flag in ``step``; :func:`rollout.evaluate` sets it.

    Raises
    ------
    ActorContractError
        (a ``TypeError``) when a subclass defines ``step`` or ``reset`` with a wrong signature.
    """

    deterministic: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_signature(cls, "step", 5, ("hx", "virtual"), _STEP)
        _check_signature(cls, "reset", 2, (), _RESET)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):  # noqa: D102 - documented above
        raise NotImplementedError(f"{type(self).__name__} must implement {_STEP}")

    def reset(self, hx: Any, at: torch.Tensor) -> Any:
        """Zero the batch entries ``at`` (dim 1) of every leaf of ``hx``, out of place."""
        return optree.tree_map(lambda h: h.index_fill(1, at, 0), hx)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Alias of :meth:`step`, so hooks and ``torch.compile`` see a normal module call."""
        return self.step(*args, **kwargs)
