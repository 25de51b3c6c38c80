"""Environments for the benchmarks: synthetic costs, pixels, and a numpy-batched CartPole.

* :class:`BusyEnv`: a 4-float observation, ``Discrete(2)``, episodes of 200 steps, and a
  busy-wait of ``cost`` seconds per step: an env whose step costs a known CPU time (simulators
  do), to show how throughput scales with worker processes.
* :class:`PixelEnv`: uint8 frames ``(4, 84, 84)`` (the Atari stack) at almost no step cost, to
  stress buffer bandwidth and memory.
* :class:`BatchedCartPole`: gymnasium's numpy ``CartPoleVectorEnv`` (one object steps B
  CartPoles) with ``SAME_STEP`` autoreset, the mode our collectors take.
"""

import time
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode

__all__ = ["BusyEnv", "PixelEnv", "BatchedCartPole"]


class BusyEnv(gym.Env):
    """Spends ``cost`` seconds of CPU in every ``step`` (a busy loop, not a sleep)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, cost: float = 50e-6, length: int = 200):
        self.cost, self.length, self.t = cost, length, 0

    def reset(self, *, seed: Optional[int] = None, options: Any = None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        self.t += 1
        obs = np.full(4, (self.t % 7) / 7.0 * (1 if action else -1), dtype=np.float32)
        return obs, 1.0, False, self.t >= self.length, {}


class PixelEnv(gym.Env):
    """84x84 frames, stacked by 4, uint8; episodes of 500 steps; a step only shifts one frame."""

    observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def __init__(self, length: int = 500):
        self.length, self.t = length, 0
        self.frames = np.zeros((4, 84, 84), np.uint8)

    def reset(self, *, seed: Optional[int] = None, options: Any = None):
        super().reset(seed=seed)
        self.t = 0
        self.frames[:] = self.np_random.integers(0, 256, (4, 84, 84), dtype=np.uint8)
        return self.frames.copy(), {}

    def step(self, action):
        self.t += 1
        self.frames[:-1] = self.frames[1:]
        self.frames[-1] = (self.t + int(action)) % 256
        return self.frames.copy(), float(action == 0), False, self.t >= self.length, {}


class BatchedCartPole(CartPoleVectorEnv):
    """gymnasium's ``CartPoleVectorEnv`` with ``SAME_STEP`` autoreset.

    gymnasium's class resets an ended env on the *next* step (ignoring that step's action); here
    ended envs are reset in the same step and their last observations go to
    ``info['final_obs']``, so no reset step enters the data.
    """

    metadata = {**CartPoleVectorEnv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}

    def reset(self, *, seed: Any = None, options: Any = None):
        if isinstance(seed, (list, tuple)):  # a VectorEnv receives one seed per env; one stream here
            seed = int(seed[0])
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        ended = terminated | truncated
        if ended.any():
            info = {"final_obs": obs.copy(), "_final_obs": ended}
            self.state[:, ended] = self.np_random.uniform(self.low, self.high, size=(4, int(ended.sum())))
            self.steps[ended] = 0
            self.prev_done[:] = False
            obs = self.state.T.astype(np.float32)
        return obs, reward, terminated, truncated, info
