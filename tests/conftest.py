import gc
import multiprocessing
import time

import pytest

from tests.leaks import children, shm


@pytest.fixture
def clean():
    """Assert a test leaves no child process and no shared-memory file behind."""
    before_children, before_shm = children(), shm()
    yield
    deadline = time.monotonic() + 5
    while (children() - before_children or shm() - before_shm) and time.monotonic() < deadline:
        gc.collect()  # named semaphores are unlinked when their objects are collected
        time.sleep(0.05)
    assert multiprocessing.active_children() == []
    assert children() - before_children == set()
    assert shm() - before_shm == set()
