"""benchmarks.learning's bookkeeping: what it reads from progress.csv and how the gates are judged."""

import csv

from benchmarks import learning


def write_progress(path, rows):
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, ["env_steps", "wall_time", "eval_return"])
        writer.writeheader()
        writer.writerows(rows)


def test_summarize_takes_final_best_and_first_reaching_evaluation(tmp_path):
    write_progress(
        tmp_path / "progress.csv",
        [
            {"env_steps": 2000, "wall_time": 1.0, "eval_return": ""},  # a row without evaluation
            {"env_steps": 10000, "wall_time": 5.0, "eval_return": 200.0},
            {"env_steps": 20000, "wall_time": 9.5, "eval_return": 480.0},
            {"env_steps": 30000, "wall_time": 14.0, "eval_return": 500.0},
            {"env_steps": 40000, "wall_time": 18.0, "eval_return": 450.0},
        ],
    )
    summary = learning.summarize(tmp_path / "progress.csv", 475)
    assert summary["final"] == 450.0 and summary["best"] == 500.0
    assert summary["first_step"] == 20000 and summary["first_time"] == 9.5
    assert summary["steps"] == 40000 and len(summary["curve"]) == 4


def test_summarize_without_reaching_the_threshold(tmp_path):
    write_progress(tmp_path / "progress.csv", [{"env_steps": 10000, "wall_time": 5.0, "eval_return": -300.0}])
    summary = learning.summarize(tmp_path / "progress.csv", -200)
    assert summary["first_step"] is None and summary["first_time"] is None and summary["final"] == -300.0


def run(final, best=None, first_time=None):
    return {
        "final": final,
        "best": best if best is not None else final,
        "first_time": first_time,
        "first_step": None if first_time is None else 1,
        "wall_time": 1.0,
        "collector": "same",
        "row": "x",
        "seed": 0,
        "curve": [],
    }


def test_gates_hold_on_all_but_one_in_five():
    rows = {row.name: row for row in learning.ROWS}
    ppo = rows["ppo-cartpole"]
    fast = [run(500, first_time=12), run(480, first_time=29), run(475, first_time=30), run(500, first_time=9)]
    assert ppo.check(fast + [run(300, first_time=None)])  # 4 of 5
    assert ppo.check(fast + [run(500, first_time=31)])  # one slow seed of five
    assert not ppo.check(fast[:3] + [run(500, first_time=31), run(474, first_time=12)])  # 3 of 5
    assert not ppo.check([run(500, first_time=12), run(500, first_time=31), run(500, first_time=10)])  # 2 of 3
    reinforce = rows["reinforce-cartpole"]
    good = [run(450, best=475), run(460, best=500), run(500, best=500), run(480, best=480)]
    assert reinforce.check(good + [run(100, best=480)])  # final >= 450 on 4/5, best >= 475 on all
    assert not reinforce.check(good + [run(500, best=470)])  # one seed never reached 475
    assert not reinforce.check(good[:3] + [run(440, best=500), run(100, best=480)])  # final on 3/5
    for name in ("a2c-cartpole", "ppo-acrobot"):
        row = rows[name]
        ok, bad = row.threshold, row.threshold - 1
        assert row.check([run(ok)] * 4 + [run(bad)]) and not row.check([run(ok)] * 3 + [run(bad)] * 2)
    assert rows["sac-pendulum"].seeds == (0, 1, 2)  # the slow rows run 3 seeds, and must hold on all
    assert rows["sac-pendulum"].check([run(-150), run(-199), run(-200)])
    assert not rows["sac-pendulum"].check([run(-150), run(-199), run(-201)])
    novel = rows["ppo-cartpolenovel"]
    within = [dict(run(500), steps=100_257)] * 4  # the batch that crosses 100k ends the run
    assert novel.check(within + [dict(run(300), steps=100_000)])
    assert not novel.check(within + [dict(run(500), steps=200_000)])  # the budget is 100k steps


def test_markdown_marks_a_missed_gate():
    results = [dict(run(500, first_time=10), row="ppo-cartpole", seed=s) for s in range(2)]
    results.append(dict(run(300, first_time=10), row="ppo-cartpole", seed=2))
    table = learning.markdown(results)
    assert "| CartPole-v1 | ppo (same) | 3 | 500.0 / 500.0 / 300.0 |" in table and "**no**" in table
