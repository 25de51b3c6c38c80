"""Atari (the ``atari`` extra): preprocessing, the native vector env against the Python one, the CLI."""

import builtins
import csv
import importlib.util

import numpy as np
import pytest
import torch

from zoo import atari

needs_ale = pytest.mark.skipif(
    importlib.util.find_spec("ale_py") is None, reason='needs ale-py: pip install "rollout-engine[atari]"'
)
PONG = "ALE/Pong-v5"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """As the CLI trains: on a busy 2-core machine two intra-op threads make each conv 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_missing_ale_py_names_the_extra(monkeypatch, capsys, tmp_path):
    from zoo.cli import main

    real_import = builtins.__import__

    def no_ale(name, *args, **kwargs):
        if name == "ale_py" or name.startswith("ale_py."):
            raise ImportError("No module named 'ale_py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ale)
    for make in (lambda: atari.make_atari(PONG), lambda: atari.make_atari_vector(PONG, 2)):
        with pytest.raises(ImportError, match=r'pip install "rollout-engine\[atari\]"'):
            make()
    # The CLI says so in one line, before anything starts.
    assert main(["train", "ppo", "--env", PONG, "--run-dir", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
    assert 'pip install "rollout-engine[atari]"' in capsys.readouterr().err


@needs_ale
def test_old_ale_py_has_no_native_vector_env(monkeypatch):
    monkeypatch.setattr(atari, "native_vector_available", lambda: False)
    with pytest.raises(ImportError, match=r"ale-py >= 0\.12"):
        atari.make_atari_vector(PONG, 2)


@needs_ale
def test_make_atari_preprocessing_and_render_mode():
    env = atari.make_atari(PONG, seed=0, render_mode="rgb_array")
    try:
        assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
        assert env.action_space.n == 6
        obs, _ = env.reset(seed=1)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert env.render().shape == (210, 160, 3)  # the full colour frame, for eval --video
    finally:
        env.close()


@needs_ale
def test_vector_env_matches_python_env():
    # Deterministic starts (no no-ops, no sticky actions): the same actions must give the same
    # frames, rewards and episode ends. The stacks differ only in padding after the reset
    # (gymnasium repeats the first frame, ale-py pads with black frames) until 3 steps have passed.
    env = atari.make_atari(PONG, noop_max=0)
    vector = atari.make_atari_vector(PONG, 1, noop_max=0)
    try:
        assert vector.single_observation_space == env.observation_space
        assert vector.single_action_space == env.action_space
        assert vector.metadata["autoreset_mode"] == atari.gym.vector.AutoresetMode.SAME_STEP
        obs, _ = env.reset(seed=0)
        batch, _ = vector.reset(seed=[0])  # a list of per-env seeds, as the collectors pass
        np.testing.assert_array_equal(batch[0, -1], obs[-1])
        rng = np.random.default_rng(0)
        for t in range(400):
            action = int(rng.integers(6))
            obs, rew, term, trunc, _ = env.step(action)
            batch, rews, terms, truncs, _ = vector.step(np.array([action]))
            frames = slice(None) if t >= 3 else slice(-1, None)
            np.testing.assert_array_equal(batch[0, frames], obs[frames], err_msg=f"step {t}")
            assert (rews[0], terms[0], truncs[0]) == (rew, term, trunc), f"step {t}"
    finally:
        env.close()
        vector.close()


@needs_ale
def test_vector_env_is_one_batch_of_same_rollout():
    from rollout import same
    from zoo.actors import AtariConv

    torch.manual_seed(0)
    actor = AtariConv(6)
    big_seed = 2**32 - 1  # collectors derive unsigned 32-bit seeds; ale-py takes int32 ones
    factory = lambda seed: atari.make_atari_vector(PONG, 3, seed)  # noqa: E731
    with same.rollout(factory, actor, 16, n_envs=1, seed=big_seed) as feed:
        first = next(feed).clone()  # the collector's buffer is overwritten by the next next()
        second = next(feed)
        assert first.state.obs.shape == (17, 3, 4, 84, 84) and first.state.obs.dtype == torch.uint8
        assert first.actor["logits"].shape == (17, 3, 6)
        # Row 0 of a fragment is row T of the one before; each row is one more step of the stack
        # (no episode of Pong ends within 32 steps).
        assert torch.equal(first.state.obs[-1], second.state.obs[0])
        assert first.state.fin[0].all() and not first.state.fin[1:].any() and not second.state.fin.any()
        obs = torch.cat([first.state.obs, second.state.obs[1:]])  # (33, 3, 4, 84, 84)
        assert torch.equal(obs[1:, :, :-1], obs[:-1, :, 1:])


@needs_ale
def test_vector_env_collection_is_reproducible():
    from rollout import same
    from zoo.actors import AtariConv

    def collect(seed):
        torch.manual_seed(0)
        actor = AtariConv(6)
        with same.rollout(lambda s: atari.make_atari_vector(PONG, 2, s), actor, 32, n_envs=1, seed=seed) as feed:
            return next(feed).clone()

    first, again, other = collect(1), collect(1), collect(2)
    assert torch.equal(first.state.obs, again.state.obs) and torch.equal(first.state.act, again.state.act)
    assert not torch.equal(first.state.obs, other.state.obs)  # no-op starts follow the seed


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@needs_ale
@pytest.mark.timeout(300)
def test_cli_trains_and_evaluates_pong(tmp_path, capsys):
    from zoo import presets
    from zoo.cli import main

    preset, config = presets.resolve("ppo", PONG, {})
    assert preset.name == "ppo-pong" and config["clip"] == 0.1 and config["n_envs"] == 8

    run = tmp_path / "run"
    status = main(
        [
            "train",
            "ppo",
            "--env",
            PONG,
            "--steps",
            "1024",
            "--n-envs",
            "2",
            "--set",
            "n_steps=64",
            "--set",
            "epochs=1",
            "--eval-every",
            "1024",
            "--eval-episodes",
            "1",
            "--run-dir",
            str(run),
            "--no-progress",
        ]
    )
    assert status == 0
    for name in ("config.json", "progress.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    table = _rows(run / "progress.csv")
    assert int(table[-1]["env_steps"]) >= 1024 and table[-1]["eval_return"]
    assert -21 <= float(table[-1]["eval_return"]) <= 21
    capsys.readouterr()
    assert main(["eval", str(run / "last.pt"), "--episodes", "1"]) == 0
    assert "1 deterministic episodes" in capsys.readouterr().out
