"""Threads: a feed may be iterated from any thread, one at a time; its workers live as long as the
collector, whichever thread started them, and die with the learner *process* (DESIGN.md section 5,
"Threads"; README "Failures": the learner process dies).

The first ``next()`` starts the workers. A worker bound to the thread that started it (Linux's
``PR_SET_PDEATHSIG`` fires when that *thread* exits) dies with a learner thread that is still
very much alive; these tests make that first ``next()`` from a thread that then ends, and check
that the same worker processes keep delivering to later ``next()`` calls from other threads.
The workers are identified by the pid each one writes into its observations (``tests.toys.Tagged``).
"""

import concurrent.futures
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from rollout import multi, single
from tests import leaks
from tests.leaks import alive, children, shm, wait_for
from tests.toys import Feedforward, Tagged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AFTER_EXIT = 0.5  # s to wait after the starting thread ended: a death signal bound to it has landed by then


# ----------------------------------------------------------------------------------- helpers
def in_a_thread(function, timeout=45.0):
    """``function()`` run in a new thread that has ended when this returns; its result or its exception."""
    result = {}

    def run():
        try:
            result["value"] = function()
        except BaseException as error:  # re-raised in the caller's thread
            result["error"] = error

    thread = threading.Thread(target=run, name="learner-side-thread")
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"next() in a thread did not return within {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def worker_pids(batch):
    """``{worker index: pid}`` of a batch of Tagged observations (obs ``[pid, position]``), one pid per block."""
    found = {}
    pids = batch.state.obs[..., 0]  # (1+T, B)
    for column, worker in enumerate(batch.worker.tolist()):
        column_pids = set(pids[:, column].tolist())
        assert len(column_pids) == 1, f"column {column} was stepped by several processes: {column_pids}"
        found.setdefault(worker, set()).update(column_pids)
    for worker, pids_of_worker in found.items():
        assert len(pids_of_worker) == 1, f"worker {worker} is several processes in one batch: {pids_of_worker}"
    return {worker: pids_of_worker.pop() for worker, pids_of_worker in found.items()}


def check_same_workers(batches, n_workers, local=True):
    """Every batch came from the same worker processes (worker i: one pid throughout), alive now."""
    seen = {}
    for k, batch in enumerate(batches):
        for worker, pid in worker_pids(batch).items():
            assert seen.setdefault(worker, pid) == pid, (
                f"batch {k}: worker {worker} is pid {pid}, earlier pid {seen[worker]}: the worker was replaced"
            )
    assert set(seen) <= set(range(n_workers)), seen
    assert os.getpid() not in seen.values()
    assert all(alive(pid) for pid in seen.values()), {w: (pid, alive(pid)) for w, pid in seen.items()}
    if local:  # worker processes are the collector's only child processes
        assert set(seen.values()) <= children()
    return seen


def first_next_in_a_thread_then_main(feed, n_workers, n_main=4, local=True):
    """The first next() from a thread that ends, then ``n_main`` from this (the main) thread, then one
    from another short-lived thread and one more from this thread: the same workers deliver them all."""
    batches = [in_a_thread(lambda: next(feed).clone())]
    time.sleep(AFTER_EXIT)
    batches += [next(feed).clone() for _ in range(n_main)]
    batches.append(in_a_thread(lambda: next(feed).clone()))
    time.sleep(AFTER_EXIT)
    batches.append(next(feed).clone())
    return batches, check_same_workers(batches, n_workers, local=local)


# ----------------------------------------------------------------------------------- in-process tests
@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_single_survives_its_first_next_from_a_thread_that_exits(start_method, clean):
    with single.rollout(lambda: Tagged(), Feedforward(), 4, 2, start_method=start_method) as feed:
        batches, workers = first_next_in_a_thread_then_main(feed, 1)
        assert set(workers) == {0}
        stats = feed.stats()
    assert stats["total"]["fragments"] == len(batches)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_multi_survives_its_first_next_from_a_thread_that_exits(start_method, clean):
    with multi.rollout(lambda: Tagged(), Feedforward(), 4, 2, 1, 2, start_method=start_method) as feed:
        batches, workers = first_next_in_a_thread_then_main(feed, 2)
        # both workers are still there (load balancing spreads the slots: with 2 slots per batch
        # and several batches, both have delivered; either way both are live children)
        assert len(children()) >= 2
        stats = feed.stats()
    assert stats["total"]["fragments"] == len(batches)


