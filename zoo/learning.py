"""The update rules of the training CLI: an actor, its optimisers and one learning step per batch.

Each learner owns the modules it trains and their optimisers, and turns a batch yielded by a
collector into gradient steps with the stateless losses of :mod:`learners`:

- :class:`OnPolicy` (``ppo``, ``a2c``, ``reinforce``): one batch, one (A2C, REINFORCE) or many
  (PPO epochs x minibatches) steps, then the batch is dropped.
- :class:`SoftActorCritic` (``sac``): every batch goes into a replay buffer; ``updates_per_step``
  gradient steps per env step once ``learning_starts`` env steps of uniform random actions are in.

``progress`` (0 at the start, 1 at the end of the budget) drives the linear schedules.
Everything a checkpoint needs is in :meth:`state_dict` (SAC's includes the replay buffer's
transitions, so a resumed run continues learning from the same data).
"""

import copy
from typing import Any, Dict, List, Tuple, Union

import gymnasium
import numpy as np
import torch

from learners import a2c, ppo, reinforce, returns, sac
from learners.replay import ReplayBuffer
from rollout import Actor, Fragment
from zoo.actors import AtariConv, CategoricalGRU, CategoricalMLP, QNetwork, SquashedGaussian
from zoo.normalize import RunningNorm

__all__ = ["build_actor", "build", "schedule", "OnPolicy", "SoftActorCritic", "check_spaces"]


def check_spaces(algo: str, observation_space: gymnasium.Space, action_space: gymnasium.Space) -> None:
    """Raise ``ValueError`` (a one-line message) when ``algo`` does not fit the env's spaces."""
    if not isinstance(observation_space, gymnasium.spaces.Box):
        raise ValueError(f"the zoo's actors need a Box observation space, found {observation_space}")
    if algo == "sac":
        if not isinstance(action_space, gymnasium.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(
                f"sac needs a continuous (1-D Box) action space, found {action_space}; "
                "for discrete actions use ppo, a2c or reinforce"
            )
        if not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise ValueError(f"sac needs finite action bounds, found {action_space}")
    elif not isinstance(action_space, gymnasium.spaces.Discrete):
        raise ValueError(
            f"{algo} in the zoo needs a Discrete action space, found {action_space}; for continuous actions use sac"
        )


def build_actor(config: Dict[str, Any], observation_space: gymnasium.Space, action_space: gymnasium.Space) -> Actor:
    """The actor a configuration asks for, sized from the env's spaces."""
    algo, hidden, norm = config["algo"], tuple(config["hidden"]), config["normalize_obs"]
    if algo == "sac":
        n_obs = int(np.prod(observation_space.shape))
        return SquashedGaussian(n_obs, action_space.low, action_space.high, hidden, normalize_obs=norm)
    if observation_space.dtype == np.uint8 and len(observation_space.shape) == 3:
        return AtariConv(int(action_space.n), n_frames=observation_space.shape[0])
    n_obs = int(np.prod(observation_space.shape))
    if config.get("recurrent"):
        return CategoricalGRU(
            n_obs,
            int(action_space.n),
            hidden[0],
            separate_critic=config["separate_critic"],
            normalize_obs=norm,
            feed_action=config["feed_action"],
            head=config["head"],
            cell=config["cell"],
        )
    return CategoricalMLP(n_obs, int(action_space.n), hidden, shared=config["shared"], normalize_obs=norm)


def _adam(parameters, config: Dict[str, Any]) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=config["lr"], eps=config["adam_eps"])


def schedule(config: Dict[str, Any], key: str, progress: float) -> float:
    """``config[key]``, decayed linearly to 0 over the budget when ``<key>_schedule`` is linear."""
    value = config[key]
    return value * max(0.0, 1.0 - progress) if config.get(f"{key}_schedule") == "linear" else value


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _mean(infos: List[Dict[str, float]]) -> Dict[str, float]:
    return {key: float(np.mean([info[key] for info in infos])) for key in infos[0]} if infos else {}


