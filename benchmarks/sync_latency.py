"""Weight publish and pull latency of ``rollout.sync.WeightStore``, against pickling the weights.

Run: ``python -m benchmarks.sync_latency``. Prints the median over repeats for MLP actors of
about 5k, 0.5M, 1M and 5M parameters, and the ratio to ``pickle.dumps(state_dict)`` (what a
queue-based sync would pay), measured side by side in this process.
"""

import io
import multiprocessing
import statistics
import time

import torch
from torch import nn

from rollout.sync import WeightStore


def mlp(width: int, depth: int) -> nn.Module:
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def timed(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'params':>10} {'publish ms':>11} {'pull ms':>9} {'pickle ms':>10} {'pickle/publish':>15}")
    for width, depth in ((50, 2), (500, 2), (700, 2), (1000, 5)):
        module = mlp(width, depth)
        n = sum(p.numel() for p in module.parameters())
        store = WeightStore(module, multiprocessing.get_context("spawn").Lock())
        worker = mlp(width, depth)
        publish = timed(lambda: store.publish(module), 50)
        pull = timed(lambda: (store.publish(module), store.pull(worker, -2)), 50) - publish

        def pickled():
            buffer = io.BytesIO()
            torch.save(module.state_dict(), buffer)

        pickle = timed(pickled, 20)
        print(f"{n:>10,} {publish * 1e3:>11.3f} {pull * 1e3:>9.3f} {pickle * 1e3:>10.3f} {pickle / publish:>15.1f}")


if __name__ == "__main__":
    main()
