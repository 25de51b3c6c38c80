r"""REINFORCE: the likelihood-ratio policy gradient with the return, a baseline and an entropy bonus.

.. math:: L = -\frac{1}{N} \sum_t \log \pi(a_t \mid x_t) \,(G_t - b(x_t))
          + c_v \frac{1}{N} \sum_t \tfrac12 (V(x_t) - G_t)^2 - c_H \frac{1}{N} \sum_t H[\pi(\cdot \mid x_t)]

where the sums run over the valid transitions of the batch (:func:`learners.returns.valid_mask`),
``G_t`` is :func:`learners.returns.discounted_returns` and the baseline ``b = V`` is detached
(Williams, 1992, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning"; Sutton & Barto, 2018, §13.4 for the baseline).

The return is bootstrapped where the fragment stops short of the episode's end: from the module's
value of the lookahead row T and, at truncations, from ``final.actor['value']`` (the value of the
true final observation recorded by the collector). Without values (``bootstrap=False``) it is the
whole-episode Monte Carlo return, and only transitions whose episode ends inside the fragment get
weight (a truncation counts as an end: the return then stops at the time limit).
"""

from typing import Dict, Tuple

import torch

from rollout.fragment import Fragment

from . import _policy
from .returns import discounted_returns, from_fragment, valid_mask

__all__ = ["loss"]


def _ends_later(fin: torch.Tensor) -> torch.Tensor:
    """(T, B) bool: the episode of transition t ends at t or later inside the fragment."""
    return fin.flip(0).cumsum(0).flip(0) > 0


def loss(
    batch: Fragment,
    module: torch.nn.Module,
    *,
    gamma: float = 0.99,
    bootstrap: bool = True,
    baseline: bool = True,
    value_coef: float = 0.5,
    entropy_coef: float = 0.0,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The REINFORCE loss of a batch (see the module docstring for the formula).

    Parameters
    ----------
    batch : Fragment
        Leaves ``(1+T, B, ...)``; never modified.
    module : Actor
        Evaluated with one virtual step over all ``1+T`` rows from ``batch.hx``. Its policy is
        ``module.distribution(info)`` if defined, else ``Categorical(logits=info['logits'])``;
        ``info['value']`` (1+T, B) is needed for ``bootstrap`` or ``baseline``.
    gamma : float
        Discount in [0, 1].
    bootstrap : bool
        Bootstrap the return at the fragment's end and at truncations (needs values); False uses
        whole-episode returns and drops transitions whose episode does not end in the fragment.
    baseline : bool
        Subtract the detached value ``V(x_t)`` from the return and train it (needs values).
    value_coef, entropy_coef : float
        Weights ``c_v`` of the value regression and ``c_H`` of the entropy bonus (>= 0). The value
        term is halved, ``0.5 * mean((V - G)^2)``, as in :func:`learners.a2c.loss`, so a
        coefficient carried over from SB3's A2C/PPO ``vf_coef`` doubles: ``vf_coef=0.5`` is
        ``value_coef=1.0``.

    Returns
    -------
    loss : Tensor, ()
        The scalar to minimise.
    info : dict of float
        ``loss``, ``policy_loss``, ``value_loss`` (halved, before ``value_coef``; 0 without
        baseline), ``entropy``, ``return_mean``
        (mean ``G_t``), ``n_samples`` (transitions with weight).

    Raises
    ------
    rollout.errors.ActorContractError
        A ``TypeError``: the module's ``info`` is not a dict, or, with ``bootstrap`` or
        ``baseline``, has no tensor ``info['value']`` or one whose shape is not ``(1+T, B)``.
    ValueError
        On a negative ``value_coef`` or ``entropy_coef``; ``gamma`` outside [0, 1]; a module with no
        policy (neither ``distribution(info)`` nor ``info['logits']``) or whose ``log_prob(a)`` is
        not (T, B); with ``bootstrap``, a ``batch.final.actor['value']`` that is missing although the
        batch has truncations, or has the wrong shape.

    Examples
    --------
    >>> loss, info = reinforce.loss(batch, actor, gamma=0.99, entropy_coef=0.01)
    >>> optim.zero_grad(); loss.backward(); optim.step()
    """
    _policy.check_coefficient("reinforce.loss", "value_coef", value_coef)
    _policy.check_coefficient("reinforce.loss", "entropy_coef", entropy_coef)
    state = batch.state
    shape = state.rew[1:].shape
    info = _policy.evaluate(module, state, batch.hx)
    dist = _policy.distribution(module, _policy.rows(info, slice(None, -1)))
    logp, entropy = _policy.log_prob_entropy(dist, _policy.rows(state.act, slice(1, None)), shape)

    value = None
    if bootstrap or baseline:
        value = _policy.value_of(info, state.rew.shape, "reinforce.loss with bootstrap or baseline")
    fin, terminated = state.fin[1:], state.terminated[1:]
    if bootstrap:
        inputs = from_fragment(batch, value.detach())
        returns = discounted_returns(inputs.rew, inputs.next_value, fin=fin, terminated=terminated, gamma=gamma)
        weight = inputs.valid
    else:
        returns = discounted_returns(state.rew[1:], fin=fin, terminated=terminated, gamma=gamma)
        weight = valid_mask(batch) & _ends_later(fin)

    advantage = returns - value[:-1].detach() if baseline else returns
    policy_loss = -_policy.masked_mean(logp * advantage, weight)
    value_loss = policy_loss.new_zeros(())
    if baseline:
        error = value[:-1] - returns
        value_loss = 0.5 * _policy.masked_mean(error * error, weight)
    mean_entropy = _policy.masked_mean(entropy, weight)
    total = policy_loss + value_coef * value_loss - entropy_coef * mean_entropy
    return total, _policy.scalars(
        loss=total,
        policy_loss=policy_loss,
        value_loss=value_loss,
        entropy=mean_entropy,
        return_mean=_policy.masked_mean(returns, weight),
        n_samples=weight.sum(),
    )
