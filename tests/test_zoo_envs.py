"""zoo.envs: registration, and each env's exact dynamics (CartPole variants against CartPole-v1)."""

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils import seeding
from gymnasium.utils.env_checker import check_env

import zoo.envs
from zoo.envs import IDS, CartPoleNoVelEnv, ChainEnv, ContinuousCartPoleEnv, CorridorEnv

# id -> (class, observation shape, action space, time limit)
EXPECTED = {
    "zoo/ContinuousCartPole-v0": (ContinuousCartPoleEnv, (4,), gymnasium.spaces.Box(-1, 1, (1,), np.float32), 500),
    "zoo/CartPoleNoVel-v0": (CartPoleNoVelEnv, (2,), gymnasium.spaces.Discrete(2), 500),
    "zoo/Corridor-v0": (CorridorEnv, (8,), gymnasium.spaces.Discrete(2), 32),
    "zoo/Chain-v0": (ChainEnv, (5,), gymnasium.spaces.Discrete(2), 100),
}


def one_hot(index, size):
    return np.eye(size, dtype=np.float32)[index]


def run(env, actions, seed=None):
    """Reset with ``seed`` and step ``actions`` until the episode ends: lists of obs, rew, term, trunc."""
    obs, _ = env.reset(seed=seed)
    trace = {"obs": [obs], "rew": [], "terminated": [], "truncated": []}
    for action in actions:
        obs, rew, terminated, truncated, _ = env.step(action)
        for key, value in zip(("obs", "rew", "terminated", "truncated"), (obs, rew, terminated, truncated)):
            trace[key].append(value)
        if terminated or truncated:
            break
    return trace


# ---------------------------------------------------------------------------------------------------
# registration


def test_ids_are_registered_with_their_class_spaces_and_time_limit():
    assert IDS == tuple(EXPECTED)
    for env_id, (cls, obs_shape, action_space, limit) in EXPECTED.items():
        assert env_id in gymnasium.registry
        env = gymnasium.make(env_id)
        assert type(env.unwrapped) is cls
        assert env.spec.max_episode_steps == limit
        assert env.observation_space.shape == obs_shape and env.observation_space.dtype == np.float32
        assert env.action_space == action_space
        obs, _ = env.reset(seed=0)
        assert obs.shape == obs_shape and obs.dtype == np.float32 and obs in env.observation_space
        obs, rew, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.shape == obs_shape and obs.dtype == np.float32 and obs in env.observation_space
        assert isinstance(rew, float) and isinstance(terminated, bool) and truncated is False and info == {}
        with warnings.catch_warnings():  # CartPole's own unbounded velocities draw a warning
            warnings.simplefilter("ignore")
            check_env(env.unwrapped, skip_render_check=True)


