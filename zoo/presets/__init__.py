"""Hyperparameter presets: one TOML file per (algorithm, env), and the keys every run accepts.

A preset file (``zoo/presets/<algo>-<name>.toml``) names its algorithm and env and sets any of the
keys of :data:`KEYS` that apply to that algorithm; the others keep the defaults below. A run's
configuration is: defaults < preset file < ``--set key=value`` and typed flags. All frequencies and
budgets (``steps``, ``eval_every``, ``checkpoint_every``, ``log_every``, ``learning_starts``) count
**total env steps**, summed over every env (not per env, not updates), as CleanRL does.

An env without a preset of its own runs with the algorithm's ``<algo>-default.toml``.
"""

import dataclasses
import pathlib
import tomllib
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["ALGOS", "KEYS", "Key", "Preset", "PresetError", "presets", "find", "resolve", "complete", "parse_value"]

ALGOS = ("ppo", "a2c", "reinforce", "sac")
ON_POLICY = ("ppo", "a2c", "reinforce")
_FOLDER = pathlib.Path(__file__).parent


class PresetError(ValueError):
    """A bad preset file, an unknown key or a value of the wrong type (a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, the algorithms that read it, and its help text."""

    type: str  # "int", "float", "bool", "str", "ints" (comma-separated) or "float?" (float or none)
    default: Any
    help: str
    algos: Tuple[str, ...] = ALGOS
    choices: Optional[Tuple[str, ...]] = None


