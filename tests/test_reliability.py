"""Reliability of the worker collectors: stalls, deaths, orphans, bounded close, parent-side validation,
traceability of fragments, and the lock-free weight store (DESIGN.md section 5, "Failures").

Faults are injected with the envs and factories of tests/faults.py; they fire only inside workers.
Every test bounds its time and checks that nothing is left behind: no child process
(``multiprocessing.active_children()``, /proc), no new file in /dev/shm, and for learner scripts run
in a subprocess, no process at all carrying the script's environment marker.
"""

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import torch

from rollout import multi, same, single
from rollout.errors import ConfigurationError, EnvError, WorkerError
from rollout.sync import WeightStore
from tests import faults
from tests import leaks
from tests.leaks import alive, children, shm, wait_for
from tests.toys import Corridor, Feedforward, Switch, Tagged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STALL = 1.0  # stall_timeout used by the tests, seconds


# ----------------------------------------------------------------------------------- helpers


def worker_pids():
    """``{index: pid}`` of this process's live rollout workers."""
    return {
        int(p.name.rsplit("-", 1)[1]): p.pid
        for p in multiprocessing.active_children()
        if p.name.startswith("rollout-worker-")
    }


def marked(mark):
    """Live pids whose environment holds ``RELIABILITY_MARK=mark`` (a script and all its descendants)."""
    return leaks.marked("RELIABILITY_MARK", mark)


@pytest.fixture
def script(tmp_path):
    """Run a learner script in a subprocess: ``start(source, *args) -> Popen``; stdout, stderr in files.

    The script's environment carries a unique marker, so that every process it leaves behind can be
    found. At teardown, nothing carrying the marker may be alive (anything found is killed).
    """
    mark = uuid.uuid4().hex
    started = []

    def start(source, *args):
        path = tmp_path / f"script{len(started)}.py"
        path.write_text(textwrap.dedent(source))
        env = dict(os.environ, PYTHONPATH=REPO, RELIABILITY_MARK=mark)
        out, err = open(tmp_path / f"{path.stem}.out", "w"), open(tmp_path / f"{path.stem}.err", "w")
        process = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=str(tmp_path),
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        out.close(), err.close()
        process.stdout_path, process.stderr_path = tmp_path / f"{path.stem}.out", tmp_path / f"{path.stem}.err"
        started.append(process)
        return process

    start.mark = mark
    before_shm = shm()
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
    wait_for(lambda: not marked(mark), 3)
    leftover = marked(mark)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert leftover == [], f"processes left behind by the learner script: {leftover}"
    assert wait_for(lambda: not (shm() - before_shm), 5), f"shared memory left behind: {shm() - before_shm}"


def read(path):
    with open(path) as file:
        return file.read()


# ----------------------------------------------------------------------------------- stalls
@pytest.mark.timeout(45)
@pytest.mark.parametrize(
    "collector, fault, doing",
    [
        ("multi", "step", "stepping envs"),
        ("single", "step", "stepping envs"),
        ("multi", "pull", "pulling weights"),
        ("multi", "factory", "starting"),
    ],
)
def test_a_worker_without_progress_is_reported_after_stall_timeout(collector, fault, doing, tmp_path, clean):
    marker = str(tmp_path)
    # each fault fires after the worker has delivered its first fragment, except in the factory
    factory, kind, actor = {
        "step": (lambda: faults.Hang(marker, after=5), "hang", Feedforward()),  # step 5: inside fragment 2
        "pull": (lambda: faults.corridor_hanging_in_read(marker), "pull", Switch()),  # the pull of version 1
        "factory": (lambda: faults.hanging_factory(marker), "factory", Feedforward()),
    }[fault]
    if collector == "single":
        feed = single.rollout(factory, actor, 4, 1, start_method="fork", stall_timeout=STALL, timeout=0.5)
    else:
        feed = multi.rollout(factory, actor, 4, 1, 1, start_method="fork", stall_timeout=STALL, timeout=0.5)
    with pytest.raises(WorkerError) as info:
        for _ in range(10):
            next(feed)
    raised = time.time()
    feed.close()
    [(pid, since)] = faults.read_markers(marker, kind)
    message = str(info.value)
    assert "worker 0" in message and f"pid {pid}" in message, message
    assert "no progress" in message and doing in message, message
    # reported after stall_timeout without progress, not before, and not much later
    assert STALL - 0.25 <= raised - since <= STALL + 3, (raised - since, message)
    assert not alive(pid)


