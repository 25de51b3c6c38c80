"""Exact fragment contents on deterministic toy envs (DESIGN §4), row by row."""

import pytest
import torch

import rollout
from rollout import core, same
from tests.toys import BatchedCorridor, Corridor, Counter, Feedforward, SameStepCorridor

T = 4


def columns(x):
    """A (1+T, B, ...) tensor as a list of per-env lists (squeezing a trailing dim of 1)."""
    x = x.squeeze(-1) if x.dim() == 3 and x.shape[-1] == 1 else x
    return x.t().tolist()


def two_fragments(sticky, make=lambda: [Corridor(start=0), Corridor(start=1)], actor=None):
    actor = actor or Counter()
    envs = make()
    with same.rollout(envs, actor, T, sticky=sticky, seed=0) as feed:
        first = next(feed).clone()
        second = next(feed).clone()
    return envs, actor, first, second


def test_non_sticky_two_fragments_every_field():
    envs, _, f1, f2 = two_fragments(sticky=False)
    s = f1.state
    # env 0 starts at 0 and ends its 3-step episode on the transition into row 3;
    # env 1 starts at 1 and ends its 2-step episodes into rows 2 and 4.
    assert columns(s.obs) == [[0, 1, 2, 0, 1], [1, 2, 1, 2, 1]]
    assert columns(s.stepno) == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 0]]
    assert columns(s.act) == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]  # row 0: no previous action
    assert columns(s.rew) == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 1]]
    assert columns(s.fin) == [[True, False, False, True, False], [True, False, True, False, True]]
    assert columns(s.terminated) == [[False, False, False, True, False], [False, False, True, False, True]]
    # the actor's state counts steps since the last reset: reset exactly where fin is set
    assert columns(f1.actor["count"]) == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 0]]
    assert columns(f1.actor["value"]) == [[0, 11, 22, 0, 11], [10, 21, 10, 21, 10]]
    assert columns(f1.actor["virtual"]) == [[False] * 4 + [True]] * 2  # row T is the lookahead
    assert columns(f1.final.obs) == [[0, 0, 0, 3, 0], [0, 0, 3, 0, 3]]
    assert columns(f1.final.episode_length) == [[0, 0, 0, 3, 0], [0, 0, 2, 0, 2]]
    assert columns(f1.final.episode_return) == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 1]]
    assert columns(f1.final.actor["value"]) == [[0] * 5, [0] * 5]  # no truncation
    assert f1.env["pos"].t().tolist() == [[1, 2, 3, 1], [2, 3, 2, 3]]  # the step's info, before reset
    assert f1.hx.tolist() == [[[0.0], [0.0]]]  # fresh state, reset at start-up
    assert f1.version.tolist() == [0, 0]

    # Fragment 2: row 0 is row T of fragment 1, bit for bit, in state and final.
    for a, b in zip(rollout.fragment.State(*f1.state), f2.state):
        assert torch.equal(a[T], b[0])
    assert torch.equal(f1.final.obs[T], f2.final.obs[0])
    s = f2.state
    assert columns(s.obs) == [[1, 2, 0, 1, 2], [1, 2, 1, 2, 1]]
    assert columns(s.stepno) == [[1, 2, 0, 1, 2], [0, 1, 0, 1, 0]]
    assert columns(s.fin) == [[False, False, True, False, False], [True, False, True, False, True]]
    assert columns(f2.actor["count"]) == [[1, 2, 0, 1, 2], [0, 1, 0, 1, 0]]
    assert columns(f2.actor["virtual"]) == [[False] * 4 + [True]] * 2  # row 0 is a real step again
    assert f2.hx.tolist() == [[[1.0], [0.0]]]  # the state fed to row 0
    assert f2.version.tolist() == [1, 1]
    # episodes are counted once over consecutive fragments (row 0 repeats row T)
    assert rollout.episodes(f1).lengths.tolist() == [2, 3, 2]
    assert rollout.episodes(f2).lengths.tolist() == [3, 2, 2]
    assert [len(e.actions) for e in envs] == [2 * T, 2 * T]


def test_sticky_freezes_until_the_fragment_ends():
    envs, actor, f1, f2 = two_fragments(sticky=True)
    s = f1.state
    assert columns(s.obs) == [[0, 1, 2, 0, 0], [1, 2, 1, 1, 1]]
    assert columns(s.stepno) == [[0, 1, 2, 0, 0], [0, 1, 0, 0, 0]]
    assert columns(s.rew) == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert columns(s.fin) == [[True, False, False, True, True], [True, False, True, True, True]]
    assert columns(s.terminated) == [[False, False, False, True, True], [False, False, True, True, True]]
    assert columns(f1.final.episode_length) == [[0, 0, 0, 3, 0], [0, 0, 2, 0, 0]]
    assert columns(f1.actor["count"]) == [[0, 1, 2, 0, 0], [0, 1, 0, 0, 0]]  # frozen: state stays fresh
    assert f1.env["pos"].t().tolist() == [[1, 2, 3, 0], [2, 3, 0, 0]]  # frozen rows: fill value 0
    # the env resumes at the next fragment, from its reset observation
    s = f2.state
    assert columns(s.obs) == [[0, 1, 2, 0, 0], [1, 2, 1, 1, 1]]
    assert columns(s.fin) == [[True, False, False, True, True], [True, False, True, True, True]]
    assert columns(s.rew) == [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0]]
    assert columns(f2.final.episode_length) == [[0, 0, 0, 3, 0], [0, 0, 2, 0, 0]]
    # frozen envs are not stepped: 3 + 3 and 2 + 2 steps instead of 2T each
    assert [len(e.actions) for e in envs] == [6, 4]
    assert rollout.episodes(f2).lengths.tolist() == [2, 3]


