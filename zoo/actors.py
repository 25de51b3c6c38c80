"""Ready actors."""

from typing import Sequence

import torch
from torch import nn

import rollout

__all__ = ["CategoricalMLP"]


class CategoricalMLP(rollout.Actor):
    """Feed-forward actor-critic for a flat Box observation and a Discrete action space.

    ``step`` returns the sampled action ``(n_seq, B)`` int64 (the argmax when
    ``self.deterministic``), no recurrent state, and ``info`` with ``logits`` ``(n_seq, B, A)``
    and ``value`` ``(n_seq, B)``.
    """

    def __init__(self, n_obs: int, n_act: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        layers, size = [], n_obs
        for width in hidden:
            layers += [nn.Linear(size, width), nn.Tanh()]
            size = width
        self.body = nn.Sequential(*layers)
        self.policy = nn.Linear(size, n_act)
        self.value = nn.Linear(size, 1)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        features = self.body(obs.float())
        logits = self.policy(features)
        if self.deterministic:
            action = logits.argmax(-1)
        else:
            flat = logits.reshape(-1, logits.shape[-1])
            action = torch.multinomial(flat.softmax(-1), 1).reshape(logits.shape[:-1])
        return action, (), {"logits": logits, "value": self.value(features).squeeze(-1)}
