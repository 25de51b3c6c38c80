"""The training command line: smoke runs per algorithm, resume, evaluation, bad input, Ctrl-C."""

import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from zoo import presets
from zoo.cli import main
from zoo.run import load_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]


def rows(run: pathlib.Path):
    with open(run / "progress.csv", newline="") as file:
        return list(csv.DictReader(file))


def train(run, *args):
    return main(["train", *args, "--run-dir", str(run), "--no-progress"])


SMOKE = {
    "ppo": "ppo --env CartPole-v1 --steps 1024 --n-envs 4 --set n_steps=32 --set epochs=2".split(),
    "ppo-recurrent": "ppo --env zoo/CartPoleNoVel-v0 --steps 1024 --n-envs 4 --set n_steps=32 --set epochs=2".split(),
    "a2c": "a2c --env CartPole-v1 --steps 1024 --collector multi --n-actors 2 --n-envs 4 --set start_method=fork".split(),
    "reinforce": (
        "reinforce --env CartPole-v1 --steps 1024 --collector single --n-envs 4 --set n_steps=64 "
        "--set start_method=fork"
    ).split(),
    "sac": "sac --env Pendulum-v1 --steps 400 --set learning_starts=200 --set batch_size=32 --set hidden=32,32".split(),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(SMOKE))
def test_smoke_train_then_eval(tmp_path, capsys, name):
    run = tmp_path / "run"
    assert train(run, *SMOKE[name], "--eval-every", "512", "--eval-episodes", "2") == 0
    out = capsys.readouterr().out
    assert "final evaluation" in out and str(run / "last.pt") in out
    table = rows(run)
    steps = [int(r["env_steps"]) for r in table]
    assert steps == sorted(steps) and steps[-1] >= int(SMOKE[name][SMOKE[name].index("--steps") + 1])
    assert [r for r in table if r["eval_return"]], "no evaluation row"
    for name_ in ("config.json", "progress.csv", "curve.png", "last.pt", "best.pt"):
        assert (run / name_).is_file(), name_
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["counters"]["env_steps"] == steps[-1]
    assert set(checkpoint["rng"]) == {"torch", "numpy", "python"}
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "2 deterministic episodes: return mean" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_sac_checkpoint_holds_targets_temperature_and_replay(tmp_path):
    run = tmp_path / "run"
    assert train(run, *SMOKE["sac"], "--eval-every", "400", "--eval-episodes", "1") == 0
    learner = load_checkpoint(run / "last.pt")["learner"]
    for key in (
        "actor",
        "q1",
        "q2",
        "q1_target",
        "q2_target",
        "log_alpha",
        "policy_optimizer",
        "q_optimizer",
        "alpha_optimizer",
    ):
        assert key in learner, key
    assert learner["buffer"].rew.shape == (400,)
    assert not torch.equal(
        learner["q1"]["net.0.weight"] if "net.0.weight" in learner["q1"] else next(iter(learner["q1"].values())),
        next(iter(learner["q1_target"].values())),
    ), "the target critic must lag the critic"
    assert learner["log_alpha"].item() != 0.0  # alpha_init 1.0 -> log 0, moved by the temperature loss
    assert not bool(learner["actor"]["random_actions"]), "warm-up ended, random actions must be off"


@pytest.mark.timeout(180)
def test_resume_continues_csv_optimizer_and_counters(tmp_path, capsys):
    run = tmp_path / "run"
    base = [
        "ppo",
        "--env",
        "CartPole-v1",
        "--n-envs",
        "4",
        "--set",
        "n_steps=32",
        "--set",
        "epochs=2",
        "--eval-every",
        "1024",
        "--eval-episodes",
        "3",
        "--set",
        "log_every=256",
    ]
    assert train(run, *base, "--steps", "1024") == 0
    first = load_checkpoint(run / "last.pt")
    saved_rows = rows(run)
    saved_eval = float(saved_rows[-1]["eval_return"])
    # The saved model evaluates to the saved evaluation (same weights, same fixed-seed episodes).
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--episodes", "3"]) == 0
    assert f"return mean {saved_eval:.2f}" in capsys.readouterr().out

    assert main(["train", "--resume", str(run), "--steps", "2048", "--no-progress"]) == 0
    second = load_checkpoint(run / "last.pt")
    table = rows(run)
    assert table[: len(saved_rows)] == saved_rows, "the CSV must be appended, not rewritten"
    resumed = [int(r["env_steps"]) for r in table[len(saved_rows) :]]
    assert resumed and resumed[0] > 1024 and resumed[-1] >= 2048 and resumed == sorted(resumed)
    c1, c2 = first["counters"], second["counters"]
    assert c2["updates"] == c1["updates"] + (2048 - 1024) // 128
    assert c2["env_steps"] >= 2048 and c2["wall_time"] > c1["wall_time"] and c2["sessions"] == 2
    step1 = next(iter(first["learner"]["optimizer"]["state"].values()))["step"]
    step2 = next(iter(second["learner"]["optimizer"]["state"].values()))["step"]
    assert step2 == step1 + 2 * (2048 - 1024) // 128, "Adam's step count must continue, not restart"
    assert [r["eval_return"] for r in table if r["eval_return"]][-1] != ""
    config = (run / "config.json").read_text()
    assert '"resumed"' in config and "--resume" in config


