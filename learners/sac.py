r"""Soft actor-critic: critic, actor and temperature losses, the tanh-squashed Gaussian, Polyak updates.

Haarnoja et al., 2018, "Soft actor-critic algorithms and applications" (twin critics with the min
in the target, automatic temperature with target entropy ``-|A|``); Fujimoto et al., 2018 (TD3) for
the clipped double-Q target. With ``alpha = exp(log_alpha)`` and ``a' ~ pi(. | s')``:

.. math::

    y &= r + \gamma (1 - \mathrm{terminated}) \,(\min_i Q^{\mathrm{target}}_i(s', a') - \alpha \log \pi(a' \mid s')) \\
    L_Q &= \tfrac12 \,\mathbb{E}[(Q_1(s, a) - y)^2] + \tfrac12 \,\mathbb{E}[(Q_2(s, a) - y)^2] \\
    L_\pi &= \mathbb{E}_{\tilde a \sim \pi(\cdot \mid s)}[\alpha \log \pi(\tilde a \mid s) - \min_i Q_i(s, \tilde a)] \\
    L_\alpha &= -\mathbb{E}[\log\alpha \,(\log \pi(\tilde a \mid s) + \bar H)]

Each loss sends gradients only to its own parameters (critics, policy, ``log_alpha``), so each
optimizer can step on its own after its own ``backward``. Truncated transitions (time limits) are not
``terminated``: the replay buffer stores their true final observation as ``next_obs`` and the target
bootstraps from it.

The module interface (plain ``torch.nn.Module`` objects, not :class:`rollout.Actor`):

- ``policy(obs) -> (mean, log_std)``, each ``(N, A)``: the Gaussian before the squashing; the policy
  bounds ``log_std`` itself (e.g. to [-5, 2]). Actions are ``scale * tanh(u) + bias``, and
  ``log pi`` is their density, scale included (see :func:`alpha_loss` for SB3's convention).
- ``q(obs, act) -> (N,)`` (or ``(N, 1)``): a critic; ``q1``, ``q2`` and their target copies.

``obs`` may be nested (whatever the policy and critics accept); ``act`` is ``(N, A)``.
"""

import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch.func import functional_call

from . import _policy
from .replay import Transitions

__all__ = [
    "action_scaling",
    "tanh_normal_log_prob",
    "tanh_normal_sample",
    "q_target",
    "critic_loss",
    "actor_loss",
    "alpha_loss",
    "polyak_update",
]

Scale = Union[float, torch.Tensor]

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def action_scaling(low: torch.Tensor, high: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``bias`` mapping ``tanh(u)`` in (-1, 1) onto the box ``(low, high)``.

    Parameters
    ----------
    low, high : Tensor, (A,)
        Finite bounds of the action space, ``low < high``.

    Returns
    -------
    scale, bias : Tensor, (A,)
        ``(high - low) / 2`` and ``(high + low) / 2``.

    Raises
    ------
    ValueError
        On a shape mismatch or bounds that are infinite or not increasing.
    """
    low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
    if low.shape != high.shape:
        raise ValueError(
            f"action_scaling: `low` and `high` must have the same shape, got {tuple(low.shape)} and {tuple(high.shape)}"
        )
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
        raise ValueError(
            f"action_scaling: bounds must be finite with low < high, got low={low.tolist()} high={high.tolist()}"
        )
    return (high - low) / 2, (high + low) / 2


def _log_scale(scale: Scale, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(scale, dtype=like.dtype, device=like.device).log().expand(like.shape)


def _squash_log_det(pre_tanh: torch.Tensor) -> torch.Tensor:
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): finite where tanh(u) rounds to +-1.
    return 2.0 * (_LOG_2 - pre_tanh - torch.nn.functional.softplus(-2.0 * pre_tanh))


def tanh_normal_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, pre_tanh: torch.Tensor, *, scale: Scale = 1.0
) -> torch.Tensor:
    r"""Log-density of ``a = scale * tanh(u) + bias`` where ``u ~ Normal(mean, exp(log_std))``.

    .. math:: \log \pi(a) = \sum_j \log \mathcal N(u_j; \mu_j, \sigma_j) - \log |s_j| - \log(1 - \tanh^2 u_j)

    computed from the pre-squash ``u`` with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``,
    which stays finite where ``tanh(u)`` rounds to +-1 (Haarnoja et al., 2018, appendix C). The
    ``bias`` shifts the action but not the density.

    Parameters
    ----------
    mean, log_std, pre_tanh : Tensor, (..., A)
        The Gaussian and the sample ``u`` before squashing.
    scale : float or Tensor (A,)
        Positive half-widths of the action box (see :func:`action_scaling`).

    Returns
    -------
    Tensor, (...)
        The log-density, summed over the action dimension.
    """
    z = (pre_tanh - mean) * torch.exp(-log_std)
    gaussian = -0.5 * z * z - log_std - _HALF_LOG_2PI
    return (gaussian - _log_scale(scale, pre_tanh) - _squash_log_det(pre_tanh)).sum(-1)


def tanh_normal_sample(
    mean: torch.Tensor,
    log_std: torch.Tensor,
    *,
    scale: Scale = 1.0,
    bias: Scale = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised sample of the squashed Gaussian and its log-density.

    Parameters
    ----------
    mean, log_std : Tensor, (..., A)
        The Gaussian before squashing; gradients flow through the sample to both.
    scale, bias : float or Tensor (A,)
        The action is ``scale * tanh(u) + bias``.
    generator : torch.Generator, optional
        Source of the noise (the global generator if None).

    Returns
    -------
    action : Tensor, (..., A)
    log_prob : Tensor, (...)
        As :func:`tanh_normal_log_prob`.
    """
    device = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=device).to(mean.device)
    pre_tanh = mean + log_std.exp() * noise
    # The Gaussian term from the noise itself: exact, and no division by a small std.
    gaussian = -0.5 * noise * noise - log_std - _HALF_LOG_2PI
    log_prob = (gaussian - _log_scale(scale, pre_tanh) - _squash_log_det(pre_tanh)).sum(-1)
    scale, bias = (torch.as_tensor(x, dtype=mean.dtype, device=mean.device) for x in (scale, bias))
    return scale * torch.tanh(pre_tanh) + bias, log_prob


