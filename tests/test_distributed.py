"""``rollout.distributed``: multi.rollout's contract on Ray actors (a local Ray instance per module)."""

import gc
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import optree
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray (the 'ray' extra) is not installed: pip install -e '.[ray]'")

from rollout import distributed, multi  # noqa: E402
from rollout.errors import ConfigurationError, EnvError, WorkerError  # noqa: E402
from tests.toys import Corridor, Counter, Switch  # noqa: E402

# The test process: the toys below misbehave only elsewhere (in a Ray worker). Factories capture it
# in a closure (pickled by value): a worker that imports this module gets its own pid as HOME.
HOME = os.getpid()


def in_worker_only(make, home=HOME):
    """A zero-argument factory (a factory with a parameter is given a seed) calling ``make(home)``."""
    return lambda: make(home)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module, with its CPUs and object store set explicitly."""
    assert not ray.is_initialized()
    ray.init(num_cpus=4, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class FailsInWorker(Corridor):
    def __init__(self, home):
        super().__init__()
        self.home = home

    def step(self, action):
        if os.getpid() != self.home and self.t >= 2:
            raise RuntimeError("step failed on purpose")
        return super().step(action)


class HangsInWorker(FailsInWorker):
    def step(self, action):
        if os.getpid() != self.home and self.t >= 2:
            time.sleep(600)
        return Corridor.step(self, action)


class FailsInWorkerActor(Counter):
    """Counter's outputs; raises in a worker (not here, where the probe steps it) from step 2 on."""

    def __init__(self, home=HOME):
        super().__init__()
        self.home = home  # pickled with the actor: the test process's pid

    def step(self, stepno, obs, act, rew, fin, /, *, hx, virtual):
        if os.getpid() != self.home and int(stepno.max()) >= 2:
            raise ValueError("actor failed on purpose")
        return super().step(stepno, obs, act, rew, fin, hx=hx, virtual=virtual)


def _no_env():
    raise ValueError("no env for this worker")


def _blocks(batches, n_per_actor):
    """{(worker, sequence): the fragment's state, actor and final leaves as lists} over batches."""
    out = {}
    for batch in batches:
        for k in range(batch.worker.shape[0] // n_per_actor):
            cols = slice(k * n_per_actor, (k + 1) * n_per_actor)
            key = (int(batch.worker[cols][0]), int(batch.sequence[cols][0]))
            leaves = optree.tree_leaves((batch.state, batch.actor, batch.final))
            out[key] = [x[:, cols].tolist() for x in leaves]
    return out


def _first_fragments(feed, n_workers, n_per_actor, n=3, limit=40):
    """Batches until every worker's fragments 0..n-1 have been seen; those fragments' blocks."""
    batches = []
    for batch in itertools.islice(feed, limit):
        batches.append(batch.clone())
        blocks = _blocks(batches, n_per_actor)
        wanted = {(w, s) for w in range(n_workers) for s in range(n)}
        if wanted <= set(blocks):
            return batches, {key: blocks[key] for key in wanted}
    raise AssertionError(f"not every worker delivered {n} fragments in {limit} batches: {sorted(blocks)}")


@pytest.mark.timeout(120)
def test_fragments_equal_multi_workers_for_the_same_seed_with_the_same_layout():
    kwargs = dict(n_per_batch=2, seed=7)
    args = (lambda: Corridor(max_steps=3, length=5), Counter(), 4, 2, 2)
    with distributed.rollout(*args, **kwargs) as feed:
        ours, our_blocks = _first_fragments(feed, 2, 2)
    with multi.rollout(*args, start_method="fork", **kwargs) as feed:
        theirs, their_blocks = _first_fragments(feed, 2, 2)
    a, b = ours[0], theirs[0]  # layout and dtypes
    assert optree.tree_structure(a) == optree.tree_structure(b)
    assert [(x.shape, x.dtype) for x in optree.tree_leaves(a)] == [(x.shape, x.dtype) for x in optree.tree_leaves(b)]
    assert our_blocks == their_blocks  # worker i's fragments 0, 1, 2: every state, actor and final leaf


@pytest.mark.timeout(120)
def test_weight_updates_reach_the_workers_and_versions_count_next_calls():
    actor = Switch()
    with distributed.rollout(lambda: Corridor(), actor, 4, 1, 1, 1, n_buffers=2, seed=0) as feed:
        for batch in itertools.islice(feed, 3):
            assert batch.state.act[1:].eq(0).all()
        with torch.no_grad():
            actor.weight.zero_()
        for k, batch in enumerate(itertools.islice(feed, 6), 3):
            assert (k - batch.version).max() <= 2  # the bound, n_buffers // n_per_batch = 2 (one worker: none slower)
            if batch.version.min() >= 3:
                break
        assert batch.version.min() >= 3, "the new weights did not reach the worker"
        assert batch.state.act[1:].eq(1).all() and batch.actor["weight"].eq(0).all()


@pytest.mark.timeout(120)
def test_sync_mode_collects_every_batch_with_the_weights_of_its_own_next():
    actor = Switch()
    with distributed.rollout(lambda: Corridor(), actor, 4, 2, 1, 2, sync=True, seed=0) as feed:
        for k, batch in enumerate(itertools.islice(feed, 5)):
            assert batch.version.tolist() == [k, k]  # lag 0 on every column
            assert batch.actor["weight"].eq(1.0 if k < 2 else -1.0).all()
            if k == 1:
                with torch.no_grad():
                    actor.weight.fill_(-1.0)  # published by next() 2, used from batch 2 on
        stats = feed.stats()
    assert stats["lag"] == {0: 10} and stats["total"]["fragments"] == 5


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "factory, actor, message",
    [
        (in_worker_only(FailsInWorker), Counter(), "step failed on purpose"),
        (lambda: Corridor(), FailsInWorkerActor(), "actor failed on purpose"),
        (in_worker_only(lambda home: Corridor() if os.getpid() == home else _no_env()), Counter(), "no env for this"),
    ],
    ids=["env.step", "actor", "factory"],
)
def test_a_worker_exception_is_raised_from_next_with_its_traceback(factory, actor, message):
    feed = distributed.rollout(factory, actor, 4, 2, 1, seed=0)
    with pytest.raises(WorkerError, match=message) as info:
        for _ in itertools.islice(feed, 4):
            pass
    assert "Traceback" in str(info.value)
    feed.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_a_killed_worker_is_a_worker_error_not_a_hang(how):
    feed = distributed.rollout(lambda: Corridor(), Counter(), 4, 2, 1, seed=0)
    next(feed)
    worker = feed._generator.gi_frame.f_locals["cluster"].workers[1]
    if how == "ray.kill":
        ray.kill(worker, no_restart=True)
    else:
        os.kill(ray.get(worker.identity.remote(), timeout=30)["pid"], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerError, match="worker 1 died"):
        for _ in itertools.islice(feed, 50):
            pass
    assert time.monotonic() - start < 30
    feed.close()


