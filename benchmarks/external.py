"""Optional external baselines for the throughput benchmark: TorchRL's collectors and envpool.

Every number is **env-steps per second** (rows of ``(observation, action, reward, done)``
recorded, summed over all envs) of a collector driving the same network as
:class:`zoo.actors.CategoricalMLP` (``n_obs -> 64 -> 64`` with Tanh, a policy head and a value
head; the action is sampled from the categorical), with one torch thread per process. Each
measurement first iterates for ``warmup`` seconds (at least one batch, which includes start-up
and the first reset), then counts whole batches until at least ``seconds`` have passed.

The dependencies are optional (the ``bench`` extra): torchrl and envpool are imported inside the
functions only, and the ``*_skip_reason`` functions say in one line why a baseline cannot run.
Importing torchrl sets the process-wide multiprocessing start method to ``"spawn"`` and its
multi-process collectors reset ``torch.get_num_threads()`` on shutdown; the functions here
restore both, so calling them does not change the caller's process.
"""

import contextlib
import functools
import inspect
import math
import multiprocessing
import time
import warnings
from typing import Iterable, Iterator, Optional

import torch

__all__ = ["torchrl_skip_reason", "envpool_skip_reason", "torchrl_throughput", "envpool_throughput"]

_TORCHRL_MISSING = "torchrl not installed (pip install -e '.[bench]')"
_ENVPOOL_MISSING = "envpool not installed (pip install envpool)"


def _reason(exc: BaseException, missing: str, packages: tuple) -> str:
    """One line: the install hint if one of ``packages`` is missing, else the error itself."""
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in packages:
        return missing
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{packages[0]} unusable: {type(exc).__name__}: {first_line}"


@contextlib.contextmanager
def _restore_process_globals():
    """Give back the multiprocessing start method and torch thread count found on entry."""
    start_method, n_threads = multiprocessing.get_start_method(allow_none=True), torch.get_num_threads()
    try:
        yield
    finally:
        if multiprocessing.get_start_method(allow_none=True) != start_method:
            multiprocessing.set_start_method(start_method, force=True)
        torch.set_num_threads(n_threads)


def _collector_classes():
    """``(single, multi_sync)``: the names of torchrl >= 0.14, else the older ones."""
    import torchrl.collectors as collectors

    single = getattr(collectors, "Collector", None) or collectors.SyncDataCollector
    multi = getattr(collectors, "MultiSyncCollector", None) or collectors.MultiSyncDataCollector
    return single, multi


def torchrl_skip_reason() -> Optional[str]:
    """``None`` when TorchRL's collectors and gym wrappers import, else a one-line reason."""
    try:
        with _restore_process_globals():
            import tensordict.nn  # noqa: F401
            import torchrl.envs  # noqa: F401

            _collector_classes()
    except Exception as exc:  # an optional dependency may fail in any way
        return _reason(exc, _TORCHRL_MISSING, ("torchrl", "tensordict"))
    return None


def envpool_skip_reason() -> Optional[str]:
    """``None`` when envpool imports (with its env registry), else a one-line reason."""
    try:
        import envpool

        envpool.make_gymnasium  # noqa: B018 - the API the baseline uses
    except Exception as exc:
        return _reason(exc, _ENVPOOL_MISSING, ("envpool",))
    return None


def _mlp(env_id: str):
    """A fresh :class:`zoo.actors.CategoricalMLP` for the gymnasium env's spaces."""
    import gymnasium

    from zoo.actors import CategoricalMLP

    env = gymnasium.make(env_id)
    try:
        return CategoricalMLP(math.prod(env.observation_space.shape), int(env.action_space.n))
    finally:
        env.close()


class _TorchRLPolicy(torch.nn.Module):
    """``observation -> (action, logits, state_value)`` through ``CategoricalMLP.step``.

    A plain module under a ``TensorDictModule``, not a ``ProbabilisticActor``: the forward pass
    and the sampling (``torch.multinomial``) are exactly the engine's actor, so the measurement
    compares the collectors, not two ways to sample. Actions are integers, so the envs are built
    with ``categorical_action_encoding=True`` (TorchRL's default for Discrete is one-hot).
    """

    def __init__(self, mlp: torch.nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, observation: torch.Tensor):
        action, _, info = self.mlp.step(None, observation, None, None, None, hx=(), virtual=False)
        return action, info["logits"], info["value"]


