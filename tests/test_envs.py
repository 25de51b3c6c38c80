"""Env adapter: nested spaces, namedtuples, legacy gym API, batched envs, bad envs."""

import threading
import warnings

import gymnasium
import numpy as np
import pytest
import torch

from rollout import same
from rollout.errors import ConfigurationError, EnvError, StructureError
from tests.toys import Corridor, Counter, Feedforward, LegacyCorridor, Nested, NestedActor, Point, PointActor, PointEnv


def test_nested_dict_tuple_spaces_keep_shapes_dtypes_and_action_nesting():
    envs = [Nested(), Nested()]
    with same.rollout(envs, NestedActor(), 4, seed=0) as feed:
        f = next(feed)
        obs = f.state.obs
        assert set(obs) == {"pos", "vel", "pair"}
        assert obs["pos"].shape == (5, 2, 2) and obs["pos"].dtype == torch.int32
        assert obs["vel"].shape == (5, 2, 3) and obs["vel"].dtype == torch.float64
        assert obs["pair"][0].shape == (5, 2) and obs["pair"][0].dtype == torch.int64
        assert obs["pair"][1].shape == (5, 2, 4) and obs["pair"][1].dtype == torch.int8
        # env: truncated every 3 steps; row 3 holds the reset observation, final.obs the last one
        assert obs["pos"][:, 0, 0].tolist() == [0, 1, 2, 0, 1]
        assert f.final.obs["pos"][3, 0].tolist() == [3, -3]
        assert f.final.obs["pair"][1][3, 0].tolist() == [1, 1, 0, 1]
        assert f.state.act["move"].dtype == torch.int64 and f.state.act["force"].dtype == torch.float32
        assert f.state.act["move"][1:, 0].tolist() == [0, 1, 2, 0]
        assert f.actor["bit"].dtype == torch.int8
    # actions reach env.step in the original nesting, as numpy values
    first = envs[0].actions[1]
    assert set(first) == {"move", "force"}
    assert int(first["move"]) == 1 and np.allclose(first["force"], [0.1, 1.0])


def test_namedtuple_observations_stay_namedtuples():
    with same.rollout([PointEnv()], PointActor(), 3, seed=0) as feed:
        f = next(feed)
    assert isinstance(f.state.obs, Point)
    assert f.state.obs.x.dtype == torch.float32 and f.state.obs.y.dtype == torch.int16
    assert f.state.obs.x[:, 0].tolist() == [0, 1, 2, 3]
    assert f.actor["y"][:, 0, 1].tolist() == [0, 1, 2, 3]


def test_legacy_gym_api_env_is_adapted():
    legacy = [LegacyCorridor(max_steps=2), LegacyCorridor(length=3)]
    with same.rollout(legacy, Counter(), 4, seed=0) as feed:
        f = next(feed)
    assert legacy[0].seeded is not None  # seeded through env.seed()
    # env 0: truncated (TimeLimit.truncated) -> fin & ~terminated; env 1 terminates at 2
    assert f.state.fin[:, 0].tolist() == [True, False, True, False, True]
    assert f.state.terminated[:, 0].tolist() == [False] * 5
    assert f.state.terminated[:, 1].tolist() == [False, False, True, False, True]
    assert f.final.obs[2, 0].tolist() == [2]


def test_real_gym_package_env_if_installed():
    gym = pytest.importorskip("gym", reason="the optional legacy gym package (extra 'gym') is not installed")
    env = gym.make("CartPole-v1", disable_env_checker=True)
    with same.rollout([env], Feedforward(), 8, seed=0) as feed:
        f = next(feed)
    assert f.state.obs.shape == (9, 1, 4) and f.state.obs.dtype == torch.float32


def test_gymnasium_make_with_render_mode_none():
    with same.rollout(
        lambda: gymnasium.make("CartPole-v1", render_mode=None), Feedforward(), 8, n_envs=2, seed=0
    ) as feed:
        f = next(feed)
    assert f.state.obs.shape == (9, 2, 4)


