"""Atari envs with the standard DQN preprocessing: one at a time in Python, or batched in C++.

Both need the ``atari`` extra (``pip install "rollout-engine[atari]"``: ale-py >= 0.9, whose
wheels ship the ROMs, and opencv for the resizing) and give the same observations: uint8
``(4, 84, 84)``, the input of :class:`zoo.actors.AtariConv`.

* :func:`make_atari`: one gymnasium env, ``AtariPreprocessing`` (Mnih et al., 2015; Machado et
  al., 2018) then a stack of 4 frames; a factory of the collectors (``zoo.train.make_env`` uses
  it for every ``ALE/...`` id).
* :func:`make_atari_vector`: ale-py's native ``AtariVectorEnv`` (an envpool-style batched env:
  B emulators stepped by C++ threads, the same preprocessing in C++; ale-py >= 0.12), made
  ``SAME_STEP`` so that :func:`rollout.same.rollout` takes it as one batch of B columns. It
  collects 1.2x faster than 8 Python envs with ``AtariConv`` on 2 cores (benchmarks/README.md).

The preprocessing of both: frame skip 4 with the max of the last two frames, grey 84x84 frames,
up to 30 no-op actions after a reset, no sticky actions (``repeat_action_probability=0``), no
terminal on life loss, no FIRE at reset, rewards unclipped, episodes truncated after 108,000
emulator frames (the v5 default). One difference remains: after a reset, gymnasium's frame stack
repeats the first frame 4 times where the native env pads with 3 black frames.

Other games. The references (CleanRL's ``ppo_atari.py``, SB3's ``AtariWrapper``) also clip rewards
to their sign, press FIRE at reset and end an episode at every life lost, *for learning*, while
they report the game's own returns from a wrapper below those. We apply none of the three, and
say why: here the env's rewards and ``terminated`` are what the fragment records and what
``rollout.episodes``, ``stats()``, the CLI's logs and its deterministic evaluation read, so
clipping or life-loss terminals would change every number the CLI reports, not only what the loss
sees. Pong needs none of them (its rewards are already -1/+1, it has no lives and starts without
FIRE), and Pong is the only Atari preset. A preset for a game with lives and large rewards should
get them as learning-side transforms (clip in the loss's reward input, a life-loss mask beside
``terminated``) rather than env wrappers; that is not built yet.
"""

from typing import Any, Optional

import gymnasium as gym
import numpy as np

__all__ = [
    "make_atari",
    "make_atari_vector",
    "native_vector_available",
    "FRAME_SKIP",
    "SCREEN_SIZE",
    "NOOP_MAX",
    "STACK",
]

FRAME_SKIP, SCREEN_SIZE, NOOP_MAX, STACK = 4, 84, 30, 4
_INSTALL = 'pip install "rollout-engine[atari]"'
_NATIVE_SINCE = (0, 12)  # AtariVectorEnv with SAME_STEP autoreset and working partial resets


def _ale_py():
    """``ale_py``, its envs registered with gymnasium, or an ImportError naming the extra."""
    try:
        import ale_py
    except ImportError as error:
        raise ImportError(f"Atari envs need ale-py (the atari extra): {_INSTALL}") from error
    gym.register_envs(ale_py)
    return ale_py


def make_atari(
    env_id: str = "ALE/Pong-v5",
    seed: Optional[int] = None,
    render_mode: Optional[str] = None,
    *,
    noop_max: int = NOOP_MAX,
) -> gym.Env:
    """An ALE env with gymnasium's ``AtariPreprocessing`` and a stack of 4 frames.

    ``frameskip=1`` is passed to the ALE env because the preprocessing wrapper does the skipping
    (with max-pooling of the last two frames).

    Parameters
    ----------
    env_id : str
        A registered ALE id such as ``"ALE/Pong-v5"``.
    seed : int, optional
        Resets the env once with this seed.
    render_mode : str, optional
        Passed to the ALE env; ``"rgb_array"`` makes ``render()`` return the full colour frame
        (for ``python -m zoo eval --video``).
    noop_max : int
        Up to this many no-op actions after each reset (0: deterministic starts).

    Returns
    -------
    gymnasium.Env
        Observations uint8 ``(4, 84, 84)``, the ALE's ``Discrete`` minimal action set.

    Raises
    ------
    ImportError
        When ale-py (or opencv, which the preprocessing resizes with) is missing; the message
        names the extra to install.

    Examples
    --------
    >>> env = make_atari("ALE/Pong-v5", seed=0)  # doctest: +SKIP
    >>> env.observation_space  # doctest: +SKIP
    Box(0, 255, (4, 84, 84), uint8)
    """
    _ale_py()
    env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0, render_mode=render_mode)
    try:
        env = gym.wrappers.AtariPreprocessing(
            env,
            frame_skip=FRAME_SKIP,
            screen_size=SCREEN_SIZE,
            grayscale_obs=True,
            noop_max=noop_max,
            terminal_on_life_loss=False,
        )
    except gym.error.DependencyNotInstalled as error:  # opencv
        env.close()
        raise ImportError(f"Atari preprocessing needs opencv (the atari extra): {_INSTALL}") from error
    env = gym.wrappers.FrameStackObservation(env, STACK)
    if seed is not None:
        env.reset(seed=seed)
    return env


