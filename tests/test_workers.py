"""Worker collectors: single (double-buffered) and multi (load-balanced), weight sync, failures."""

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium
import optree
import pytest
import torch

import rollout
from rollout import multi, same, single
from rollout.errors import ConfigurationError, EnvError, WorkerError
from tests.test_actor import WrongDtype
from tests.leaks import children, shm
from tests.toys import (
    BatchedCorridor,
    Corridor,
    Counter,
    FailingActor,
    FailsInWorker,
    Feedforward,
    Nested,
    NestedActor,
    Slow,
    Switch,
    Tagged,
    in_worker,
)

pytestmark = pytest.mark.timeout(60)


def leaves_equal(a, b, skip_version=True):
    fa, fb = (a[:5], b[:5]) if skip_version else (a, b)
    return all(torch.equal(x, y) for x, y in zip(optree.tree_leaves(fa), optree.tree_leaves(fb)))


def cartpole():
    return gymnasium.make("CartPole-v1")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_single_yields_the_fragments_of_same(start_method, clean):
    with single.rollout(cartpole, Feedforward(), 16, 3, seed=7, start_method=start_method) as feed:
        ours = [next(feed).clone() for _ in range(4)]
    with same.rollout(cartpole, Feedforward(), 16, n_envs=3, seed=7) as feed:
        theirs = [next(feed).clone() for _ in range(4)]
    assert all(leaves_equal(a, b) for a, b in zip(ours, theirs))
    # lag: next() k yields weights published at next() k-1 or k: at most one update behind
    for k, f in enumerate(ours):
        assert max(k - 1, 0) <= f.version.min() <= f.version.max() <= k


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_multi_layout_and_worker_column_blocks(start_method):
    n_actors, n_per_actor, n_per_batch = 2, 3, 2
    with multi.rollout(
        lambda: Tagged(), Counter(), 5, n_actors, n_per_actor, n_per_batch, seed=0, start_method=start_method
    ) as feed:
        batches = [next(feed).clone() for _ in range(4)]
    pids = set()
    for batch in batches:
        assert batch.state.obs.shape == (6, 6, 2) and batch.state.obs.dtype == torch.int64
        assert batch.state.rew.dtype == torch.float32 and batch.state.fin.dtype == torch.bool
        assert batch.actor["count"].shape == (6, 6) and batch.hx.shape == (1, 6, 1) and batch.version.shape == (6,)
        for block in range(n_per_batch):
            cols = batch.state.obs[:, block * n_per_actor : (block + 1) * n_per_actor, 0]
            assert cols.unique().numel() == 1  # one worker stepped the whole block
            pids.add(int(cols[0, 0]))
        # the kernel's invariants hold per column: position advances by one, resets at fin
        pos = batch.state.obs[..., 1]
        assert torch.all((pos[1:] == pos[:-1] + 1) | batch.state.fin[1:])
    assert pids - {os.getpid()} and os.getpid() not in pids and len(pids) <= n_actors


def test_nested_observations_and_sticky_recurrent_actor_through_workers(clean):
    with multi.rollout(lambda: Nested(), NestedActor(), 4, 2, 2, 1, start_method="fork") as feed:
        batch = next(feed)
        assert batch.state.obs["pair"][1].dtype == torch.int8 and batch.state.act["force"].shape == (5, 2, 2)
        assert batch.state.obs["pos"][:, 0, 0].tolist()[:4] == [0, 1, 2, 0]
    with single.rollout(lambda: Corridor(start=1), Counter(), 4, 2, sticky=True, start_method="fork") as feed:
        f = next(feed)
        assert f.state.fin[:, 0].tolist() == [True, False, True, True, True]
        assert f.actor["count"][:, 0].tolist() == [0, 1, 0, 0, 0]
        assert f.final.episode_length[:, 0].tolist() == [0, 0, 2, 0, 0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # spawn: the weight store travels pickled
@pytest.mark.parametrize("collector", ["single", "multi"])
def test_weight_updates_reach_the_workers(collector, start_method, clean):
    actor = Switch()
    if collector == "single":
        feed, within = single.rollout(lambda: Corridor(), actor, 4, 2, start_method=start_method), 2
    else:
        feed = multi.rollout(lambda: Corridor(), actor, 4, 2, 2, 1, n_buffers=3, start_method=start_method)
        within = 3 + 1  # n_buffers // n_per_batch batch buffers in flight, plus the one being filled
    with feed:
        for k, batch in enumerate(itertools.islice(feed, 3)):
            assert batch.state.act[1:].eq(0).all()  # weight 1: action 0
        with torch.no_grad():
            actor.weight.zero_()  # the learner's update; published at the next next()
        published = k + 1
        for k, batch in enumerate(itertools.islice(feed, within), published):
            if batch.version.min() >= published:
                break
        assert batch.version.min() >= published, f"weights did not reach the workers within {within} batches"
        assert batch.state.act[1:].eq(1).all() and batch.actor["weight"].eq(0).all()


@pytest.mark.parametrize(
    "factory, actor, message",
    [
        (lambda: FailsInWorker("step"), Feedforward(), "step failed on purpose"),
        (lambda: FailsInWorker("reset"), Feedforward(), "reset failed on purpose"),
        (lambda: Corridor(), FailingActor(), "actor failed on purpose"),
        (lambda: Corridor() if not in_worker() else 1 / 0, Feedforward(), "ZeroDivisionError"),
    ],
    ids=["env.step", "env.reset", "actor", "factory"],
)
def test_worker_exceptions_are_raised_with_the_traceback(factory, actor, message, clean):
    feed = multi.rollout(factory, actor, 8, 2, 1, 1, start_method="fork")
    with pytest.raises(WorkerError, match=message) as info:
        for _ in itertools.islice(feed, 5):
            pass
    assert "Traceback" in str(info.value)
    feed.close()


def test_worker_exception_under_spawn(clean):
    with pytest.raises(WorkerError, match="step failed on purpose"):
        with single.rollout(lambda: FailsInWorker("step"), Feedforward(), 8, 1, start_method="spawn") as feed:
            next(feed)
            next(feed)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_killed_worker_is_reported_not_a_hang(start_method, clean):
    # forkserver: the pipe's end of file can arrive before the worker's exit is known
    with multi.rollout(lambda: Slow(), Feedforward(), 8, 2, 1, 1, start_method=start_method) as feed:
        next(feed)
        victim = next(p.pid for p in multiprocessing.active_children() if p.name.startswith("rollout-worker"))
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerError, match="SIGKILL"):
            for _ in range(20):
                next(feed)
        assert time.monotonic() - start < 5


