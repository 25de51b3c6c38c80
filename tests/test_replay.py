"""learners.replay: transitions from consecutive fragments, the ring, sampling."""

import optree
import pytest
import torch

from learners.replay import ReplayBuffer, Transitions, transitions
from rollout.fragment import Final, Fragment, State
from tests.learners_fixtures import ToyCollector, snapshot, tree_equal


def build(columns):
    """A fragment from per-env lists of rows ``(obs, fin, terminated, final_obs, length)``.

    Observations are ids (shape (1,)); the action into a row is the previous row's id + 0.5 and its
    reward the previous id / 100, so each transition names where it came from.
    """
    n_rows, n_envs = len(columns[0]), len(columns)
    obs = torch.zeros(n_rows, n_envs, 1)
    act = torch.zeros(n_rows, n_envs, 1)
    rew = torch.zeros(n_rows, n_envs)
    fin = torch.zeros(n_rows, n_envs, dtype=torch.bool)
    terminated = torch.zeros(n_rows, n_envs, dtype=torch.bool)
    final_obs = torch.zeros(n_rows, n_envs, 1)
    length = torch.zeros(n_rows, n_envs, dtype=torch.int64)
    for b, rows in enumerate(columns):
        for t, (o, f, d, fo, n) in enumerate(rows):
            obs[t, b], fin[t, b], terminated[t, b], final_obs[t, b], length[t, b] = o, f, d, fo, n
            if t > 0:
                previous = columns[b][t - 1][0]
                act[t, b], rew[t, b] = previous + 0.5, previous / 100
                if f and n == 0:  # sticky padding: the env did not move
                    rew[t, b] = 0.0
    state = State(torch.zeros(n_rows, n_envs, dtype=torch.int64), obs, act, rew, fin, terminated)
    final = Final(final_obs, {}, torch.zeros(n_rows, n_envs, dtype=torch.float64), length)
    return Fragment(state, {}, {}, (), final, torch.zeros(n_envs, dtype=torch.int64))


# (obs, fin, terminated, final_obs, length); env 1 is sticky: frozen after its end at row 1.
FIRST = build(
    [
        [(10, False, False, 0, 0), (11, False, False, 0, 0), (20, True, False, 12, 2), (21, False, False, 0, 0)],
        [(50, False, False, 0, 0), (60, True, True, 51, 1), (60, True, True, 0, 0), (60, True, True, 0, 0)],
    ]
)
SECOND = build(
    [
        [(21, False, False, 0, 0), (30, True, True, 22, 2), (31, False, False, 0, 0), (32, False, False, 0, 0)],
        [(60, True, True, 0, 0), (61, False, False, 0, 0), (62, False, False, 0, 0), (63, False, False, 0, 0)],
    ]
)
# (obs, terminated, next_obs) in row-major order; act and rew follow from obs.
EXPECTED = [
    (10, False, 11),
    (50, True, 51),  # env 1 terminates: next_obs is its final observation
    (11, False, 12),  # env 0 truncated: next_obs is the final one, not the reset 20
    (20, False, 21),  # env 1's rows 2, 3 are padding: nothing
    (21, True, 22),
    (60, False, 61),  # row 0 of the second fragment repeats row 3: no duplicate
    (30, False, 31),
    (61, False, 62),
    (31, False, 32),
    (62, False, 63),
]


def test_two_consecutive_fragments_by_hand():
    buffer = ReplayBuffer(100)
    assert buffer.add(FIRST) == 4
    assert buffer.add(SECOND) == 6
    stored = buffer.contents()
    assert stored.obs.squeeze(-1).tolist() == [o for o, _, _ in EXPECTED]
    assert stored.next_obs.squeeze(-1).tolist() == [n for _, _, n in EXPECTED]
    assert stored.terminated.tolist() == [d for _, d, _ in EXPECTED]
    assert stored.act.squeeze(-1).tolist() == [o + 0.5 for o, _, _ in EXPECTED]
    torch.testing.assert_close(stored.rew, torch.tensor([o / 100 for o, _, _ in EXPECTED]))


