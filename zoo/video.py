"""Headless mp4 recording of an actor's deterministic episode (the ``video`` extra: ``imageio[ffmpeg]``)."""

import os
from typing import Callable

import numpy as np
import torch

import rollout

__all__ = ["VideoUnavailable", "check_available", "record"]


class VideoUnavailable(ImportError):
    """imageio or its ffmpeg plugin is missing."""


def check_available(path: os.PathLike) -> None:
    """Raise :class:`VideoUnavailable` with the install command when mp4 writing is impossible."""
    try:
        import imageio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        raise VideoUnavailable(
            f'--video {path} needs imageio with its ffmpeg plugin: pip install "rollout-engine[video]" '
            "(or pip install imageio imageio-ffmpeg)"
        ) from None


@torch.no_grad()
def record(
    make: Callable[[], object],
    actor: rollout.Actor,
    path: os.PathLike,
    *,
    seed: int = 0,
    fps: int = 30,
    max_steps: int = 10_000,
) -> int:
    """Run one deterministic episode of ``actor`` on ``make()`` (an env with ``render_mode="rgb_array"``) into ``path``.

    The actor is stepped exactly as the collectors step it: inputs ``(1, 1, ...)``, ``fin`` True
    at the first step, the recurrent state carried. Returns the number of frames written.
    """
    check_available(path)
    import imageio

    env = make()
    previous = actor.deterministic
    actor.deterministic, hx = True, None
    try:
        obs, _ = env.reset(seed=seed)
        act, rew, fin, stepno = None, 0.0, True, 0
        frames = [env.render()]
        for _ in range(max_steps):
            x = torch.as_tensor(np.asarray(obs)).unsqueeze(0).unsqueeze(0)
            a = torch.zeros(1, 1, dtype=torch.int64) if act is None else act
            action, hx, _ = actor.step(
                torch.tensor([[stepno]]),
                x,
                a,
                torch.tensor([[rew]], dtype=torch.float32),
                torch.tensor([[fin]]),
                hx=hx,
                virtual=False,
            )
            obs, rew, terminated, truncated, _ = env.step(action[0, 0].cpu().numpy())
            frames.append(env.render())
            act, fin, stepno = action, False, stepno + 1
            if terminated or truncated:
                break
        imageio.mimwrite(path, [np.asarray(frame) for frame in frames], fps=fps, macro_block_size=1)
    finally:
        actor.deterministic = previous
        env.close()
    return len(frames)