def test_truncation_records_final_obs_and_bootstrap_with_pre_reset_state():
    actor = Counter()
    with same.rollout([Corridor(length=10, max_steps=2)], actor, T, seed=0) as feed:
        f = next(feed)
        s = f.state
        assert columns(s.obs) == [[0, 1, 0, 1, 0]]
        assert columns(s.fin) == [[True, False, True, False, True]]
        assert columns(s.terminated) == [[False] * 5]  # fin & ~terminated: truncation
        assert columns(f.final.obs) == [[0, 0, 2, 0, 2]]  # the true last observation
        # virtual reaction to x=2 with the pre-reset state count=2: value 10*2 + 2
        assert columns(f.final.actor["value"]) == [[0, 0, 22, 0, 22]]
        assert columns(f.final.actor["count"]) == [[0, 0, 2, 0, 2]]
        assert columns(f.final.actor["virtual"]) == [[False, False, True, False, True]]
        assert columns(f.actor["count"]) == [[0, 1, 0, 1, 0]]  # reset after the bootstrap
    # the bootstrap step got stepno = the ended episode's length and fin = False
    virtual = [c for c in actor.calls if c["virtual"] and c["obs"].item() == 2]
    assert [c["stepno"].item() for c in virtual] == [2, 2]
    assert all(c["hx"].item() == 2 for c in virtual)


def test_episode_statistics_straddle_fragments():
    # 7-step episodes collected in fragments of 4 steps
    with same.rollout([Corridor(length=8)], Feedforward(), T, seed=0) as feed:
        found = [rollout.episodes(next(feed)) for _ in range(6)]
    lengths = torch.cat([e.lengths for e in found]).tolist()
    returns = torch.cat([e.returns for e in found]).tolist()
    assert lengths == [7, 7, 7] and returns == [1.0, 1.0, 1.0]


def test_batched_env_fills_the_same_fragment_as_single_envs():
    b = 3
    _, _, g1, g2 = two_fragments(False, make=lambda: BatchedCorridor(b, max_steps=3, length=5))
    _, _, f1, f2 = two_fragments(False, make=lambda: [Corridor(max_steps=3, length=5) for _ in range(b)])
    for f, g in ((f1, g1), (f2, g2)):
        for a, c in zip(rollout.fragment.clone(f)[:5], g[:5]):
            for x, y in zip(__import__("optree").tree_leaves(a), __import__("optree").tree_leaves(c)):
                assert torch.equal(x, y)


@pytest.mark.parametrize(
    "batched",
    [
        lambda starts: BatchedCorridor(len(starts), max_steps=3, length=5, start=starts),
        lambda starts: SameStepCorridor(len(starts), max_steps=3, length=5, start=starts),
        lambda starts: SameStepCorridor(len(starts), max_steps=3, length=5, start=starts, objects=True),
    ],
    ids=["disabled", "same-step-array", "same-step-objects"],
)
def test_many_envs_ending_in_one_step_fill_what_single_envs_fill(batched):
    # 12 envs from 4 starts: a third of them end (terminated or truncated) at once, the others
    # not; a recurrent actor with info, so resets and truncation bootstraps are recorded too
    import optree

    starts = [j % 4 for j in range(12)]
    _, _, g1, g2 = two_fragments(False, make=lambda: batched(starts))
    _, _, f1, f2 = two_fragments(False, make=lambda: [Corridor(max_steps=3, length=5, start=s) for s in starts])
    assert f1.state.fin[1:].sum(1).max() >= 3  # several envs end in one step
    assert (f1.state.fin & ~f1.state.terminated).any() and f1.state.terminated[1:].any()
    for f, g in ((f1, g1), (f2, g2)):
        for a, c in zip(rollout.fragment.clone(f)[:5], g[:5]):
            for x, y in zip(optree.tree_leaves(a), optree.tree_leaves(c)):
                assert torch.equal(x, y)


