import gc
import multiprocessing
import time

import pytest
import torch

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


@pytest.fixture
def ray_instance():
    """A local Ray instance for the test (CPUs and object store set explicitly), shut down after it;
    one this process already runs is reused and left running."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where torch sees a CUDA device and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: torch {torch.__version__} sees none")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
