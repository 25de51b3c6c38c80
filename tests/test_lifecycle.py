"""Smoke test of ``benchmarks.lifecycle``: it runs, reports finite positive numbers, and leaves no
worker behind. It asserts no speed (speeds are recorded by running the benchmark, not tested)."""

import math
import multiprocessing

import pytest

psutil = pytest.importorskip("psutil")  # the benchmark's dependency (not in the package's requirements)

from benchmarks import lifecycle  # noqa: E402


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def stats_ok(s) -> bool:
    return (
        set(s) == {"median", "min", "max", "n"}
        and all(positive(s[k]) for k in s)
        and s["min"] <= s["median"] <= s["max"]
    )


@pytest.mark.timeout(180)
def test_lifecycle_quick_runs_and_reports():
    r = lifecycle.run_all(quick=True)

    ff = r["first_fragment"]
    assert "fork" in ff and "spawn" in ff
    for method in lifecycle.START_METHODS:
        row = ff[method]
        assert all(stats_ok(row[k]) for k in ("call_s", "first_s", "shutdown_s"))
        assert row["leftover_workers"] == 0
    cold = ff["forkserver"]["cold"]
    assert all(positive(cold[k]) for k in ("call_s", "first_s", "shutdown_s")) and cold["leftover"] == 0

    for name in ("5k", "0.5M", "5M"):
        s = r["sync_latency"][name]
        assert positive(s["params"]) and all(
            stats_ok({**s[k], "n": 1}) for k in ("publish_ms", "pull_ms", "nochange_pull_ms")
        )
        assert s["nochange_copied"] is False and s["change_copied"] is True

    for name in ("single_8", "multi_2x8_batch1", "multi_2x8_batch2"):
        lag = r["policy_lag"][name]
        assert sum(lag["hist"].values()) == lag["n_columns"] > 0 and all(int(k) >= 0 for k in lag["hist"])
    assert r["policy_lag"]["single_8"]["within_bound"]  # multi may exceed its bound behind a descheduled worker

    li = r["learner_idle"]
    assert stats_ok(li["same_steps_per_s"]) and stats_ok(li["single_steps_per_s"])
    assert all(positive(li[k]) for k in ("ratio", "pair_ratio", "collect_ms", "learn_ms", "bound"))
    assert 0 < li["idle_fraction"]["median"] < 1

    pss = r["peak_pss"]
    assert positive(pss["baseline_mib"])
    for name in ("multi_fork", "async_vector_env"):
        assert all(positive(pss[name][k]) for k in ("peak_mib", "processes", "samples", "steps_per_s"))
        assert pss[name]["peak_mib"] >= pss["baseline_mib"] * 0.5

    assert {"double_buffering_ratio", "publish_ms_5M", "pull_only_on_change", "first_fragment_s_spawn"} <= set(
        r["targets"]
    )
    assert "MISSED" in lifecycle.report(r) or "met" in lifecycle.report(r)

    assert lifecycle.leftover_workers() == []
    assert multiprocessing.active_children() == []
    helpers = ("resource_tracker", "forkserver")
    assert [
        p
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and not any(h in " ".join(p.cmdline()) for h in helpers)
    ] == []