def _torchrl_env(env_id: str, n_envs: int, batching: str):
    """A TorchRL env of ``n_envs`` gymnasium envs stepped in the calling process.

    ``"vector"`` (default): ``GymWrapper`` over a gymnasium ``SyncVectorEnv`` in ``SAME_STEP``
    autoreset mode, the in-process batch TorchRL supports for gymnasium vector envs: one
    TensorDict per batch step, the faster of the two (so the baseline is not handicapped).
    ``"serial"``: ``SerialEnv`` of ``GymEnv``, TorchRL's own batched env, one TensorDict round
    trip per env and step (about 2-3x slower on CartPole). ``GymEnv(num_envs=...)`` is not used:
    it runs an ``AsyncVectorEnv``, one subprocess per env.
    """
    import gymnasium
    from torchrl.envs import GymEnv, GymWrapper, SerialEnv
    from torchrl.envs.libs.gym import set_gym_backend

    with set_gym_backend("gymnasium"):
        if batching == "serial":
            return SerialEnv(n_envs, functools.partial(GymEnv, env_id, categorical_action_encoding=True))
        if batching == "vector":
            envs = gymnasium.vector.SyncVectorEnv(
                [functools.partial(gymnasium.make, env_id)] * n_envs,
                autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
            )
            return GymWrapper(envs, categorical_action_encoding=True)
    raise ValueError(f"batching must be 'vector' or 'serial', found {batching!r}")


def _rate(frame_counts: Iterable[int], seconds: float, warmup: float) -> float:
    """Frames/s over whole batches of ``frame_counts`` after ``warmup`` s (at least one batch)."""
    batches: Iterator[int] = iter(frame_counts)
    start = time.perf_counter()
    for _ in batches:
        if time.perf_counter() - start >= warmup:
            break
    frames, start = 0, time.perf_counter()
    for count in batches:
        frames += count
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return frames / elapsed
    raise RuntimeError("the collector stopped yielding batches")


def torchrl_throughput(
    kind: str,
    env_id: str,
    n_workers: int,
    n_envs_per_worker: int,
    n_steps: int,
    seconds: float,
    warmup: float,
    *,
    batching: str = "vector",
) -> float:
    """Env-steps/s of a TorchRL collector with the ``CategoricalMLP`` policy.

    ``kind="sync"``: one ``Collector`` (``SyncDataCollector`` before torchrl 0.14) stepping a
    batch of ``n_envs_per_worker`` envs in this process (``n_workers`` must be 1).
    ``kind="multisync"``: ``MultiSyncCollector`` with ``n_workers`` worker processes (TorchRL's
    default start method, spawn) of ``n_envs_per_worker`` envs each, batches stacked over the
    workers. A batch is ``n_steps`` steps of every env (``frames_per_batch = n_steps * total
    envs``); its frames are counted once the collector yields it (the time to stack the worker
    batches included). ``batching`` chooses the in-process batch of envs, see
    :func:`_torchrl_env`. The collector is shut down and its workers joined before returning.
    """
    if kind not in ("sync", "multisync"):
        raise ValueError(f"kind must be 'sync' or 'multisync', found {kind!r}")
    if kind == "sync" and n_workers != 1:
        raise ValueError(f"kind='sync' steps its envs in this process: n_workers must be 1, found {n_workers}")
    with _restore_process_globals():
        from tensordict.nn import TensorDictModule

        single, multi = _collector_classes()
        torch.set_num_threads(1)
        policy = TensorDictModule(
            _TorchRLPolicy(_mlp(env_id)), in_keys=["observation"], out_keys=["action", "logits", "state_value"]
        )
        make_env = functools.partial(_torchrl_env, env_id, n_envs_per_worker, batching)
        options = dict(frames_per_batch=n_steps * n_envs_per_worker * n_workers, total_frames=-1)
        if kind == "sync":
            cls, env_fn = single, make_env
        else:
            cls, env_fn = multi, [make_env] * n_workers
            options.update(num_threads=1, num_sub_threads=1, cat_results="stack")
        if "auto_register_policy_transforms" in inspect.signature(cls.__init__).parameters:
            options["auto_register_policy_transforms"] = False  # else torchrl 0.14 warns about InitTracker
        collector = cls(env_fn, policy, **options)
        try:
            return _rate((batch.numel() for batch in collector), seconds, warmup)
        finally:
            collector.shutdown()
            for process in getattr(collector, "procs", ()):
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()