def q_target(
    rew: torch.Tensor,
    terminated: torch.Tensor,
    next_q1: torch.Tensor,
    next_q2: torch.Tensor,
    next_log_prob: torch.Tensor,
    *,
    alpha: float,
    gamma: float,
) -> torch.Tensor:
    """The soft Bellman target ``r + gamma (1 - terminated) (min(Q1', Q2') - alpha log pi(a'|s'))``.

    Parameters
    ----------
    rew : Tensor, (N,)
    terminated : Tensor, bool, (N,)
        True terminal states only: truncated transitions bootstrap.
    next_q1, next_q2 : Tensor, (N,)
        Target critics at ``(s', a')`` with ``a' ~ pi(. | s')``.
    next_log_prob : Tensor, (N,)
        ``log pi(a' | s')``.
    alpha, gamma : float
        Temperature (>= 0) and discount in [0, 1].

    Returns
    -------
    Tensor, (N,)

    Raises
    ------
    ValueError
        On a shape or dtype mismatch.
    """
    others = dict(terminated=terminated, next_q1=next_q1, next_q2=next_q2, next_log_prob=next_log_prob)
    for name, x in others.items():
        if x.shape != rew.shape:
            raise ValueError(
                f"q_target: `{name}` must have the shape of `rew` {tuple(rew.shape)}, got {tuple(x.shape)}"
            )
    if terminated.dtype != torch.bool:
        raise ValueError(f"q_target: `terminated` must be a bool tensor, got dtype {terminated.dtype}")
    soft_value = torch.min(next_q1, next_q2) - alpha * next_log_prob
    return rew + gamma * torch.where(terminated, 0.0, soft_value)


def _q_values(q: torch.nn.Module, obs: Any, act: torch.Tensor, n: int, name: str) -> torch.Tensor:
    value = q(obs, act)
    if value.shape == (n, 1):
        value = value.squeeze(-1)
    if value.shape != (n,):
        raise ValueError(f"sac: {name}(obs, act) must return shape ({n},) or ({n}, 1), got {tuple(value.shape)}")
    return value


