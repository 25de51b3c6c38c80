"""Ready actors: discrete actor-critics (feed-forward, recurrent, convolutional) and SAC's pieces.

Every actor is a :class:`rollout.Actor`: inputs are time-major ``(n_seq, B, ...)`` (``n_seq == 1``
during collection) and the returned leaves are ``(n_seq, B, ...)`` (DESIGN §3).

============================  =============================  ==========================  ====================
actor                         action                         hx                          info
============================  =============================  ==========================  ====================
:class:`CategoricalMLP`       ``(n_seq, B)`` int64           ``()``                      ``logits``, ``value``
:class:`CategoricalGRU`       ``(n_seq, B)`` int64           ``(1 or 2, B, hidden)``     ``logits``, ``value``
:class:`AtariConv`            ``(n_seq, B)`` int64           ``()``                      ``logits``, ``value``
:class:`RandomActor`          ``(n_seq, B)`` int64           ``()``                      ``{}``
:class:`SquashedGaussian`     ``(n_seq, B, A)`` float32      ``()``                      ``{}``
============================  =============================  ==========================  ====================

:class:`QNetwork` is a plain module (a SAC critic), not an actor. Optional observation
normalisation is a :class:`zoo.normalize.RunningNorm` owned by the actor (``actor.obs_norm``),
whose statistics the learner updates and the collectors sync to the workers with the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import rollout
from learners.sac import action_scaling, tanh_normal_sample

from .normalize import RunningNorm

__all__ = [
    "AtariConv",
    "CategoricalGRU",
    "CategoricalMLP",
    "GaussianPolicy",
    "QNetwork",
    "RandomActor",
    "SquashedGaussian",
]

# Orthogonal initialisation gains of the on-policy actor-critics (as CleanRL's and SB3's PPO).
HIDDEN_GAIN = math.sqrt(2.0)
POLICY_GAIN = 0.01
VALUE_GAIN = 1.0

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def _orthogonal(layer: nn.Module, gain: float) -> nn.Module:
    """``layer`` (linear or convolution) with an orthogonal weight of the given gain and a zero bias (in place)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, hidden: Sequence[int], activation: type, gain: float | None = None) -> tuple[nn.Sequential, int]:
    """``Linear -> activation`` per hidden width, and the output width (``n_in`` when no layer).

    With ``gain`` the linear layers get an orthogonal init of that gain and zero biases; otherwise
    PyTorch's default init.
    """
    layers, size = [], n_in
    for width in hidden:
        linear = nn.Linear(size, int(width))
        layers += [linear if gain is None else _orthogonal(linear, gain), activation()]
        size = int(width)
    return nn.Sequential(*layers), size