@pytest.mark.timeout(120)
def test_a_worker_that_makes_no_progress_is_reported_within_the_stall_timeout():
    feed = distributed.rollout(in_worker_only(HangsInWorker), Counter(), 4, 1, 1, seed=0, stall_timeout=3)
    start = time.monotonic()
    with pytest.raises(WorkerError, match="worker 0 made no progress"):
        next(feed)
    assert time.monotonic() - start < 30
    feed.close()


@pytest.mark.timeout(60)
def test_bad_input_is_rejected_before_any_ray_actor_starts():
    class WrongShape(Corridor):
        def step(self, action):
            obs, *rest = super().step(action)
            return (np.zeros(2, np.int64), *rest)

    with pytest.raises(EnvError, match="shape"):
        distributed.rollout(WrongShape, Counter(), 4, 2, 1)  # raised by rollout() itself: no worker exists yet
    with pytest.raises(ConfigurationError, match="n_per_actor"):
        distributed.rollout(Corridor, Counter(), 4, 2, 0)
    with pytest.raises(ConfigurationError, match="worker_options"):
        distributed.rollout(Corridor, Counter(), 4, 2, 1, worker_options=["num_cpus"])


def _workers(feed):
    return list(feed._generator.gi_frame.f_locals["cluster"].workers)


def _assert_dead(workers, within=30.0):
    """Every worker's calls fail as a dead actor's within ``within`` s (ray.kill is asynchronous)."""
    deadline = time.monotonic() + within
    for worker in workers:
        while True:
            try:
                ray.get(worker.heartbeat.remote(), timeout=within)
            except ray.exceptions.RayActorError:
                break
            assert time.monotonic() < deadline, "a worker is still alive after close"
            time.sleep(0.1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["close", "with", "garbage collection"])
def test_closing_kills_our_workers_and_leaves_a_ray_instance_we_did_not_start(how):
    feed = distributed.rollout(lambda: Corridor(), Counter(), 4, 2, 1, seed=0)
    if how == "with":
        with feed:
            next(feed)
            workers = _workers(feed)
    else:
        next(feed)
        workers = _workers(feed)
        for _ in feed:
            break  # leaving a loop does not close the feed
        ray.get([w.heartbeat.remote() for w in workers], timeout=30)  # alive: a dead worker's call raises
        if how == "close":
            feed.close()
        else:
            del feed
            gc.collect()
    _assert_dead(workers)
    assert ray.is_initialized()  # the module's instance is not ours to stop


@pytest.mark.timeout(120)
def test_a_ray_instance_it_started_is_shut_down_at_close_and_at_exit(tmp_path):
    script = textwrap.dedent(
        """
        import itertools, sys
        import ray
        from rollout import distributed
        from tests.toys import Corridor, Counter
        feed = distributed.rollout(lambda: Corridor(), Counter(), 4, 1, 1, seed=0)
        with feed:
            next(feed)
            assert ray.is_initialized()
        assert not ray.is_initialized(), "close() left the Ray instance it started"
        feed = distributed.rollout(lambda: Corridor(), Counter(), 4, 1, 1, seed=0)
        next(feed)
        print("exiting with an open feed", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=os.path.dirname(os.path.dirname(__file__)),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exiting with an open feed" in done.stdout


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=r"\.\[ray\]"):
        distributed.rollout(Corridor, Counter(), 4, 1, 1)