class OnPolicy:
    """PPO, A2C or REINFORCE on the batches of any collector.

    ``update(batch, progress)`` normalises rewards (if asked), takes the gradient steps, then
    updates the actor's observation statistics from the batch's valid rows, so the loss saw the
    statistics the batch was collected with (up to the collector's lag); they reach the workers
    with the weights (persistent buffers) and the checkpoints with the state dict.
    """

    def __init__(self, config: Dict[str, Any], actor: Actor):
        self.config, self.actor = config, actor
        self.optimizer = _adam(actor.parameters(), config)
        self.reward_scale = _RewardScale(config["gamma"]) if config["normalize_reward"] else None
        self.generator = torch.Generator().manual_seed(config["seed"])

    def modules(self) -> Dict[str, torch.nn.Module]:
        return {"actor": self.actor}

    def to(self, device: Union[str, torch.device]) -> "OnPolicy":
        """Move the modules (in place: the optimiser keeps its parameters) to ``device``; call it
        before :meth:`load_state_dict`, which puts the optimiser's state where the parameters are."""
        for module in self.modules().values():
            module.to(device)
        if self.reward_scale is not None:
            self.reward_scale.to(device)
        return self

    def state_dict(self, with_buffer: bool = True) -> Dict[str, Any]:
        state = {
            "actor": self.actor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.reward_scale is not None:
            state["reward_scale"] = self.reward_scale.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.reward_scale is not None:
            self.reward_scale.load_state_dict(state["reward_scale"])

    def update(self, batch: Fragment, progress: float) -> Dict[str, float]:
        config = self.config
        _set_lr(self.optimizer, schedule(config, "lr", progress))
        valid = returns.valid_mask(batch)
        if self.reward_scale is not None:
            self.reward_scale.update(batch.state.rew[1:], batch.state.fin[1:], valid)
            batch = batch._replace(state=batch.state._replace(rew=self.reward_scale(batch.state.rew)))
        if config["algo"] == "ppo":
            infos = self._ppo(batch, progress)
        else:
            infos = [self._step(*self._loss(batch))]
        if getattr(self.actor, "obs_norm", None) is not None:
            self.actor.obs_norm.update(batch.state.obs[1:], valid)
        return _mean(infos)

    def _loss(self, batch: Fragment) -> Tuple[torch.Tensor, Dict[str, float]]:
        c = self.config
        if c["algo"] == "a2c":
            correction = None if c["correction"] == "none" else c["correction"]
            return a2c.loss(
                batch,
                self.actor,
                gamma=c["gamma"],
                lam=c["lam"],
                value_coef=c["value_coef"],
                entropy_coef=c["entropy_coef"],
                correction=correction,
            )
        return reinforce.loss(
            batch,
            self.actor,
            gamma=c["gamma"],
            bootstrap=c["bootstrap"],
            baseline=c["baseline"],
            value_coef=c["value_coef"],
            entropy_coef=c["entropy_coef"],
        )

    def _step(self, loss: torch.Tensor, info: Dict[str, float]) -> Dict[str, float]:
        self.optimizer.zero_grad()
        loss.backward()
        if self.config["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.config["max_grad_norm"])
        self.optimizer.step()
        return info

    def _ppo(self, batch: Fragment, progress: float) -> List[Dict[str, float]]:
        c = self.config
        prepared = ppo.prepare(batch, self.actor, gamma=c["gamma"], lam=c["lam"])
        n_steps, n_envs = prepared.valid.shape
        sequences = c["recurrent"]
        samples = n_envs if sequences else n_steps * n_envs
        n_minibatches = c["n_minibatches"]
        if c["minibatch_size"] > 0:  # a size in rows; sequence minibatches hold whole columns of n_steps rows
            n_minibatches = (n_steps * n_envs) // c["minibatch_size"]
        n_minibatches = max(1, min(n_minibatches, samples))
        clip = schedule(c, "clip", progress) or 1e-8
        infos, epochs = [], 0
        for epochs in range(1, c["epochs"] + 1):
            for minibatch in ppo.minibatches(prepared, n_minibatches, generator=self.generator, sequences=sequences):
                loss, info = ppo.loss(
                    minibatch,
                    self.actor,
                    clip=clip,
                    value_clip=c["value_clip"],
                    value_coef=c["value_coef"],
                    entropy_coef=c["entropy_coef"],
                    normalize_advantages=c["normalize_advantages"],
                )
                if c["target_kl"] is not None and info["approx_kl"] > 1.5 * c["target_kl"]:
                    # early stop: this minibatch is not applied, and `epochs` counts the completed ones
                    return [dict(i, epochs=epochs - 1) for i in infos or [info]]
                infos.append(self._step(loss, info))
        return [dict(i, epochs=epochs) for i in infos]


class _RewardScale(torch.nn.Module):
    """Rewards divided by the running standard deviation of the discounted return (as SB3's VecNormalize).

    The return ``R_t = gamma R_{t-1} + r_t`` runs along each column across batches and restarts
    after an episode end; the scale is its running std, not the reward's (a constant reward has
    none). With the ``multi`` collector a column may come from another worker in the next batch,
    which only perturbs the statistics, never the rewards' signs or order.
    """

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = gamma
        self.norm = RunningNorm((), center=False)
        # R_t of each column, (B,); not saved: a resumed run starts new episodes, so its running
        # returns start afresh (and its number of columns may differ)
        self.register_buffer("running", torch.zeros(0), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "running", None)  # saved by earlier versions
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update(self, rew: torch.Tensor, fin: torch.Tensor, valid: torch.Tensor) -> None:
        """``rew``, ``fin``: rows ``1..T`` ``(T, B)``; ``valid``: ``(T, B)``."""
        if self.running.shape != rew.shape[1:]:
            self.running = torch.zeros(rew.shape[1:], dtype=torch.float64, device=rew.device)
        returns = torch.empty_like(rew, dtype=torch.float64)
        for t in range(rew.shape[0]):
            self.running = self.gamma * self.running + rew[t]
            returns[t] = self.running
            self.running = self.running.masked_fill(fin[t], 0.0)
        self.norm.update(returns, valid)

    def forward(self, rew: torch.Tensor) -> torch.Tensor:
        return self.norm(rew).to(rew.dtype)


class SoftActorCritic:
    """SAC from a replay buffer fed by the collector's fragments (Haarnoja et al., 2018)."""

    def __init__(self, config: Dict[str, Any], actor: SquashedGaussian, observation_space, action_space):
        self.config, self.actor = config, actor
        n_obs, n_act = int(np.prod(observation_space.shape)), int(action_space.shape[0])
        hidden, norm = tuple(config["hidden"]), getattr(actor, "obs_norm", None)
        self.q1, self.q2 = (QNetwork(n_obs, n_act, hidden, obs_norm=norm) for _ in range(2))
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.log_alpha = torch.tensor(float(np.log(config["alpha_init"])), requires_grad=True)
        self.policy_optimizer = _adam(actor.policy.parameters(), config)
        self.q_optimizer = _adam([*self.q1.parameters(), *self.q2.parameters()], config)
        self.alpha_optimizer = _adam([self.log_alpha], config)
        self.target_entropy = config["target_entropy"]
        self.buffer = ReplayBuffer(config["buffer_size"])
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.env_steps = 0
        self.pending = 0.0  # fractional gradient steps owed (updates_per_step < 1)

    def modules(self) -> Dict[str, torch.nn.Module]:
        return {
            "actor": self.actor,
            "q1": self.q1,
            "q2": self.q2,
            "q1_target": self.q1_target,
            "q2_target": self.q2_target,
        }

    def to(self, device: Union[str, torch.device]) -> "SoftActorCritic":
        """Move the modules and the temperature (in place: the optimisers keep their parameters) to
        ``device``; call it before :meth:`load_state_dict`."""
        for module in self.modules().values():
            module.to(device)
        with torch.no_grad():
            self.log_alpha.data = self.log_alpha.data.to(device)
        if not len(self.buffer):  # transitions are stored, and sampled, where the learner computes
            self.buffer = ReplayBuffer(self.buffer.capacity, device=device)
        return self

    def state_dict(self, with_buffer: bool = True) -> Dict[str, Any]:
        state = {name: module.state_dict() for name, module in self.modules().items()}
        state.update(
            log_alpha=self.log_alpha.detach().clone(),
            policy_optimizer=self.policy_optimizer.state_dict(),
            q_optimizer=self.q_optimizer.state_dict(),
            alpha_optimizer=self.alpha_optimizer.state_dict(),
            generator=self.generator.get_state(),
            env_steps=self.env_steps,
            pending=self.pending,
        )
        if with_buffer and len(self.buffer):
            state["buffer"] = self.buffer.contents()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.q_optimizer.load_state_dict(state["q_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.generator.set_state(state["generator"])
        self.env_steps, self.pending = state["env_steps"], state["pending"]
        if "buffer" in state:
            self.buffer.extend(state["buffer"])

    def update(self, batch: Fragment, progress: float) -> Dict[str, float]:
        c = self.config
        for optimizer in (self.policy_optimizer, self.q_optimizer, self.alpha_optimizer):
            _set_lr(optimizer, schedule(c, "lr", progress))
        added = self.buffer.add(batch)
        self.env_steps += added
        if getattr(self.actor, "obs_norm", None) is not None:
            self.actor.obs_norm.update(batch.state.obs[1:], returns.valid_mask(batch))
        if self.env_steps < c["learning_starts"] or len(self.buffer) < c["batch_size"]:
            return {}
        self.actor.random_actions.fill_(False)  # a persistent buffer: reaches the workers with the weights
        self.pending += added * c["updates_per_step"]
        infos = []
        while self.pending >= 1.0:
            self.pending -= 1.0
            infos.append(self._gradient_step())
        return _mean(infos)

    def _gradient_step(self) -> Dict[str, float]:
        c, g = self.config, self.generator
        scale, bias = self.actor.scale, self.actor.bias
        batch = self.buffer.sample(c["batch_size"], generator=g)
        critic, critic_info = sac.critic_loss(
            batch,
            self.actor.policy,
            self.q1,
            self.q2,
            self.q1_target,
            self.q2_target,
            log_alpha=self.log_alpha,
            gamma=c["gamma"],
            scale=scale,
            bias=bias,
            generator=g,
        )
        self.q_optimizer.zero_grad()
        critic.backward()
        self.q_optimizer.step()
        actor, actor_info = sac.actor_loss(
            batch, self.actor.policy, self.q1, self.q2, log_alpha=self.log_alpha, scale=scale, bias=bias, generator=g
        )
        self.policy_optimizer.zero_grad()
        actor.backward()
        self.policy_optimizer.step()
        alpha, alpha_info = sac.alpha_loss(
            batch,
            self.actor.policy,
            self.log_alpha,
            target_entropy=self.target_entropy,
            scale=scale,
            bias=bias,
            generator=g,
        )
        self.alpha_optimizer.zero_grad()
        alpha.backward()
        self.alpha_optimizer.step()
        sac.polyak_update(self.q1_target, self.q1, tau=c["tau"])
        sac.polyak_update(self.q2_target, self.q2, tau=c["tau"])
        return {**critic_info, **actor_info, **alpha_info}


def build(config: Dict[str, Any], observation_space: gymnasium.Space, action_space: gymnasium.Space):
    """The learner of ``config['algo']`` with a fresh actor (seed torch first for reproducible weights)."""
    actor = build_actor(config, observation_space, action_space)
    if config["algo"] == "sac":
        return SoftActorCritic(config, actor, observation_space, action_space)
    return OnPolicy(config, actor)
