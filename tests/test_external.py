"""The optional external baselines (benchmarks/external.py): skipped when torchrl/envpool are absent."""

import math
import multiprocessing
import sys

import pytest

from benchmarks import external


def _children():
    try:
        import psutil
    except ImportError:  # not a test dependency; multiprocessing.active_children() is checked too
        return []
    # the resource tracker that spawn starts once per process is not a collector's worker
    return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("reason", [external.torchrl_skip_reason, external.envpool_skip_reason])
def test_skip_reason_is_none_or_one_line(reason):
    why = reason()
    assert why is None or (isinstance(why, str) and why.strip() and "\n" not in why)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "module, reason", [("tensordict.nn", external.torchrl_skip_reason), ("envpool", external.envpool_skip_reason)]
)
def test_skip_reason_names_the_missing_package(monkeypatch, module, reason):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import raise ModuleNotFoundError
    assert "not installed" in reason()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind, n_workers, batching", [("sync", 1, "vector"), ("sync", 1, "serial"), ("multisync", 1, "vector")]
)
def test_torchrl_throughput_short_run(kind, n_workers, batching):
    why = external.torchrl_skip_reason()
    if why:
        pytest.skip(why)
    start_method = multiprocessing.get_start_method(allow_none=True)
    rate = external.torchrl_throughput(
        kind, "CartPole-v1", n_workers, 4, 16, seconds=0.5, warmup=0.2, batching=batching
    )
    assert rate > 0 and math.isfinite(rate)
    assert multiprocessing.active_children() == [] and _children() == []
    assert multiprocessing.get_start_method(allow_none=True) == start_method


@pytest.mark.timeout(120)
def test_torchrl_sync_needs_one_worker():
    with pytest.raises(ValueError, match="n_workers"):
        external.torchrl_throughput("sync", "CartPole-v1", 2, 4, 16, seconds=0.5, warmup=0.2)


@pytest.mark.timeout(120)
def test_envpool_throughput_short_run():
    why = external.envpool_skip_reason()
    if why:
        pytest.skip(why)
    rate = external.envpool_throughput("CartPole-v1", 4, 16, seconds=0.5, warmup=0.2)
    assert rate > 0 and math.isfinite(rate)
    assert _children() == []