DEFAULT_ENVS = {"ppo": "CartPole-v1", "a2c": "CartPole-v1", "reinforce": "CartPole-v1", "sac": "Pendulum-v1"}
PRESETS = [(p.name, p.algo, DEFAULT_ENVS[p.algo] if p.env == "*" else p.env) for p in presets.presets()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("algo, env", [p[1:] for p in PRESETS], ids=[p[0] for p in PRESETS])
def test_every_preset_resumes_and_continues_its_counters_and_curves(tmp_path, algo, env):
    if env.startswith("ALE/"):
        pytest.importorskip("ale_py", reason="the Atari extra is not installed: pip install -e '.[atari]'")
    _, config = presets.resolve(algo, env, {})
    workers = config["n_actors"] if config.get("collector") in ("multi", "distributed") else 1
    steps = max(300, config["n_envs"] * config["n_steps"] * workers)  # one batch at least
    run = tmp_path / "run"
    options = ["--steps", str(steps), "--eval-every", str(steps), "--eval-episodes", "1", "--set", "start_method=fork"]
    assert train(run, algo, "--env", env, *options) == 0
    first, saved = load_checkpoint(run / "last.pt"), rows(run)
    assert main(["train", "--resume", str(run), "--steps", str(2 * steps), "--no-progress"]) == 0
    second, table = load_checkpoint(run / "last.pt"), rows(run)
    assert table[: len(saved)] == saved and len(table) > len(saved), "the curve is continued, not rewritten"
    c1, c2 = first["counters"], second["counters"]
    assert c2["sessions"] == 2 and c2["env_steps"] >= 2 * steps > c1["env_steps"] >= steps
    assert int(table[-1]["env_steps"]) == c2["env_steps"]


BAD = [
    (["train", "dqn", "--env", "CartPole-v1"], "unknown algorithm 'dqn'; expected one of ppo, a2c, reinforce, sac"),
    (["train", "ppo", "--env", "NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
    (["train", "sac", "--env", "CartPole-v1"], "sac needs a continuous (1-D Box) action space"),
    (["train", "ppo", "--env", "Pendulum-v1"], "ppo in the zoo needs a Discrete action space"),
    (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "learning_rate=1"],
        "unknown key 'learning_rate' for ppo; valid keys: ",
    ),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "lr=fast"], "lr expects a number, found 'fast'"),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "lr"], "--set expects key=value, found 'lr'"),
    (["train", "ppo", "--env", "CartPole-v1", "--set", "buffer_size=10"], "unknown key 'buffer_size' for ppo"),
    (
        ["train", "ppo", "--env", "CartPole-v1", "--collector", "multi", "--n-envs", "5"],
        "must be a multiple of n_actors",
    ),
    (
        ["train", "ppo", "--env", "CartPole-v1", "--set", "collector=many"],
        "collector must be one of same, single, multi",
    ),
    (["train", "ppo"], "train needs ALGO and --env ENV_ID (or --resume RUN_DIR)"),
    (["train", "--resume", "no/such/run"], "--resume no/such/run: no last.pt there"),
    (["eval", "no/such/run"], "no/such/run: no such run folder or checkpoint"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_command_lines_are_one_line_errors_before_anything_starts(tmp_path, capsys, argv, message):
    children = psutil.Process().children(recursive=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(argv) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists(), "nothing may start (no run folder) on bad input"
    assert psutil.Process().children(recursive=True) == children


@pytest.mark.timeout(30)
def test_unknown_key_error_lists_the_valid_keys(capsys):
    assert main(["train", "ppo", "--env", "CartPole-v1", "--set", "lr_rate=1"]) == 2
    err = capsys.readouterr().err
    for key in presets.valid_keys("ppo"):
        assert key in err
    assert "buffer_size" not in err  # a sac key


@pytest.mark.timeout(30)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(capsys):
    assert main(["train", "ppo", "--env", "CartPole-v1", "--device", "cuda"]) == 2
    assert "this machine has no CUDA device" in capsys.readouterr().err


def test_every_preset_loads_and_list_shows_them(capsys):
    found = presets.presets()
    pairs = {(p.algo, p.env) for p in found}
    for pair in [
        ("ppo", "CartPole-v1"),
        ("a2c", "CartPole-v1"),
        ("reinforce", "CartPole-v1"),
        ("ppo", "Acrobot-v1"),
        ("sac", "Pendulum-v1"),
        ("sac", "zoo/ContinuousCartPole-v0"),
        ("ppo", "zoo/CartPoleNoVel-v0"),
    ]:
        assert pair in pairs, pair
    for algo in presets.ALGOS:
        assert (algo, "*") in pairs, f"{algo} has no default preset"
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ppo on CartPole-v1" in out and "lr=0.001" in out


def test_set_overrides_and_types():
    assert presets.parse_assignments(["lr=1e-3", "hidden=32,32", "shared=true", "target_kl=none"], "ppo") == {
        "lr": 1e-3,
        "hidden": (32, 32),
        "shared": True,
        "target_kl": None,
    }
    _, config = presets.resolve("ppo", "CartPole-v1", {"epochs": 3})
    assert config["epochs"] == 3 and config["n_envs"] == 8 and "buffer_size" not in config
    _, fallback = presets.resolve("ppo", "MountainCar-v0", {})
    assert fallback["n_steps"] == 128  # the default preset


@pytest.mark.timeout(120)
def test_video_of_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg", reason="the video extra (imageio[ffmpeg]) is part of the test extra")
    run = tmp_path / "run"
    assert train(run, *SMOKE["ppo"], "--steps", "256", "--eval-every", "256", "--eval-episodes", "1") == 0
    video = tmp_path / "out.mp4"
    assert main(["eval", str(run), "--episodes", "1", "--video", str(video)]) == 0
    assert video.is_file() and video.stat().st_size > 1000
    assert "video:" in capsys.readouterr().out


def test_video_without_imageio_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(["eval", str(tmp_path / "missing.pt"), "--video", "x.mp4"]) == 2  # a missing file first
    from zoo.video import VideoUnavailable, check_available

    with pytest.raises(VideoUnavailable, match=r"imageio.*rollout-engine\[video\]"):
        check_available("x.mp4")


@pytest.mark.timeout(120)
def test_ctrl_c_saves_last_and_leaves_nothing_behind(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "zoo",
        "train",
        "a2c",
        "--env",
        "CartPole-v1",
        "--steps",
        "10000000",
        "--collector",
        "multi",
        "--n-actors",
        "2",
        "--n-envs",
        "4",
        "--set",
        "start_method=fork",
        "--eval-every",
        "1000000",
        "--run-dir",
        str(run),
        "--no-progress",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(psutil.Process(process.pid).children()) < 2:
            time.sleep(0.2)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) >= 2, "the workers did not start"
        time.sleep(2.0)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert f"resume with: python -m zoo train --resume {run}" in err
    assert "Traceback" not in err, err
    assert (run / "last.pt").is_file()
    steps = load_checkpoint(run / "last.pt")["counters"]["env_steps"]
    assert steps > 0
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive, f"workers left behind: {alive}"


@pytest.mark.timeout(120)
def test_a_checkpoint_saved_before_a_key_existed_still_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, *SMOKE["ppo-recurrent"], "--steps", "256", "--eval-every", "256", "--eval-episodes", "1") == 0
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["config"]["head"] == presets.KEYS["head"].default
    del checkpoint["config"]["head"]  # a key added after the first checkpoints were written
    torch.save(checkpoint, run / "old.pt")
    assert main(["eval", str(run / "old.pt"), "--episodes", "1"]) == 0
    assert "1 deterministic episodes" in capsys.readouterr().out
