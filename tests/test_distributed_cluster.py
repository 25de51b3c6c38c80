"""``rollout.distributed`` on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``)."""

import itertools
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray (the 'ray' extra) is not installed: pip install -e '.[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

from rollout import distributed  # noqa: E402
from rollout.errors import WorkerError  # noqa: E402
from tests.toys import Corridor, Counter  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A head without CPUs and two worker nodes of one CPU each, each with a resource of its own."""
    assert not ray.is_initialized()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 80 * 1024**2, "include_dashboard": False},
    )
    nodes = [cluster.add_node(num_cpus=1, resources={name: 1}, object_store_memory=80 * 1024**2) for name in "ab"]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.timeout(240)
def test_fragments_come_from_both_nodes_and_losing_one_is_a_worker_error(cluster):
    cluster, nodes = cluster
    feed = distributed.rollout(lambda: Corridor(), Counter(), 4, 2, 1, seed=0, stall_timeout=20)
    workers = {}
    try:
        seen = set()
        for batch in itertools.islice(feed, 100):  # first ready: a worker that starts late delivers later
            seen.update(batch.worker.tolist())
            if seen == {0, 1}:
                break
        assert seen == {0, 1}, seen  # both workers (one per node: a node has one CPU) delivered
        handles = feed._generator.gi_frame.f_locals["cluster"].workers
        workers = {ray.get(w.identity.remote(), timeout=30)["node"]: i for i, w in enumerate(handles)}
        assert set(workers) == {node.node_id for node in nodes}
        cluster.remove_node(nodes[1])  # the node, its raylet and its worker are gone
        start = time.monotonic()
        with pytest.raises(WorkerError, match=f"worker {workers[nodes[1].node_id]}"):
            for _ in itertools.islice(feed, 200):
                pass
        assert time.monotonic() - start < 60  # Ray's report or the stall deadline, not a hang
    finally:
        feed.close()
    assert ray.is_initialized()  # the cluster's connection is not ours to close


@pytest.mark.timeout(120)
def test_an_address_connects_to_a_running_cluster_and_close_only_disconnects(cluster):
    cluster, nodes = cluster
    ray.shutdown()  # this process is no longer connected: the collector connects by address
    try:
        with distributed.rollout(lambda: Corridor(), Counter(), 4, 1, 1, seed=0, address=cluster.address) as feed:
            next(feed)
            assert ray.is_initialized()
        assert not ray.is_initialized()  # it disconnected what it connected...
        ray.init(address=cluster.address, log_to_driver=False)  # ...and the cluster still runs
        assert sum(node["Alive"] for node in ray.nodes()) >= 2  # the head and a worker node
    finally:
        if not ray.is_initialized():
            ray.init(address=cluster.address, log_to_driver=False)
