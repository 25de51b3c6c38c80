import pytest
import torch

import rollout
from rollout.errors import ConfigurationError
from tests.toys import Corridor, Counter


class Greedy(rollout.Actor):
    """Advances when deterministic, stays (never finishing) otherwise."""

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return torch.full(stepno.shape, 0 if self.deterministic else 1), (), {}


def test_evaluate_runs_each_envs_share_of_whole_episodes():
    result = rollout.evaluate([Corridor(length=4), Corridor(length=6)], Counter(), 5, n_steps=3)
    # env 0 runs 3 episodes of 3 steps, env 1 runs 2 of 5, interleaved by episode index
    assert result.lengths.tolist() == [3, 5, 3, 5, 3]
    assert result.returns.tolist() == [1.0] * 5


def test_evaluate_sets_and_restores_deterministic():
    actor = Greedy()
    assert rollout.evaluate(lambda: Corridor(), actor, 2, n_envs=2, deterministic=True).lengths.tolist() == [3, 3]
    assert actor.deterministic is False and actor.training
    with pytest.raises(RuntimeError, match="did not end"):
        rollout.evaluate([Corridor()], actor, 1, deterministic=False, max_steps=50)


def test_evaluate_checks_n_episodes():
    with pytest.raises(ConfigurationError, match="n_episodes"):
        rollout.evaluate([Corridor()], Counter(), 0)