def test_vector_env_same_step_autoreset():
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    vec = SyncVectorEnv([lambda: Corridor(max_steps=2, length=10)] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    with same.rollout(vec, Counter(), 4, seed=0) as feed:
        f = next(feed)
    assert f.state.obs[:, 0, 0].tolist() == [0, 1, 0, 1, 0]
    assert f.final.obs[:, 1, 0].tolist() == [0, 0, 2, 0, 2]
    assert f.final.actor["value"][:, 1].tolist() == [0, 0, 22, 0, 22]


def test_vector_env_next_step_autoreset_is_rejected():
    vec = gymnasium.vector.SyncVectorEnv([lambda: Corridor()] * 2)
    with pytest.raises(ConfigurationError, match="autoreset_mode"):
        same.rollout(vec, Counter(), 4)


def test_env_info_declared_and_missing_keys_get_the_fill_value():
    with same.rollout([Corridor()], Counter(), 4, env_info={"pos": 0, "absent": 1.5}) as feed:
        f = next(feed)
    assert f.env["pos"][:, 0].tolist() == [1, 2, 3, 1]
    assert f.env["absent"].dtype == torch.float64 and f.env["absent"].tolist() == [[0.0]] * 4
    with pytest.raises(ConfigurationError, match="nothing"):
        same.rollout([Corridor()], Counter(), 4, env_info=["nothing"])


class Uncopyable(Corridor):
    """Holds a lock (``deepcopy`` raises) and counts the deep copies tried on it."""

    made: list = []

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        Uncopyable.made.append(self)

    def __deepcopy__(self, memo):
        raise AssertionError("the probe deep-copied a collected env")


def test_a_factory_batch_is_probed_on_a_spare_env_from_the_factory_not_a_copy_of_env_0():
    # A copy would slow env 0 down for good on CPython 3.11/3.12 (its __dict__ is materialised),
    # and envs that hold handles cannot be copied; a spare env from the factory has neither problem.
    Uncopyable.made = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not probe" warning
        with same.rollout(Uncopyable, Counter(), 4, n_envs=2, seed=0) as feed:
            f = next(feed)
            collected = feed._generator.gi_frame.f_locals["context"].envs.envs
    assert f.env["pos"][:, 0].tolist() == [1, 2, 3, 1]  # the probe found the info key
    assert len(Uncopyable.made) == 3 and Uncopyable.made[2] not in collected  # 2 collected + 1 spare
    assert [env.actions for env in collected] == [[0] * 4] * 2  # the spare's probe step is not theirs


def test_a_list_of_envs_that_cannot_be_copied_warns_and_records_no_info():
    env = Corridor()
    env.lock = threading.Lock()
    with pytest.warns(UserWarning, match="could not probe the env"):
        feed = same.rollout([env], Counter(), 4)
    with feed:
        assert next(feed).env == {}


# ------------------------------------------------------------------------------------ bad input
class WrongShape(Corridor):
    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.int64), {}


class WrongDtype(Corridor):
    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}


class ChangesStructure(Nested):
    def step(self, action):
        obs, *rest = super().step(action)
        if self.t == 2:
            obs = {"pos": obs["pos"], "vel": obs["vel"]}
        return (obs, *rest)


class ChangesShape(Corridor):
    def step(self, action):
        obs, *rest = super().step(action)
        return (np.zeros(2, np.int64) if self.t == 2 else obs, *rest)


def test_observation_of_wrong_shape_is_named():
    with pytest.raises(
        EnvError,
        match=r"env 0: reset\(\) observation.*expected shape \(1,\) and dtype int64, found array of shape \(3,\)",
    ):
        same.rollout([WrongShape()], Counter(), 4)


def test_observation_of_wrong_dtype_is_named():
    with pytest.raises(
        EnvError, match=r"expected shape \(1,\) and dtype int64, found array of shape \(1,\) and dtype float32"
    ):
        same.rollout([WrongDtype()], Counter(), 4)


def test_structure_change_mid_run_is_an_error():
    with same.rollout([ChangesStructure()], NestedActor(), 4, env_info=()) as feed:
        with pytest.raises(StructureError, match="structure changed"):
            next(feed)


def test_shape_change_mid_run_is_an_error():
    with same.rollout([ChangesShape()], Counter(), 4, env_info=()) as feed:
        with pytest.raises(EnvError, match=r"expected shape \(1,\)"):
            next(feed)


def test_factory_that_does_not_return_an_env():
    with pytest.raises(EnvError, match="did not return an env.*found int"):
        same.rollout(lambda: 42, Counter(), 4, n_envs=2)


def test_factory_needs_n_envs_and_arguments_are_checked():
    with pytest.raises(ConfigurationError, match="n_envs"):
        same.rollout(lambda: Corridor(), Counter(), 4)
    with pytest.raises(ConfigurationError, match="n_steps"):
        same.rollout([Corridor()], Counter(), 0)
    with pytest.raises(ConfigurationError, match="sticky"):
        same.rollout(__import__("tests.toys").toys.BatchedCorridor(2), Counter(), 4, sticky=True)


def test_factory_receives_a_seed_and_created_envs_are_closed():
    made = []

    class Closing(Corridor):
        closed = False

        def close(self):
            self.closed = True

    def factory(seed):
        made.append((seed, Closing()))
        return made[-1][1]

    feed = same.rollout(factory, Counter(), 4, n_envs=3, seed=1)
    next(feed)
    feed.close()
    assert len(made) == 4  # the 3 collected envs, then the spare that the probe steps
    assert len({seed for seed, _ in made[:3]}) == 3
    assert all(env.closed for _, env in made)  # the spare too
