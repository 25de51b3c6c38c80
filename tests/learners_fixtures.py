"""Synthetic fragments and tiny modules for the learners' tests.

:class:`ToyCollector` fills fragments the way DESIGN §4 says a collector does (row timing, resets,
``final`` at episode ends, truncation values from the module's virtual step on the final
observation, sticky padding, row 0 of a fragment equal to row T of the previous one), without any
environment: observations and rewards are random, episode ends are coin flips. It also keeps the
list of real transitions it made, for checking the replay buffer.
"""

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import optree
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from rollout.actor import Actor
from rollout.fragment import Final, Fragment, State


def tree_zeros(tree: Any) -> Any:
    return optree.tree_map(torch.zeros_like, tree)


def tree_equal(a: Any, b: Any) -> bool:
    leaves_a, spec_a = optree.tree_flatten(a)
    leaves_b, spec_b = optree.tree_flatten(b)
    return spec_a == spec_b and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(leaves_a, leaves_b)
    )


# ---------------------------------------------------------------------------------------------------
# modules


class MLPActor(Actor):
    """Feed-forward categorical actor with separate policy and value heads."""

    def __init__(self, obs_dim: int = 4, n_actions: int = 3, hidden: int = 16, record_logp: bool = True):
        super().__init__()
        self.policy = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))
        self.value = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.record_logp = record_logp

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        logits = self.policy(obs)
        dist = Categorical(logits=logits)
        action = logits.argmax(-1) if self.deterministic else dist.sample()
        info = {"logits": logits, "value": self.value(obs).squeeze(-1)}
        if self.record_logp:
            info["logp"] = dist.log_prob(action)
        return action, (), info


class GRUActor(Actor):
    """Recurrent categorical actor; resets its state at ``fin`` rows itself."""

    def __init__(self, obs_dim: int = 4, n_actions: int = 3, hidden: int = 8):
        super().__init__()
        self.hidden = hidden
        self.cell = nn.GRUCell(obs_dim, hidden)
        self.logits = nn.Linear(hidden, n_actions)
        self.v = nn.Linear(hidden, 1)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        h = torch.zeros(obs.shape[1], self.hidden) if hx is None else hx[0]
        outputs = []
        for t in range(obs.shape[0]):
            h = torch.where(fin[t, :, None], torch.zeros_like(h), h)
            h = self.cell(obs[t], h)
            outputs.append(h)
        out = torch.stack(outputs)
        logits = self.logits(out)
        dist = Categorical(logits=logits)
        action = dist.sample()
        info = {"logits": logits, "value": self.v(out).squeeze(-1), "logp": dist.log_prob(action)}
        return action, h.unsqueeze(0), info


class GaussianActor(Actor):
    """Continuous actor exposing ``distribution(info)``; records only the mean and the value."""

    def __init__(self, obs_dim: int = 4, act_dim: int = 2):
        super().__init__()
        self.mean = nn.Linear(obs_dim, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), -0.5))
        self.v = nn.Linear(obs_dim, 1)

    def distribution(self, info):
        return Independent(Normal(info["mean"], self.log_std.exp()), 1)

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        info = {"mean": self.mean(obs), "value": self.v(obs).squeeze(-1)}
        return self.distribution(info).sample(), (), info


class SquashedPolicy(nn.Module):
    """SAC policy: ``forward(obs) -> (mean, log_std)`` with log_std bounded in [-5, 2]."""

    def __init__(self, obs_dim: int = 4, act_dim: int = 2, hidden: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)

    def forward(self, obs):
        h = self.trunk(obs)
        return self.mean(h), -5.0 + 3.5 * (torch.tanh(self.log_std(h)) + 1.0)


class QNet(nn.Module):
    """SAC critic: ``forward(obs, act) -> (N,)``."""

    def __init__(self, obs_dim: int = 4, act_dim: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs, act):
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------
# a collector without environments


class Transition(NamedTuple):
    env: int
    obs: Any
    act: torch.Tensor
    rew: float
    terminated: bool
    next_obs: Any


def _stack(rows: List[Any]) -> Any:
    return optree.tree_map(lambda *xs: torch.stack(xs), *rows)