KEYS: Dict[str, Key] = {
    # budget, collection, evaluation: every algorithm
    "steps": Key("int", 100_000, "total env steps to train for"),
    "collector": Key(
        "str",
        "same",
        "where envs run: same (this process), single (one worker, double-buffered), multi (a pool of workers)",
        choices=("same", "single", "multi"),
    ),
    "n_envs": Key("int", 8, "envs per batch (with multi: split evenly over the workers)"),
    "n_actors": Key("int", 2, "worker processes (multi only)"),
    "n_steps": Key("int", 128, "T: steps per env in each fragment"),
    "start_method": Key("str", "spawn", "start method of worker processes", choices=("spawn", "fork", "forkserver")),
    "device": Key("str", "cpu", "where the learner computes (batches are delivered there)"),
    "eval_every": Key("int", 10_000, "deterministic evaluation every this many env steps (0: only at the end)"),
    "eval_episodes": Key("int", 10, "episodes per evaluation (fixed seeds)"),
    "checkpoint_every": Key("int", 0, "save last.pt every this many env steps (0: at every evaluation)"),
    "log_every": Key("int", 2_000, "a progress.csv row every this many env steps"),
    # model and optimiser
    "hidden": Key("ints", (64, 64), "hidden layer widths (the GRU's width for recurrent actors)"),
    "shared": Key("bool", True, "one trunk for policy and value (False: separate trunks)", ON_POLICY),
    "recurrent": Key("bool", False, "GRU actor (ppo with sticky envs and sequence minibatches)", ("ppo",)),
    "separate_critic": Key("bool", True, "recurrent actor: a separate recurrent value trunk", ("ppo",)),
    "head": Key("int", 0, "recurrent actor: width of a hidden layer before each head (0: none)", ("ppo",)),
    "cell": Key("str", "gru", "recurrent actor: the recurrent cell", ("ppo",), choices=("gru", "lstm")),
    "feed_action": Key("bool", False, "recurrent actor: also feed the previous action", ("ppo",)),
    "sticky": Key("bool", False, "freeze an env from its episode end to the fragment end", ON_POLICY),
    "normalize_obs": Key("bool", False, "running mean/std observation normalisation owned by the actor"),
    "normalize_reward": Key("bool", False, "scale rewards by their running std (on-policy losses)", ON_POLICY),
    "lr": Key("float", 3e-4, "learning rate (all optimisers)"),
    "lr_schedule": Key("str", "constant", "learning rate against progress", choices=("constant", "linear")),
    "adam_eps": Key("float", 1e-5, "Adam's epsilon"),
    "max_grad_norm": Key("float", 0.5, "clip the gradient norm (0: off)", ON_POLICY),
    "gamma": Key("float", 0.99, "discount"),
    # on-policy losses
    "lam": Key("float", 0.95, "GAE lambda (V-trace's lambda with a2c correction=vtrace)", ("ppo", "a2c")),
    "value_coef": Key(
        "float", 1.0, "value loss weight; our value loss is halved: SB3's vf_coef 0.5 is 1.0 here", ON_POLICY
    ),
    "entropy_coef": Key("float", 0.0, "entropy bonus weight", ON_POLICY),
    "clip": Key("float", 0.2, "PPO ratio clip range", ("ppo",)),
    "clip_schedule": Key("str", "constant", "clip range against progress", ("ppo",), ("constant", "linear")),
    "value_clip": Key("float?", None, "clip of the value change (none: off)", ("ppo",)),
    "epochs": Key("int", 10, "PPO epochs per batch", ("ppo",)),
    "n_minibatches": Key("int", 4, "minibatches per epoch (ignored when minibatch_size > 0)", ("ppo",)),
    "minibatch_size": Key("int", 0, "rows per minibatch (0: use n_minibatches)", ("ppo",)),
    "target_kl": Key("float?", None, "stop the epochs when approx_kl exceeds 1.5 x this (none: off)", ("ppo",)),
    "normalize_advantages": Key("bool", True, "standardise advantages per minibatch", ("ppo",)),
    "correction": Key(
        "str", "truncated_is", "importance correction for lagged workers", ("a2c",), ("none", "truncated_is", "vtrace")
    ),
    "bootstrap": Key("bool", True, "bootstrap returns at fragment ends and truncations", ("reinforce",)),
    "baseline": Key("bool", True, "subtract a learned value baseline", ("reinforce",)),
    # SAC
    "buffer_size": Key("int", 1_000_000, "replay capacity (transitions)", ("sac",)),
    "batch_size": Key("int", 256, "transitions per gradient step", ("sac",)),
    "learning_starts": Key("int", 1_000, "env steps of uniform random actions before learning", ("sac",)),
    "updates_per_step": Key("float", 1.0, "gradient steps per env step", ("sac",)),
    "tau": Key("float", 0.005, "Polyak rate of the target critics", ("sac",)),
    "alpha_init": Key("float", 1.0, "initial temperature", ("sac",)),
    "target_entropy": Key("float?", None, "temperature target (none: -|A|)", ("sac",)),
}


@dataclasses.dataclass(frozen=True)
class Preset:
    """A preset file: its algorithm, env, the keys it sets, and the results recorded for it."""

    name: str
    algo: str
    env: str
    values: Dict[str, Any]
    recorded: Dict[str, Any]
    path: pathlib.Path


def parse_value(key: str, text: str) -> Any:
    """Convert the text of ``--set key=text`` to the key's type, or raise :class:`PresetError`."""
    spec = KEYS[key]
    kind = spec.type
    try:
        if kind == "float?" and text.lower() in ("none", "null", "off", ""):
            return None
        if kind == "bool":
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind == "int":
            return int(float(text)) if "e" in text.lower() else int(text.replace("_", ""))
        if kind in ("float", "float?"):
            return float(text)
        if kind == "ints":
            return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise PresetError(f"{key} expects {_describe_type(kind)}, found {text!r}") from None
    return _check_choice(key, text)


def _describe_type(kind: str) -> str:
    return {
        "int": "an integer",
        "float": "a number",
        "float?": "a number or none",
        "bool": "true or false",
        "ints": "comma-separated integers such as 64,64",
        "str": "a string",
    }[kind]


def _check_choice(key: str, value: Any) -> Any:
    choices = KEYS[key].choices
    if choices is not None and value not in choices:
        raise PresetError(f"{key} must be one of {', '.join(choices)}, found {value!r}")
    return value


