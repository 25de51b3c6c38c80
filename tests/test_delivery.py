"""The one route to the device (rollout.delivery), exercised on the CPU with a stand-in for CUDA.

A CUDA copy from pinned memory is asynchronous: ``x.to("cuda", non_blocking=True)`` returns at
once and the copy reads the pinned buffer later, in stream order; a learner's kernels on the same
stream run after it. A collector that rewrites that buffer before the copy has read it hands the
learner rows of the next fragment. The stand-in reproduces exactly that on the CPU: a one-thread
"stream" runs every copy late (after a sleep), the "device" tensors are filled by it, the event
is a marker on the stream, and the learner's own work (a clone of every batch, never
synchronised) is queued on the same stream. Through a correct route the learner sees exactly the
fragments a plain CPU run with the same seed yields; without the wait on the event (the old
``same`` path, and a staging buffer reused without its event) it does not.
"""

import concurrent.futures
import importlib.util
import itertools
import time

import optree
import pytest
import torch

import rollout.delivery
from rollout import multi, same, single
from rollout.delivery import Route
from tests.toys import Corridor, Counter

pytestmark = pytest.mark.timeout(90)

T, N_ENVS, N_BATCHES = 5, 3, 6
LATE = 0.02  # s each stand-in copy waits before it reads its source


class Stream:
    """A stand-in CUDA stream: one thread running queued work in order."""

    def __init__(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stand-in-stream")
        self.copies = 0

    def transfer(self, source, device):
        """The stand-in for ``rollout.delivery._transfer``: late copies, and an event after them."""
        out = optree.tree_map(torch.zeros_like, source)

        def copy():
            time.sleep(LATE)  # the DMA engine is busy: the source is read later
            optree.tree_map(lambda dst, src: dst.copy_(src), out, source)
            self.copies += 1

        self.executor.submit(copy)
        return out, Event(self.executor.submit(lambda: None))

    def clone(self, batch):
        """The learner's kernel, queued after the copy that fills ``batch`` (as on one CUDA stream)."""
        return self.executor.submit(lambda: optree.tree_map(torch.clone, batch))


class Event:
    def __init__(self, marker):
        self.marker = marker

    def synchronize(self):
        self.marker.result()


@pytest.fixture
def stream(monkeypatch):
    stream = Stream()
    monkeypatch.setattr(rollout.delivery, "_transfer", stream.transfer)
    yield stream
    stream.executor.shutdown(wait=True)


def collector(name, device):
    actor = Counter()
    if name == "same":
        return same.rollout(lambda: Corridor(length=4), actor, T, n_envs=N_ENVS, seed=3, device=device)
    if name == "single":
        return single.rollout(lambda: Corridor(length=4), actor, T, N_ENVS, seed=3, device=device, start_method="fork")
    # one worker, two fragments a batch: the order of the batches is deterministic
    return multi.rollout(lambda: Corridor(length=4), actor, T, 1, N_ENVS, 2, seed=3, device=device, start_method="fork")


def leaves(batch):
    return [x for x in optree.tree_leaves(batch[:5])]  # every time-major field (version may differ)


@pytest.mark.parametrize("name", ["same", "single", "multi"])
def test_a_learner_that_never_synchronises_sees_the_fragments_of_a_cpu_run(name, stream, clean):
    with collector(name, None) as feed:
        expected = [leaves(batch.clone()) for batch in itertools.islice(feed, N_BATCHES)]
    with collector(name, "meta") as feed:  # any non-CPU device takes the transfer path
        received = [stream.clone(batch) for batch in itertools.islice(feed, N_BATCHES)]
        got = [leaves(future.result()) for future in received]
    assert stream.copies == N_BATCHES
    for k, (a, b) in enumerate(zip(expected, got)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"batch {k} differs from the CPU run's"


def test_without_the_wait_the_stand_in_catches_a_rewritten_buffer(stream, monkeypatch, clean):
    """The check above can fail: with ``free`` not waiting, the late copies read the next fragment."""
    monkeypatch.setattr(Route, "free", lambda self, buffer: None)
    with collector("same", None) as feed:
        expected = [leaves(batch.clone()) for batch in itertools.islice(feed, N_BATCHES)]
    with collector("same", "meta") as feed:
        received = [stream.clone(batch) for batch in itertools.islice(feed, N_BATCHES)]
        got = [leaves(future.result()) for future in received]
    assert not all(all(torch.equal(x, y) for x, y in zip(a, b)) for a, b in zip(expected, got))


def test_staging_is_allocated_once_and_reused_only_after_its_copy(stream):
    route = Route(torch.device("meta"))
    shared = [optree.tree_map(lambda x: x.clone().share_memory_(), _fragment()) for _ in range(2)]
    outs = [route.deliver(shared[k % 2]) for k in range(4)]
    staging = route.staging
    assert staging is not None and all(id(s) != id(staging) for s in shared)
    route.deliver(shared[0])
    assert route.staging is staging  # allocated once
    route.close()
    assert all(isinstance(out, type(shared[0])) for out in outs)


def _fragment():
    with same.rollout(lambda: Corridor(length=4), Counter(), T, n_envs=N_ENVS, seed=0) as feed:
        return next(feed).clone()


def test_cpu_delivery_is_the_buffer_itself_and_pinned_needs_cuda():
    fragment = _fragment()
    assert Route(None).deliver(fragment) is fragment
    assert Route(torch.device("cpu")).deliver(fragment) is fragment
    pinned = Route(None, pinned=True)
    assert pinned.pin == torch.cuda.is_available()
    assert pinned.deliver(fragment) is not fragment  # staged: a pinned copy where CUDA exists


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray (the 'ray' extra) is not installed")
def test_distributed_delivers_through_the_same_route(stream, ray_instance):
    from rollout import distributed

    def run(device):
        feed = distributed.rollout(
            lambda: Corridor(length=4), Counter(), T, 1, N_ENVS, 1, seed=3, sync=True, device=device
        )
        with feed:
            return (
                [leaves(b.clone()) for b in itertools.islice(feed, N_BATCHES)]
                if device is None
                else [stream.clone(b) for b in itertools.islice(feed, N_BATCHES)]
            )

    expected = run(None)
    got = [leaves(f.result()) for f in run("meta")]
    for k, (a, b) in enumerate(zip(expected, got)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"batch {k} differs from the CPU run's"


def test_workers_receive_a_copy_of_the_actor_on_the_worker_device():
    from rollout import checks
    from zoo.actors import CategoricalMLP

    actor = CategoricalMLP(n_obs=4, n_act=2)
    assert checks.worker_copy(actor, torch.device("cpu")) is actor  # already there: pickled as it is
    moved = checks.worker_copy(actor, torch.device("meta"))  # a stand-in for a CUDA learner's actor
    assert moved is not actor and {p.device.type for p in moved.parameters()} == {"meta"}
    assert {p.device.type for p in actor.parameters()} == {"cpu"}  # the learner's actor is not moved