def test_reproducible_with_the_same_seed():
    import gymnasium

    def run(seed):
        with same.rollout(lambda: gymnasium.make("CartPole-v1"), Feedforward(), 16, n_envs=3, seed=seed) as feed:
            return [next(feed).clone() for _ in range(3)]

    a, b, c = run(5), run(5), run(6)
    import optree

    assert all(
        torch.equal(x, y) for fa, fb in zip(a, b) for x, y in zip(optree.tree_leaves(fa), optree.tree_leaves(fb))
    )
    assert not torch.equal(a[0].state.obs, c[0].state.obs)


def test_collect_rejects_a_foreign_buffer():
    context = core.startup(rollout.envs.make_envs([Corridor()], None, 0), Counter(), T)
    other = core.startup(rollout.envs.make_envs([Corridor(), Corridor()], None, 0), Counter(), T)
    with pytest.raises(rollout.errors.ConfigurationError, match="buffer"):
        core.collect(context, other.allocate())


def _assert_final_empty_outside_fin(f):
    """``final`` leaves are zero at rows >= 1 without ``fin`` (row 0 is the carried row T)."""
    empty = ~f.state.fin[1:]
    for leaf in [f.final.obs, f.final.episode_length, f.final.episode_return, *f.final.actor.values()]:
        rows = leaf[1:][empty]
        assert not rows.any(), f"stale final values outside episode ends: {rows}"


def test_reused_buffer_clears_final_where_episodes_ended_before():
    # Episodes of 3 and 4 steps (with time limits) end at different rows in every fragment.
    envs = [Corridor(length=4, start=0), Corridor(length=10, max_steps=4)]
    with same.rollout(envs, Counter(), 5, seed=0) as feed:
        ends = set()
        for _ in range(8):
            f = next(feed)
            _assert_final_empty_outside_fin(f)
            ends |= {tuple(x) for x in f.state.fin[1:].nonzero().tolist()}
        assert len(ends) >= 6  # the end rows really moved between fragments


@pytest.mark.timeout(60)
def test_pool_slots_filled_by_other_workers_clear_final():
    from rollout import multi
    import functools

    factory = functools.partial(Corridor, length=10, max_steps=3)
    with multi.rollout(
        factory, Counter(), 4, n_actors=2, n_per_actor=2, n_per_batch=1, start_method="fork", seed=0
    ) as feed:
        for _ in range(12):
            _assert_final_empty_outside_fin(next(feed))


@pytest.mark.parametrize("sticky", [False, True])
def test_a_dirty_buffer_gets_exactly_what_a_fresh_one_gets(sticky):
    """``collect`` writes every field it promises: a reused buffer's leftovers (here garbage in
    every leaf, before every fragment) change nothing, in the fragment or in the episode
    statistics carried to the next ones."""
    import optree

    def context():
        # episodes of 2 to 6 steps (a policy that sometimes stays, a time limit) end at moving rows
        envs = [Corridor(length=4, start=0), Corridor(length=6, max_steps=5), Corridor(length=3, start=1)]
        return core.startup(rollout.envs.make_envs(envs, None, 0), Counter(policy=(0, 1, 0)), 5, sticky=sticky)

    clean, dirty = context(), context()
    buffer = dirty.allocate()
    for _ in range(6):
        expected = core.collect(clean, clean.allocate())
        for leaf in optree.tree_leaves(buffer):
            leaf.fill_(True if leaf.dtype == torch.bool else 7)
        found = core.collect(dirty, buffer)
        for (path, x), y in zip(zip(*optree.tree_flatten_with_path(expected)[:2]), optree.tree_leaves(found)):
            assert torch.equal(x, y), f"{path}: {x.tolist()} != {y.tolist()}"
        assert rollout.episodes(found).lengths.numel() > 0


class Silent(rollout.Actor):
    """Action 0, no state, no info; logs whether each step was virtual."""

    def __init__(self):
        super().__init__()
        self.virtual = []

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        self.virtual.append(virtual)
        return torch.zeros(obs.shape[:2], dtype=torch.int64), (), {}


@pytest.mark.parametrize("sticky", [False, True])
def test_an_actor_without_info_is_asked_no_virtual_step_after_startup(sticky):
    # Row T's lookahead and the truncation bootstraps record only info: with none there is nothing to ask.
    actor = Silent()
    with same.rollout([Corridor(max_steps=2), Corridor(length=3)], actor, 5, seed=0, sticky=sticky) as feed:
        startup = len(actor.virtual)
        f = next(feed).clone()
        next(feed)
    assert actor.virtual[:startup] == [True]  # startup's one question about the outputs' layout
    assert actor.virtual[startup:] == [False] * 10  # 5 real steps per fragment, no lookahead, no bootstrap
    # env 0 is truncated at row 2 (and, not sticky, row 4): recorded all the same
    assert f.final.episode_length[:, 0].tolist() == [0, 0, 2, 0, 0 if sticky else 2, 0]
    assert f.state.fin[:, 0].tolist() == [True, False, True, True, True, True] if sticky else [True, False] * 3
    assert f.state.terminated[2, 0].item() is False