def _check_type(key: str, value: Any, where: str) -> Any:
    kind = KEYS[key].type
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "float?": value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "ints": isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value),
    }[kind]
    if not ok:
        raise PresetError(f"{where}: {key} expects {_describe_type(kind)}, found {value!r}")
    if kind == "ints":
        value = tuple(value)
    if kind == "float" and isinstance(value, int):
        value = float(value)
    return _check_choice(key, value)


def valid_keys(algo: str) -> List[str]:
    """The keys that ``algo`` reads, sorted."""
    return sorted(name for name, key in KEYS.items() if algo in key.algos)


def _load(path: pathlib.Path) -> Preset:
    with open(path, "rb") as file:
        data = tomllib.load(file)
    where = f"preset {path.name}"
    algo, env = data.get("algo"), data.get("env")
    if algo not in ALGOS or not isinstance(env, str):
        raise PresetError(f"{where}: needs algo (one of {', '.join(ALGOS)}) and env, found {algo!r} and {env!r}")
    values = {}
    for key, value in data.get("hyperparameters", {}).items():
        if key not in KEYS or algo not in KEYS[key].algos:
            raise PresetError(f"{where}: unknown key {key!r} for {algo}; valid keys: {', '.join(valid_keys(algo))}")
        values[key] = _check_type(key, value, where)
    return Preset(path.stem, algo, env, values, data.get("recorded", {}), path)


def presets() -> List[Preset]:
    """Every preset file, sorted by algorithm and env."""
    return sorted(
        (_load(path) for path in _FOLDER.glob("*.toml")), key=lambda p: (ALGOS.index(p.algo), p.env == "*", p.env)
    )


def find(algo: str, env: str) -> Preset:
    """The preset of ``(algo, env)``, or the algorithm's default preset (env ``"*"``)."""
    candidates = [p for p in presets() if p.algo == algo]
    for preset in candidates:
        if preset.env == env:
            return preset
    for preset in candidates:
        if preset.env == "*":
            return preset
    raise PresetError(f"no preset for {algo} (expected zoo/presets/{algo}-default.toml)")


def resolve(algo: str, env: str, overrides: Dict[str, Any]) -> Tuple[Preset, Dict[str, Any]]:
    """The configuration of a run: defaults < the preset < ``overrides`` (already typed).

    Raises
    ------
    PresetError
        On an unknown key (the message lists the valid keys) or a value of the wrong type.
    """
    if algo not in ALGOS:
        raise PresetError(f"unknown algorithm {algo!r}; expected one of {', '.join(ALGOS)}")
    preset = find(algo, env)
    config = {key: KEYS[key].default for key in valid_keys(algo)}
    config.update(preset.values)
    for key, value in overrides.items():
        if key not in config:
            raise PresetError(f"unknown key {key!r} for {algo}; valid keys: {', '.join(valid_keys(algo))}")
        config[key] = _check_type(key, value, "--set")
    return preset, config


def complete(config: Dict[str, Any]) -> Dict[str, Any]:
    """A saved configuration with the defaults of keys added since it was saved (older checkpoints)."""
    defaults = {key: KEYS[key].default for key in valid_keys(config["algo"])}
    return {**defaults, **config}


def parse_assignments(
    assignments: List[str], algo: str, convert: Callable[[str, str], Any] = parse_value
) -> Dict[str, Any]:
    """``["lr=1e-3", "hidden=64,64"]`` -> ``{"lr": 0.001, "hidden": (64, 64)}``, checked against ``algo``'s keys."""
    out = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise PresetError(f"--set expects key=value, found {item!r}")
        if key not in KEYS or algo not in KEYS[key].algos:
            raise PresetError(f"unknown key {key!r} for {algo}; valid keys: {', '.join(valid_keys(algo))}")
        out[key] = convert(key, text.strip())
    return out
