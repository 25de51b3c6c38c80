"""Seeds are pure (DESIGN.md section 5, "Seeding"): one ``seed`` (an int, a sequence of ints or a
``np.random.SeedSequence``) determines every env's seed and every worker's seed; the caller's
object is never changed; ``seed=k`` and ``SeedSequence(k)`` give the same fragments however often
either was used before.

The env is CartPole (its initial states come from ``reset(seed)``); the in-process collectors run a
deterministic actor, the worker collectors one that also records draws from the worker's torch
generator (seeded from the worker's seed). Fragments are compared on every leaf but ``version``;
``multi``'s per worker: the column block of worker ``i``'s fragment ``k``, whatever batch and order
it arrived in.
"""

import itertools

import gymnasium
import numpy as np
import optree
import pytest
import torch

import rollout
from rollout import multi, same, single

pytestmark = pytest.mark.timeout(60)

N_STEPS, N_ENVS, N_FRAGMENTS = 8, 3, 3
N_ACTORS, N_PER_ACTOR = 2, 2
COLLECTORS = ["same", "single", "multi"]


def cartpole():
    return gymnasium.make("CartPole-v1")


class Lean(rollout.Actor):
    """Deterministic: push towards the pole's lean (episodes of varied lengths, so resets happen)."""

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        return (obs[..., 2] > 0).to(torch.int64), (), {"value": obs[..., 0].clone()}


class NoisyLean(Lean):
    """Lean's actions, and a draw from this process's torch generator per step (the worker's torch seed)."""

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        act, hx, info = super().step(stepno, obs, act, rew, fin, hx=hx, virtual=virtual)
        return act, hx, {**info, "noise": torch.rand(obs.shape[:2])}


# ----------------------------------------------------------------------------------- helpers
_TIME_MAJOR = ("state", "actor", "env", "hx", "final")  # batch at dim 1; version, worker, sequence: dim 0


def block(fragment, start, length):
    """``{field: (structure, leaves)}`` of columns ``start:start+length``, every field but ``version``, cloned."""
    out = {}
    for name in fragment._fields:
        if name == "version":
            continue
        value = getattr(fragment, name)
        leaves, structure = optree.tree_flatten(value)
        dim = 1 if name in _TIME_MAJOR else 0
        out[name] = (structure, [leaf.narrow(dim, start, length).clone() for leaf in leaves])
    return out


def blocks_equal(a, b):
    """Whether two ``block`` results hold the same structure and the same values, bit for bit."""
    if a.keys() != b.keys():
        return False
    for name in a:
        (sa, la), (sb, lb) = a[name], b[name]
        if sa != sb or len(la) != len(lb):
            return False
        if not all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(la, lb)):
            return False
    return True


def fragments(feed, n_workers, n_per_actor, limit=2000):
    """``{(worker, sequence): block}`` for fragments 0..N_FRAGMENTS-1 of every worker, from any batches."""
    wanted = {(w, s) for w in range(n_workers) for s in range(N_FRAGMENTS)}
    found = {}
    for batch in itertools.islice(feed, limit):
        for start in range(0, batch.worker.shape[0], n_per_actor):
            key = (int(batch.worker[start]), int(batch.sequence[start]))
            if key in wanted:
                found[key] = block(batch, start, n_per_actor)
        if wanted <= set(found):
            return found
    raise AssertionError(f"not every worker delivered {N_FRAGMENTS} fragments in {limit} batches: {sorted(found)}")


def collect(collector, seed):
    """The first fragments (per worker for multi) a collector yields for ``seed``."""
    if collector == "same":
        feed = same.rollout(cartpole, Lean(), N_STEPS, n_envs=N_ENVS, seed=seed)
        n_workers, n_per_actor = 1, N_ENVS
    elif collector == "single":
        feed = single.rollout(cartpole, NoisyLean(), N_STEPS, N_ENVS, seed=seed, start_method="fork")
        n_workers, n_per_actor = 1, N_ENVS
    else:
        feed = multi.rollout(cartpole, NoisyLean(), N_STEPS, N_ACTORS, N_PER_ACTOR, 1, seed=seed, start_method="fork")
        n_workers, n_per_actor = N_ACTORS, N_PER_ACTOR
    with feed:
        return fragments(feed, n_workers, n_per_actor)


def assert_same(a, b, what):
    assert a.keys() == b.keys(), what
    differ = [key for key in sorted(a) if not blocks_equal(a[key], b[key])]
    assert not differ, f"{what}: fragments (worker, sequence) {differ} differ"


def state(seq):
    """What a SeedSequence holds (everything its children derive from)."""
    return (seq.entropy, seq.spawn_key, seq.pool_size, seq.n_children_spawned, tuple(seq.generate_state(4)))


# ----------------------------------------------------------------------------------- collectors
@pytest.mark.parametrize("collector", COLLECTORS)
def test_different_seeds_give_different_fragments(collector, clean):
    """The comparisons below are not vacuous: the seed reaches the fragments."""
    one, two = collect(collector, 1), collect(collector, 2)
    assert one.keys() == two.keys()
    assert not any(blocks_equal(one[key], two[key]) for key in one)