@pytest.mark.timeout(45)
def test_a_slow_env_that_keeps_stepping_is_no_stall(clean):
    # 0.2 s per step, 8 steps: one fragment takes 1.6 s > stall_timeout, but every step is progress
    with multi.rollout(
        lambda: faults.Sleepy(0.2), Feedforward(), 8, 1, 1, start_method="fork", stall_timeout=STALL, timeout=0.5
    ) as feed:
        start = time.monotonic()
        batches = [next(feed).state.obs.shape for _ in range(2)]
        elapsed = time.monotonic() - start
    assert batches == [(9, 1, 1)] * 2
    assert elapsed > 8 * 0.2  # a fragment took longer than stall_timeout


@pytest.mark.timeout(45)
def test_stall_timeout_none_disables_the_check(tmp_path, clean):
    marker = str(tmp_path)
    feed = single.rollout(
        lambda: faults.Hang(marker, after=5), Feedforward(), 4, 1, start_method="fork", stall_timeout=None, timeout=0.5
    )
    next(feed)  # in this thread: the workers die with the thread that started them
    outcome = []

    def consume():
        try:
            for _ in range(10):
                next(feed)
        except BaseException as error:  # noqa: BLE001 - recorded for the main thread
            outcome.append(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert wait_for(lambda: faults.read_markers(marker, "hang"), 20)
    [(pid, _)] = faults.read_markers(marker, "hang")
    thread.join(2 * STALL + 0.5)  # well past what stall_timeout=STALL would allow
    assert thread.is_alive() and outcome == [], outcome
    os.kill(pid, signal.SIGKILL)  # the one way out: a dead worker is reported
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], WorkerError) and "SIGKILL" in str(outcome[0]), outcome
    feed.close()


@pytest.mark.timeout(45)
def test_a_frozen_worker_does_not_stop_the_others_and_is_reported(clean):
    feed = multi.rollout(lambda: Tagged(), Feedforward(), 4, 2, 1, 1, start_method="fork", stall_timeout=1.5, timeout=1)
    frozen = None
    try:
        next(feed)
        pids = wait_for(lambda: len(worker_pids()) == 2 and worker_pids(), 10)
        assert pids, worker_pids()
        frozen, other = pids[1], pids[0]
        os.kill(frozen, signal.SIGSTOP)
        stopped = time.monotonic()
        delivered = {}  # pid that collected a batch after the stop -> count
        with pytest.raises(WorkerError) as info:
            while time.monotonic() < stopped + 15:
                pid = int(next(feed).state.obs[0, 0, 0])
                delivered[pid] = delivered.get(pid, 0) + 1
        reported = time.monotonic() - stopped
        message = str(info.value)
        assert "worker 1" in message and f"pid {frozen}" in message and "no progress" in message, message
        assert 1.5 - 0.3 <= reported <= 1.5 + 3, reported
        assert delivered.get(other, 0) >= 3, delivered  # the other worker kept delivering meanwhile
        feed.close()
        assert multiprocessing.active_children() == []
        assert not alive(frozen)  # close ended the stopped worker too
    finally:
        if frozen is not None and frozen in children():  # only on failure: never leave it stopped
            os.kill(frozen, signal.SIGCONT)
            os.kill(frozen, signal.SIGKILL)
        feed.close()


