"""Weight publish and pull latency of ``rollout.sync.WeightStore``, against pickling the weights.

Run: ``python -m benchmarks.sync_latency``. Prints the median over repeats for MLP actors of
about 5k, 0.5M, 1M and 5M parameters, and the ratio to ``torch.save(state_dict)`` into memory
(what a queue-based sync would pay before even sending), measured side by side in this process.

``publish`` is the learner's side (module -> shared store, under the lock, version bump); ``pull``
is a worker's side when the version changed (store -> module); a no-change pull (the worker
already holds the current version) reads one shared counter and copies nothing, which
:func:`measure` checks by poisoning the worker's weights first.
"""

import io
import statistics
import time
from typing import Callable, Dict

import torch
from torch import nn

from rollout.sync import WeightStore

SIZES = ((50, 2), (500, 2), (700, 2), (1000, 5))  # (width, depth): 5.1k, 0.5M, 1M, 5M parameters


def mlp(width: int, depth: int) -> nn.Module:
    """``depth`` Linear(width, width) layers: ``depth * (width**2 + width)`` parameters."""
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def timed(fn: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Seconds per call of ``fn`` after one warm-up call: median, min and max over ``repeats``."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def measure(width: int, depth: int, repeats: int = 50, pickle: bool = True) -> dict:
    """Publish, pull and no-change-pull latency (ms) of one ``mlp(width, depth)``.

    Returns ``params``; ``publish_ms``, ``pull_ms`` (a pull whose version differs: always copies),
    ``nochange_pull_ms`` (the worker already has the version) each as median/min/max;
    ``nochange_copied`` (False when a no-change pull left poisoned worker weights untouched),
    ``change_copied`` (True when a pull after a version change loaded the store); and with
    ``pickle`` the median ``pickle_ms`` of ``torch.save(state_dict)`` into memory.
    """
    torch.manual_seed(0)
    module, worker = mlp(width, depth), mlp(width, depth)
    store = WeightStore(module)
    ms = lambda t: {k: v * 1e3 for k, v in t.items()}  # noqa: E731
    out = {"params": sum(p.numel() for p in module.parameters())}
    out["publish_ms"] = ms(timed(lambda: store.publish(module), repeats))
    out["pull_ms"] = ms(timed(lambda: store.pull(worker, -2), repeats))  # -2 is never the store's version
    with torch.no_grad():
        for p in worker.parameters():
            p.fill_(7.0)
    have = store.version
    out["nochange_pull_ms"] = ms(timed(lambda: store.pull(worker, have), max(repeats, 1000)))
    out["nochange_copied"] = not all(bool((p == 7.0).all()) for p in worker.parameters())
    store.pull(worker, have - 1)
    out["change_copied"] = all(torch.equal(a, b) for a, b in zip(worker.parameters(), module.parameters()))
    if pickle:
        out["pickle_ms"] = (
            timed(lambda: torch.save(module.state_dict(), io.BytesIO()), max(1, repeats // 2))["median"] * 1e3
        )
    return out


def main() -> None:
    torch.set_num_threads(1)
    print(
        f"{'params':>10} {'publish ms':>11} {'pull ms':>9} {'no-change pull us':>18} {'pickle ms':>10} {'pickle/publish':>15}"
    )
    for width, depth in SIZES:
        r = measure(width, depth)
        publish = r["publish_ms"]["median"]
        print(
            f"{r['params']:>10,} {publish:>11.3f} {r['pull_ms']['median']:>9.3f} {r['nochange_pull_ms']['median'] * 1e3:>18.2f} "
            f"{r['pickle_ms']:>10.3f} {r['pickle_ms'] / publish:>15.1f}"
        )


if __name__ == "__main__":
    main()
