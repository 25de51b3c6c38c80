"""Shared pieces of the on-policy losses: evaluating the module on fragment rows, its policy
distribution, the behaviour log-probabilities, and masked means. Private to :mod:`learners`."""

from typing import Any, Dict, Optional, Tuple

import optree
import torch
from torch.distributions import Categorical, Distribution

from rollout.errors import ActorContractError
from rollout.fragment import State


def rows(tree: Any, index: slice) -> Any:
    """Every leaf of ``tree`` indexed along dim 0 (time)."""
    return optree.tree_map(lambda x: x[index], tree)


def evaluate(module: torch.nn.Module, state: State, hx: Any) -> Dict[str, Any]:
    """The module's ``info`` for every row of ``state``: one virtual step over the whole sequence.

    Recurrent modules start from ``hx`` and reset at the ``fin`` rows themselves (DESIGN §3).
    """
    _, _, info = module.step(state.stepno, state.obs, state.act, state.rew, state.fin, hx=hx, virtual=True)
    if not isinstance(info, dict):
        raise ActorContractError(
            f"{type(module).__name__}.step must return a dict as `info`, got {type(info).__name__}"
        )
    return info


def distribution(module: torch.nn.Module, info: Dict[str, Any]) -> Distribution:
    """``module.distribution(info)`` if the module has one, else ``Categorical(logits=info['logits'])``."""
    make = getattr(module, "distribution", None)
    if callable(make):
        return make(info)
    if "logits" not in info:
        raise ValueError(
            f"{type(module).__name__} has no `distribution(info)` method and its info has no 'logits' "
            f"(keys: {sorted(info)}); define one of them"
        )
    return Categorical(logits=info["logits"])


def log_prob_entropy(dist: Distribution, action: Any, shape: torch.Size) -> Tuple[torch.Tensor, torch.Tensor]:
    """``log pi(action)`` and the entropy, each checked to be ``shape`` (T, B).

    Distributions without a closed-form entropy get the one-sample estimate ``-log pi(action)``.
    """
    logp = dist.log_prob(action)
    if logp.shape != shape:
        raise ValueError(
            f"the policy's log_prob must have shape (T, B) = {tuple(shape)}, got {tuple(logp.shape)}; "
            "wrap multi-dimensional actions in torch.distributions.Independent"
        )
    try:
        entropy = dist.entropy()
    except NotImplementedError:
        entropy = -logp
    return logp, entropy


def behaviour_logp(module: torch.nn.Module, actor: Dict[str, Any], action: Any, shape: torch.Size) -> torch.Tensor:
    """``log mu(a_t | ...)`` of the behaviour policy for rows 0..T-1 of a fragment's ``actor`` info.

    The recorded ``actor['logp']`` (the log-probability of the action the actor chose at that row)
    when present, else the module's distribution built from the recorded info.
    """
    recorded = actor.get("logp") if isinstance(actor, dict) else None
    if isinstance(recorded, torch.Tensor):
        logp = recorded[:-1]
        if logp.shape != shape:
            raise ValueError(
                f"actor['logp'] must have shape (1+T, B) = {(shape[0] + 1, *shape[1:])}, got {tuple(recorded.shape)}"
            )
        return logp
    logp, _ = log_prob_entropy(distribution(module, rows(actor, slice(None, -1))), action, shape)
    return logp


def value_of(info: Dict[str, Any], shape: torch.Size, function: str) -> torch.Tensor:
    """``info['value']``, checked to be ``shape``."""
    value = info.get("value")
    if not isinstance(value, torch.Tensor):
        raise ActorContractError(f"{function} needs the module's info['value'] (keys: {sorted(info)})")
    if value.shape != shape:
        raise ActorContractError(f"{function}: info['value'] must have shape {tuple(shape)}, got {tuple(value.shape)}")
    return value


def scalars(**values: Any) -> Dict[str, float]:
    """Tensors and numbers as plain floats, for ``info``."""
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask``; 0 when the mask is empty. Masked entries never propagate NaN."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def explained_variance(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[target - prediction] / Var[target]`` over ``mask``; NaN when ``Var[target] == 0``."""
    prediction, target = prediction.detach(), target.detach()
    centred = target - masked_mean(target, mask)
    variance = masked_mean(centred * centred, mask)
    error = target - prediction
    error = error - masked_mean(error, mask)
    if variance.item() == 0.0:
        return float("nan")
    return float(1.0 - masked_mean(error * error, mask) / variance)


def check_coefficient(function: str, name: str, x: Optional[float], *, positive: bool = False) -> None:
    if x is None:
        return
    if positive and not x > 0:
        raise ValueError(f"{function}: `{name}` must be > 0, got {x}")
    if not x >= 0:
        raise ValueError(f"{function}: `{name}` must be >= 0, got {x}")