@pytest.mark.timeout(60)
def test_multi_survives_its_first_next_from_a_thread_pool_that_is_shut_down(clean):
    with multi.rollout(lambda: Tagged(), Feedforward(), 4, 2, 1, 2) as feed:  # the default start method
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            first = pool.submit(lambda: next(feed).clone()).result(timeout=45)
        finally:
            pool.shutdown(wait=True)  # its thread has exited
        time.sleep(AFTER_EXIT)
        batches = [first] + [next(feed).clone() for _ in range(4)]
        check_same_workers(batches, 2)


# ----------------------------------------------------------------------------------- Ray


@pytest.mark.timeout(120)
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray (the 'ray' extra) is not installed")
def test_distributed_survives_its_first_next_from_a_thread_that_exits(ray_instance):
    from rollout import distributed

    with distributed.rollout(lambda: Tagged(), Feedforward(), 4, 2, 1, 2, seed=0) as feed:
        # Ray actors are processes of Ray's, not children of the thread: the same pids throughout
        first_next_in_a_thread_then_main(feed, 2, local=False)


# ----------------------------------------------------------------------------------- the learner dies
def marked(mark):
    """Live pids whose environment holds ``THREADS_MARK=mark`` (a script and all its descendants)."""
    return leaks.marked("THREADS_MARK", mark)


LEARNER = """
import json, os, sys, threading, time

import psutil

from rollout import multi
from tests.toys import Feedforward, Tagged


def shm():
    return set(os.listdir("/dev/shm"))


if __name__ == "__main__":
    before = shm()
    feed = multi.rollout(Tagged, Feedforward(), 4, 2, 1, 2, start_method=sys.argv[1])
    thread = threading.Thread(target=lambda: next(feed))
    thread.start()
    thread.join()
    time.sleep(0.5)
    pids = set()
    for _ in range(4):  # from the main thread: the workers the thread started still deliver
        pids |= set(next(feed).state.obs[..., 0].flatten().tolist())
    workers = [
        child.pid
        for child in psutil.Process().children()
        if not any(word in " ".join(child.cmdline()) for word in ("resource_tracker", "forkserver"))
    ]
    print(json.dumps({"workers": workers, "stepped_by": sorted(pids), "shm": sorted(shm() - before)}), flush=True)
    time.sleep(300)  # killed by the test
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_started_from_an_ended_thread_die_with_the_learner_process(start_method, tmp_path):
    mark = uuid.uuid4().hex
    before = shm()
    path = tmp_path / "learner.py"
    path.write_text(textwrap.dedent(LEARNER))
    out, err = tmp_path / "learner.out", tmp_path / "learner.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        learner = subprocess.Popen(
            [sys.executable, str(path), start_method],
            cwd=str(tmp_path),
            env=dict(os.environ, PYTHONPATH=REPO, THREADS_MARK=mark),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert wait_for(lambda: out.read_text().strip() or learner.poll() is not None, 60)
        assert learner.poll() is None, f"the learner failed (exit {learner.returncode}):\n{err.read_text()[-3000:]}"
        report = json.loads(out.read_text())
        workers, created = report["workers"], set(report["shm"])
        assert len(workers) == 2, report
        assert set(report["stepped_by"]) <= set(workers), report  # the learner's children are its workers
        assert all(alive(pid) for pid in workers), report  # alive after the starting thread ended
        learner.send_signal(signal.SIGKILL)
        learner.wait(timeout=10)
        gone = wait_for(lambda: not any(alive(pid) for pid in workers), 5)
        assert gone, f"workers outlived their learner by 5 s: {[pid for pid in workers if alive(pid)]}"

        # nothing this test saw appear in /dev/shm is left once the workers are gone
        def leaked():
            return (shm() - before) | (created & shm())

        wait_for(lambda: not leaked(), 5)
        assert not leaked(), f"shared memory left behind: {leaked()}"
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
        wait_for(lambda: not marked(mark), 3)
        leftover = marked(mark)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    assert leftover == [], f"processes left behind by the learner: {leftover}"
