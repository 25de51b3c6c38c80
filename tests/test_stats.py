"""``Feed.stats()``: env steps, episodes, waiting versus learning time, per-worker steps, lag."""

import itertools
import time

import pytest

import rollout
from rollout import multi, same, single
from tests.toys import Corridor, Feedforward


def test_same_counts_steps_episodes_and_windows():
    T, B = 8, 2
    with same.rollout(lambda: Corridor(length=4), Feedforward(), T, n_envs=B, seed=0) as feed:
        assert feed.stats()["total"]["env_steps"] == 0  # before the first next()
        episodes = 0
        for fragment in itertools.islice(feed, 3):
            episodes += len(rollout.episodes(fragment).lengths)
            time.sleep(0.05)  # the learner's work
        first = feed.stats()
        assert first["total"]["env_steps"] == 3 * T * B
        assert first["total"]["fragments"] == 3
        assert first["total"]["episodes"] == episodes > 0
        assert first["total"]["learner_s"] >= 0.15
        assert 0.0 <= first["total"]["wait_fraction"] <= 1.0
        assert first["lag"] == {0: 3 * B}  # the in-process actor is never behind
        assert first["workers"] == [
            {
                "worker": 0,
                "env_steps": 3 * T * B,
                "env_steps_per_s": pytest.approx(3 * T * B / first["elapsed_s"], rel=0.05),
                "last_seen_s": None,
            }
        ]
        next(feed)
        second = feed.stats()
        # "recent" counts only what came since the previous call
        assert second["recent"]["env_steps"] == T * B and second["recent"]["fragments"] == 1
        assert second["total"]["env_steps"] == 4 * T * B
        assert second["recent"]["learner_s"] < first["total"]["learner_s"]


def test_frozen_sticky_rows_are_not_steps():
    T, B = 8, 3
    with same.rollout(lambda: Corridor(length=4), Feedforward(), T, n_envs=B, seed=0, sticky=True) as feed:
        for fragment in itertools.islice(feed, 2):
            # each column: 3 steps to the end of the corridor, then frozen to the fragment's end
            assert int((fragment.state.fin[1:] & (fragment.final.episode_length[1:] == 0)).sum()) == (T - 3) * B
        stats = feed.stats()
    assert stats["total"]["env_steps"] == 2 * 3 * B
    assert stats["total"]["episodes"] == 2 * B


@pytest.mark.timeout(60)
def test_worker_collectors_report_workers_and_lag():
    T, n_actors, n_per_actor = 4, 2, 2
    feed = multi.rollout(lambda: Corridor(length=5), Feedforward(), T, n_actors, n_per_actor, 1, start_method="fork")
    with feed:
        versions, seen = [], set()
        # At least 30 batches, and on until both workers have delivered: a worker that starts late
        # (a loaded machine) holds its slot while the other cycles the rest, so 30 alone may miss it.
        for batch in itertools.islice(feed, 2000):
            versions.append(batch.version.clone())
            seen.add(int(batch.worker[0]))
            if len(versions) >= 30 and len(seen) == n_actors:
                break
        stats = feed.stats()
    assert stats["total"]["env_steps"] == len(versions) * T * n_per_actor
    workers = stats["workers"]
    assert [w["worker"] for w in workers] == [0, 1]
    assert sum(w["env_steps"] for w in workers) == stats["total"]["env_steps"]
    assert all(w["env_steps"] > 0 and w["last_seen_s"] is not None and w["last_seen_s"] >= 0 for w in workers)
    # lag = the version published at that next() (k, counting from 0) minus the column's version
    expected = {}
    for k, version in enumerate(versions):
        for lag in (k - version).tolist():
            expected[lag] = expected.get(lag, 0) + 1
    assert stats["lag"] == expected
    assert min(stats["lag"]) >= 0  # (no upper bound here: a batch lags more behind a slower worker)

    with single.rollout(lambda: Corridor(length=5), Feedforward(), T, 2, start_method="fork") as feed:
        for _ in itertools.islice(feed, 5):
            pass
        stats = feed.stats()
    assert stats["total"]["env_steps"] == 5 * T * 2 and set(stats["lag"]) <= {0, 1}  # at most one update behind
    assert stats["workers"][0]["env_steps"] == 5 * T * 2
