"""The two halves connected: a real fragment from ``same.rollout`` through the learners' timing.

The learners are tested elsewhere against a hand-written copy of the fragment layout
(``tests/learners_fixtures.py``); here the fragment comes from the collector itself, on toy envs
whose every value is known: a corridor that terminates after 2 steps and one truncated after 3.
"""

import torch

from learners import replay, returns
from rollout import same
from tests.toys import Corridor, Feedforward


def fragment():
    # column 0 terminates at position 2 (after 2 steps), column 1 is truncated after 3 steps;
    # Feedforward always advances (action 0) and its value is the observed position
    envs = [Corridor(length=3), Corridor(length=10, max_steps=3)]
    with same.rollout(envs, Feedforward(), 4, seed=0) as feed:
        return next(feed).clone()


def test_returns_from_a_collected_fragment():
    inputs = returns.from_fragment(fragment())
    torch.testing.assert_close(inputs.rew, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))
    assert inputs.terminated.tolist() == [[False, False], [True, False], [False, False], [True, False]]
    assert inputs.fin.tolist() == [[False, False], [True, False], [False, True], [True, False]]
    torch.testing.assert_close(inputs.value, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0, 0.0]]))
    # next values: the next row's value inside an episode, 0 at terminations, and at the
    # truncation the value of the true final observation (position 3), not of the reset one (0)
    torch.testing.assert_close(inputs.next_value, torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 3.0], [0.0, 1.0]]))
    assert inputs.valid.all()
    # one-step returns r + gamma * next_value, from the estimator itself (n = 1)
    target = returns.n_step_returns(
        inputs.rew, inputs.next_value, fin=inputs.fin, terminated=inputs.terminated, gamma=0.5, n=1
    )
    torch.testing.assert_close(target, inputs.rew + 0.5 * inputs.next_value)


def test_replay_transitions_from_a_collected_fragment():
    batch = replay.transitions(fragment())
    # row-major: (t=0, env 0), (t=0, env 1), (t=1, env 0), ...
    assert batch.obs[:, 0].tolist() == [0, 0, 1, 1, 0, 2, 1, 0]
    assert batch.act.tolist() == [0] * 8
    assert batch.rew.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert batch.terminated.tolist() == [False, False, True, False, False, False, True, False]
    # the true next observation, also at episode ends (2 at the terminal, 3 at the truncation)
    assert batch.next_obs[:, 0].tolist() == [1, 1, 2, 2, 1, 3, 2, 1]