def test_register_is_idempotent():
    before = {env_id: gymnasium.registry[env_id] for env_id in IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an ID is registered twice
        zoo.envs.register()
    assert all(gymnasium.registry[env_id] is spec for env_id, spec in before.items())


def test_kwargs_reach_the_class():
    assert gymnasium.make("zoo/Corridor-v0", length=3).observation_space.shape == (3,)
    chain = gymnasium.make("zoo/Chain-v0", n_states=7, slip=0.25).unwrapped
    assert (chain.n_states, chain.slip, chain.observation_space.shape) == (7, 0.25, (7,))


# ---------------------------------------------------------------------------------------------------
# CartPole variants


def balancing(obs):
    """A linear controller that keeps CartPole-v1 up for its 500 steps (from the seeds used here)."""
    x, x_dot, theta, theta_dot = obs
    return int(theta + theta_dot + 0.05 * x + 0.1 * x_dot > 0)


def lockstep(discrete, other, seed, choose, to_other, n_steps=500):
    """Step CartPole-v1 and ``other`` together with the discrete actions ``choose(step, obs)``.

    Returns the number of steps and the paired traces; ``to_other`` maps a discrete action to the
    other env's action.
    """
    obs, _ = discrete.reset(seed=seed)
    other_obs, _ = other.reset(seed=seed)
    pairs = [(obs, other_obs)]
    for t in range(n_steps):
        action = choose(t, obs)
        step = discrete.step(action)
        other_step = other.step(to_other(action))
        pairs.append((step, other_step))
        obs = step[0]
        if step[2] or step[3]:
            break
    return t + 1, pairs


CONTROLLERS = {
    # seed: (actions, step after which the pole must fall; None: balanced until the 500-step limit)
    0: (lambda t, obs: balancing(obs), None),
    1: (lambda t, obs: balancing(obs) if t < 150 else 1, 150),  # then always right
    2: (lambda t, obs: balancing(obs) if t < 100 else 0, 100),  # then always left
}


def assert_episode_end(n, last_step, falls_after):
    """The episode of ``n`` steps was truncated at 500, or terminated after step ``falls_after``."""
    _, rew, terminated, truncated, _ = last_step
    if falls_after is None:
        assert n == 500 and truncated and not terminated
    else:
        assert falls_after < n < 500 and terminated and not truncated and rew == 1.0


@pytest.mark.parametrize("seed", sorted(CONTROLLERS))
def test_continuous_cartpole_with_full_force_is_cartpole_v1(seed):
    choose, falls_after = CONTROLLERS[seed]
    cartpole, continuous = gymnasium.make("CartPole-v1"), gymnasium.make("zoo/ContinuousCartPole-v0")

    def to_box(action):
        return np.array([1.0 if action == 1 else -1.0], dtype=np.float32)

    n, pairs = lockstep(cartpole, continuous, seed, choose, to_box)
    first, first_continuous = pairs[0]
    assert np.array_equal(first, first_continuous)
    for (obs, rew, terminated, truncated, _), (c_obs, c_rew, c_terminated, c_truncated, _) in pairs[1:]:
        assert c_obs.dtype == np.float32 and np.array_equal(obs, c_obs)  # bit for bit
        assert (rew, terminated, truncated) == (c_rew, c_terminated, c_truncated)
    assert_episode_end(n, pairs[-1][1], falls_after)
    assert sum(p[1][1] for p in pairs[1:]) == n  # 1 per step, the terminating one included


@pytest.mark.parametrize("action, force", [(0.5, 5.0), (-0.25, -2.5), (0.0, 0.0), (7.0, 10.0), (-3.0, -10.0)])
def test_continuous_cartpole_force_is_scaled_and_clipped(action, force):
    cartpole, continuous = gymnasium.make("CartPole-v1"), gymnasium.make("zoo/ContinuousCartPole-v0")
    cartpole.unwrapped.force_mag = abs(force)  # CartPole-v1's action 1 pushes with +force_mag, 0 with -force_mag

    def to_box(_):
        return np.array([action], dtype=np.float32)

    _, pairs = lockstep(cartpole, continuous, 3, lambda t, obs: int(force >= 0), to_box, n_steps=30)
    assert len(pairs) > 5
    for step, continuous_step in pairs[1:]:
        assert np.array_equal(step[0], continuous_step[0]) and step[1:4] == continuous_step[1:4]


def test_continuous_cartpole_rejects_malformed_actions():
    env = ContinuousCartPoleEnv()
    env.reset(seed=0)
    for bad in (np.array([np.nan], np.float32), np.zeros(2, np.float32)):
        with pytest.raises(ValueError, match=r"ContinuousCartPoleEnv.step: the action must be one finite number"):
            env.step(bad)


def test_cartpole_no_vel_hides_exactly_the_velocities():
    cartpole, hidden = gymnasium.make("CartPole-v1"), gymnasium.make("zoo/CartPoleNoVel-v0")
    full_space = cartpole.observation_space
    assert np.array_equal(hidden.observation_space.low, full_space.low[[0, 2]])
    assert np.array_equal(hidden.observation_space.high, full_space.high[[0, 2]])
    for seed, (choose, falls_after) in CONTROLLERS.items():
        n, pairs = lockstep(cartpole, hidden, seed, choose, lambda action: action)
        first, first_hidden = pairs[0]
        assert first_hidden.shape == (2,) and np.array_equal(first_hidden, first[[0, 2]])
        for (obs, *rest), (h_obs, *h_rest) in pairs[1:]:
            assert h_obs.dtype == np.float32 and h_obs.shape == (2,)
            assert np.array_equal(h_obs, obs[[0, 2]])  # x and theta; x_dot (1) and theta_dot (3) dropped
            assert rest[:3] == h_rest[:3]
        assert_episode_end(n, pairs[-1][1], falls_after)


def test_cartpole_variants_render_rgb_arrays():
    pytest.importorskip("pygame")
    frames = []
    for env_id in ("CartPole-v1", "zoo/ContinuousCartPole-v0", "zoo/CartPoleNoVel-v0"):
        env = gymnasium.make(env_id, render_mode="rgb_array")
        env.reset(seed=5)
        frames.append(env.render())
        env.close()
    assert frames[0].shape == (400, 600, 3) and frames[0].dtype == np.uint8
    assert all(np.array_equal(frame, frames[0]) for frame in frames[1:])  # the same state, the same picture


# ---------------------------------------------------------------------------------------------------
# Corridor


def test_corridor_always_right_reaches_the_goal_in_length_minus_one_steps():
    trace = run(gymnasium.make("zoo/Corridor-v0"), [1] * 32, seed=0)
    # cells 0 (reset), 1, ..., 7: the goal, reached on the 7th step, which alone pays
    assert [int(np.argmax(obs)) for obs in trace["obs"]] == list(range(8))
    assert all(np.array_equal(obs, one_hot(i, 8)) for i, obs in enumerate(trace["obs"]))
    assert trace["rew"] == [0.0] * 6 + [1.0]
    assert trace["terminated"] == [False] * 6 + [True]
    assert trace["truncated"] == [False] * 7


def test_corridor_always_left_is_truncated_at_four_times_the_length():
    trace = run(gymnasium.make("zoo/Corridor-v0"), [0] * 40, seed=0)
    assert len(trace["rew"]) == 32  # stuck in cell 0 until the time limit
    assert all(np.array_equal(obs, one_hot(0, 8)) for obs in trace["obs"])
    assert trace["rew"] == [0.0] * 32 and trace["terminated"] == [False] * 32
    assert trace["truncated"] == [False] * 31 + [True]


def test_corridor_walks_both_ways():
    trace = run(gymnasium.make("zoo/Corridor-v0", length=4), [1, 1, 0, 0, 0, 1, 1, 1, 1])
    # 0 -> 1 -> 2 -> 1 -> 0 -> 0 (wall) -> 1 -> 2 -> 3 (goal, episode over: the last action is unused)
    assert [int(np.argmax(obs)) for obs in trace["obs"]] == [0, 1, 2, 1, 0, 0, 1, 2, 3]
    assert trace["rew"] == [0.0] * 7 + [1.0] and trace["terminated"] == [False] * 7 + [True]


def test_corridor_errors():
    with pytest.raises(ValueError, match=r"CorridorEnv: `length` must be an int >= 2, got 1"):
        CorridorEnv(1)
    env = CorridorEnv()
    env.reset()
    with pytest.raises(ValueError, match=r"the action must be 0 \(left\) or 1 \(right\), got 2"):
        env.step(2)


# ---------------------------------------------------------------------------------------------------
# Chain


def test_chain_rewards_for_a_fixed_action_sequence():
    actions = [0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0]
    env = gymnasium.make("zoo/Chain-v0")
    trace = run(env, actions, seed=0)
    # deterministic by default: no draws from the env's generator
    assert env.unwrapped.np_random.bit_generator.state == seeding.np_random(0)[0].bit_generator.state
    # forward x4 to the end (state 4) for nothing; forward twice more in state 4: 10 each; back: 2;
    # forward to 1: 0; back, back: 2, 2 (already in state 0); forward, forward: 0, 0
    assert [int(np.argmax(obs)) for obs in trace["obs"]] == [0, 1, 2, 3, 4, 4, 4, 0, 1, 0, 0, 1, 2]
    assert all(np.array_equal(obs, one_hot(int(np.argmax(obs)), 5)) for obs in trace["obs"])
    assert trace["rew"] == [0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 2.0, 0.0, 2.0, 2.0, 0.0, 0.0]
    assert not any(trace["terminated"]) and not any(trace["truncated"])


@pytest.mark.parametrize("action, expected_return", [(0, 960.0), (1, 200.0)])
def test_chain_is_truncated_after_100_steps(action, expected_return):
    trace = run(gymnasium.make("zoo/Chain-v0"), [action] * 150, seed=0)
    assert len(trace["rew"]) == 100 and sum(trace["rew"]) == expected_return  # 4 steps to the end, then 96 x 10
    assert trace["truncated"] == [False] * 99 + [True] and not any(trace["terminated"])


def test_chain_slip_swaps_the_action():
    always = run(gymnasium.make("zoo/Chain-v0", slip=1.0), [1] * 6, seed=0)
    assert always["rew"] == [0.0, 0.0, 0.0, 0.0, 10.0, 10.0]  # every "back" executed as "forward"
    # slip 0.5: each step draws one uniform from the env's np_random, seeded by reset(seed=7)
    slipped = seeding.np_random(7)[0].random(100) < 0.5
    trace = run(gymnasium.make("zoo/Chain-v0", slip=0.5), [1] * 100, seed=7)
    assert 30 < slipped.sum() < 70
    assert [r == 2.0 for r in trace["rew"]] == list(~slipped)  # "back" pays 2 exactly when it did not slip
    again = run(gymnasium.make("zoo/Chain-v0", slip=0.5), [1] * 100, seed=7)
    assert again["rew"] == trace["rew"]


def test_chain_errors():
    with pytest.raises(ValueError, match=r"ChainEnv: `n_states` must be an int >= 2, got 1"):
        ChainEnv(n_states=1)
    with pytest.raises(ValueError, match=r"ChainEnv: `slip` must be a probability in \[0, 1\], got 1.5"):
        ChainEnv(slip=1.5)