def _rows(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mask`` (B,) viewed to broadcast against ``x`` (B, ...)."""
    return mask.view(-1, *[1] * (x.dim() - 1))


def _index(tree: Any, i: int) -> Any:
    return optree.tree_map(lambda x: x[i], tree)


class ToyCollector:
    """Fragments of ``n_envs`` random episodes, consecutive like a real collector's.

    Parameters
    ----------
    n_envs : int
    obs_spec : dict or tuple shape
        A shape ``(D,)`` for flat float observations, or a nested structure of shapes.
    n_actions : int, optional
        Discrete actions in ``[0, n_actions)``; ``act_dim`` instead gives float actions in [-1, 1].
    module : Actor, optional
        Run like a collector would (its actions are executed, its info recorded, truncation values
        from its virtual step on the final observation); without one, actions and info are random.
    p_end, p_terminated : float
        Per-step probability that an episode ends, and that an end is terminal.
    sticky : bool
        Freeze an env from its first episode end until the fragment ends.
    """

    def __init__(
        self,
        n_envs: int,
        *,
        obs_spec: Any = (4,),
        n_actions: Optional[int] = 3,
        act_dim: Optional[int] = None,
        module: Optional[Actor] = None,
        p_end: float = 0.3,
        p_terminated: float = 0.5,
        sticky: bool = False,
        seed: int = 0,
    ):
        self.n_envs, self.obs_spec, self.module = n_envs, obs_spec, module
        self.n_actions, self.act_dim = n_actions, act_dim
        self.p_end, self.p_terminated, self.sticky = p_end, p_terminated, sticky
        self.generator = torch.Generator().manual_seed(seed)
        self.transitions: List[Transition] = []
        self.episode_return = torch.zeros(n_envs, dtype=torch.float64)
        b = n_envs
        obs = self._obs()
        self.row = State(
            torch.zeros(b, dtype=torch.int64),
            obs,
            tree_zeros(self._act()),
            torch.zeros(b),
            torch.ones(b, dtype=torch.bool),
            torch.zeros(b, dtype=torch.bool),
        )
        self.final_row = Final(
            tree_zeros(obs), None, torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.int64)
        )
        self.hx: Any = None
        if module is not None:
            with torch.no_grad():
                _, hx, _ = module.step(*self._seq(self.row), hx=None, virtual=True)
            self.hx = module.reset(hx, torch.arange(b))

    def _is_shape(self, spec: Any) -> bool:
        return isinstance(spec, tuple) and all(isinstance(d, int) for d in spec)

    def _obs(self) -> Any:
        return optree.tree_map(
            lambda shape: torch.randn((self.n_envs, *shape), generator=self.generator),
            self.obs_spec,
            is_leaf=self._is_shape,
        )

    def _act(self) -> torch.Tensor:
        if self.act_dim is not None:
            return torch.rand((self.n_envs, self.act_dim), generator=self.generator) * 2 - 1
        return torch.randint(self.n_actions, (self.n_envs,), generator=self.generator)

    def _seq(self, row: State) -> Tuple:
        return optree.tree_map(lambda x: x.unsqueeze(0), (row.stepno, row.obs, row.act, row.rew, row.fin))

    def _react(self, row: State, hx: Any) -> Tuple[Any, Any, Dict[str, torch.Tensor]]:
        if self.module is None:
            b = self.n_envs
            info = {"value": torch.randn(b, generator=self.generator)}
            if self.n_actions is not None:
                info["logits"] = torch.randn((b, self.n_actions), generator=self.generator)
            return self._act(), None, info
        with torch.no_grad():
            act, hx, info = self.module.step(*self._seq(row), hx=hx, virtual=False)
        return optree.tree_map(lambda x: x[0], act), hx, optree.tree_map(lambda x: x[0], info)

    def fragment(self, n_steps: int) -> Fragment:
        b = self.n_envs
        rows, finals, infos = [self.row], [self.final_row], []
        hx0 = self.hx
        hx = self.hx
        frozen = torch.zeros(b, dtype=torch.bool)
        for _ in range(n_steps):
            row = rows[-1]
            act, hx_next, info = self._react(row, hx)
            infos.append(info)
            rew = torch.randn(b, generator=self.generator)
            end = torch.rand(b, generator=self.generator) < self.p_end
            terminal = end & (torch.rand(b, generator=self.generator) < self.p_terminated)
            stepped_obs = self._obs()  # the next observation, or the final one at an end
            reset_obs = self._obs()
            real = ~frozen
            ended = end & real
            fin = ended | frozen
            self.episode_return += torch.where(real, rew.double(), 0.0)
            length = torch.where(ended, row.stepno + 1, 0)
            final_return = torch.where(ended, self.episode_return, 0.0)
            self.episode_return = torch.where(ended, 0.0, self.episode_return)

            obs = optree.tree_map(
                lambda stepped, reset, old: torch.where(
                    _rows(frozen, old), old, torch.where(_rows(fin, reset), reset, stepped)
                ),
                stepped_obs,
                reset_obs,
                row.obs,
            )
            for e in range(b):
                if real[e]:
                    self.transitions.append(
                        Transition(
                            e,
                            _index(row.obs, e),
                            act[e],
                            float(rew[e]),
                            bool(terminal[e]),
                            _index(stepped_obs, e),
                        )
                    )
            new_row = State(
                torch.where(fin, 0, row.stepno + 1),
                obs,
                act,
                torch.where(frozen, 0.0, rew),
                fin,
                torch.where(frozen, True, terminal),
            )
            final_obs = optree.tree_map(lambda x: torch.where(_rows(ended, x), x, 0), stepped_obs)
            final_actor = {"value": torch.zeros(b)}
            truncated = ended & ~terminal
            if self.module is None:
                final_actor["value"] = torch.where(truncated, torch.randn(b, generator=self.generator), 0.0)
            else:
                with torch.no_grad():
                    # The virtual step on the true final observation, with the pre-reset state.
                    last = State(length, stepped_obs, act, rew, torch.zeros_like(fin), None)
                    _, _, final_info = self.module.step(*self._seq(last), hx=hx_next, virtual=True)
                final_actor = optree.tree_map(lambda x: torch.where(_rows(truncated, x[0]), x[0], 0), final_info)
                if fin.any():
                    hx_next = self.module.reset(hx_next, fin.nonzero().squeeze(-1))
            rows.append(new_row)
            finals.append(Final(final_obs, final_actor, final_return, length))
            hx = hx_next
            if self.sticky:
                frozen = frozen | ended
        _, _, info = self._react(rows[-1], hx)  # the lookahead row T (virtual in a real collector)
        infos.append(info)
        if finals[0].actor is None:
            finals[0] = finals[0]._replace(actor=tree_zeros(finals[1].actor))
        self.row, self.final_row, self.hx = rows[-1], finals[-1], hx
        return Fragment(
            state=_stack(rows),
            actor=_stack(infos),
            env={},
            hx=() if hx0 is None else hx0,
            final=_stack(finals),
            version=torch.zeros(b, dtype=torch.int64),
        )


def random_fragment(n_steps: int = 6, n_envs: int = 4, **kwargs: Any) -> Fragment:
    """One fragment from a fresh :class:`ToyCollector` (see its parameters)."""
    return ToyCollector(n_envs, **kwargs).fragment(n_steps)


def snapshot(tree: Any) -> Any:
    """Deep copy of every tensor leaf, to check later that nothing was modified."""
    return optree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


# ---------------------------------------------------------------------------------------------------
# helpers for loss tests


def gradients(module: nn.Module, loss: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
    """``loss.backward()`` from zeroed gradients; each parameter's gradient (None if untouched)."""
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def assert_stateless(compute, module: nn.Module, *untouched: Any) -> None:
    """``compute()`` -> (loss, info) twice: identical losses, infos and gradients, inputs bit-identical."""
    before = [snapshot(tree) for tree in untouched]
    first = compute()
    grads_first = gradients(module, first[0])
    second = compute()
    grads_second = gradients(module, second[0])
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert all(torch.equal(grads_first[n], grads_second[n]) for n in grads_first)
    assert all(tree_equal(tree, old) for tree, old in zip(untouched, before))


def naive_policy_terms(fragment: Fragment, module: "MLPActor") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logp`` (T, B) of the taken actions, ``entropy`` (T, B) and ``value`` (1+T, B), computed directly."""
    state = fragment.state
    with torch.no_grad():
        dist = Categorical(logits=module.policy(state.obs[:-1]))
        return dist.log_prob(state.act[1:]), dist.entropy(), module.value(state.obs).squeeze(-1)


def has_gradient(grads: Dict[str, Optional[torch.Tensor]], prefix: str) -> bool:
    """Whether any parameter named ``prefix...`` got a nonzero gradient."""
    return any(g is not None and bool(g.abs().sum() > 0) for n, g in grads.items() if n.startswith(prefix))


def perturb_padding(fragment: Fragment, seed: int = 0) -> Fragment:
    """A copy whose invalid transitions (sticky padding) have other actions, rewards, observations.

    Rows ``t+1`` of the invalid transitions ``t`` are padding: a loss that masks them correctly
    does not change.
    """
    from learners.returns import valid_mask

    g = torch.Generator().manual_seed(seed)
    invalid = ~valid_mask(fragment)
    assert invalid.any(), "the fragment has no padding"
    rows = torch.cat([torch.zeros_like(invalid[:1]), invalid])  # row t+1 of transition t
    state = snapshot(fragment.state)
    state.rew[rows] = 100 * torch.randn(int(rows.sum()), generator=g)
    state.act[rows] = torch.randint(0, 2, (int(rows.sum()),), generator=g).to(state.act.dtype)
    state.obs[rows] = torch.randn(state.obs[rows].shape, generator=g)
    actor = snapshot(fragment.actor)
    if "logp" in actor:
        actor["logp"][torch.cat([invalid, torch.zeros_like(invalid[:1])])] = -7.0
    return fragment._replace(state=state, actor=actor)


def naive_next_value(fragment: Fragment, value: torch.Tensor) -> torch.Tensor:
    """(T, B) value of the true next state, element by element (DESIGN §4)."""
    state = fragment.state
    n_steps, n_envs = state.rew.shape[0] - 1, state.rew.shape[1]
    out = torch.zeros(n_steps, n_envs, dtype=value.dtype)
    for t in range(n_steps):
        for b in range(n_envs):
            if state.terminated[t + 1, b]:
                out[t, b] = 0.0
            elif state.fin[t + 1, b]:
                out[t, b] = fragment.final.actor["value"][t + 1, b]
            else:
                out[t, b] = value[t + 1, b]
    return out


def naive_valid(fragment: Fragment) -> torch.Tensor:
    """(T, B): transition t is real unless row t+1 is sticky padding."""
    state, length = fragment.state, fragment.final.episode_length
    n_steps, n_envs = state.rew.shape[0] - 1, state.rew.shape[1]
    padding = lambda t, b: bool(state.fin[t + 1, b]) and int(length[t + 1, b]) == 0  # noqa: E731
    return torch.tensor([[not padding(t, b) for b in range(n_envs)] for t in range(n_steps)])


def rewarded_action_probability(loss_fn, steps: int = 8, lr: float = 0.1) -> Tuple[float, float]:
    """Train an :class:`MLPActor` on fresh fragments where only action 0 is rewarded.

    Returns the mean probability of action 0 on fixed probe observations before and after: a
    loss with a sign or wiring error does not move it up.
    """
    torch.manual_seed(0)
    module = MLPActor()
    optim = torch.optim.Adam(module.parameters(), lr=lr)
    collector = ToyCollector(8, module=module, p_end=0.2)
    probe = torch.randn(256, 4, generator=torch.Generator().manual_seed(1))

    def probability() -> float:
        with torch.no_grad():
            return torch.softmax(module.policy(probe), -1)[:, 0].mean().item()

    before = probability()
    for _ in range(steps):
        fragment = collector.fragment(8)
        rew = fragment.state.rew.clone()
        rew[1:] = (fragment.state.act[1:] == 0).float()
        loss = loss_fn(fragment._replace(state=fragment.state._replace(rew=rew)), module)
        optim.zero_grad()
        loss.backward()
        optim.step()
    return before, probability()


def collect(module: Actor, seed: int = 0, n_envs: int = 5, n_steps: int = 8, skip: int = 0, **kwargs: Any) -> Fragment:
    """The fragment after ``skip`` others from a :class:`ToyCollector` driven by ``module``."""
    torch.manual_seed(seed)  # the module samples its actions from the global generator
    collector = ToyCollector(n_envs, module=module, p_end=0.25, seed=seed, **kwargs)
    for _ in range(skip):
        collector.fragment(n_steps)
    return collector.fragment(n_steps)


def lagged(seed: int = 0, moved: str = "", **kwargs: Any) -> Tuple[Fragment, MLPActor]:
    """A fragment collected by an :class:`MLPActor`, and a copy of it whose parameters named
    ``moved...`` (all by default) have moved on since, as a learner's would."""
    behaviour = MLPActor()
    fragment = collect(behaviour, seed=seed, **kwargs)
    module = MLPActor()
    module.load_state_dict(behaviour.state_dict())
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(moved):
                p.add_(0.3 * torch.randn_like(p))
    return fragment, module