def _frozen(q: torch.nn.Module) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``q`` called with detached parameters: gradients reach its inputs, never its parameters."""
    params = {name: p.detach() for name, p in q.named_parameters()}
    buffers = dict(q.named_buffers())
    return lambda obs, act: functional_call(q, {**params, **buffers}, (obs, act))


def _alpha(log_alpha: Union[float, torch.Tensor]) -> torch.Tensor:
    return torch.as_tensor(log_alpha).detach().exp()


def _policy_sample(
    policy: torch.nn.Module, obs: Any, scale: Scale, bias: Scale, generator: Optional[torch.Generator]
) -> Tuple[torch.Tensor, torch.Tensor]:
    mean, log_std = policy(obs)
    if mean.shape != log_std.shape or mean.dim() != 2:
        raise ValueError(
            "sac: policy(obs) must return (mean, log_std) of shape (N, A), "
            f"got {tuple(mean.shape)} and {tuple(log_std.shape)}"
        )
    return tanh_normal_sample(mean, log_std, scale=scale, bias=bias, generator=generator)


def critic_loss(
    batch: Transitions,
    policy: torch.nn.Module,
    q1: torch.nn.Module,
    q2: torch.nn.Module,
    q1_target: torch.nn.Module,
    q2_target: torch.nn.Module,
    *,
    log_alpha: Union[float, torch.Tensor],
    gamma: float = 0.99,
    scale: Scale = 1.0,
    bias: Scale = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The twin-critic loss ``L_Q`` (see the module docstring); gradients reach ``q1`` and ``q2`` only.

    Parameters
    ----------
    batch : Transitions
        From :meth:`learners.replay.ReplayBuffer.sample`: ``obs``, ``act`` (N, A), ``rew`` (N,),
        ``terminated`` (N,), ``next_obs``. Never modified.
    policy : Module
        ``policy(obs) -> (mean, log_std)``, sampled at ``next_obs`` without gradients.
    q1, q2 : Module
        ``q(obs, act) -> (N,)``, the critics being trained.
    q1_target, q2_target : Module
        Their slowly updated copies (see :func:`polyak_update`), evaluated without gradients.
    log_alpha : float or Tensor
        Log-temperature (used detached).
    gamma : float
        Discount in [0, 1].
    scale, bias : float or Tensor (A,)
        Action squashing, see :func:`action_scaling`.
    generator : torch.Generator, optional
        Source of the policy's noise.

    Returns
    -------
    loss : Tensor, ()
    info : dict of float
        ``critic_loss``, ``q1_loss``, ``q2_loss`` (each ``0.5 * MSE``, as SB3's ``critic_loss``;
        CleanRL's ``qf_loss`` is unhalved, twice ours), ``q1_mean``, ``q2_mean``, ``target_mean``.
    """
    n = batch.rew.shape[0]
    with torch.no_grad():
        next_act, next_log_prob = _policy_sample(policy, batch.next_obs, scale, bias, generator)
        target = q_target(
            batch.rew,
            batch.terminated,
            _q_values(q1_target, batch.next_obs, next_act, n, "q1_target"),
            _q_values(q2_target, batch.next_obs, next_act, n, "q2_target"),
            next_log_prob,
            alpha=_alpha(log_alpha),
            gamma=gamma,
        )
    q1_value = _q_values(q1, batch.obs, batch.act, n, "q1")
    q2_value = _q_values(q2, batch.obs, batch.act, n, "q2")
    q1_loss = 0.5 * ((q1_value - target) ** 2).mean()
    q2_loss = 0.5 * ((q2_value - target) ** 2).mean()
    loss = q1_loss + q2_loss
    return loss, _policy.scalars(
        critic_loss=loss,
        q1_loss=q1_loss,
        q2_loss=q2_loss,
        q1_mean=q1_value.mean(),
        q2_mean=q2_value.mean(),
        target_mean=target.mean(),
    )


