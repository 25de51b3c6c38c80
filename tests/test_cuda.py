"""The GPU path, on a GPU: every collector delivering to a CUDA learner, weights from a CUDA actor
reaching CPU workers, pinned buffers, checkpoints across devices and the CLI with ``--device cuda``.

Marked ``cuda``: skipped, with the reason, where torch sees no CUDA device (CI); run on a lent
device by ``benchmarks/gpu.py``. On the CPU the same delivery logic is checked with a stand-in
stream in ``tests/test_delivery.py``.
"""

import importlib.util
import itertools
import os
import subprocess
import sys

import optree
import pytest
import torch

from rollout import multi, same, single
from tests.toys import Corridor, Counter
from zoo.actors import CategoricalMLP

pytestmark = [pytest.mark.cuda, pytest.mark.timeout(180)]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, N_ENVS, N_BATCHES = 16, 4, 8


def collector(name, device, actor=None):
    actor = actor if actor is not None else Counter()
    make = lambda: Corridor(length=5)  # noqa: E731
    if name == "same":
        return same.rollout(make, actor, T, n_envs=N_ENVS, seed=3, device=device)
    if name == "single":
        return single.rollout(make, actor, T, N_ENVS, seed=3, device=device, start_method="spawn")
    if name == "multi":  # one worker, two fragments a batch: a deterministic order
        return multi.rollout(make, actor, T, 1, N_ENVS, 2, seed=3, device=device, start_method="spawn")
    from rollout import distributed

    return distributed.rollout(make, actor, T, 1, N_ENVS, 1, seed=3, device=device, sync=True)


def leaves(batch):
    return optree.tree_leaves(batch[:5])


@pytest.mark.parametrize("name", ["same", "single", "multi", "distributed"])
def test_a_cuda_learner_that_never_synchronises_sees_the_fragments_of_a_cpu_run(name, clean):
    if name == "distributed" and importlib.util.find_spec("ray") is None:
        pytest.skip("Ray (the 'ray' extra) is not installed")
    with collector(name, None) as feed:
        expected = [[x.clone() for x in leaves(b)] for b in itertools.islice(feed, N_BATCHES)]
    with collector(name, "cuda") as feed:
        # the learner's work is queued on the stream behind each copy; nothing synchronises until the end
        got = [[x.clone() for x in leaves(b)] for b in itertools.islice(feed, N_BATCHES)]
    torch.cuda.synchronize()
    for k, (a, b) in enumerate(zip(expected, got)):
        assert all(y.device.type == "cuda" for y in b)
        assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b)), f"batch {k} differs from the CPU run's"


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_weights_published_from_a_cuda_actor_reach_cpu_multi_workers(start_method, clean):
    actor = CategoricalMLP(n_obs=1, n_act=2).cuda()
    make = lambda: Corridor(length=5)  # noqa: E731
    with multi.rollout(make, actor, 4, 2, 2, 1, seed=0, device="cuda", start_method=start_method) as feed:
        next(feed)
        with torch.no_grad():
            for p in actor.parameters():
                p.zero_()  # every logit 0, every value 0
        values = []
        for batch in itertools.islice(feed, 20):
            if int(batch.version.min()) >= 1:
                values.append(batch.actor["value"])
        assert values and all(torch.count_nonzero(v) == 0 for v in values)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray (the 'ray' extra) is not installed")
def test_weights_published_from_a_cuda_actor_reach_distributed_workers():
    from rollout import distributed

    actor = CategoricalMLP(n_obs=1, n_act=2).cuda()
    make = lambda: Corridor(length=5)  # noqa: E731
    with distributed.rollout(make, actor, 4, 2, 2, 1, seed=0, device="cuda", sync=True) as feed:
        next(feed)
        with torch.no_grad():
            for p in actor.parameters():
                p.zero_()
        batch = next(feed)
        assert int(batch.version.min()) == 1 and torch.count_nonzero(batch.actor["value"]) == 0


def test_pinned_buffers_are_pinned():
    with same.rollout(lambda: Corridor(length=5), Counter(), T, n_envs=N_ENVS, seed=0, pinned=True) as feed:
        batch = next(feed)
        assert all(x.is_pinned() for x in optree.tree_leaves(batch))


def train(*args):
    done = subprocess.run(
        [sys.executable, "-m", "zoo", "train", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_checkpoint_round_trip_gpu_cpu_gpu(tmp_path):
    """Trained on the GPU, resumed on the CPU (map_location), resumed on the GPU (optimiser state moved)."""
    run = str(tmp_path / "run")
    train("ppo", "--env", "CartPole-v1", "--steps", "4096", "--device", "cuda", "--run-dir", run)
    train("--resume", run, "--steps", "8192", "--device", "cpu")
    train("--resume", run, "--steps", "12288", "--device", "cuda")
    checkpoint = torch.load(os.path.join(run, "last.pt"), map_location="cpu", weights_only=False)
    assert checkpoint["counters"]["env_steps"] >= 12288 and checkpoint["counters"]["sessions"] == 3
    assert "cuda" in checkpoint["rng"]  # the CUDA generator state is saved with the others


def test_the_cli_trains_ppo_on_cartpole_on_cuda(tmp_path):
    stdout = train("ppo", "--env", "CartPole-v1", "--device", "cuda", "--run-dir", str(tmp_path / "run"))
    assert "final evaluation 500.0" in stdout


@pytest.mark.parametrize(
    "algo, env",
    [
        ("ppo", "CartPole-v1"),
        ("a2c", "CartPole-v1"),
        ("reinforce", "CartPole-v1"),
        ("sac", "Pendulum-v1"),
        ("ppo", "zoo/CartPoleNoVel-v0"),  # the recurrent preset
    ],
)
def test_every_algorithm_trains_and_resumes_on_cuda(algo, env, tmp_path):
    run = str(tmp_path / "run")
    train(algo, "--env", env, "--steps", "3000", "--eval-every", "1500", "--device", "cuda", "--run-dir", run)
    train("--resume", run, "--steps", "6000", "--device", "cuda")
    checkpoint = torch.load(os.path.join(run, "last.pt"), map_location="cpu", weights_only=False)
    assert checkpoint["counters"]["env_steps"] >= 6000