def test_bad_env_or_actor_is_rejected_before_any_worker_starts():
    before = children()
    with pytest.raises(EnvError, match="did not return an env"):
        multi.rollout(lambda: "not an env", Feedforward(), 8, 2, 1)
    with pytest.raises(rollout.errors.ActorContractError, match="action"):
        single.rollout(lambda: Corridor(), WrongDtype(), 8, 1)
    with pytest.raises(ConfigurationError, match="n_buffers must be a multiple of n_per_batch=2"):
        multi.rollout(lambda: Corridor(), Feedforward(), 8, 2, 1, 2, n_buffers=3)
    with pytest.raises(ConfigurationError, match="start_method"):
        single.rollout(lambda: Corridor(), Feedforward(), 8, 1, start_method="teleport")
    with pytest.raises(ConfigurationError, match="n_actors"):
        multi.rollout(lambda: Corridor(), Feedforward(), 8, 0, 1)
    assert children() == before


@pytest.mark.parametrize("how", ["close", "with", "break", "gc", "keyboard-interrupt"])
def test_every_way_of_stopping_frees_workers_and_memory(how, clean):
    feed = multi.rollout(lambda: Corridor(), Feedforward(), 8, 2, 2, 1, start_method="fork")
    if how == "close":
        next(feed)
        feed.close()
        feed.close()  # idempotent
    elif how == "with":
        with feed:
            next(feed)
    elif how == "break":
        with feed:
            for batch in feed:
                break
    elif how == "gc":
        next(feed)
        del feed
        import gc

        gc.collect()
    else:
        with pytest.raises(KeyboardInterrupt):
            with feed:
                for batch in feed:
                    raise KeyboardInterrupt


def test_interpreter_exit_stops_the_workers(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, os
        sys.path.insert(0, {os.getcwd()!r})
        from rollout import multi
        from tests.toys import Corridor, Feedforward
        if __name__ == "__main__":
            feed = multi.rollout(lambda: Corridor(), Feedforward(), 8, 2, 1, start_method="spawn")
            next(feed)
            import multiprocessing
            print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
            # exits without closing the feed
    """)
    )
    before = shm()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    time.sleep(0.5)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert shm() - before == set()


def test_rlplay_configuration_with_more_workers_than_cores(clean):
    from zoo.actors import CategoricalMLP

    with multi.rollout(
        cartpole,
        CategoricalMLP(4, 2),
        n_steps=51,
        n_actors=8,
        n_per_actor=4,
        n_buffers=16,
        n_per_batch=2,
        start_method="fork",
    ) as feed:
        batches = [next(feed).state.obs.shape for _ in range(6)]
    assert batches == [(52, 8, 4)] * 6


@pytest.mark.timeout(60)
def test_a_vector_env_factory_gives_each_worker_one_batched_env(clean):
    factory = lambda: BatchedCorridor(3, length=4)  # noqa: E731
    with pytest.raises(ConfigurationError, match="n_per_actor must be 3, found n_per_actor=2"):
        multi.rollout(factory, Counter(), 5, 2, 2, start_method="fork")
    with multi.rollout(factory, Counter(), 5, 1, 3, start_method="fork", seed=0) as feed:
        ours = [next(feed).clone() for _ in range(3)]
    with same.rollout(factory(), Counter(), 5, seed=0) as feed:
        alone = [next(feed).clone() for _ in range(3)]
    for a, b in zip(ours, alone):
        assert a.state.obs.shape == (6, 3, 1) and b.state.fin[1:].any()
        assert leaves_equal(a, b)