@pytest.mark.parametrize("sticky", [False, True])
def test_consecutive_fragments_store_every_real_transition_once(sticky):
    spec = {"position": (3,), "grid": ((2, 2), (1,))}
    collector = ToyCollector(4, obs_spec=spec, n_actions=None, act_dim=2, sticky=sticky, p_end=0.3, seed=4)
    buffer = ReplayBuffer(1000)
    fragments = [collector.fragment(5) for _ in range(3)]
    before = snapshot(fragments)
    for fragment in fragments:
        buffer.add(fragment)
    assert tree_equal(fragments, before)
    truth = collector.transitions
    assert len(buffer) == len(truth) > 0
    assert any(tr.terminated for tr in truth) and any(not tr.terminated for tr in truth)
    stored = buffer.contents()
    for i, tr in enumerate(truth):
        assert tree_equal(optree.tree_map(lambda x: x[i], stored.obs), tr.obs)
        assert tree_equal(optree.tree_map(lambda x: x[i], stored.next_obs), tr.next_obs)
        assert torch.equal(stored.act[i], tr.act)
        assert stored.rew[i].item() == pytest.approx(tr.rew)
        assert stored.terminated[i].item() == tr.terminated


def test_ring_keeps_the_newest():
    collector = ToyCollector(3, seed=1, p_end=0.2)
    buffer = ReplayBuffer(7)
    for _ in range(3):
        buffer.add(collector.fragment(4))  # 12 transitions each
        assert len(buffer) == 7
        newest = collector.transitions[-7:]
        stored = buffer.contents()
        assert all(torch.equal(stored.obs[i], tr.obs) for i, tr in enumerate(newest))
    buffer = ReplayBuffer(20)
    buffer.add(collector.fragment(4))
    buffer.add(collector.fragment(4))  # wraps around the end of the storage
    stored = buffer.contents()
    assert all(torch.equal(stored.obs[i], tr.obs) for i, tr in enumerate(collector.transitions[-20:]))


def test_sampling_is_uniform_reproducible_and_only_from_stored():
    collector = ToyCollector(3, seed=2)
    buffer = ReplayBuffer(100)
    buffer.add(collector.fragment(4))  # 12 of 100 slots used
    first = buffer.sample(3000, generator=torch.Generator().manual_seed(0))
    second = buffer.sample(3000, generator=torch.Generator().manual_seed(0))
    assert tree_equal(first, second)
    stored = buffer.contents().obs
    match = (first.obs[:, None, :] == stored[None]).all(-1)  # (3000, 12)
    assert match.any(1).all()  # nothing from the empty slots
    counts = match.float().sum(0)
    assert counts.min() > 3000 / 12 * 0.7 and counts.max() < 3000 / 12 * 1.3
    # Fields of a sampled transition stay together.
    index = match.float().argmax(1)
    assert torch.equal(first.next_obs, buffer.contents().next_obs[index])


def test_transitions_is_a_copy():
    fragment = ToyCollector(2, seed=0).fragment(3)
    batch = transitions(fragment)
    batch.obs.add_(1.0)
    assert not torch.equal(fragment.state.obs[:-1].reshape(-1, 4), batch.obs)


def test_errors():
    with pytest.raises(ValueError, match="`capacity` must be an int >= 1, got 0"):
        ReplayBuffer(0)
    buffer = ReplayBuffer(10)
    with pytest.raises(ValueError, match="the buffer is empty"):
        buffer.sample(1)
    buffer.add(ToyCollector(2, seed=0).fragment(3))
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        buffer.sample(0)
    with pytest.raises(ValueError, match=r"do not match the stored ones.*\(4,\).*\(5,\)"):
        buffer.add(ToyCollector(2, obs_spec=(5,), seed=0).fragment(3))
    with pytest.raises(ValueError, match="same leading size N"):
        buffer.extend(
            Transitions(
                torch.zeros(3, 4),
                torch.zeros(2, dtype=torch.int64),
                torch.zeros(3),
                torch.zeros(3, dtype=torch.bool),
                torch.zeros(3, 4),
            )
        )
