"""Small environments for examples and tests, registered with gymnasium under the ``zoo/`` namespace.

- ``zoo/ContinuousCartPole-v0``: :class:`ContinuousCartPoleEnv`, obs ``(4,)``, action ``Box(-1, 1, (1,))``,
  500 steps;
- ``zoo/CartPoleNoVel-v0``: :class:`CartPoleNoVelEnv`, obs ``(2,)``, ``Discrete(2)``, 500 steps;
- ``zoo/Corridor-v0``: :class:`CorridorEnv`, obs ``(length,)`` one-hot, ``Discrete(2)``, 32 steps;
- ``zoo/Chain-v0``: :class:`ChainEnv`, obs ``(n_states,)`` one-hot, ``Discrete(2)``, 100 steps.

Importing this module registers the IDs (idempotently, see :func:`register`), after which
``gymnasium.make("zoo/Corridor-v0", length=12)`` works; keyword arguments go to the class. The time
limits are gymnasium ``TimeLimit`` wrappers added by ``gymnasium.make`` (truncation, never
termination); ``gymnasium.make(..., max_episode_steps=n)`` overrides them.

The registry lives in each process: a worker started with the ``spawn`` or ``forkserver`` method
must import this module before ``gymnasium.make`` (a factory defined in a module that imports
``zoo.envs`` does), or name the module in the ID: ``gymnasium.make("zoo.envs:zoo/Chain-v0")``.
"""

from typing import Any, Dict, Optional, Tuple

import gymnasium
import numpy as np
from gymnasium import logger, spaces
from gymnasium.envs.classic_control import CartPoleEnv

__all__ = [
    "ContinuousCartPoleEnv",
    "CartPoleNoVelEnv",
    "CorridorEnv",
    "ChainEnv",
    "IDS",
    "register",
]

IDS = (
    "zoo/ContinuousCartPole-v0",
    "zoo/CartPoleNoVel-v0",
    "zoo/Corridor-v0",
    "zoo/Chain-v0",
)

Step = Tuple[np.ndarray, float, bool, bool, Dict[str, Any]]


def _one_hot(index: int, size: int) -> np.ndarray:
    obs = np.zeros(size, dtype=np.float32)
    obs[index] = 1.0
    return obs


class ContinuousCartPoleEnv(CartPoleEnv):
    """CartPole-v1 with a continuous force: the env of the BBRL SAC notebook.

    The dynamics, observation, reward, termination and rendering are gymnasium's ``CartPole-v1``;
    only the action differs. Actions ``[1.0]`` and ``[-1.0]`` reproduce CartPole-v1's actions 1
    and 0 exactly (bit for bit, for the same seed).

    - Observation: ``Box((4,), float32)``, ``[x, x_dot, theta, theta_dot]`` as in CartPole-v1.
    - Action: ``Box(-1, 1, (1,), float32)``; the force on the cart is
      ``force_mag * clip(action, -1, 1)`` with ``force_mag = 10`` N (positive pushes right). Values
      outside the box are clipped, not rejected.
    - Reward: 1 per step, including the terminating step (``sutton_barto_reward=True``: 0 per
      step and -1 at termination, as CartPole-v1).
    - Termination: ``|x| > 2.4`` or ``|theta| > 12`` degrees.
    - Truncation: after 500 steps (the registration's ``TimeLimit``).

    Parameters
    ----------
    sutton_barto_reward : bool
        CartPole-v1's alternative reward.
    render_mode : {None, "human", "rgb_array"}
        As CartPole-v1 (pygame).

    Raises
    ------
    ValueError
        From :meth:`step`, on an action that is not one finite number.
    """

    def __init__(self, sutton_barto_reward: bool = False, render_mode: Optional[str] = None):
        super().__init__(sutton_barto_reward=sutton_barto_reward, render_mode=render_mode)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def step(self, action: Any) -> Step:
        value = np.asarray(action, dtype=np.float64)
        if value.size != 1 or not np.isfinite(value).all():
            raise ValueError(
                f"ContinuousCartPoleEnv.step: the action must be one finite number in [-1, 1] (shape (1,)), "
                f"got {action!r}"
            )
        if self.state is None:
            raise RuntimeError("ContinuousCartPoleEnv.step: call reset() before step()")
        force = self.force_mag * float(np.clip(value.item(), -1.0, 1.0))
        # CartPole-v1's step with `force` in place of +-force_mag: the same operations in the same
        # order, so actions +-1 give bit-identical states.
        x, x_dot, theta, theta_dot = self.state
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        if self.kinematics_integrator == "euler":
            x = x + self.tau * x_dot
            x_dot = x_dot + self.tau * xacc
            theta = theta + self.tau * theta_dot
            theta_dot = theta_dot + self.tau * thetaacc
        else:  # semi-implicit euler
            x_dot = x_dot + self.tau * xacc
            x = x + self.tau * x_dot
            theta_dot = theta_dot + self.tau * thetaacc
            theta = theta + self.tau * theta_dot
        self.state = np.array((x, x_dot, theta, theta_dot), dtype=np.float64)

        terminated = bool(
            x < -self.x_threshold
            or x > self.x_threshold
            or theta < -self.theta_threshold_radians
            or theta > self.theta_threshold_radians
        )
        if not terminated:
            reward = 0.0 if self._sutton_barto_reward else 1.0
        elif self.steps_beyond_terminated is None:  # the pole just fell
            self.steps_beyond_terminated = 0
            reward = -1.0 if self._sutton_barto_reward else 1.0
        else:
            if self.steps_beyond_terminated == 0:
                logger.warn(
                    "ContinuousCartPoleEnv.step() called after the episode terminated; call reset() first "
                    "(further steps are undefined behaviour)"
                )
            self.steps_beyond_terminated += 1
            reward = -1.0 if self._sutton_barto_reward else 0.0
        if self.render_mode == "human":
            self.render()
        return np.array(self.state, dtype=np.float32), reward, terminated, False, {}


