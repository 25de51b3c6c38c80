"""Fault-injecting envs, factories and helpers for tests/test_reliability.py.

Everything here is a module-level class or function so that spawned workers can import it (the
factories that use them are cloudpickled; this module is pickled by reference). Faults fire only
inside a worker process (``in_worker()``): the parent builds and steps a probe env itself to
validate it, and that probe must behave.

Markers: a fault that fires writes a file ``{marker_dir}/{kind}-{pid}`` holding
``"{pid} {time.time()}"`` (written atomically) just before it hangs or dies, so a test can wait
for it (poll, never sleep) and learn the pid of the faulty worker and when the fault started.
"""

import ctypes
import os
import signal
import threading
import time

import numpy as np
import torch

import rollout.sync
from tests.toys import Corridor, in_worker


def write_marker(marker_dir, kind):
    """Record ``"{pid} {time}"`` in ``{marker_dir}/{kind}-{pid}`` (atomically: write, then rename)."""
    pid = os.getpid()
    path = os.path.join(str(marker_dir), f"{kind}-{pid}")
    with open(path + ".tmp", "w") as file:
        file.write(f"{pid} {time.time()!r}")
    os.replace(path + ".tmp", path)


def read_markers(marker_dir, kind):
    """``[(pid, time)]`` of the markers of ``kind`` written so far."""
    found = []
    for name in os.listdir(str(marker_dir)):
        if name.startswith(f"{kind}-") and not name.endswith(".tmp"):
            with open(os.path.join(str(marker_dir), name)) as file:
                pid, when = file.read().split()
            found.append((int(pid), float(when)))
    return found


def claim(marker_dir, name):
    """True for the first process to claim ``name`` (an exclusive file create), which writes its pid there."""
    try:
        fd = os.open(os.path.join(str(marker_dir), name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        file.write(str(os.getpid()))
    return True


def hang_forever(ignore_sigterm=False, hold_gil=False):
    """Block this thread forever (as an env stuck in C code would); optionally immune to SIGTERM, or
    inside a C call that holds the GIL (libc's sleep called through ``ctypes.PyDLL``), so that no
    Python code of this process runs again."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        if hold_gil:
            ctypes.PyDLL(None).sleep(3600)
        else:
            time.sleep(3600)


class Hang(Corridor):
    """A corridor whose ``step`` number ``after`` (counted over this env's life) never returns in a worker.

    Before hanging it writes a ``hang`` marker. ``ignore_sigterm``: the stuck process also ignores
    SIGTERM (only SIGKILL ends it).
    """

    def __init__(self, marker_dir, after, ignore_sigterm=False, length=4, hold_gil=False):
        super().__init__(length=length)
        self.marker_dir, self.after, self.ignore_sigterm = str(marker_dir), after, ignore_sigterm
        self.hold_gil = hold_gil
        self.n = 0

    def step(self, action):
        self.n += 1
        if in_worker() and self.n >= self.after:
            write_marker(self.marker_dir, "hang")
            hang_forever(self.ignore_sigterm, self.hold_gil)
        return super().step(action)


class Sleepy(Corridor):
    """A slow but healthy env: every ``step`` sleeps ``delay`` seconds, then steps."""

    def __init__(self, delay=0.2, length=4):
        super().__init__(length=length)
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


class BadShapeLocked(Corridor):
    """``step`` returns an observation of shape (2,) for a (1,) space, and the env cannot be deep-copied."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()  # copy.deepcopy raises TypeError: cannot pickle '_thread.lock'

    def step(self, action):
        obs, *rest = super().step(action)
        return (np.array([obs[0], obs[0]], dtype=np.int64), *rest)


def hanging_factory(marker_dir):
    """An env factory that never returns in a worker (after a ``factory`` marker); a Corridor in the parent."""
    if in_worker():
        write_marker(marker_dir, "factory")
        hang_forever()
    return Corridor()


def _patch_read(at_call, fault):
    """Replace ``WeightStore._read`` in this process: call number ``at_call`` runs ``fault()`` first."""
    if getattr(rollout.sync.WeightStore._read, "fault_injected", False):
        return  # one patch per process (the factory runs once per env)
    original = rollout.sync.WeightStore._read
    calls = [0]

    def _read(self, targets):
        calls[0] += 1
        if calls[0] == at_call:
            fault()
        return original(self, targets)

    _read.fault_injected = True
    rollout.sync.WeightStore._read = _read


def corridor_dying_in_read(marker_dir, at_call=2):
    """A Corridor factory; in the first worker that calls it (it claims ``victim``), the ``at_call``-th
    ``WeightStore._read`` SIGKILLs its own process (a reader dying inside the weight copy)."""
    if in_worker() and claim(marker_dir, "victim"):

        def die():
            write_marker(marker_dir, "dying")
            os.kill(os.getpid(), signal.SIGKILL)

        _patch_read(at_call, die)
    return Corridor()


def corridor_hanging_in_read(marker_dir, at_call=2):
    """A Corridor factory; in a worker, the ``at_call``-th ``WeightStore._read`` never returns
    (after a ``pull`` marker)."""
    if in_worker():

        def hang():
            write_marker(marker_dir, "pull")
            hang_forever()

        _patch_read(at_call, hang)
    return Corridor()


class Big(torch.nn.Module):
    """``n_tensors`` parameters of ``size`` float32 each (5M parameters by default)."""

    def __init__(self, n_tensors=5, size=1_000_000):
        super().__init__()
        self.chunks = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(size)) for _ in range(n_tensors)])

    def fill(self, value):
        with torch.no_grad():
            for chunk in self.chunks:
                chunk.fill_(value)


def publish_constants(store, stop, limit=100_000, pauses=(0.0, 1.0, 4.0, 8.0)):
    """A writer process: publish version v of a :class:`Big` whose every parameter is ``v``, until
    ``stop[0]`` is set (or ``limit`` versions). Exits with code 3 if a version number is off.

    After each publish it pauses for ``pauses[v % len(pauses)]`` times as long as the publish took
    (like a learner's training steps, and scaled to this machine's memory speed): a writer that
    publishes back to back starves a reader, whose copy of the same size then nearly always
    overlaps the next write and is retried (a property of a sequence lock, not a tear). Reads
    still overlap writes often, which is what the torn-read test needs.

    Started with fork: one intra-op thread, as torch's thread pool does not survive a fork.
    """
    torch.set_num_threads(1)
    module = Big()
    for value in range(limit):
        if int(stop[0]):
            break
        module.fill(float(value))
        start = time.monotonic()
        if store.publish(module) != value:
            os._exit(3)
        time.sleep((time.monotonic() - start) * pauses[value % len(pauses)])
