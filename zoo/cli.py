"""``python -m zoo``: train, evaluate and list presets.

::

    python -m zoo train ALGO --env ENV_ID [--steps N] [--seed S] [--collector same|single|multi] ...
    python -m zoo train --resume RUN_DIR [--steps N]
    python -m zoo eval RUN_DIR_OR_CHECKPOINT [--episodes N] [--video out.mp4] [--seed S]
    python -m zoo list

Bad input (an unknown algorithm, env or key, an algorithm that does not fit the env's action
space, a missing run folder) is a one-line ``error:`` on stderr and exit status 2, before any env
or worker process starts.
"""

import argparse
import functools
import json
import pathlib
import sys
from typing import Any, Dict, List, Optional

import torch

from zoo import presets
from zoo.video import VideoUnavailable

__all__ = ["main"]

# Typed flags: each overrides the preset key of the same name.
FLAGS = {
    "steps": (int, "total env steps to train for"),
    "collector": (str, "same (this process), single (one double-buffered worker) or multi (a pool of workers)"),
    "n_actors": (int, "worker processes (with --collector multi)"),
    "n_envs": (int, "envs per batch"),
    "device": (str, "where the learner computes: cpu or cuda"),
    "eval_every": (int, "deterministic evaluation every N env steps"),
    "eval_episodes": (int, "episodes per evaluation"),
    "checkpoint_every": (int, "save last.pt every N env steps (default: at every evaluation)"),
}


class UsageError(Exception):
    """A one-line message for the user; nothing has started yet."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zoo", description="Train and evaluate RL agents with rollout and learners."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,list}")

    train = commands.add_parser(
        "train",
        help="train an agent",
        description=(
            "Train ALGO on ENV_ID with the preset for that pair (python -m zoo list shows them). "
            "Every budget and frequency counts total env steps."
        ),
    )
    train.add_argument("algo", nargs="?", metavar="ALGO", help=f"one of {', '.join(presets.ALGOS)}")
    train.add_argument(
        "--env", metavar="ENV_ID", help="a gymnasium env id, e.g. CartPole-v1, zoo/CartPoleNoVel-v0, ALE/Pong-v5"
    )
    train.add_argument(
        "--seed", type=int, default=0, help="seeds the weights, the envs and the evaluation envs (default 0)"
    )
    for name, (kind, text) in FLAGS.items():
        train.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            dest=name,
            metavar="N" if kind is int else None,
            help=text + " (default: the preset's)",
        )
    train.add_argument("--run-dir", type=pathlib.Path, help="the run folder (default runs/ALGO-ENV-SEED-TIMESTAMP)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. --set lr=1e-3 (repeatable; python -m zoo list shows the keys)",
    )
    train.add_argument(
        "--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar: one line per evaluation")

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a saved agent",
        description=(
            "Run the deterministic policy of a checkpoint for N episodes and print the return's mean, std, min and max."
        ),
    )
    evaluate.add_argument(
        "path",
        type=pathlib.Path,
        metavar="RUN_DIR_OR_CHECKPOINT",
        help="a run folder (uses best.pt, else last.pt) or a .pt checkpoint",
    )
    evaluate.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of the evaluation envs (default: the run's)")
    evaluate.add_argument(
        "--video",
        type=pathlib.Path,
        metavar="OUT.mp4",
        help="also record the first episode to an mp4 (needs the video extra: imageio[ffmpeg])",
    )

    commands.add_parser("list", help="the presets, their hyperparameters and recorded results")
    return parser


def _check_env(env_id: str):
    """The env's spaces, or a one-line error naming the env."""
    from zoo.train import make_env

    try:
        env = make_env(env_id)
    except ImportError as error:
        raise UsageError(f"{env_id} needs a package that is not installed: {error}") from None
    except Exception as error:  # gymnasium's NameNotFound, NamespaceNotFound, VersionNotFound, ...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"unknown env {env_id!r}: {message}") from None
    spaces = env.observation_space, env.action_space
    env.close()
    return spaces


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; expected cpu or cuda") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")


def _check_config(config: Dict[str, Any]) -> None:
    for key in ("steps", "n_envs", "n_steps", "eval_episodes"):
        if config[key] < 1:
            raise UsageError(f"{key} must be at least 1, found {config[key]}")
    if config["collector"] == "multi" and (config["n_actors"] < 1 or config["n_envs"] % config["n_actors"]):
        raise UsageError(
            f"with --collector multi, n_envs ({config['n_envs']}) must be a multiple of n_actors ({config['n_actors']})"
        )
    if config.get("recurrent") and not config.get("sticky"):
        print("note: a recurrent actor without sticky envs learns from columns that mix episodes", file=sys.stderr)
    _check_device(config["device"])


