"""The benchmark tool runs and reports (a smoke test: no speed is asserted)."""

import json
import multiprocessing
import os

import pytest

from benchmarks import throughput
from benchmarks.throughput import Config, Group


@pytest.mark.timeout(240)
def test_quick_run_reports_every_configuration(tmp_path, capsys):
    report = throughput.main(["--quick", "--out", str(tmp_path)])
    with open(tmp_path / "throughput.json") as f:
        saved = json.load(f)
    assert saved["groups"] == json.loads(json.dumps(report["groups"]))
    assert saved["machine"]["cores"] == os.cpu_count() and len(saved["machine"]["loadavg_after"]) == 3
    assert saved["versions"]["torch"] and saved["settings"]["torch_threads"] == 1
    measured = {(r["env"], r["collector"], r["total_envs"]) for g in saved["groups"] for r in g["results"]}
    assert {
        ("cartpole", "hand", 4),
        ("cartpole", "same", 8),
        ("cartpole", "multi", 8),
        ("pixels", "same", 2),
    } <= measured
    for group in saved["groups"]:
        for r in group["results"]:
            assert len(r["samples"]) == 2 and all(x > 0 for x in r["samples"])
            assert r["min"] <= r["median"] <= r["max"]
    same8 = next(r for g in saved["groups"] for r in g["results"] if r["label"] == "same 8")
    assert set(same8["ratios"]) == {"hand", "gym-sync"}
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "env-steps/s" in out and "same 8" in out and "multi 2x4" in out
    assert multiprocessing.active_children() == []


def test_ratios_pair_measurements_of_the_same_round():
    a = Config("cartpole", "mlp", "same", 8, 1)
    h = Config("cartpole", "mlp", "hand", 8, 1)
    m1 = Config("cartpole", "mlp", "multi", 8, 1)
    m2 = Config("cartpole", "mlp", "multi", 8, 2)
    other = Config("cartpole", "mlp", "hand", 16, 1)
    group = Group(
        "g",
        [a, h, m1, m2, other],
        results={
            a: [90.0, 40.0, 100.0],
            h: [100.0, 50.0, 100.0],
            m1: [10.0, 10.0, 10.0],
            m2: [19.0, 18.0, 20.0],
            other: [1.0] * 3,
        },
    )
    r = throughput.ratios(group)
    assert r[a]["hand"] == {"median": 0.9, "min": 0.8, "max": 1.0}  # per round, not ratio of medians (0.9)
    assert r[m2]["scaling"] == {"median": 1.9, "min": 1.8, "max": 2.0}
    assert r[m2]["hand"]["median"] == 19.0  # against the baseline with the same total envs (16)
    assert "same" not in r[m2]


def test_inapplicable_configurations_are_skipped_with_a_reason():
    assert "one worker" in throughput._skip(Config("cartpole", "mlp", "single", 8, 2), throughput.ENVS["cartpole"])
    assert "pixel" in throughput._skip(Config("pixels", "mlp", "same", 8, 1), throughput.ENVS["pixels"])
    assert "batched" in throughput._skip(
        Config("cartpole-batched", "mlp", "gym-sync", 8, 1), throughput.ENVS["cartpole-batched"]
    )
    assert throughput._skip(Config("cartpole", "mlp", "same", 8, 1), throughput.ENVS["cartpole"]) is None


def test_targets_read_the_median_ratios_of_the_named_configurations():
    def result(collector, n_envs, n_actors, ratios, env="cartpole"):
        return {
            "env": env,
            "policy": "mlp",
            "collector": collector,
            "n_envs": n_envs,
            "n_actors": n_actors,
            "ratios": ratios,
        }

    groups = [
        {
            "results": [
                result(
                    "same",
                    8,
                    1,
                    {
                        "hand": {"median": 0.95, "min": 0.9, "max": 1.0},
                        "gym-sync": {"median": 0.99, "min": 0.9, "max": 1.1},
                    },
                ),
                result("multi", 8, 2, {"same per worker": {"median": 1.8, "min": 1.7, "max": 1.9}}),
                result("multi", 8, 2, {"scaling": {"median": 1.7, "min": 1.6, "max": 1.9}}, env="busy500"),
            ]
        }
    ]
    checks = throughput.targets(groups)
    assert checks["same >= 0.9x hand, 8 envs"] == {
        "value": 0.95,
        "min": 0.9,
        "max": 1.0,
        "limit": 0.9,
        "met": True,
        "group": None,
    }
    assert checks["same >= 1.0x gym-sync, 8 envs"]["met"] is False
    assert checks["multi 2x8 >= 1.75x same with 8 envs"]["met"] is True
    assert checks["busy500: multi 2x8 >= 1.8x multi 1x8"]["met"] is False
    assert "same >= 0.9x hand, 64 envs" not in checks  # not measured: not reported as met