def actor_loss(
    batch: Transitions,
    policy: torch.nn.Module,
    q1: torch.nn.Module,
    q2: torch.nn.Module,
    *,
    log_alpha: Union[float, torch.Tensor],
    scale: Scale = 1.0,
    bias: Scale = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The policy loss ``L_pi`` (see the module docstring); gradients reach the policy only.

    The critics are called with detached parameters, so the gradient flows through the sampled
    action into the policy and leaves the critics' ``.grad`` untouched.

    Parameters
    ----------
    batch : Transitions
        Only ``obs`` is used.
    policy : Module
        ``policy(obs) -> (mean, log_std)``.
    q1, q2 : Module
        ``q(obs, act) -> (N,)``.
    log_alpha : float or Tensor
        Log-temperature (used detached).
    scale, bias, generator
        As in :func:`critic_loss`.

    Returns
    -------
    loss : Tensor, ()
    info : dict of float
        ``actor_loss``, ``entropy`` (``-E[log pi]``, a one-sample estimate), ``q_mean`` (of the
        min over the critics), ``alpha``.
    """
    n = batch.rew.shape[0]
    act, log_prob = _policy_sample(policy, batch.obs, scale, bias, generator)
    q_value = torch.min(
        _q_values(_frozen(q1), batch.obs, act, n, "q1"), _q_values(_frozen(q2), batch.obs, act, n, "q2")
    )
    alpha = _alpha(log_alpha)
    loss = (alpha * log_prob - q_value).mean()
    return loss, _policy.scalars(actor_loss=loss, entropy=-log_prob.mean(), q_mean=q_value.mean(), alpha=alpha)


def alpha_loss(
    batch: Transitions,
    policy: torch.nn.Module,
    log_alpha: torch.Tensor,
    *,
    target_entropy: Optional[float] = None,
    scale: Scale = 1.0,
    bias: Scale = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The temperature loss ``L_alpha`` (see the module docstring); gradients reach ``log_alpha`` only.

    Its gradient ``-E[log pi + H_target]`` is negative (alpha grows under gradient descent) when the
    policy's entropy ``-E[log pi]`` is below the target, and positive when above.

    Units: ``log pi`` is the density of the action as executed, ``scale * tanh(u) + bias``, so it
    includes the scale's log-determinant (:func:`tanh_normal_log_prob` subtracts ``sum(log scale)``)
    and the entropy compared with ``H_target`` is ``sum(log scale)`` larger than that of the
    unscaled ``tanh(u)`` in (-1, 1). CleanRL counts the same way. SB3 measures the entropy of the
    unscaled action (its squashed Gaussian lives in [-1, 1] and is rescaled outside), with the same
    default target ``-|A|``; to reproduce SB3's temperature on a box of half-widths ``s``, pass
    ``target_entropy = -|A| + sum(log s)``. The two agree when ``s = 1``. (The soft Q target of
    :func:`critic_loss` still differs from SB3's: its bootstrapped ``-alpha log pi`` is larger by
    ``alpha * sum(log s)``, as if every next step paid that constant reward.)

    Parameters
    ----------
    batch : Transitions
        Only ``obs`` is used.
    policy : Module
        ``policy(obs) -> (mean, log_std)``, sampled without gradients.
    log_alpha : Tensor, ()
        The trained log-temperature (``requires_grad=True``).
    target_entropy : float, optional
        ``H_target``, an entropy of the scaled action (see above); default ``-A``, minus the action
        dimension.
    scale, bias, generator
        As in :func:`critic_loss`.

    Returns
    -------
    loss : Tensor, ()
    info : dict of float
        ``alpha_loss``, ``alpha``, ``entropy`` (one-sample estimate), ``target_entropy``.

    Raises
    ------
    ValueError
        When ``log_alpha`` is not a scalar tensor, or ``policy(obs)`` does not return ``mean`` and
        ``log_std`` of one shape (N, A).
    """
    if not isinstance(log_alpha, torch.Tensor) or log_alpha.numel() != 1:
        raise ValueError(
            f"sac.alpha_loss: `log_alpha` must be a scalar tensor (requires_grad=True), got {log_alpha!r:.60}"
        )
    with torch.no_grad():
        act, log_prob = _policy_sample(policy, batch.obs, scale, bias, generator)
    if target_entropy is None:
        target_entropy = -float(act.shape[-1])
    loss = -(log_alpha * (log_prob + target_entropy)).mean()
    return loss, _policy.scalars(
        alpha_loss=loss, alpha=log_alpha.exp(), entropy=-log_prob.mean(), target_entropy=target_entropy
    )


@torch.no_grad()
def polyak_update(target: torch.nn.Module, source: torch.nn.Module, *, tau: float) -> None:
    """Move ``target`` towards ``source`` in place: ``target <- (1 - tau) * target + tau * source``.

    ``tau`` is the weight of the *online* network (the SAC paper's and CleanRL's convention; a
    Polyak "decay" ``rho`` or TorchRL's ``eps`` is ``1 - tau``): ``tau=1`` copies, small values
    such as 0.005 track slowly, ``tau=0`` does nothing. Floating-point buffers are averaged the
    same way; other buffers (counters) are copied.

    Parameters
    ----------
    target, source : Module
        With the same parameter and buffer names and shapes; ``source`` is not modified.
    tau : float
        In [0, 1].

    Raises
    ------
    ValueError
        When ``tau`` is out of range or the modules' parameters or buffers differ.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"polyak_update: `tau` must be in [0, 1], got {tau}")
    pairs = []  # all checked before anything moves
    for kind in ("parameters", "buffers"):
        targets = dict(getattr(target, f"named_{kind}")())
        sources = dict(getattr(source, f"named_{kind}")())
        if targets.keys() != sources.keys():
            raise ValueError(
                f"polyak_update: the modules' {kind} differ: only in target {sorted(targets.keys() - sources.keys())}, "
                f"only in source {sorted(sources.keys() - targets.keys())}"
            )
        for name, t in targets.items():
            s = sources[name]
            if t.shape != s.shape:
                raise ValueError(
                    f"polyak_update: {kind[:-1]} {name!r} has shape {tuple(t.shape)} in target, "
                    f"{tuple(s.shape)} in source"
                )
            pairs.append((t, s))
    for t, s in pairs:
        if t.is_floating_point():
            t.lerp_(s.to(t.dtype), tau)
        else:
            t.copy_(s)