def _train(args: argparse.Namespace, argv: List[str]) -> int:
    from zoo import learning
    from zoo.run import default_dir, load_checkpoint

    flags = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    checkpoint = None
    if args.resume is not None:
        last = args.resume / "last.pt"
        if not last.is_file():
            raise UsageError(f"--resume {args.resume}: no last.pt there (is it a run folder?)")
        checkpoint = load_checkpoint(last)
        config = presets.complete(checkpoint["config"])
        for name, value in (("algo", args.algo), ("env", args.env)):
            if value is not None and value != config[name]:
                raise UsageError(
                    f"--resume {args.resume}: that run is {config['algo']} on {config['env']}, "
                    f"not {args.algo or config['algo']} on {args.env or config['env']}"
                )
        overrides = {**presets.parse_assignments(args.set, config["algo"]), **flags}
        config.update(overrides)
        run_dir = args.resume
    else:
        if args.algo is None or args.env is None:
            raise UsageError("train needs ALGO and --env ENV_ID (or --resume RUN_DIR)")
        if args.algo not in presets.ALGOS:
            raise UsageError(f"unknown algorithm {args.algo!r}; expected one of {', '.join(presets.ALGOS)}")
        overrides = {**presets.parse_assignments(args.set, args.algo), **flags}
        preset, config = presets.resolve(args.algo, args.env, overrides)
        config = {"algo": args.algo, "env": args.env, "seed": args.seed, "preset": preset.name, **config}
        run_dir = args.run_dir or default_dir(args.algo, args.env, args.seed)
    _check_config(config)
    observation_space, action_space = _check_env(config["env"])
    try:
        learning.check_spaces(config["algo"], observation_space, action_space)
    except ValueError as error:
        raise UsageError(f"{config['env']}: {error}") from None
    return _run_training(
        config,
        run_dir,
        argv,
        checkpoint,
        args.resume is not None,
        progress=not args.no_progress and sys.stdout.isatty(),
    )


def _run_training(config, run_dir, argv, checkpoint, resume, *, progress: bool) -> int:
    from zoo.run import Run
    from zoo.train import train

    run = Run(run_dir, config, argv, resume=resume)
    start = checkpoint["counters"]["env_steps"] if checkpoint else 0
    print(
        f"{'resuming' if resume else 'training'} {config['algo']} on {config['env']} (preset {config['preset']}, "
        f"seed {config['seed']}, {config['collector']} collector) from step {start:,} to {config['steps']:,}; "
        f"run folder {run_dir}",
        flush=True,
    )
    try:
        counters = train(config, run, checkpoint=checkpoint, progress=progress)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: saved {run_dir / 'last.pt'}; resume with: python -m zoo train --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    plotted = run.plot()
    print(
        f"done: {counters.env_steps:,} env steps in {counters.wall_time:.1f} s; final evaluation "
        f"{counters.last_eval:.1f} (best {counters.best_eval:.1f})"
    )
    print(f"checkpoints: {run_dir / 'last.pt'} and {run_dir / 'best.pt'}")
    if plotted:
        print(f"curve: {run_dir / 'curve.png'}")
    else:
        print("curve: not drawn, matplotlib is missing (pip install matplotlib)")
    print(f"evaluate: python -m zoo eval {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from zoo import learning
    from zoo.run import load_checkpoint
    from zoo.train import evaluate, make_env

    path = args.path
    if path.is_dir():
        path = next((path / name for name in ("best.pt", "last.pt") if (path / name).is_file()), None)
        if path is None:
            raise UsageError(f"{args.path}: no best.pt or last.pt in that folder")
    elif not path.is_file():
        raise UsageError(f"{args.path}: no such run folder or checkpoint")
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, found {args.episodes}")
    checkpoint = load_checkpoint(path)
    config = presets.complete(checkpoint["config"])
    if args.video is not None:
        from zoo.video import check_available

        check_available(args.video)
    env = make_env(config["env"])
    actor = learning.build_actor(config, env.observation_space, env.action_space)
    env.close()
    actor.load_state_dict(checkpoint["learner"]["actor"])
    torch.set_num_threads(1)
    result = evaluate(config, actor, args.episodes, seed=args.seed)
    r = result.returns
    print(
        f"{path}: {config['algo']} on {config['env']}, step {checkpoint['counters']['env_steps']:,}; "
        f"{args.episodes} deterministic episodes: return mean {r.mean():.2f} std {r.std(correction=0):.2f} "
        f"min {r.min():.2f} max {r.max():.2f}; length mean {result.lengths.float().mean():.1f}"
    )
    if args.video is not None:
        from zoo.video import record

        frames = record(
            functools.partial(make_env, config["env"], render_mode="rgb_array"),
            actor,
            args.video,
            seed=(args.seed if args.seed is not None else config["seed"]),
        )
        print(f"video: {args.video} ({frames} frames)")
    return 0


def _list() -> int:
    for preset in presets.presets():
        print(f"{preset.algo} on {preset.env}  ({preset.path.name})")
        values = {key: presets.KEYS[key].default for key in presets.valid_keys(preset.algo)}
        values.update(preset.values)
        text = ", ".join(f"{key}={_show(values[key])}" for key in sorted(preset.values))
        print(f"  sets: {text}")
        if preset.recorded:
            print("  recorded: " + ", ".join(f"{key}: {_show(value)}" for key, value in preset.recorded.items()))
    print("\nkeys (python -m zoo train ALGO --env ENV --set KEY=VALUE):")
    for name, key in presets.KEYS.items():
        algos = "all" if key.algos == presets.ALGOS else ", ".join(key.algos)
        print(f"  {name:<22} {_show(key.default):<12} [{algos}] {key.help}")
    return 0


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m zoo``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "eval":
            return _evaluate(args)
        return _list()
    except (UsageError, presets.PresetError, VideoUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
