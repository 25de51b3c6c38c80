"""What a test may leave behind: live child processes and /dev/shm files (Linux /proc)."""

import os
import time


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def alive(pid):
    """Whether ``pid`` is a running process (a zombie is dead: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children():
    """Pids of this process's live children (from /proc).

    Python's resource tracker (started once by spawn's semaphores) and the forkserver server are
    not workers (forkserver's workers are the server's children).
    """
    found = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as file:
                found |= {int(pid) for pid in file.read().split()}
        except FileNotFoundError:  # a thread (e.g. a queue's feeder) ended meanwhile
            pass
    return {
        pid
        for pid in found
        if alive(pid) and b"resource_tracker" not in cmdline(pid) and b"forkserver" not in cmdline(pid)
    }


def shm():
    return set(os.listdir("/dev/shm"))


def marked(variable, mark):
    """Live pids whose environment holds ``variable=mark`` (a script started with it and all its descendants)."""
    needle = f"{variable}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as file:
                if needle in file.read().split(b"\0") and alive(int(name)):
                    found.append(int(name))
        except OSError:  # gone, or not ours
            pass
    return found


def wait_for(condition, timeout, interval=0.02):
    """Poll ``condition()`` until it is truthy or ``timeout`` s have passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