# ----------------------------------------------------------------------------------- deaths and orphans
@pytest.mark.timeout(60)
def test_a_worker_killed_inside_the_weight_copy_is_reported_without_blocking(tmp_path, clean):
    marker = str(tmp_path)
    # spawn (the default): the factory patches WeightStore._read in the worker, from tests/faults.py
    feed = multi.rollout(
        lambda: faults.corridor_dying_in_read(marker), Switch(), 4, 2, 1, 1, stall_timeout=STALL, timeout=2
    )
    with feed:
        next(feed)  # version 0 pulled
        assert wait_for(lambda: os.path.exists(os.path.join(marker, "victim")), 30)
        victim = int(read(os.path.join(marker, "victim")))
        index = {pid: i for i, pid in worker_pids().items()}[victim]
        died, error, deadline = None, None, time.monotonic() + 20
        while error is None and time.monotonic() < deadline:
            called = time.monotonic()
            try:
                next(feed)  # publishes a new version: the victim dies in its next pull
            except WorkerError as caught:
                error = caught
            returned = time.monotonic()
            assert returned - called < 2.5, "next() blocked"
            if died is None and faults.read_markers(marker, "dying"):
                died = returned
    assert error is not None, "the dead worker was never reported"
    if died is not None:
        assert time.monotonic() - died < 2.5
    message = str(error)
    assert f"worker {index}" in message and f"pid {victim}" in message and "SIGKILL" in message, message
    assert faults.read_markers(marker, "dying")  # it did die inside _read


@pytest.mark.timeout(60)
def test_workers_exit_when_the_learner_dies_inside_the_weight_publish(script):
    learner = script(
        """
        import multiprocessing, os, signal, sys
        import rollout.sync
        from rollout import multi
        from tests.toys import Corridor, Switch

        original, calls = rollout.sync.WeightStore._write, [0]

        def _write(self, sources):
            calls[0] += 1
            if calls[0] == 3:  # the publish of the second next(), after version 0 and 1
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, sources)

        rollout.sync.WeightStore._write = _write

        if __name__ == "__main__":
            feed = multi.rollout(Corridor, Switch(), 4, 2, 1, 1, start_method="fork", timeout=1)
            next(feed)
            print(*(p.pid for p in multiprocessing.active_children() if p.name.startswith("rollout-worker")), flush=True)
            for _ in range(10):
                next(feed)
            print("still alive", flush=True)
        """
    )
    assert learner.wait(timeout=45) == -signal.SIGKILL, read(learner.stderr_path)
    died = time.monotonic()
    out = read(learner.stdout_path)
    pids = [int(p) for p in out.split()]
    assert len(pids) == 2 and "still alive" not in out, out
    gone = wait_for(lambda: not any(alive(pid) for pid in pids) and not marked(script.mark), 3)
    assert gone, [pid for pid in pids if alive(pid)]
    assert time.monotonic() - died < 3.5


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "hold_gil", [False, True], ids=["stuck", "stuck-in-C-holding-the-GIL-started-from-an-ended-thread"]
)
def test_a_worker_stuck_in_env_step_exits_when_the_learner_is_killed(hold_gil, script, tmp_path):
    marker = tmp_path / "markers"
    marker.mkdir()
    learner = script(
        f"""
        import multiprocessing, threading
        from rollout import multi
        from tests import faults
        from tests.toys import Feedforward

        if __name__ == "__main__":
            feed = multi.rollout(lambda: faults.Hang({str(marker)!r}, after=5, hold_gil={hold_gil}), Feedforward(),
                                 4, 1, 1, stall_timeout=None)
            if {hold_gil}:  # the workers are started by a thread that then ends
                starter = threading.Thread(target=next, args=(feed,))
                starter.start()
                starter.join()
            else:
                next(feed)
            print(*(p.pid for p in multiprocessing.active_children()), flush=True)
            for _ in range(10):
                next(feed)
        """
    )
    assert wait_for(lambda: faults.read_markers(marker, "hang") or learner.poll() is not None, 40)
    assert learner.poll() is None, read(learner.stderr_path)
    [(pid, _)] = faults.read_markers(marker, "hang")
    assert [int(p) for p in read(learner.stdout_path).split()] == [pid]
    learner.kill()
    learner.wait()
    died = time.monotonic()
    gone = wait_for(lambda: not alive(pid) and not marked(script.mark), 3)
    assert gone, f"worker {pid} outlived its learner"
    assert time.monotonic() - died < 3.5