def test_markdown_lists_targets_results_and_skips():
    report = {
        "groups": [
            {
                "name": "g",
                "results": [
                    {
                        "env": "cartpole",
                        "policy": "mlp",
                        "collector": "same",
                        "n_envs": 8,
                        "n_actors": 1,
                        "label": "same 8",
                        "median": 100.0,
                        "min": 90.0,
                        "max": 110.0,
                        "ratios": {"hand": {"median": 0.95, "min": 0.9, "max": 1.0}},
                    },
                ],
                "skipped": [
                    {"env": "cartpole", "policy": "mlp", "label": "envpool 8", "reason": "envpool not installed"}
                ],
            }
        ]
    }
    text = throughput.markdown(report)
    assert "| same >= 0.9x hand, 8 envs | 0.95 [0.90-1.00] | yes | g |" in text
    assert "| cartpole / mlp | **same 8** | 100 [90-110] | /hand 0.95 [0.90-1.00] |" in text
    assert "| cartpole / mlp | envpool 8 | skipped | envpool not installed |" in text


@pytest.mark.timeout(120)
def test_the_lean_loop_and_its_multi_process_ceiling_run_and_leave_no_process():
    lean = throughput.measure(Config("cartpole", "lean", "lean", 2, 1, T=8), 0.2, 0.05)
    ceiling = throughput.measure(Config("cartpole", "lean", "ceiling", 2, 2, T=8), 0.2, 0.05)
    assert lean > 0 and ceiling > 0
    assert multiprocessing.active_children() == []
    # they call the lean policy's network directly: other policies are skipped, with the reason
    reason = throughput._skip(Config("cartpole", "mlp", "lean", 8, 1), throughput.ENVS["cartpole"])
    assert "lean policy" in reason


@pytest.mark.timeout(120)
@pytest.mark.parametrize("collector, n_actors", [("lean", 1), ("single", 1), ("multi", 2), ("ceiling", 2)])
def test_worker_collectors_and_the_lean_loop_step_one_batched_env_per_worker(collector, n_actors):
    cfg = Config("cartpole-batched", "lean", collector, 16, n_actors, T=8)
    assert throughput._skip(cfg, throughput.ENVS["cartpole-batched"]) is None
    assert throughput.measure(cfg, 0.2, 0.05) > 0
    assert multiprocessing.active_children() == []


def test_the_large_batch_targets_are_read_from_the_lean_policy_rows():
    def result(collector, n_envs, n_actors, ratios):
        return {
            "env": "cartpole-batched",
            "policy": "lean",
            "collector": collector,
            "n_envs": n_envs,
            "n_actors": n_actors,
            "ratios": ratios,
        }

    groups = [
        {
            "name": "large-batch",
            "paired": True,
            "results": [result("same", 1024, 1, {"lean": {"median": 0.97, "min": 0.93, "max": 0.99}})],
        },
        {
            "name": "large-batch-workers",
            "results": [result("multi", 1024, 2, {"lean per worker": {"median": 1.7, "min": 1.6, "max": 1.9}})],
        },
    ]
    checks = throughput.targets(groups)
    assert checks["batched 1024: same >= 0.95x lean"]["met"] is True
    assert checks["batched: multi 2x1024 >= 1.8x lean 1024 (0.9x two lean loops)"]["met"] is False
    assert "batched 512: same >= 0.95x lean" not in checks  # not measured: no verdict


@pytest.mark.timeout(120)
def test_the_distributed_collector_runs_and_is_skipped_without_ray():
    ray = pytest.importorskip("ray", reason="Ray (the 'ray' extra) is not installed: pip install -e '.[ray]'")
    try:
        rate = throughput.measure(Config("cartpole", "lean", "distributed", 2, 2, T=8), 0.5, 0.1)
    finally:
        ray.shutdown()  # the benchmark's instance lives for its run; later tests start their own
    assert rate > 0
    # a batched env is one object per worker, as in multi
    reason = throughput._skip(
        Config("cartpole-batched", "mlp", "distributed", 8, 2), throughput.ENVS["cartpole-batched"]
    )
    assert reason is None