def _version(text: str) -> tuple:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def native_vector_available() -> bool:
    """Whether the installed ale-py has the native vector env :func:`make_atari_vector` needs (>= 0.12)."""
    try:
        from importlib import metadata

        return _version(metadata.version("ale-py")) >= _NATIVE_SINCE
    except Exception:  # not installed
        return False


class _Int32Seeds(gym.vector.VectorWrapper):
    """Accepts the seeds collectors pass to ``reset``: a list of 32-bit unsigned ints, one per env.

    ``AtariVectorEnv.reset`` takes an int (env ``j`` gets ``seed + j``) or an array, of int32
    seeds; both are folded here into that range.
    """

    def reset(self, *, seed: Any = None, options: Optional[dict] = None):
        if isinstance(seed, (int, np.integer)):
            seed = int(seed) % (2**31 - self.num_envs)
        elif seed is not None:
            seed = np.asarray(seed, dtype=np.int64) % 2**31
        return self.env.reset(seed=seed, options=options)


def make_atari_vector(
    env_id: str, n_envs: int, seed: Optional[int] = None, *, num_threads: int = 0, noop_max: int = NOOP_MAX
) -> gym.vector.VectorEnv:
    """ale-py's native ``AtariVectorEnv``: ``n_envs`` emulators and their preprocessing in C++.

    The preprocessing is that of :func:`make_atari` (see the module docstring), and autoreset is
    ``SAME_STEP`` (an ended env is reset within the step; its last observation is in
    ``info["final_obs"]``), so the collectors take it as one batched env: pass it (or a factory
    returning it, with ``n_envs=1``) to :func:`rollout.same.rollout`, or give
    :func:`rollout.single.rollout` / :func:`rollout.multi.rollout` a factory returning one of
    ``n_per_actor`` envs per worker. Not with ``sticky=True``.

    Parameters
    ----------
    env_id : str
        A registered ALE id such as ``"ALE/Pong-v5"``; its game and frame limit are read from
        the gymnasium registration.
    n_envs : int
        B, the number of emulators.
    seed : int, optional
        Accepted for use as a collector factory (``factory(seed)``); the collector reseeds every
        env with its own seed at start-up. An int seeds envs ``j`` with ``seed + j`` on reset.
    num_threads : int
        C++ threads stepping the emulators (0: ale-py's default, one per core).
    noop_max : int
        As for :func:`make_atari`; with 0 both give bit-identical frames, rewards and episode
        ends for the same actions (the stacks differ only in their padding, for 3 steps after a
        reset; tests/test_zoo_atari.py).

    Returns
    -------
    gymnasium.vector.VectorEnv
        ``single_observation_space`` uint8 ``(4, 84, 84)``, ``single_action_space`` the minimal
        ``Discrete`` action set; ``metadata["autoreset_mode"]`` is ``SAME_STEP``.

    Raises
    ------
    ImportError
        When ale-py is missing (the message names the extra) or older than 0.12
        (:func:`native_vector_available`).
    ValueError
        When ``n_envs`` is not a positive int.

    Examples
    --------
    >>> from rollout import same  # doctest: +SKIP
    >>> from zoo.actors import AtariConv  # doctest: +SKIP
    >>> env = make_atari_vector("ALE/Pong-v5", 8)  # doctest: +SKIP
    >>> feed = same.rollout(env, AtariConv(env.single_action_space.n), 128, seed=0)  # doctest: +SKIP
    """
    if not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive int, found {n_envs!r}")
    ale_py = _ale_py()
    if not native_vector_available():
        raise ImportError(
            f"the native vector env needs ale-py >= 0.12, found {getattr(ale_py, '__version__', '?')}: "
            'pip install -U "ale-py>=0.12"'
        )
    from ale_py.vector_env import AtariVectorEnv

    kwargs = gym.spec(env_id).kwargs
    env = AtariVectorEnv(
        kwargs["game"],
        n_envs,
        num_threads=num_threads,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        max_num_frames_per_episode=kwargs.get("max_num_frames_per_episode", 108_000),
        repeat_action_probability=0.0,
        full_action_space=kwargs.get("full_action_space", False),
        img_height=SCREEN_SIZE,
        img_width=SCREEN_SIZE,
        grayscale=True,
        stack_num=STACK,
        frameskip=FRAME_SKIP,
        maxpool=True,
        noop_max=noop_max,
        episodic_life=False,
        reward_clipping=False,
        use_fire_reset=False,
    )
    env = _Int32Seeds(env)
    if seed is not None:
        env.reset(seed=seed)
    return env