# ----------------------------------------------------------------------------------- closing
@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["stuck", "stuck-ignoring-SIGTERM"])
def test_close_takes_at_most_its_timeout_however_many_workers_are_stuck(ignore_sigterm, tmp_path, clean):
    marker = str(tmp_path)
    # n_buffers=6: each of the 3 workers holds two slots, delivers its first fragment, hangs in its second.
    # The collector's own timeout is long: close(timeout=1) must override it.
    feed = multi.rollout(
        lambda: faults.Hang(marker, after=5, ignore_sigterm=ignore_sigterm),
        Feedforward(),
        4,
        3,
        1,
        1,
        n_buffers=6,
        start_method="fork",
        stall_timeout=None,
        timeout=30,
    )
    next(feed)
    assert wait_for(lambda: len(faults.read_markers(marker, "hang")) == 3, 30), faults.read_markers(marker, "hang")
    start = time.monotonic()
    feed.close(timeout=1)
    elapsed = time.monotonic() - start
    assert elapsed < 1 + 2, elapsed
    assert multiprocessing.active_children() == []
    assert not any(alive(pid) for pid, _ in faults.read_markers(marker, "hang"))


# ----------------------------------------------------------------------------------- validation in the parent
@pytest.fixture
def no_process_starts(monkeypatch):
    """Count process starts (any start method); the test asserts there were none."""
    started = []
    original = multiprocessing.process.BaseProcess.start

    def start(self):
        started.append(self.name)
        return original(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start)
    return started


@pytest.mark.timeout(30)
@pytest.mark.parametrize("collector", ["multi", "single"])
def test_an_env_stepping_a_wrong_observation_is_rejected_even_if_it_cannot_be_copied(
    collector, no_process_starts, clean
):
    start = time.monotonic()
    with pytest.raises(EnvError) as info:
        if collector == "multi":
            feed = multi.rollout(faults.BadShapeLocked, Feedforward(), 4, 2, 1, 1, start_method="fork")
        else:
            feed = single.rollout(faults.BadShapeLocked, Feedforward(), 4, 1, start_method="fork")
        try:
            next(feed)  # at the latest here, and still before any worker starts
        finally:
            feed.close()
    assert multiprocessing.active_children() == [] and no_process_starts == []
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "observation" in message and "shape" in message, message


@pytest.mark.timeout(30)
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")], ids=str)
def test_a_cuda_device_without_cuda_is_rejected_before_any_worker_starts(device, no_process_starts, clean):
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="cuda"):
        multi.rollout(lambda: Corridor(), Feedforward(), 4, 2, 1, device=device, start_method="fork")
    with pytest.raises(ConfigurationError, match="cuda"):
        single.rollout(lambda: Corridor(), Feedforward(), 4, 1, device=device, start_method="fork")
    assert multiprocessing.active_children() == [] and no_process_starts == []
    assert time.monotonic() - start < 5


@pytest.mark.timeout(60)
def test_too_many_buffers_for_the_file_descriptor_limit_is_a_configuration_error(script):
    learner = script(
        """
        import multiprocessing, resource, time
        from rollout import multi
        from rollout.errors import ConfigurationError
        from tests.toys import Corridor, Feedforward

        if __name__ == "__main__":
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            start = time.monotonic()
            try:
                feed = multi.rollout(Corridor, Feedforward(), 4, 2, 1, 1, n_buffers=200, start_method="fork")
                next(feed)
                print("NO ERROR")
            except ConfigurationError as error:
                print("ConfigurationError", repr(str(error)))
            except BaseException as error:
                print("WRONG", type(error).__name__, repr(str(error)))
            print("children", len(multiprocessing.active_children()), "seconds", time.monotonic() - start, flush=True)
        """
    )
    assert learner.wait(timeout=45) == 0, read(learner.stderr_path)
    out = read(learner.stdout_path)
    assert out.startswith("ConfigurationError"), out
    message = out.splitlines()[0]
    assert "n_buffers" in message and re.search(r"\b64\b", message) and "ulimit -n" in message, message
    words = out.splitlines()[-1].split()
    assert words[:2] == ["children", "0"] and float(words[3]) < 5, out


