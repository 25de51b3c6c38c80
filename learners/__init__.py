"""Stateless losses and return estimators that consume fragments yielded by :mod:`rollout`.

Each loss is a plain function ``loss, info = <module>.loss(batch, module, *, ...)``: no optimizer
inside, no state kept between calls, the batch never modified, ``info`` a dict of floats. A module
whose outputs break the actor contract (no ``info`` dict, no ``value`` where one is needed, a
``value`` of the wrong shape) raises :class:`rollout.errors.ActorContractError`, a ``TypeError``;
bad arguments, a module without a usable policy (no ``distribution(info)`` and no ``logits``, or a
``log_prob`` of the wrong shape) and inconsistent batches raise ``ValueError``.

- :mod:`learners.returns`: discounted and n-step returns, GAE / TD(lambda), V-trace, and the
  fragment timing (:func:`~learners.returns.from_fragment`, :func:`~learners.returns.valid_mask`);
- :mod:`learners.reinforce`, :mod:`learners.a2c`, :mod:`learners.ppo`: on-policy losses;
- :mod:`learners.sac` with :mod:`learners.replay`: off-policy soft actor-critic from a replay buffer.
"""

from . import a2c, ppo, reinforce, replay, returns, sac
from .replay import ReplayBuffer, Transitions

__all__ = ["returns", "reinforce", "a2c", "ppo", "sac", "replay", "ReplayBuffer", "Transitions"]