def _categorical(logits: torch.Tensor, deterministic: bool) -> torch.Tensor:
    """The argmax, or a sample, of ``logits`` ``(..., A)``: int64 ``(...)``."""
    if deterministic:
        return logits.argmax(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    return torch.multinomial(flat.softmax(-1), 1).reshape(logits.shape[:-1])


class CategoricalMLP(rollout.Actor):
    """Feed-forward actor-critic for a flat Box observation and a Discrete action space.

    ``obs (n_seq, B, n_obs) -> [obs_norm] -> tanh MLP -> policy head (A) and value head (1)``;
    ``stepno``, ``act``, ``rew`` and ``fin`` are not used. Orthogonal init as in CleanRL's and
    SB3's PPO: hidden layers gain ``sqrt(2)``, policy head 0.01, value head 1.0, zero biases.

    Parameters
    ----------
    n_obs, n_act : int
        Observation size and number of actions ``A``.
    hidden : sequence of int
        Widths of the hidden layers (of each trunk when not shared).
    shared : bool
        One trunk for both heads (``self.body``); when False the value head has its own trunk of
        the same widths (``self.value_body``), so the value loss never reaches the policy's
        parameters.
    normalize_obs : bool
        Own ``self.obs_norm = RunningNorm((n_obs,))``, applied to ``obs`` first (updated by the
        learner, see :class:`zoo.normalize.RunningNorm`); otherwise ``self.obs_norm`` is None.

    ``step`` returns the action ``(n_seq, B)`` int64 (sampled, or the argmax when
    ``self.deterministic``), no recurrent state ``()``, and ``info`` with ``logits``
    ``(n_seq, B, A)`` and ``value`` ``(n_seq, B)``.
    """

    def __init__(
        self,
        n_obs: int,
        n_act: int,
        hidden: Sequence[int] = (64, 64),
        *,
        shared: bool = True,
        normalize_obs: bool = False,
    ):
        super().__init__()
        self.obs_norm = RunningNorm((n_obs,)) if normalize_obs else None
        self.body, size = _mlp(n_obs, hidden, nn.Tanh, HIDDEN_GAIN)
        self.value_body = None if shared else _mlp(n_obs, hidden, nn.Tanh, HIDDEN_GAIN)[0]
        self.policy = _orthogonal(nn.Linear(size, n_act), POLICY_GAIN)
        self.value = _orthogonal(nn.Linear(size, 1), VALUE_GAIN)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        x = obs.float()
        if self.obs_norm is not None:
            x = self.obs_norm(x)
        features = self.body(x)
        logits = self.policy(features)
        value_features = features if self.value_body is None else self.value_body(x)
        value = self.value(value_features).squeeze(-1)
        return _categorical(logits, self.deterministic), (), {"logits": logits, "value": value}


class RandomActor(rollout.Actor):
    """Uniform random actions for a ``Discrete(n)`` action space: ``(n_seq, B)`` int64, no info.

    The policy that costs nothing, so a benchmark measures the env and the engine alone.
    """

    def __init__(self, n_act: int):
        super().__init__()
        self.n_act = n_act

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.randint(self.n_act, tuple(fin.shape)), (), {}


def _head(n_in: int, width: int, n_out: int, gain: float) -> nn.Module:
    """A linear output layer, behind one tanh hidden layer of ``width`` units when ``width > 0``."""
    out = _orthogonal(nn.Linear(width or n_in, n_out), gain)
    if not width:
        return out
    return nn.Sequential(_orthogonal(nn.Linear(n_in, width), HIDDEN_GAIN), nn.Tanh(), out)


class CategoricalGRU(rollout.Actor):
    """Recurrent actor-critic: ``[obs_norm] -> Linear -> tanh -> GRU (or LSTM) -> policy and value heads``.

    ``step`` runs over the ``n_seq`` rows with :func:`rollout.unroll` (fused calls of
    ``nn.GRU`` / ``nn.LSTM``, one for a collector's step, a few for a fragment) and zeroes the
    state of every env before a row with ``fin[t]`` (a new episode). The collector also resets the state of ended episodes
    (:meth:`rollout.Actor.reset`, zeros), so both agree, and a learner replaying a fragment's
    columns from ``Fragment.hx`` (as :func:`learners.ppo.loss` does) recomputes exactly what the
    collector saw.

    With ``separate_critic=True`` the value has its own recurrent trunk (its own embedding and GRU
    cell), so the value loss never reaches the policy's parameters; this is recommended for PPO
    (with one shared trunk the critic can fail to learn). The recurrent layers keep PyTorch's default
    init; the embeddings are orthogonal with gain ``sqrt(2)``, the policy head 0.01 and the value
    head 1.0, with zero biases.

    Parameters
    ----------
    n_obs, n_act : int
        Observation size and number of actions ``A``.
    hidden : int
        Width of the embedding and of the recurrent state.
    separate_critic : bool
        A second, independent recurrent trunk for the value.
    normalize_obs : bool
        Own ``self.obs_norm = RunningNorm((n_obs,))``, applied to ``obs`` first (shared by both
        trunks); otherwise ``self.obs_norm`` is None.
    head : int
        Width of a tanh hidden layer between the recurrent state and each head (0: linear heads),
        as sb3-contrib's recurrent policies put an MLP after the LSTM.
    feed_action : bool
        Also feed the previous action ``act`` ``(n_seq, B)`` one-hot (zeros at rows with ``fin``):
        in a partially observed env the agent's own push explains part of the change it sees.
    cell : str
        ``"gru"`` (``nn.GRU``) or ``"lstm"`` (``nn.LSTM``, as sb3-contrib's RecurrentPPO; on
        CPU oneDNN fuses a dense LSTM call, the faster of the two here).

    ``hx`` is one tensor ``(S, B, hidden)`` of the trunks' states stacked: ``S`` is 1 for a GRU
    (``h``) or 2 for an LSTM (``h``, ``c``), doubled with a separate critic (the policy's rows
    first, then the critic's); ``hx=None`` gives zeros. ``step`` returns the action
    ``(n_seq, B)`` int64 (sampled, or the argmax when ``self.deterministic``), the state after the
    last row, and ``info`` with ``logits`` ``(n_seq, B, A)`` and ``value`` ``(n_seq, B)``.
    """

    def __init__(
        self,
        n_obs: int,
        n_act: int,
        hidden: int = 64,
        *,
        separate_critic: bool = False,
        normalize_obs: bool = False,
        feed_action: bool = False,
        head: int = 0,
        cell: str = "gru",
    ):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        Cell = nn.GRU if cell == "gru" else nn.LSTM
        self.n_state = 1 if cell == "gru" else 2  # rows of hx per trunk
        self.hidden = int(hidden)
        self.n_act = int(n_act) if feed_action else 0
        self.obs_norm = RunningNorm((n_obs,)) if normalize_obs else None
        self.embed = _orthogonal(nn.Linear(n_obs + self.n_act, hidden), HIDDEN_GAIN)
        self.cell = Cell(hidden, hidden)
        if separate_critic:
            self.critic_embed = _orthogonal(nn.Linear(n_obs + self.n_act, hidden), HIDDEN_GAIN)
            self.critic_cell = Cell(hidden, hidden)
        else:
            self.critic_embed = self.critic_cell = None
        self.policy = _head(hidden, head, n_act, POLICY_GAIN)
        self.value = _head(hidden, head, 1, VALUE_GAIN)

    @property
    def separate_critic(self) -> bool:
        """Whether the value has its own recurrent trunk (then ``hx`` has 2 rows)."""
        return self.critic_cell is not None

    @staticmethod
    def _unroll(
        cell: nn.Module, x: torch.Tensor, h: torch.Tensor, fin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``cell`` over ``x`` ``(n_seq, B, hidden)`` from ``h`` ``(S, B, hidden)``, zeroing before ``fin``.

        Returns the outputs ``(n_seq, B, hidden)`` and the state after the last row ``(S, B, hidden)``
        (``S`` rows: ``h``, or an LSTM's ``h`` and ``c``).
        """
        if isinstance(cell, nn.LSTM):
            out, (h_n, c_n) = rollout.unroll(cell, x, (h[0:1], h[1:2]), fin)
            return out, torch.cat([h_n, c_n])
        return rollout.unroll(cell, x, h, fin)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        B = fin.shape[1]
        if hx is None:
            hx = torch.zeros((1 + self.separate_critic) * self.n_state, B, self.hidden, device=obs.device)
        x = obs.float()
        if self.obs_norm is not None:
            x = self.obs_norm(x)
        if self.n_act:  # the previous action, one-hot; none at a new episode's first row
            previous = nn.functional.one_hot(act.long().clamp(0, self.n_act - 1), self.n_act).float()
            x = torch.cat([x, previous.masked_fill(fin.unsqueeze(-1), 0.0)], -1)
        S = self.n_state
        features, h = self._unroll(self.cell, torch.tanh(self.embed(x)), hx[:S], fin)
        logits = self.policy(features)
        if self.critic_cell is None:
            value_features, states = features, h
        else:
            value_features, h_critic = self._unroll(self.critic_cell, torch.tanh(self.critic_embed(x)), hx[S:], fin)
            states = torch.cat([h, h_critic])
        value = self.value(value_features).squeeze(-1)
        return _categorical(logits, self.deterministic), states, {"logits": logits, "value": value}


class AtariConv(rollout.Actor):
    """The DQN "Nature" convolutional actor-critic for stacked uint8 frames ``(n_seq, B, 4, 84, 84)``.

    Frames are scaled to [0, 1] inside. ``info`` has ``logits`` ``(n_seq, B, A)`` and ``value``
    ``(n_seq, B)``; no recurrent state. Initialised as the preset's reference (CleanRL's
    ``ppo_atari.py``): orthogonal weights and zero biases, gain ``sqrt(2)`` for the convolutions
    and the 512-unit layer, 0.01 for the policy head, 1 for the value head (PyTorch's default init
    gave trunk features 29x smaller at init).
    """

    def __init__(self, n_act: int, n_frames: int = 4):
        super().__init__()
        self.body = nn.Sequential(
            _orthogonal(nn.Conv2d(n_frames, 32, 8, stride=4), HIDDEN_GAIN),
            nn.ReLU(),
            _orthogonal(nn.Conv2d(32, 64, 4, stride=2), HIDDEN_GAIN),
            nn.ReLU(),
            _orthogonal(nn.Conv2d(64, 64, 3, stride=1), HIDDEN_GAIN),
            nn.ReLU(),
            nn.Flatten(),
            _orthogonal(nn.Linear(64 * 7 * 7, 512), HIDDEN_GAIN),
            nn.ReLU(),
        )
        self.policy = _orthogonal(nn.Linear(512, n_act), POLICY_GAIN)
        self.value = _orthogonal(nn.Linear(512, 1), VALUE_GAIN)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n_seq, B = fin.shape
        features = self.body(obs.reshape(n_seq * B, *obs.shape[2:]).float() / 255.0)
        logits = self.policy(features).reshape(n_seq, B, -1)
        if self.deterministic:
            action = logits.argmax(-1)
        else:
            action = torch.multinomial(logits.reshape(-1, logits.shape[-1]).softmax(-1), 1).reshape(n_seq, B)
        return action, (), {"logits": logits, "value": self.value(features).reshape(n_seq, B)}


class GaussianPolicy(nn.Module):
    """The Gaussian of a SAC policy before squashing: ``obs (N, n_obs) -> (mean, log_std)``, each ``(N, A)``.

    ``[obs_norm] -> ReLU MLP -> two linear heads``; ``log_std`` is clamped to
    ``[LOG_STD_MIN, LOG_STD_MAX] = [-5, 2]``. This is the ``policy`` module that
    :mod:`learners.sac`'s losses take.

    Parameters
    ----------
    n_obs, n_act : int
        Observation size and action size ``A``.
    hidden : sequence of int
        Widths of the hidden layers.
    obs_norm : RunningNorm, optional
        Applied to ``obs`` first; a submodule (its statistics are in this module's ``state_dict``).
    """

    def __init__(self, n_obs: int, n_act: int, hidden: Sequence[int] = (256, 256), obs_norm: RunningNorm | None = None):
        super().__init__()
        self.obs_norm = obs_norm
        self.body, size = _mlp(n_obs, hidden, nn.ReLU)
        self.mean = nn.Linear(size, n_act)
        self.log_std = nn.Linear(size, n_act)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_std)``, each ``(N, A)``, for ``obs`` ``(N, n_obs)``."""
        x = obs.float()
        if self.obs_norm is not None:
            x = self.obs_norm(x)
        features = self.body(x)
        return self.mean(features), self.log_std(features).clamp(LOG_STD_MIN, LOG_STD_MAX)


class SquashedGaussian(rollout.Actor):
    """SAC's actor for a flat Box observation and a 1-D Box action space with finite bounds.

    The action is ``scale * tanh(u) + bias`` with ``u ~ Normal(mean, exp(log_std))`` and
    ``(mean, log_std) = self.policy(obs)`` (:class:`GaussianPolicy`, the module
    :func:`learners.sac.critic_loss`, :func:`~learners.sac.actor_loss` and
    :func:`~learners.sac.alpha_loss` take as ``policy``, with ``scale=actor.scale`` and
    ``bias=actor.bias``). ``stepno``, ``act``, ``rew`` and ``fin`` are not used.

    Which action ``step`` returns:

    * ``self.deterministic`` (evaluation): ``scale * tanh(mean) + bias``;
    * else while ``self.random_actions`` is True (the warm-up): uniform in ``[low, high]``,
      independent of the observation;
    * else a sample of the squashed Gaussian (:func:`learners.sac.tanh_normal_sample`).

    ``random_actions`` is a persistent bool buffer, initially True: the learner ends the warm-up
    with ``actor.random_actions.fill_(False)``, and the workers receive it with the next weights.

    Parameters
    ----------
    n_obs : int
        Observation size.
    low, high : array-like, (A,)
        Finite bounds of the action space, ``low < high`` (e.g. ``env.action_space.low``).
    hidden : sequence of int
        Widths of the policy's hidden layers.
    normalize_obs : bool
        Put a ``RunningNorm((n_obs,))`` inside ``self.policy`` (so the losses' ``policy(obs)``
        calls normalise too), also reachable as ``self.obs_norm``; otherwise ``self.obs_norm`` is
        None. Pass it to the critics: ``QNetwork(..., obs_norm=actor.obs_norm)``.

    Attributes
    ----------
    policy : GaussianPolicy
    scale, bias : Tensor, float32, (A,)
        From :func:`learners.sac.action_scaling` (persistent buffers).
    random_actions : Tensor, bool, ()
        Persistent buffer, see above.

    ``step`` takes ``obs`` ``(n_seq, B, n_obs)`` and returns the action ``(n_seq, B, A)`` float32
    (clamped into ``[low, high]``), no recurrent state ``()`` and an empty ``info`` ``{}``.

    Raises
    ------
    ValueError
        When ``low`` and ``high`` are not 1-D of the same length, infinite or not increasing.
    """

    scale: torch.Tensor
    bias: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    random_actions: torch.Tensor

    def __init__(
        self, n_obs: int, low: Any, high: Any, hidden: Sequence[int] = (256, 256), *, normalize_obs: bool = False
    ):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.dim() != 1:
            raise ValueError(f"SquashedGaussian: `low` and `high` must be 1-D (A,), got shape {tuple(low.shape)}")
        scale, bias = action_scaling(low, high)
        self.policy = GaussianPolicy(n_obs, low.shape[0], hidden, RunningNorm((n_obs,)) if normalize_obs else None)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.register_buffer("low", low.clone(), persistent=False)
        self.register_buffer("high", high.clone(), persistent=False)
        self.register_buffer("random_actions", torch.tensor(True))

    @property
    def obs_norm(self) -> RunningNorm | None:
        """The policy's observation normalisation (``self.policy.obs_norm``), or None."""
        return self.policy.obs_norm

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n_seq, B = obs.shape[:2]
        shape = (n_seq, B, self.scale.shape[0])
        if bool(self.random_actions) and not self.deterministic:
            noise = torch.rand(shape, device=self.scale.device)
            action = self.scale * (2.0 * noise - 1.0) + self.bias
        else:
            mean, log_std = self.policy(obs.reshape(n_seq * B, *obs.shape[2:]))
            if self.deterministic:
                action = self.scale * torch.tanh(mean) + self.bias
            else:
                action, _ = tanh_normal_sample(mean, log_std, scale=self.scale, bias=self.bias)
            action = action.reshape(shape)
        return action.clamp(self.low, self.high).to(torch.float32), (), {}


class _Shared:
    """A reference to a module that ``copy.deepcopy`` keeps shared and ``nn.Module`` does not register."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class QNetwork(nn.Module):
    """A SAC critic: ``q(obs, act) -> (N,)``, a ReLU MLP on ``concat([obs_norm](obs), act)``.

    Parameters
    ----------
    n_obs, n_act : int
        Observation size and action size ``A``.
    hidden : sequence of int
        Widths of the hidden layers.
    obs_norm : RunningNorm, optional
        Applied to ``obs`` first, usually the actor's (``actor.obs_norm``). It is *referenced*,
        not registered as a submodule: it is not in this module's ``parameters()``, ``state_dict``
        or ``.to()`` (the actor owns, saves, moves and syncs it), and ``copy.deepcopy`` (target
        networks) keeps the reference, so the target critics normalise with the same, current
        statistics.

    ``forward`` takes ``obs`` ``(N, n_obs)`` and ``act`` ``(N, A)`` and returns ``(N,)``.
    """

    def __init__(
        self, n_obs: int, n_act: int, hidden: Sequence[int] = (256, 256), *, obs_norm: RunningNorm | None = None
    ):
        super().__init__()
        if obs_norm is not None and not isinstance(obs_norm, RunningNorm):
            raise ValueError(f"QNetwork: `obs_norm` must be a RunningNorm or None, got {type(obs_norm).__name__}")
        self._obs_norm = None if obs_norm is None else _Shared(obs_norm)
        body, size = _mlp(n_obs + n_act, hidden, nn.ReLU)
        self.body = nn.Sequential(*body, nn.Linear(size, 1))

    @property
    def obs_norm(self) -> RunningNorm | None:
        """The referenced observation normalisation, or None."""
        return None if self._obs_norm is None else self._obs_norm.module

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``Q(obs, act)`` ``(N,)`` for ``obs`` ``(N, n_obs)`` and ``act`` ``(N, A)``."""
        x = obs.float()
        if self._obs_norm is not None:
            x = self._obs_norm.module(x)
        return self.body(torch.cat([x, act.float()], -1)).squeeze(-1)