@pytest.mark.timeout(45)
def test_an_env_class_is_a_factory(clean):
    # Corridor(length=4, max_steps=None, start=0): called with no argument (not with a seed as length)
    with multi.rollout(Corridor, Feedforward(), 4, 1, 2, start_method="fork") as feed:
        batch = next(feed)
        assert batch.state.obs.shape == (5, 2, 1)
        assert batch.state.obs[:, 0, 0].tolist() == [0, 1, 2, 0, 1]
    with single.rollout(Corridor, Feedforward(), 4, 2, start_method="fork") as feed:
        fragment = next(feed)
        assert fragment.state.obs.shape == (5, 2, 1)
        assert fragment.state.obs[:, 1, 0].tolist() == [0, 1, 2, 0, 1]


# ----------------------------------------------------------------------------------- deaths before reporting
@pytest.mark.timeout(60)
def test_a_script_without_the_main_guard_gets_the_fix(script):
    start = time.monotonic()
    learner = script(
        """
        from rollout import multi
        from tests.toys import Corridor, Feedforward

        feed = multi.rollout(Corridor, Feedforward(), 4, 1, 1, timeout=2)  # spawn, no __main__ guard
        next(feed)
        print("collected")
        """
    )
    code = learner.wait(timeout=50)
    elapsed = time.monotonic() - start
    err = read(learner.stderr_path)
    assert code != 0 and "collected" not in read(learner.stdout_path), err
    assert "WorkerError" in err and 'if __name__ == "__main__":' in err, err
    assert elapsed < 30
    for pid in re.findall(r"pid (\d+)", err):
        assert wait_for(lambda: not alive(int(pid)), 3), f"worker {pid} left behind"


@pytest.mark.timeout(60)
def test_a_worker_failing_to_import_the_main_module_reports_its_stderr(script):
    learner = script(
        """
        import sys

        # spawn runs the main module in the child as __mp_main__ (multiprocessing.parent_process() is
        # still None at that point): only the worker raises
        if __name__ == "__mp_main__":
            raise ImportError("boom-in-child")

        from rollout import multi
        from rollout.errors import WorkerError
        from tests.toys import Corridor, Feedforward

        if __name__ == "__main__":
            try:
                with multi.rollout(Corridor, Feedforward(), 4, 1, 1, timeout=2) as feed:
                    next(feed)
                print("NO ERROR")
            except WorkerError as error:
                print("WorkerError", repr(str(error)))
            except BaseException as error:
                print("WRONG", type(error).__name__, repr(str(error)))
        """
    )
    assert learner.wait(timeout=50) == 0, read(learner.stderr_path)
    out = read(learner.stdout_path)
    assert out.startswith("WorkerError") and "boom-in-child" in out, out


