"""Ready actors."""

from typing import Sequence

import torch
from torch import nn

import rollout

__all__ = ["CategoricalMLP", "RandomActor", "CategoricalGRU", "AtariConv"]


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


class RandomActor(rollout.Actor):
    """Uniform random actions for a ``Discrete(n)`` action space: ``(n_seq, B)`` int64, no info.

    The policy that costs nothing, so a benchmark measures the env and the engine alone.
    """

    def __init__(self, n_act: int):
        super().__init__()
        self.n_act = n_act

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.randint(self.n_act, tuple(fin.shape)), (), {}


class CategoricalGRU(rollout.Actor):
    """Recurrent actor-critic: ``Linear -> tanh -> GRU cell -> policy and value heads``.

    ``hx`` is one tensor ``(1, B, hidden)``. ``step`` runs over ``n_seq`` rows and zeroes the
    state of every env before a row with ``fin[t]`` (a new episode), so a learner replaying a
    fragment from ``Fragment.hx`` recomputes exactly what the collector saw. ``info`` has
    ``logits`` ``(n_seq, B, A)`` and ``value`` ``(n_seq, B)``.
    """

    def __init__(self, n_obs: int, n_act: int, hidden: int = 64):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Linear(n_obs, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.policy = nn.Linear(hidden, n_act)
        self.value = nn.Linear(hidden, 1)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n_seq, B = fin.shape
        h = torch.zeros(B, self.hidden) if hx is None else hx[0]
        x = torch.tanh(self.embed(obs.float()))
        outputs = []
        for t in range(n_seq):
            h = self.cell(x[t], h.masked_fill(fin[t].unsqueeze(-1), 0.0))
            outputs.append(h)
        features = torch.stack(outputs)
        logits = self.policy(features)
        if self.deterministic:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.reshape(-1, logits.shape[-1]).softmax(-1), 1).reshape(n_seq, B)
        return action, h.unsqueeze(0), {"logits": logits, "value": self.value(features).squeeze(-1)}


class AtariConv(rollout.Actor):
    """The DQN "Nature" convolutional actor-critic for stacked uint8 frames ``(n_seq, B, 4, 84, 84)``.

    Frames are scaled to [0, 1] inside. ``info`` has ``logits`` ``(n_seq, B, A)`` and ``value``
    ``(n_seq, B)``; no recurrent state.
    """

    def __init__(self, n_act: int, n_frames: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_frames, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
        )
        self.policy = nn.Linear(512, n_act)
        self.value = nn.Linear(512, 1)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n_seq, B = fin.shape
        features = self.body(obs.reshape(n_seq * B, *obs.shape[2:]).float() / 255.0)
        logits = self.policy(features).reshape(n_seq, B, -1)
        if self.deterministic:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.reshape(-1, logits.shape[-1]).softmax(-1), 1).reshape(n_seq, B)
        return action, (), {"logits": logits, "value": self.value(features).reshape(n_seq, B)}
