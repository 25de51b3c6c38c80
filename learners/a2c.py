r"""Advantage actor-critic with GAE, and optional importance corrections for lagged actors.

.. math:: L = -\frac{1}{N} \sum_t w_t \log \pi(a_t \mid x_t) \hat A_t
          + c_v \frac{1}{N} \sum_t \tfrac12 (V(x_t) - \hat V_t)^2 - c_H \frac{1}{N} \sum_t H[\pi(\cdot \mid x_t)]

over the valid transitions (:func:`learners.returns.valid_mask`). ``\hat A`` and ``\hat V`` are
computed from the module's own values, detached:

- ``correction=None``: GAE advantages and lambda-returns, ``w = 1`` (Mnih et al., 2016,
  "Asynchronous methods for deep reinforcement learning"; Schulman et al., 2016, GAE).
  ``lam=1`` gives the n-step returns of A3C (bootstrapped at the fragment's end).
- ``correction="truncated_is"``: the same estimates, with the policy-gradient term weighted by the
  truncated importance weight ``w_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t))`` of the current
  policy over the behaviour policy that collected the data (Ionides, 2008; Wang et al., 2017, ACER).
  The value target is not corrected.
- ``correction="vtrace"``: V-trace targets and advantages (Espeholt et al., 2018, IMPALA), ``w = 1``.

The behaviour log-probabilities are the recorded ``batch.actor['logp']`` (log-probability of the
action the actor chose at that row) when present, else the module's distribution of the recorded
``batch.actor`` info (exact only when the distribution depends on nothing but that info).
Truncations bootstrap from ``batch.final.actor['value']`` as recorded by the collector.
"""

from typing import Dict, Optional, Tuple

import torch

from rollout.fragment import Fragment

from . import _policy
from .returns import from_fragment, gae, vtrace

__all__ = ["loss", "CORRECTIONS"]

CORRECTIONS = (None, "truncated_is", "vtrace")


def loss(
    batch: Fragment,
    module: torch.nn.Module,
    *,
    gamma: float = 0.99,
    lam: float = 1.0,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    correction: Optional[str] = None,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The A2C loss of a batch (see the module docstring for the formula).

    Parameters
    ----------
    batch : Fragment
        Leaves ``(1+T, B, ...)``; never modified.
    module : Actor
        Evaluated with one virtual step over all ``1+T`` rows from ``batch.hx``; needs
        ``info['value']`` (1+T, B) and a policy: ``module.distribution(info)`` if defined, else
        ``Categorical(logits=info['logits'])``, whose ``log_prob(a)`` is (T, B).
    gamma, lam : float
        Discount and GAE trace decay (for V-trace the ``lambda`` multiplying ``c_t``), in [0, 1].
    value_coef, entropy_coef : float
        Weights ``c_v`` of the value regression and ``c_H`` of the entropy bonus (>= 0).
        The value term is halved, ``0.5 * mean((V - target)^2)``, so ``value_coef`` is twice SB3's
        ``vf_coef`` (which weights the unhalved ``F.mse_loss``): SB3's ``vf_coef=0.5`` is
        ``value_coef=1.0``. CleanRL halves its value loss too: its ``vf_coef`` is our ``value_coef``.
    correction : {None, "truncated_is", "vtrace"}
        Importance correction for data collected by a lagged actor.
    rho_bar, c_bar : float
        Truncation levels of the importance weights (> 0); ``c_bar`` only for V-trace.

    Returns
    -------
    loss : Tensor, ()
        The scalar to minimise.
    info : dict of float
        ``loss``, ``policy_loss``, ``value_loss`` (halved, before ``value_coef``), ``entropy``,
        ``advantage_mean``, ``target_mean``,
        ``explained_variance`` (of the targets by the values), and with a correction ``rho_mean``
        (the mean untruncated importance weight ``pi / mu``).

    Raises
    ------
    rollout.errors.ActorContractError
        A ``TypeError``: the module's ``info`` is not a dict, has no tensor ``info['value']``, or
        has one whose shape is not ``(1+T, B)``.
    ValueError
        On an unknown ``correction``; a negative ``value_coef`` or ``entropy_coef``, ``rho_bar <= 0``
        or (with ``"vtrace"``) ``c_bar <= 0``; ``gamma`` or ``lam`` outside [0, 1]; a module with no
        policy (neither ``distribution(info)`` nor ``info['logits']``) or whose ``log_prob(a)`` is
        not (T, B); with a correction, a recorded ``batch.actor['logp']`` that is not (1+T, B); a
        ``batch.final.actor['value']`` that is missing although the batch has truncations, or has
        the wrong shape.

    Examples
    --------
    >>> loss, info = a2c.loss(batch, actor, gamma=0.99, lam=0.95, correction="vtrace")
    >>> optim.zero_grad(); loss.backward(); optim.step()
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"a2c.loss: `correction` must be one of {CORRECTIONS}, got {correction!r}")
    _policy.check_coefficient("a2c.loss", "value_coef", value_coef)
    _policy.check_coefficient("a2c.loss", "entropy_coef", entropy_coef)
    _policy.check_coefficient("a2c.loss", "rho_bar", rho_bar, positive=True)
    state = batch.state
    shape = state.rew[1:].shape
    info = _policy.evaluate(module, state, batch.hx)
    value = _policy.value_of(info, state.rew.shape, "a2c.loss")
    action = _policy.rows(state.act, slice(1, None))
    dist = _policy.distribution(module, _policy.rows(info, slice(None, -1)))
    logp, entropy = _policy.log_prob_entropy(dist, action, shape)

    inputs = from_fragment(batch, value.detach())
    masks = dict(fin=inputs.fin, terminated=inputs.terminated, gamma=gamma)
    weight = inputs.valid
    diagnostics: Dict[str, torch.Tensor] = {}
    if correction is None:
        advantage, target = gae(inputs.rew, inputs.value, inputs.next_value, lam=lam, **masks)
    else:
        with torch.no_grad():
            log_rho = logp - _policy.behaviour_logp(module, batch.actor, action, shape)
            rho = log_rho.exp()
        diagnostics = {"rho_mean": _policy.masked_mean(rho, weight)}
        if correction == "vtrace":
            advantage, target = vtrace(
                inputs.rew, inputs.value, inputs.next_value, log_rho, lam=lam, rho_bar=rho_bar, c_bar=c_bar, **masks
            )
        else:
            advantage, target = gae(inputs.rew, inputs.value, inputs.next_value, lam=lam, **masks)
            advantage = rho.clamp(max=rho_bar) * advantage

    policy_loss = -_policy.masked_mean(logp * advantage, weight)
    error = value[:-1] - target
    value_loss = 0.5 * _policy.masked_mean(error * error, weight)
    mean_entropy = _policy.masked_mean(entropy, weight)
    total = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy
    return total, _policy.scalars(
        loss=total,
        policy_loss=policy_loss,
        value_loss=value_loss,
        entropy=mean_entropy,
        advantage_mean=_policy.masked_mean(advantage, weight),
        target_mean=_policy.masked_mean(target, weight),
        explained_variance=_policy.explained_variance(value[:-1], target, weight),
        **diagnostics,
    )