@pytest.mark.parametrize("collector", COLLECTORS)
def test_one_seed_sequence_object_used_twice_gives_the_same_fragments_and_is_not_changed(collector, clean):
    seq = np.random.SeedSequence(5)
    before = state(seq)
    first = collect(collector, seq)
    assert state(seq) == before, "the collector changed the caller's SeedSequence"
    assert seq.n_children_spawned == 0
    second = collect(collector, seq)
    assert state(seq) == before, "the collector changed the caller's SeedSequence"
    assert_same(first, second, "the same SeedSequence object twice")


@pytest.mark.parametrize("used", ["fresh", "used by a collector", "spawned from by the caller"])
@pytest.mark.parametrize("collector", COLLECTORS)
def test_an_int_seed_and_its_seed_sequence_give_the_same_fragments_however_used(collector, used, clean):
    seq = np.random.SeedSequence(7)
    if used == "used by a collector":
        collect(collector, seq)
    elif used == "spawned from by the caller":
        seq.spawn(3)
    before = state(seq)
    from_seq = collect(collector, seq)
    after = state(seq)
    from_int = collect(collector, 7)
    assert_same(from_int, collect(collector, 7), "seed=7 twice")
    assert_same(from_int, from_seq, f"seed=7 and a {used} SeedSequence(7)")
    assert after == before, "the collector changed the caller's SeedSequence (n_children_spawned is the 4th item)"
    assert seq.n_children_spawned == (3 if used == "spawned from by the caller" else 0)


@pytest.mark.parametrize("collector", COLLECTORS)
def test_a_sequence_of_ints_seed_equals_its_seed_sequence(collector, clean):
    seed = [1, 2]
    from_list = collect(collector, seed)
    assert seed == [1, 2]
    assert_same(from_list, collect(collector, np.random.SeedSequence([1, 2])), "seed=[1, 2] and SeedSequence([1, 2])")
    assert_same(from_list, collect(collector, (1, 2)), "seed=[1, 2] and seed=(1, 2)")
    assert not any(blocks_equal(from_list[k], b) for k, b in collect(collector, 1).items()), "seed=[1, 2] is seed=1"


# ----------------------------------------------------------------------------------- evaluate
def evaluation(seed):
    result = rollout.evaluate(cartpole, Lean(), 6, n_envs=3, seed=seed)
    return result.returns.tolist(), result.lengths.tolist()


def test_evaluate_seeds_are_pure():
    reference = evaluation(7)
    assert evaluation(8) != reference  # the seed reaches the envs
    seq = np.random.SeedSequence(7)
    before = state(seq)
    assert evaluation(seq) == reference, "seed=7 and a fresh SeedSequence(7)"
    assert state(seq) == before, "evaluate changed the caller's SeedSequence"
    assert evaluation(seq) == reference, "seed=7 and a used SeedSequence(7)"
    seq.spawn(3)
    assert evaluation(seq) == reference, "seed=7 and a SeedSequence(7) the caller spawned from"
    assert seq.n_children_spawned == 3
    assert evaluation([1, 2]) == evaluation(np.random.SeedSequence([1, 2])), "seed=[1, 2] and SeedSequence([1, 2])"


@pytest.mark.parametrize("seed", [-1, 1.5, "7", True, [1, -2]], ids=repr)
def test_a_bad_seed_is_a_configuration_error_before_any_worker_starts(seed, clean):
    from rollout.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="seed must be"):
        multi.rollout(cartpole, Lean(), N_STEPS, N_ACTORS, N_PER_ACTOR, 1, seed=seed)
    with pytest.raises(ConfigurationError, match="seed must be"):
        same.rollout(cartpole, Lean(), N_STEPS, n_envs=N_ENVS, seed=seed)


def test_how_a_seed_reaches_the_envs():
    """Collectors reset env j with child 1 + j of the seed (child 0 derives the factory's seeds);
    evaluate resets env j with child j. The zoo's recorded learning results depend on both."""
    from rollout.seeds import env_seeds

    seed = np.random.SeedSequence([4, 1])
    with same.rollout(cartpole, Lean(), N_STEPS, n_envs=N_ENVS, seed=seed) as feed:
        first = next(feed).state.obs[0]
    children = seed.spawn(1 + N_ENVS)  # what the collector must have used, computed independently
    for j in range(N_ENVS):
        reset_seed = int(children[1 + j].generate_state(1, np.uint32)[0])
        assert reset_seed == env_seeds(seed, N_ENVS, 1)[j]
        obs, _ = cartpole().reset(seed=reset_seed)
        assert torch.equal(first[j], torch.as_tensor(obs)), f"env {j}"
    assert env_seeds(7, 3) == [int(c.generate_state(1, np.uint32)[0]) for c in np.random.SeedSequence(7).spawn(3)]