def envpool_throughput(
    env_id: str, n_envs: int, n_steps: int, seconds: float, warmup: float, *, num_threads: int = 0, seed: int = 0
) -> float:
    """Env-steps/s of a hand loop over envpool's gymnasium API in sync mode.

    One ``envpool.make_gymnasium(env_id, num_envs=n_envs)`` (``batch_size == num_envs``: every
    ``step`` waits for all envs; ``num_threads=0`` is envpool's default thread pool size), and per
    step one forward of the ``CategoricalMLP`` on the whole batch (one torch thread). Observations,
    actions, rewards, terminated/truncated flags, logits and values are written into preallocated
    ``(1+n_steps, n_envs, ...)`` tensors (the actions handed to envpool as a numpy view); a batch is
    ``n_steps * n_envs`` frames. envpool resets an env on the step after its episode ends (that
    step ignores the action and is counted like any other).
    """
    import envpool

    with _restore_process_globals(), torch.inference_mode():
        torch.set_num_threads(1)
        env = envpool.make_gymnasium(env_id, num_envs=n_envs, batch_size=n_envs, num_threads=num_threads, seed=seed)
        try:
            mlp = _mlp(env_id)
            with warnings.catch_warnings():  # gymnasium warns about envpool's float64 Box bounds
                warnings.simplefilter("ignore", UserWarning)
                first, _ = env.reset()
            rows = (1 + n_steps, n_envs)
            obs = torch.zeros(rows + first.shape[1:], dtype=torch.float32)
            act = torch.zeros(rows, dtype=torch.int64)
            rew = torch.zeros(rows, dtype=torch.float32)
            terminated, truncated = torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)
            logits = torch.zeros(rows + (mlp.policy.out_features,), dtype=torch.float32)
            value = torch.zeros(rows, dtype=torch.float32)
            obs[-1] = torch.from_numpy(first)
            actions = act.numpy()

            def fragments():
                while True:
                    obs[0], act[0], rew[0] = obs[-1], act[-1], rew[-1]
                    terminated[0], truncated[0] = terminated[-1], truncated[-1]
                    for t in range(n_steps):
                        a, _, info = mlp.step(None, obs[t : t + 1], None, None, None, hx=(), virtual=False)
                        act[t + 1], logits[t], value[t] = a[0], info["logits"][0], info["value"][0]
                        x, r, term, trunc, _ = env.step(actions[t + 1])
                        obs[t + 1] = torch.from_numpy(x)
                        rew[t + 1] = torch.from_numpy(r)
                        terminated[t + 1], truncated[t + 1] = torch.from_numpy(term), torch.from_numpy(trunc)
                    yield n_steps * n_envs

            return _rate(fragments(), seconds, warmup)
        finally:
            env.close()


def main() -> None:
    """Print the baselines on CartPole-v1 (T=128; 8 and 64 envs per worker; 2 workers)."""
    for n in (8, 64):
        for label, run, reason in (
            ("torchrl sync", lambda: torchrl_throughput("sync", "CartPole-v1", 1, n, 128, 5, 2), torchrl_skip_reason),
            (
                "torchrl multisync x2",
                lambda: torchrl_throughput("multisync", "CartPole-v1", 2, n, 128, 5, 3),
                torchrl_skip_reason,
            ),
            ("envpool", lambda: envpool_throughput("CartPole-v1", n, 128, 5, 2), envpool_skip_reason),
        ):
            why = reason()
            print(
                f"{label:22s} envs/worker={n:3d}: " + (f"skipped ({why})" if why else f"{run():9.0f} steps/s"),
                flush=True,
            )


if __name__ == "__main__":
    main()
