import pytest

from zoo import demo


@pytest.mark.timeout(120)
def test_demo_main_job_runs_and_reports(capsys):
    demo.main(["--updates", "50", "--n-envs", "4", "--n-steps", "16"])
    out = capsys.readouterr().out
    assert "update   50" in out and "mean return" in out
    assert "greedy evaluation over 10 episodes" in out