# ----------------------------------------------------------------------------------- traceability
@pytest.mark.timeout(45)
def test_batches_say_which_worker_and_fragment_each_block_is(clean):
    n_steps, n_actors, n_per_actor, n_per_batch, n_buffers = 4, 2, 2, 2, 4
    # position never ends an episode here, so row 0 of a worker's fragment k is at position k * n_steps
    with multi.rollout(
        lambda: Tagged(length=10_000),
        Feedforward(),
        n_steps,
        n_actors,
        n_per_actor,
        n_per_batch,
        n_buffers=n_buffers,
        start_method="fork",
    ) as feed:
        batches = [next(feed).clone() for _ in range(8)]
    blocks = {}  # (worker, sequence) -> state of its block of columns
    pid_of = {}
    for batch in batches:
        assert batch.worker.shape == batch.sequence.shape == (n_per_batch * n_per_actor,)
        assert batch.worker.dtype == batch.sequence.dtype == torch.int64
        for b in range(n_per_batch):
            columns = slice(b * n_per_actor, (b + 1) * n_per_actor)
            workers, sequences = batch.worker[columns].unique(), batch.sequence[columns].unique()
            assert workers.numel() == 1 and sequences.numel() == 1, (batch.worker, batch.sequence)
            key = (int(workers), int(sequences))
            assert key not in blocks, f"duplicate {key}"
            state = type(batch.state)(*(x[:, columns] for x in batch.state))
            blocks[key] = state
            # one worker index, one process
            pids = state.obs[..., 0].unique()
            assert pids.numel() == 1 and pid_of.setdefault(key[0], int(pids)) == int(pids)
            assert torch.all(state.obs[0, :, 1] == key[1] * n_steps), (key, state.obs[0, :, 1])
    assert set(w for w, _ in blocks) <= set(range(n_actors)) and len(set(pid_of.values())) == len(pid_of)
    missing = 0
    for worker in set(w for w, _ in blocks):
        seen = sorted(s for w, s in blocks if w == worker)
        assert seen[0] >= 0
        # a later batch can complete first: only fragments in the batch buffers not yet yielded are missing
        missing += seen[-1] + 1 - len(seen)
    assert missing <= n_buffers - n_per_batch, sorted(blocks)
    stitched = 0
    for (worker, k), state in blocks.items():
        following = blocks.get((worker, k + 1))
        if following is not None:
            stitched += 1
            for row_t, row_0 in zip(state, following):
                assert torch.equal(row_t[-1], row_0[0]), (worker, k)
    assert stitched >= 4, sorted(blocks)


@pytest.mark.timeout(30)
def test_same_and_single_fragments_are_worker_0_in_sequence(clean):
    with same.rollout(lambda: Corridor(), Feedforward(), 4, n_envs=2) as feed:
        fragments = [next(feed).clone() for _ in range(3)]
    seen = [(f.worker.tolist(), f.sequence.tolist()) for f in fragments]
    assert seen == [([0, 0], [0, 0]), ([0, 0], [1, 1]), ([0, 0], [2, 2])]
    assert fragments[0].worker.dtype == fragments[0].sequence.dtype == torch.int64
    with single.rollout(lambda: Corridor(), Feedforward(), 4, 2, start_method="fork") as feed:
        seen = [(f.worker.tolist(), f.sequence.tolist()) for f in (next(feed) for _ in range(3))]
    assert seen == [([0, 0], [0, 0]), ([0, 0], [1, 1]), ([0, 0], [2, 2])]


# ----------------------------------------------------------------------------------- the weight store
@pytest.mark.timeout(60)
def test_the_weight_store_never_yields_a_torn_read(clean):
    # 5M float32 parameters; version v of the writer's module holds the value v everywhere
    store = WeightStore(faults.Big())
    reads = [0]  # every copy the reader makes, kept or retried
    read = store._read

    def counting_read(targets):
        reads[0] += 1
        return read(targets)

    store._read = counting_read
    stop = torch.zeros(1, dtype=torch.int64).share_memory_()
    writer = multiprocessing.get_context("fork").Process(
        target=faults.publish_constants, args=(store, stop), daemon=True
    )
    reader, have, versions, torn = faults.Big(), -1, set(), []
    writer.start()
    try:
        deadline = time.monotonic() + 15  # a loaded machine copies 20 MB in tens of ms
        while time.monotonic() < deadline and writer.is_alive() and len(versions) < 6:
            have = store.pull(reader, have)
            if have < 0 or have in versions:
                continue
            versions.add(have)
            if any(bool(c.detach().ne(have).any()) for c in reader.chunks):
                torn.append((have, [(float(c.detach().min()), float(c.detach().max())) for c in reader.chunks]))
    finally:
        stop[0] = 1
        writer.join(10)
        if writer.is_alive():  # only on failure: never leave it running
            writer.kill()
            writer.join(5)
    assert writer.exitcode == 0
    assert torn == [], torn[:3]
    assert len(versions) >= 3, versions
    # each version kept was one copy; the others were copies that overlapped a write and were retried
    assert reads[0] > len(versions), (reads[0], versions)
