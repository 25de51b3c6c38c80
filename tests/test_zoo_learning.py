"""The CLI's update rules: schedules, PPO's minibatch size and target_kl stop, step counting, obs statistics."""

import gymnasium
import pytest
import torch

from rollout import same
from zoo import learning, presets
from zoo.train import count_steps


def config_of(algo, env, **overrides):
    _, config = presets.resolve(algo, env, overrides)
    return {"algo": algo, "env": env, "seed": 0, **config}


def cartpole_batch(actor, n_steps=32, n_envs=4, **kwargs):
    with same.rollout(lambda: gymnasium.make("CartPole-v1"), actor, n_steps, n_envs=n_envs, seed=0, **kwargs) as feed:
        return next(feed).clone()


def learner_of(config):
    env = gymnasium.make(config["env"])
    torch.manual_seed(0)
    return learning.build(config, env.observation_space, env.action_space)


def test_linear_schedule_reaches_zero_and_constant_stays():
    config = {"lr": 1e-3, "lr_schedule": "linear", "clip": 0.2, "clip_schedule": "constant"}
    assert learning.schedule(config, "lr", 0.0) == 1e-3
    assert learning.schedule(config, "lr", 0.75) == pytest.approx(2.5e-4)
    assert learning.schedule(config, "lr", 1.2) == 0.0
    assert learning.schedule(config, "clip", 0.9) == 0.2


def test_learning_rate_follows_the_schedule_during_updates():
    learner = learner_of(config_of("a2c", "CartPole-v1", lr=1e-3, lr_schedule="linear"))
    batch = cartpole_batch(learner.actor)
    learner.update(batch, progress=0.5)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("size, expected", [(32, 4), (64, 2), (1000, 1)])
def test_ppo_minibatch_size_sets_the_number_of_gradient_steps(size, expected):
    learner = learner_of(config_of("ppo", "CartPole-v1", epochs=2, minibatch_size=size))
    before = [p.detach().clone() for p in learner.actor.parameters()]
    learner.update(cartpole_batch(learner.actor), progress=0.0)  # 32 x 4 = 128 rows
    state = next(iter(learner.optimizer.state_dict()["state"].values()))
    assert state["step"] == 2 * expected
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.actor.parameters()))


def test_ppo_target_kl_stops_the_epochs_early():
    free = learner_of(config_of("ppo", "CartPole-v1", epochs=10, n_minibatches=4, minibatch_size=0, lr=1e-2))
    stopped = learner_of(
        config_of("ppo", "CartPole-v1", epochs=10, n_minibatches=4, minibatch_size=0, lr=1e-2, target_kl=1e-4)
    )
    batch = cartpole_batch(free.actor)
    free.update(batch, progress=0.0)
    info = stopped.update(batch, progress=0.0)
    steps = lambda learner: next(iter(learner.optimizer.state_dict()["state"].values()))["step"]  # noqa: E731
    assert steps(free) == 40
    assert 1 <= steps(stopped) < 40 and info["epochs"] < 10


def test_count_steps_skips_the_frozen_rows_of_sticky_envs():
    calls = []

    class Counting(gymnasium.Wrapper):
        def step(self, action):
            calls.append(1)
            return super().step(action)

    learner = learner_of(config_of("ppo", "CartPole-v1"))
    make = lambda: Counting(gymnasium.make("CartPole-v1"))  # noqa: E731
    total = 0
    with same.rollout(make, learner.actor, 64, n_envs=4, sticky=True, seed=0, env_info=()) as feed:  # no probe step
        for _, batch in zip(range(5), feed):
            total += count_steps(batch)
            frozen = int((batch.state.fin[1:] & (batch.final.episode_length[1:] == 0)).sum())
            assert count_steps(batch) == 64 * 4 - frozen
    assert total == len(calls) and frozen >= 0
    assert total < 5 * 64 * 4, "sticky CartPole with a random policy must freeze some rows"


def test_observation_statistics_are_updated_from_valid_rows_and_saved():
    learner = learner_of(config_of("ppo", "CartPole-v1", normalize_obs=True, epochs=1))
    batch = cartpole_batch(learner.actor)
    learner.update(batch, progress=0.0)
    obs = batch.state.obs[1:].reshape(-1, 4).double()
    assert torch.allclose(learner.actor.obs_norm.mean, obs.mean(0), atol=1e-5)
    assert "obs_norm.mean" in "".join(learner.state_dict()["actor"])


def test_sac_learns_only_after_the_warm_up_and_then_acts_with_the_policy():
    config = config_of("sac", "Pendulum-v1", learning_starts=64, batch_size=16, hidden=(16, 16), n_steps=16)
    learner = learner_of(config)
    with same.rollout(lambda: gymnasium.make("Pendulum-v1"), learner.actor, 16, n_envs=1, seed=0) as feed:
        infos = [learner.update(next(feed), progress=0.0) for _ in range(6)]
    assert infos[:3] == [{}, {}, {}], "no gradient step before learning_starts env steps"
    assert "critic_loss" in infos[4] and not bool(learner.actor.random_actions)
    assert next(iter(learner.q_optimizer.state_dict()["state"].values()))["step"] == 16 * 6 - 48


def test_reward_scale_is_the_std_of_the_discounted_return():
    learner = learner_of(config_of("a2c", "CartPole-v1", normalize_reward=True, gamma=0.9))
    batch = cartpole_batch(learner.actor, n_steps=64, n_envs=2)
    learner.update(batch, progress=0.0)
    expected = []
    for j in range(2):  # the return restarts after each episode end
        running = 0.0
        for t in range(1, 65):
            running = 0.9 * running + float(batch.state.rew[t, j])
            expected.append(running)
            if batch.state.fin[t, j]:
                running = 0.0
    std = torch.tensor(expected, dtype=torch.float64).var(correction=0)
    assert torch.allclose(learner.reward_scale.norm.var, std, rtol=1e-4)
    assert learner.reward_scale(torch.ones(3)).allclose(torch.ones(3) / (std + 1e-8).sqrt().float(), rtol=1e-4)
