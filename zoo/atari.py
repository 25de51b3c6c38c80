"""Atari envs with the standard DQN preprocessing (needs ``ale-py``: ``pip install ale-py``)."""

from typing import Optional

import gymnasium as gym

__all__ = ["make_atari"]


def make_atari(env_id: str = "ALE/Pong-v5", seed: Optional[int] = None) -> gym.Env:
    """An ALE env with gymnasium's ``AtariPreprocessing`` and a stack of 4 frames.

    Observations are uint8 ``(4, 84, 84)`` (grey, 84x84, frame skip 4, no-op starts), the input
    of :class:`zoo.actors.AtariConv`. ``frameskip=1`` is passed to the ALE env because the
    preprocessing wrapper does the skipping (with max-pooling of the last two frames).
    """
    try:
        import ale_py
    except ImportError as error:
        raise ImportError("Atari envs need ale-py: pip install ale-py") from error
    gym.register_envs(ale_py)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0)
    env = gym.wrappers.AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_obs=True, noop_max=30)
    env = gym.wrappers.FrameStackObservation(env, 4)
    if seed is not None:
        env.reset(seed=seed)
    return env