class CartPoleNoVelEnv(CartPoleEnv):
    """CartPole-v1 with the velocities hidden: a partially observed task for recurrent policies.

    The observation keeps CartPole-v1's entries 0 and 2 and drops 1 and 3 (as sb3-contrib's
    ``CartPoleNoVelEnv``), so a policy must infer the velocities from successive positions.

    - Observation: ``Box((2,), float32)``, ``[x, theta]``, bounds ``+-4.8`` and ``+-0.419`` rad
      (CartPole-v1's).
    - Action: ``Discrete(2)``, 0 pushes left, 1 right (CartPole-v1).
    - Reward, termination: CartPole-v1's (1 per step; ``|x| > 2.4`` or ``|theta| > 12`` degrees).
    - Truncation: after 500 steps (the registration's ``TimeLimit``).

    Parameters
    ----------
    sutton_barto_reward : bool
        CartPole-v1's alternative reward.
    render_mode : {None, "human", "rgb_array"}
        As CartPole-v1 (the rendering shows the full state).
    """

    observed = (0, 2)
    """Indices of CartPole-v1's observation that are kept: the cart position and the pole angle."""

    def __init__(self, sutton_barto_reward: bool = False, render_mode: Optional[str] = None):
        super().__init__(sutton_barto_reward=sutton_barto_reward, render_mode=render_mode)
        index = list(self.observed)
        full = self.observation_space
        self.observation_space = spaces.Box(full.low[index], full.high[index], dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
        obs, info = super().reset(seed=seed, options=options)
        return obs[list(self.observed)], info

    def step(self, action: Any) -> Step:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs[list(self.observed)], reward, terminated, truncated, info


class CorridorEnv(gymnasium.Env):
    """A corridor of ``length`` cells: walk right to the end. Deterministic; for teaching and tests.

    Episodes start in cell 0; the goal is cell ``length - 1``. The optimal policy (always right)
    earns 1 in ``length - 1`` steps.

    - Observation: ``Box(0, 1, (length,), float32)``, the one-hot of the current cell.
    - Action: ``Discrete(2)``: 0 moves left (staying put in cell 0), 1 moves right.
    - Reward: +1 on the step that reaches the goal, 0 otherwise.
    - Termination: on reaching the goal.
    - Truncation: the registration's ``TimeLimit`` of 32 steps, four times the default length. With
      another ``length``, pass ``max_episode_steps=4 * length`` to ``gymnasium.make`` for the same
      ratio (the limit must exceed ``length - 1`` for the goal to be reachable).

    The seed is accepted and ignored: nothing is random.

    Parameters
    ----------
    length : int
        Number of cells, at least 2.

    Raises
    ------
    ValueError
        On a bad ``length``; from :meth:`step`, on an action outside ``{0, 1}``.
    """

    metadata = {"render_modes": []}

    def __init__(self, length: int = 8):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
            raise ValueError(f"CorridorEnv: `length` must be an int >= 2, got {length!r}")
        self.length = int(length)
        self.observation_space = spaces.Box(0.0, 1.0, (self.length,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.position = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = 0
        return _one_hot(self.position, self.length), {}

    def step(self, action: Any) -> Step:
        if not self.action_space.contains(action):
            raise ValueError(f"CorridorEnv.step: the action must be 0 (left) or 1 (right), got {action!r}")
        if int(action) == 1:
            self.position = min(self.position + 1, self.length - 1)
        else:
            self.position = max(self.position - 1, 0)
        terminated = self.position == self.length - 1
        return (
            _one_hot(self.position, self.length),
            float(terminated),
            terminated,
            False,
            {},
        )


class ChainEnv(gymnasium.Env):
    """The chain MDP of Strens (2000), a test of exploration: a small sure reward hides a large one.

    States ``0..n_states-1``, start in state 0. Action 0 moves forward along the chain for no
    reward, except in the last state, where it stays and pays 10. Action 1 returns to state 0 and
    pays 2 (from any state). A myopic agent keeps taking the 2; the optimal policy walks to the end
    (with the default 5 states, its return over 100 steps is 960 against 200 for always 1).

    With probability ``slip`` the env executes the other action (Strens used 0.2), drawn from the
    env's ``np_random`` (seeded by ``reset(seed=...)``); the default 0 is deterministic and draws
    nothing.

    - Observation: ``Box(0, 1, (n_states,), float32)``, the one-hot of the state.
    - Action: ``Discrete(2)``: 0 forward, 1 back to the start.
    - Reward: 10 for action 0 in the last state, 2 for action 1, 0 otherwise (for the executed
      action, after any slip).
    - Termination: never.
    - Truncation: after 100 steps (the registration's ``TimeLimit``).

    Strens, 2000, "A Bayesian framework for reinforcement learning", ICML; also Osband et al.,
    2013, "(More) efficient reinforcement learning via posterior sampling".

    Parameters
    ----------
    n_states : int
        Length of the chain, at least 2.
    slip : float
        Probability in [0, 1] that the executed action is the other one.

    Raises
    ------
    ValueError
        On a bad ``n_states`` or ``slip``; from :meth:`step`, on an action outside ``{0, 1}``.
    """

    metadata = {"render_modes": []}

    FORWARD_REWARD = 10.0
    """Paid by action 0 in the last state."""
    RETURN_REWARD = 2.0
    """Paid by action 1, from any state."""

    def __init__(self, n_states: int = 5, slip: float = 0.0):
        if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 2:
            raise ValueError(f"ChainEnv: `n_states` must be an int >= 2, got {n_states!r}")
        if not 0.0 <= slip <= 1.0:
            raise ValueError(f"ChainEnv: `slip` must be a probability in [0, 1], got {slip!r}")
        self.n_states, self.slip = int(n_states), float(slip)
        self.observation_space = spaces.Box(0.0, 1.0, (self.n_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.position = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = 0
        return _one_hot(self.position, self.n_states), {}

    def step(self, action: Any) -> Step:
        if not self.action_space.contains(action):
            raise ValueError(f"ChainEnv.step: the action must be 0 (forward) or 1 (back to start), got {action!r}")
        action = int(action)
        if self.slip > 0.0 and self.np_random.random() < self.slip:
            action = 1 - action
        last = self.n_states - 1
        if action == 0:
            reward = self.FORWARD_REWARD if self.position == last else 0.0
            self.position = min(self.position + 1, last)
        else:
            reward = self.RETURN_REWARD
            self.position = 0
        return _one_hot(self.position, self.n_states), reward, False, False, {}


_REGISTRATIONS: Dict[str, Dict[str, Any]] = {
    "zoo/ContinuousCartPole-v0": dict(
        entry_point="zoo.envs:ContinuousCartPoleEnv",
        max_episode_steps=500,
        reward_threshold=475.0,
    ),
    "zoo/CartPoleNoVel-v0": dict(
        entry_point="zoo.envs:CartPoleNoVelEnv",
        max_episode_steps=500,
        reward_threshold=475.0,
    ),
    "zoo/Corridor-v0": dict(entry_point="zoo.envs:CorridorEnv", max_episode_steps=32, reward_threshold=1.0),
    "zoo/Chain-v0": dict(entry_point="zoo.envs:ChainEnv", max_episode_steps=100),
}


def register() -> None:
    """Register :data:`IDS` with gymnasium; IDs already in ``gymnasium.registry`` are left alone.

    Called when this module is imported; calling it again does nothing.
    """
    for env_id, options in _REGISTRATIONS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **options)


register()
