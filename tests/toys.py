"""Deterministic toy envs and actors shared by the tests."""

import collections

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

import rollout


class Corridor(gymnasium.Env):
    """Positions 0..length-1; action 0 advances, 1 stays. Reaching the end pays 1 and terminates.

    obs: int64 (1,) position. ``max_steps`` truncates an episode (a time limit). ``info['pos']``
    is the position after the step. ``start`` is where episodes begin (seed ignored: deterministic).
    """

    def __init__(self, length=4, max_steps=None, start=0):
        self.length, self.max_steps, self.start = length, max_steps, start
        self.observation_space = spaces.Box(0, length, (1,), np.int64)
        self.action_space = spaces.Discrete(2)
        self.actions = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos, self.t = self.start, 0
        return np.array([self.pos], dtype=np.int64), {}

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        if int(action) == 0:
            self.pos += 1
        terminated = self.pos == self.length - 1
        truncated = not terminated and self.max_steps is not None and self.t >= self.max_steps
        return np.array([self.pos], dtype=np.int64), float(terminated), terminated, truncated, {"pos": self.pos}


class BatchedCorridor(VectorEnv):
    """B corridors stepped with one numpy call; ``autoreset_mode`` DISABLED (reset with a mask).

    ``start``: one start for all, or one per env."""

    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, num_envs, length=4, max_steps=None, start=0):
        self.num_envs, self.length, self.max_steps, self.start = num_envs, length, max_steps, start
        self.single_observation_space = spaces.Box(0, length, (1,), np.int64)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(0, length, (num_envs, 1), np.int64)
        self.action_space = spaces.MultiDiscrete([2] * num_envs)
        self.pos = np.full(num_envs, start, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def reset(self, *, seed=None, options=None):
        mask = np.ones(self.num_envs, bool) if not options else options["reset_mask"]
        self.pos[mask], self.t[mask] = np.broadcast_to(self.start, (self.num_envs,))[mask], 0
        return self.pos[:, None].copy(), {}

    def step(self, actions):
        self.t += 1
        self.pos += np.asarray(actions) == 0
        terminated = self.pos == self.length - 1
        truncated = ~terminated & (self.t >= (self.max_steps or np.iinfo(np.int64).max))
        info = {"pos": self.pos.copy(), "_pos": np.ones(self.num_envs, bool)}
        return self.pos[:, None].copy(), terminated.astype(np.float64), terminated, truncated, info


class SameStepCorridor(BatchedCorridor):
    """:class:`BatchedCorridor` resetting its ended envs in the step (``SAME_STEP``), their last
    observations in ``info['final_obs']``: a ``(B, 1)`` array, as numpy-batched envs give, or
    (``objects=True``) an object array of single observations, as gymnasium's wrappers give."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, *args, objects=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.objects = objects

    def step(self, actions):
        obs, rew, terminated, truncated, info = super().step(actions)
        ended = terminated | truncated
        if ended.any():
            final = obs
            if self.objects:
                final = np.empty(self.num_envs, dtype=object)
                for j in np.flatnonzero(ended):
                    final[j] = obs[j].copy()
            info = {**info, "final_obs": final, "_final_obs": ended}
            obs, _ = self.reset(options={"reset_mask": ended})
        return obs, rew, terminated, truncated, info


class Counter(rollout.Actor):
    """Recurrent actor whose state counts the steps since its last reset.

    Action: ``policy[stepno % len(policy)]`` (default always 0: advance). info: ``count`` (the
    state before the step, as float), ``value`` = 10 * obs + count, ``virtual`` flag.
    """

    def __init__(self, policy=(0,)):
        super().__init__()
        self.policy = torch.tensor(policy, dtype=torch.int64)
        self.calls = []

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n_seq, B = obs.shape[:2]
        if hx is None:
            hx = torch.full((1, B, 1), 99.0)  # garbage: the collector must reset it
        self.calls.append(dict(stepno=stepno.clone(), obs=obs.clone(), hx=hx.clone(), virtual=virtual))
        count = hx[0, :, 0].expand(n_seq, B)
        act = self.policy[stepno % len(self.policy)]
        info = {
            "count": count.clone(),
            "value": 10.0 * obs[..., 0].float() + count,
            "virtual": torch.full((n_seq, B), bool(virtual)),
        }
        return act, hx + 1, info


class Feedforward(rollout.Actor):
    """Deterministic feed-forward actor: always action 0, value = obs."""

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.zeros(obs.shape[:2], dtype=torch.int64), (), {"value": obs[..., 0].float()}


Point = collections.namedtuple("Point", "x y")


class Nested(gymnasium.Env):
    """Dict observations with a nested Tuple and several dtypes; Dict actions, recorded."""

    observation_space = spaces.Dict(
        {
            "pos": spaces.Box(-10, 10, (2,), np.int32),
            "vel": spaces.Box(-1, 1, (3,), np.float64),
            "pair": spaces.Tuple((spaces.Discrete(5), spaces.MultiBinary(4))),
        }
    )
    action_space = spaces.Dict({"move": spaces.Discrete(3), "force": spaces.Box(-1, 1, (2,), np.float32)})

    def __init__(self):
        self.actions, self.t = [], 0

    def _obs(self):
        t = self.t
        return {
            "pos": np.array([t, -t], np.int32),
            "vel": np.full(3, t / 10, np.float64),
            "pair": (np.int64(t % 5), np.array([t % 2, 1, 0, 1], np.int8)),
        }

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.actions.append(action)
        self.t += 1
        return self._obs(), 0.5, False, self.t % 3 == 0, {}


class NestedActor(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        n, B = stepno.shape
        action = {
            "move": (stepno % 3).to(torch.int64),
            "force": torch.stack([obs["vel"][..., 0].float(), stepno.float()], -1),
        }
        return action, (), {"pos": obs["pos"].clone(), "bit": obs["pair"][1][..., 0].clone()}


class PointEnv(gymnasium.Env):
    """Namedtuple observations over a Tuple space."""

    observation_space = spaces.Tuple((spaces.Box(0, 100, (), np.float32), spaces.Box(0, 100, (2,), np.int16)))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return Point(np.float32(0), np.zeros(2, np.int16)), {}

    def step(self, action):
        self.t += 1
        return Point(np.float32(self.t), np.full(2, self.t, np.int16)), 1.0, False, False, {}


class PointActor(rollout.Actor):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        assert isinstance(obs, Point), type(obs)
        return torch.zeros_like(stepno), (), {"x": obs.x.clone(), "y": obs.y.clone()}


class LegacyCorridor:
    """A legacy gym-API env (no gymnasium base class): ``reset() -> obs``, 4-tuple ``step``."""

    def __init__(self, length=4, max_steps=None):
        self.inner = Corridor(length, max_steps)
        self.observation_space, self.action_space = self.inner.observation_space, self.inner.action_space
        self.seeded = None

    def seed(self, seed):
        self.seeded = seed

    def reset(self):
        return self.inner.reset()[0]

    def step(self, action):
        obs, rew, terminated, truncated, info = self.inner.step(action)
        info = dict(info)
        if truncated:
            info["TimeLimit.truncated"] = True
        return obs, rew, terminated or truncated, info

    def close(self):
        pass


def in_worker():
    import multiprocessing

    return multiprocessing.parent_process() is not None


class Tagged(Corridor):
    """Corridor whose observation is [pid of the stepping process, position]."""

    def __init__(self, length=5, max_steps=None):
        super().__init__(length, max_steps)
        self.observation_space = spaces.Box(0, 2**62, (2,), np.int64)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return np.array([__import__("os").getpid(), obs[0]], np.int64), info

    def step(self, action):
        obs, *rest = super().step(action)
        return (np.array([__import__("os").getpid(), obs[0]], np.int64), *rest)


class FailsInWorker(Corridor):
    """Raises in a worker process: in ``step`` at step ``at_step``, or in the second ``reset``."""

    def __init__(self, where="step", at_step=3):
        super().__init__()
        self.where, self.at_step, self.resets = where, at_step, 0

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self.where == "reset" and in_worker() and self.resets >= 2:
            raise RuntimeError("reset failed on purpose")
        return super().reset(seed=seed)

    def step(self, action):
        if self.where == "step" and in_worker() and self.t + 1 >= self.at_step:
            raise RuntimeError("step failed on purpose")
        return super().step(action)


class FailingActor(Feedforward):
    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        if in_worker() and int(stepno.max()) >= 2:
            raise ValueError("actor failed on purpose")
        return super().step(stepno, obs, act, rew, fin, hx=hx, virtual=virtual)


class Switch(rollout.Actor):
    """Action 0 while its weight is positive, 1 otherwise; records the weight it used."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        act = torch.full(stepno.shape, int(self.weight.item() <= 0), dtype=torch.int64)
        return act, (), {"weight": self.weight.detach().expand(stepno.shape).clone()}


class Slow(Corridor):
    """A corridor whose step sleeps (a slow env)."""

    def step(self, action):
        __import__("time").sleep(0.05)
        return super().step(action)
