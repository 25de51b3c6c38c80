"""One adapter over gymnasium envs, legacy gym envs and batched (vector) envs.

Two kinds of env batch fill a fragment:

* :class:`EnvList`: a list of single envs (gymnasium ``Env`` or legacy gym envs), stepped one by
  one, each reset by us in the same step its episode ends (envs are never auto-reset by a
  wrapper we rely on);
* :class:`BatchedEnv`: one object stepping B envs with one call per step, a gymnasium
  ``VectorEnv`` created with ``autoreset_mode`` ``SAME_STEP`` or ``DISABLED`` (the default
  ``NEXT_STEP`` mode would mix the reset step into the data and is rejected).

Both write straight into the fragment's numpy views (see :mod:`rollout.core`).
"""

import copy
import dataclasses
import inspect
import numbers
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import optree

from .errors import ConfigurationError, EnvError, StructureError
from .seeds import env_seeds, seed_sequence
from .nested import leaf_spaces, paths

__all__ = [
    "LegacyEnv",
    "EnvList",
    "BatchedEnv",
    "adapt",
    "make_env",
    "make_envs",
    "is_factory",
    "is_batched",
    "Layout",
    "Row",
]

try:  # gymnasium >= 1.1
    from gymnasium.vector import AutoresetMode as _AutoresetMode
except ImportError:  # pragma: no cover - old gymnasium
    _AutoresetMode = None

import gymnasium


def is_batched(env: Any) -> bool:
    """Whether ``env`` steps a batch of envs with one call (a gymnasium ``VectorEnv``)."""
    return isinstance(env, gymnasium.vector.VectorEnv)


def is_factory(obj: Any) -> bool:
    """Whether ``obj`` is an env factory: an env class, or a callable that is not itself an env."""
    return isinstance(obj, type) or (callable(obj) and not hasattr(obj, "step"))


def _is_env(env: Any) -> bool:
    return all(hasattr(env, name) for name in ("step", "reset", "observation_space", "action_space"))


class LegacyEnv:
    """Gymnasium API over a legacy gym env.

    Handles both legacy APIs: ``reset() -> obs`` with a 4-tuple ``step`` (``done`` plus
    ``info['TimeLimit.truncated']``), and gym 0.26's ``reset(seed=) -> (obs, info)`` with a
    5-tuple ``step``. The API is detected from the env's first answers.
    """

    def __init__(self, env: Any):
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        self._new_reset: Optional[bool] = None

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> Tuple[Any, dict]:
        if self._new_reset is None:
            params = _parameters(self.env.reset)
            self._new_reset = "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        if self._new_reset:
            out = self.env.reset(seed=seed) if seed is not None else self.env.reset()
        else:
            if seed is not None and hasattr(self.env, "seed"):
                self.env.seed(seed)
            out = self.env.reset()
        if (
            isinstance(out, tuple)
            and len(out) == 2
            and isinstance(out[1], dict)
            and type(self.observation_space).__name__ != "Tuple"
        ):
            return out
        return out, {}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, dict]:
        out = self.env.step(action)
        if len(out) == 5:
            return out
        if len(out) != 4:
            raise EnvError(
                f"{type(self.env).__name__}.step returned {len(out)} values; expected 4 (legacy gym) or 5 (gymnasium)"
            )
        obs, rew, done, info = out
        truncated = bool(info.get("TimeLimit.truncated", False)) if isinstance(info, dict) else False
        return obs, rew, bool(done) and not truncated, truncated, info

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


def _parameters(fn: Callable) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def adapt(env: Any) -> Any:
    """``env`` with the gymnasium API: gymnasium envs and vector envs as they are, others wrapped.

    Raises
    ------
    EnvError
        If ``env`` has no ``step``, ``reset``, ``observation_space`` and ``action_space``.
    """
    if isinstance(env, (gymnasium.Env, gymnasium.vector.VectorEnv, LegacyEnv)):
        return env
    if not _is_env(env):
        raise EnvError(
            f"expected an environment (gymnasium.Env, a legacy gym env or a gymnasium VectorEnv), "
            f"found {type(env).__name__}: {env!r:.80}"
        )
    return LegacyEnv(env)


def make_env(factory: Callable, seed: Optional[int]) -> Any:
    """Call ``factory(seed)`` if it takes an argument, else ``factory()``, and adapt the result.

    An env class is called without arguments (its first argument is rarely a seed; the collector
    seeds every env through ``reset(seed=...)`` anyway).
    """
    if not callable(factory):
        raise ConfigurationError(f"expected an env factory (a callable), found {type(factory).__name__}")
    params = [
        p
        for p in _parameters(factory).values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    env = factory(seed) if params and not isinstance(factory, type) else factory()
    try:
        return adapt(env)
    except EnvError as error:
        raise EnvError(
            f"the env factory {getattr(factory, '__name__', factory)!r} did not return an env: {error}"
        ) from None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r:.40}"


def _leaf_array(value: Any, shape: Tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Check one observation leaf against its space's shape and dtype."""
    if isinstance(value, (np.ndarray, np.generic)):
        if value.shape != shape or value.dtype != dtype:
            raise EnvError(f"{where}: expected shape {shape} and dtype {dtype}, found {_describe(np.asarray(value))}")
        return
    if isinstance(value, (bool, numbers.Number)) and shape == ():
        kind = np.asarray(value).dtype.kind
        if kind == dtype.kind or (kind == "i" and dtype.kind == "u") or (kind in "iub" and dtype.kind == "f"):
            return
    raise EnvError(f"{where}: expected shape {shape} and dtype {dtype}, found {_describe(value)}")


class Layout:
    """The flat layout of one nested space: leaf paths, shapes, dtypes and the tree spec.

    ``spec`` is the structure of the values the env actually returns (a namedtuple observation
    keeps its namedtuple type even though its space is a ``Tuple``).
    """

    def __init__(self, space: Any, name: str):
        self.space = space
        self.name = name
        spaces, self.space_spec = leaf_spaces(space)
        self.paths = paths(self.space_spec)
        self.shapes, self.dtypes = [], []
        for path, leaf in zip(self.paths, spaces):
            shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
            if shape is None or dtype is None:
                raise EnvError(
                    f"{name}{path}: space {leaf!r} has no fixed shape and dtype; only Box, Discrete, MultiDiscrete, MultiBinary, Dict and Tuple spaces are supported"
                )
            self.shapes.append(tuple(shape))
            self.dtypes.append(np.dtype(dtype))
        self.spec: optree.PyTreeSpec = self.space_spec
        self.is_leaf = self.space_spec.num_leaves == 1 and self.space_spec.num_nodes == 1

    def flatten(self, value: Any, error: Callable[[List[str]], Exception]) -> Tuple[List[Any], optree.PyTreeSpec]:
        """``value``'s leaves and structure; ``error(found paths)`` is raised if its leaves are not this layout's."""
        leaves, spec = optree.tree_flatten(value)
        found = paths(spec)
        if found != self.paths:
            raise error(found)
        return leaves, spec

    def adopt(self, value: Any, where: str) -> None:
        """Check ``value`` against the space and adopt its nesting (e.g. namedtuples) as ``spec``."""
        leaves, spec = self.flatten(
            value,
            lambda found: EnvError(
                f"{where}: expected the structure of {self.name} {self.space!r} with leaves {self.paths}, found leaves {found}"
            ),
        )
        for path, leaf, shape, dtype in zip(self.paths, leaves, self.shapes, self.dtypes):
            _leaf_array(leaf, shape, dtype, f"{where}{path}")
        self.spec = spec

    def write(self, rows: List[np.ndarray], j: int, value: Any, what: str, who: str = "env") -> None:
        """Write one env's ``value`` into column ``j`` of the per-leaf ``rows`` ``(B, ...)``.

        Errors say ``f"{who} {j}: {what}"`` (formatted only then: this runs at every step).
        """
        if self.is_leaf:
            if getattr(value, "shape", ()) != self.shapes[0]:
                raise EnvError(f"{who} {j}: {what}: expected shape {self.shapes[0]}, found {_describe(value)}")
            rows[0][j] = value
            return
        leaves, spec = optree.tree_flatten(value)
        if spec != self.spec:
            self.leaves(value, f"{who} {j}: {what}")  # raises
        for path, row, leaf, shape in zip(self.paths, rows, leaves, self.shapes):
            if getattr(leaf, "shape", ()) != shape:
                raise EnvError(f"{who} {j}: {what}{path}: expected shape {shape}, found {_describe(leaf)}")
            row[j] = leaf

    def leaves(self, value: Any, where: str) -> List[Any]:
        """Flat leaves of ``value``; a structure other than the adopted one is a StructureError."""
        leaves, spec = optree.tree_flatten(value)
        if spec != self.spec:
            raise StructureError(f"{where}: the structure changed: expected {self.spec}, found {spec}")
        return leaves


def _recordable(value: Any) -> bool:
    array = np.asarray(value) if isinstance(value, (numbers.Number, np.generic, np.ndarray)) else None
    return array is not None and array.dtype.kind in "biuf"


def info_examples(
    env_info: Union[None, Sequence[str], Mapping[str, Any]], probe: Optional[dict]
) -> Dict[str, np.ndarray]:
    """Examples (shape and dtype) of the env-info keys to record.

    ``env_info`` None: every top-level key of ``probe`` (the info of one probe step) whose value
    is a number, bool or numeric array; a sequence of names: those keys, taken from ``probe``; a
    mapping: name -> example value.
    """
    if isinstance(env_info, Mapping):
        out = {}
        for key, example in env_info.items():
            if not _recordable(example):
                raise ConfigurationError(
                    f"env_info[{key!r}]: expected a number or a numeric array as an example, found {_describe(example)}"
                )
            out[key] = np.asarray(example)
        return out
    probe = probe or {}
    if env_info is None:
        return {
            key: np.asarray(value)
            for key, value in probe.items()
            if isinstance(key, str) and not key.startswith("_") and _recordable(value)
        }
    if isinstance(env_info, str):
        raise ConfigurationError(
            f"env_info: expected a sequence of key names or a mapping, found the string {env_info!r}"
        )
    out = {}
    for key in env_info:
        if key not in probe or not _recordable(probe[key]):
            raise ConfigurationError(
                f"env_info: the key {key!r} is not a numeric value in the info of the first step "
                f"(found keys {sorted(probe)}); declare it with an example value: env_info={{{key!r}: 0.0}}"
            )
        out[key] = np.asarray(probe[key])
    return out


@dataclasses.dataclass(eq=False)
class Row:
    """The views of one fragment row that a step of the envs reads and writes (built once per row).

    Leaves are numpy views ``(B, ...)`` into the fragment (see :mod:`rollout.core`).
    """

    act: List[np.ndarray]  # read: the action leaves a_t
    obs: List[np.ndarray]  # written: the observation leaves x_{t+1} (the reset one where an episode ended)
    final: List[np.ndarray]  # written where an episode ended: its last observation
    rew: np.ndarray  # (B,) float32, written
    term: np.ndarray  # (B,) bool, written where an episode ended
    trunc: np.ndarray  # (B,) bool, written where an episode ended
    fin: np.ndarray  # (B,) bool, set where an episode ended
    info: Dict[str, np.ndarray]  # the recorded env-info keys, written (fill value where a key is missing)
    views: Dict[str, Any] = dataclasses.field(default_factory=dict)  # an env batch's own views of this row, made once


class EnvList:
    """A list of single envs stepped one by one (the ``for`` loop every collector needs).

    Parameters
    ----------
    envs : list
        Adapted envs (see :func:`adapt`) sharing one observation and action space.
    owned : bool
        Close the envs with the batch (the collector made them).
    factory : callable, optional
        What made them: :meth:`probe` then steps a new env from it rather than a copy of env 0.
    """

    batched = False

    def __init__(self, envs: Sequence[Any], *, owned: bool, factory: Optional[Callable] = None):
        if len(envs) == 0:
            raise ConfigurationError("expected at least one env, found an empty list")
        self.envs = [adapt(env) for env in envs]
        self.owned = owned
        self.factory = factory
        first = self.envs[0]
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        layout = lambda space: [(x.shape, x.dtype) for x in leaf_spaces(space)[0]] + [leaf_spaces(space)[1]]  # noqa: E731
        first_layout = (layout(self.observation_space), layout(self.action_space))
        for j, env in enumerate(self.envs[1:], 1):
            if (layout(env.observation_space), layout(env.action_space)) != first_layout:
                raise EnvError(
                    f"env {j} has spaces ({env.observation_space}, {env.action_space}); "
                    f"env 0 has ({self.observation_space}, {self.action_space}); all envs of a batch must share their structure, shapes and dtypes"
                )

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, seeds: Sequence[int]) -> List[Any]:
        """Reset every env with its seed; returns the observations."""
        return [env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]

    def bind(
        self, obs_layout: Layout, act_layout: Layout, info_keys: List[Tuple[str, Any]], sticky: bool = False
    ) -> None:
        """Fix the layouts and choose :meth:`step` once (called by :func:`rollout.core.startup`).

        The common batch (one action leaf, one observation leaf, no env info, no sticky envs to
        skip) gets a loop with nothing else in it; any other the general one.
        """
        self.obs_layout, self.act_layout, self.info_keys = obs_layout, act_layout, info_keys
        plain = act_layout.is_leaf and obs_layout.is_leaf and not info_keys and not sticky
        self.step = self._step_plain if plain else self._step_general

    def step(self, row: Row, skip: Optional[np.ndarray]) -> bool:
        """Step every env not in ``skip`` and write what it returns into ``row``.

        Chosen by :meth:`bind` (one of two loops); before it, stepping is an error.

        Parameters
        ----------
        row : Row
            The views of one fragment row ``t+1``: ``act`` is read; ``obs``, ``rew`` and ``info``
            are written for every stepped env; ``term``, ``trunc`` and ``final`` only where an
            episode ended (the caller zeroes ``term``, ``trunc`` and ``fin`` beforehand), after
            which the env is reset, ``fin`` is set and ``obs`` gets the reset observation.
        skip : bool array ``(B,)`` or None
            Envs not to call (sticky envs frozen until the fragment ends); their entries of
            ``row`` are left as they are.

        Returns
        -------
        bool
            Whether any episode ended (usually not): ``row.fin`` says which.
        """
        raise ConfigurationError("EnvList.step before bind(): the collector binds the layouts first")

    def _step_plain(self, row: Row, skip: None) -> bool:
        act, obs, rew, shape = row.act[0], row.obs[0], row.rew, self.obs_layout.shapes[0]
        ended = False
        for j, env in enumerate(self.envs):
            o, r, te, tr, _ = env.step(act[j])
            rew[j] = r
            if te or tr:
                row.term[j], row.trunc[j], row.fin[j] = te, tr, True
                if getattr(o, "shape", None) == shape:
                    row.final[0][j] = o
                else:
                    self.obs_layout.write(row.final, j, o, "step() observation")
                ended = True
                o, _ = env.reset()
            if getattr(o, "shape", None) == shape:
                obs[j] = o
            else:
                self.obs_layout.write(row.obs, j, o, "observation")
        return ended

    def _step_general(self, row: Row, skip: Optional[np.ndarray]) -> bool:
        obs_layout, act_spec, info_keys, info = self.obs_layout, self.act_layout.spec, self.info_keys, row.info
        act0 = row.act[0] if self.act_layout.is_leaf else None
        ended = False
        for j, env in enumerate(self.envs):
            if skip is not None and skip[j]:
                continue
            o, r, te, tr, step_info = env.step(
                act0[j] if act0 is not None else optree.tree_unflatten(act_spec, [x[j] for x in row.act])
            )
            row.rew[j] = r
            if te or tr:
                row.term[j], row.trunc[j], row.fin[j] = te, tr, True
                obs_layout.write(row.final, j, o, "step() observation")
                ended = True
                o, _ = env.reset()
            obs_layout.write(row.obs, j, o, "observation")
            for key, fill in info_keys:
                info[key][j] = step_info.get(key, fill)
        return ended

    def probe(self, in_place: bool = False) -> Optional[Tuple[Any, Any, dict]]:
        """One step of a spare env with a sampled action: ``(obs, rew, info)``, or None.

        The spare env is a new one from the factory that made the batch, else a deep copy of
        env 0 (None if it cannot be copied). ``in_place=True`` steps env 0 itself: for a batch
        built only to be validated and thrown away.

        Why not always a copy: on CPython 3.11 and 3.12, ``deepcopy`` reads the original's
        ``__dict__``, which turns its attributes into a real dict for good; CartPole's ``step``
        then runs 10-15% slower for the rest of the run.
        """
        if in_place:
            env = self.envs[0]
        else:
            try:
                env = make_env(self.factory, 0) if self.factory is not None else copy.deepcopy(self.envs[0])
            except Exception:  # an env holding a process or a handle cannot be copied
                return None
        try:
            env.reset(seed=0)
            space = copy.deepcopy(self.action_space)
            space.seed(0)
            obs, rew, _, _, info = env.step(space.sample())
            return obs, rew, info
        finally:
            close = None if in_place else getattr(env, "close", None)  # in place: the owner closes it
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def close(self) -> None:
        if self.owned:
            for env in self.envs:
                env.close()


class BatchedEnv:
    """A gymnasium ``VectorEnv`` stepping B envs with one call per step.

    It must not auto-reset on the step after an episode end (``NEXT_STEP``, gymnasium's
    default): create it with ``autoreset_mode=AutoresetMode.SAME_STEP`` (final observations in
    ``info['final_obs']``) or ``AutoresetMode.DISABLED`` (then we reset the ended envs with
    ``reset(options={'reset_mask': ended})`` in the same step).
    """

    batched = True

    def __init__(self, env: Any, *, owned: bool):
        mode = env.metadata.get("autoreset_mode") if isinstance(getattr(env, "metadata", None), dict) else None
        name = getattr(mode, "name", str(mode))
        if _AutoresetMode is None or mode not in (_AutoresetMode.SAME_STEP, _AutoresetMode.DISABLED):
            raise ConfigurationError(
                f"a VectorEnv must be created with autoreset_mode=AutoresetMode.SAME_STEP or DISABLED "
                f"(gymnasium >= 1.1); found autoreset_mode {name}, whose reset step would enter the data"
            )
        self.env = env
        self.owned = owned
        self.same_step = mode == _AutoresetMode.SAME_STEP
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.n = int(env.num_envs)

    def __len__(self) -> int:
        return self.n

    def reset(self, seeds: Sequence[int]) -> Any:
        return self.env.reset(seed=list(seeds))[0]

    def bind(
        self, obs_layout: Layout, act_layout: Layout, info_keys: List[Tuple[str, Any]], sticky: bool = False
    ) -> None:
        """Fix the layouts used by :meth:`step` (called once by :func:`rollout.core.startup`;
        ``sticky`` is always False: a batched env cannot skip its finished envs)."""
        self.obs_layout, self.act_layout, self.info_keys = obs_layout, act_layout, info_keys
        self._shapes = [(self.n, *shape) for shape in obs_layout.shapes]
        # One array per leaf (the common case): passed and checked without flattening.
        self._act_leaf, self._obs_leaf = act_layout.is_leaf, obs_layout.is_leaf
        self._record_dtypes = [_record(shape, dtype) for shape, dtype in zip(obs_layout.shapes, obs_layout.dtypes)]
        self._dtype = obs_layout.dtypes[0]

    def step(self, row: Row, skip: Optional[np.ndarray]) -> bool:
        """Step all B envs with one call; as :meth:`EnvList.step` (``skip`` must be None), but
        ``term``, ``trunc`` and ``fin`` are written for every env.

        A fixed number of array operations per step, whatever the number of envs that end."""
        act = row.act[0] if self._act_leaf else optree.tree_unflatten(self.act_layout.spec, row.act)
        o, r, te, tr, step_info = self.env.step(act)
        obs = row.obs
        if self._obs_leaf and type(o) is np.ndarray and o.shape == self._shapes[0]:
            obs[0][...] = o
            leaves = [o]
        else:
            leaves = self._observation(o, obs)
        row.rew[:] = r
        row.term[:] = te
        row.trunc[:] = tr
        ended = np.logical_or(te, tr, out=row.fin)
        if not np.count_nonzero(ended):
            ended = None
        elif self.same_step:
            self._write_final(row, step_info["final_obs"])
        else:
            for dst, src in zip(row.final, leaves):
                dst[ended] = src[ended]
            reset, _ = self.env.reset(options={"reset_mask": ended})
            for dst, src in zip(obs, self.obs_layout.leaves(reset, "VectorEnv.reset observation")):
                dst[ended] = src[ended]
        for key, fill in self.info_keys:
            dst = row.info[key]
            value = step_info.get(key)
            if value is None:
                dst[...] = fill
                continue
            mask = step_info.get("_" + key)
            if mask is None:
                dst[...] = value
            else:
                dst[...] = fill
                dst[mask] = np.asarray(value)[mask]
        return ended is not None

    def _observation(self, o: Any, obs: List[np.ndarray]) -> List[np.ndarray]:
        """Check and write a step's observation leaves (the general path); returns them."""
        layout = self.obs_layout
        leaves = layout.leaves(o, "VectorEnv.step observation")
        for path, dst, src, shape in zip(layout.paths, obs, leaves, self._shapes):
            if getattr(src, "shape", None) != shape:
                raise EnvError(f"VectorEnv.step observation{path}: expected shape {shape}, found {_describe(src)}")
            dst[...] = src
        return leaves

    def _write_final(self, row: Row, final_obs: Any) -> None:
        """The ended envs' last observations from ``info['final_obs']``: one masked copy per leaf
        where it holds arrays of the batch's layout (``(B, ...)``, as numpy-batched envs give),
        else env by env (an object array of single observations, as gymnasium's wrappers give)."""
        leaves = self._final_leaves(final_obs)
        if leaves is None:
            for j in np.flatnonzero(row.fin).tolist():
                self.obs_layout.write(row.final, j, final_obs[j], "final observation", who="VectorEnv env")
            return
        views = row.views.get("final")
        if views is None:  # once per row: each env's leaf as one record, and fin as a (B, 1) mask
            views = row.views["final"] = ([_records(dst) for dst in row.final], row.fin.reshape(-1, 1))
        records, mask = views
        for dst, src, dtype in zip(records, leaves, self._record_dtypes):
            np.copyto(dst, np.ascontiguousarray(src).reshape(self.n, -1).view(dtype), where=mask)

    def _final_leaves(self, final_obs: Any) -> Optional[List[np.ndarray]]:
        """The leaves of ``final_obs`` if they are arrays of the batch's layout, else None."""
        if self._obs_leaf:  # the common case, without flattening
            if type(final_obs) is np.ndarray and final_obs.dtype == self._dtype and final_obs.shape == self._shapes[0]:
                return [final_obs]
            return None
        leaves, spec = optree.tree_flatten(final_obs)
        if spec != self.obs_layout.spec:
            return None
        for src, shape, dtype in zip(leaves, self._shapes, self.obs_layout.dtypes):
            if type(src) is not np.ndarray or src.dtype != dtype or src.shape != shape:
                return None
        return leaves

    def probe(self, in_place: bool = False) -> None:
        return None  # stepping a copy of a vector env is not generally possible

    def close(self) -> None:
        if self.owned:
            self.env.close()


def _record(shape: Tuple[int, ...], dtype: np.dtype) -> np.dtype:
    """One env's leaf of ``shape`` and ``dtype`` as one opaque record."""
    return np.dtype((np.void, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))


def _records(a: np.ndarray) -> np.ndarray:
    """A C-contiguous ``(B, ...)`` array as ``(B, 1)`` opaque records, one per env: a copy
    masked by a ``(B, 1)`` mask is then one flat pass (a mask broadcast over ``(B, ...)`` costs
    several times more)."""
    return a.reshape(a.shape[0], -1).view(_record(a.shape[1:], a.dtype))


def warn_no_probe() -> None:
    warnings.warn(
        "could not probe the env for info keys (no spare env from a factory, and env 0 cannot be copied); "
        "no env info is recorded. "
        "Pass env_info=... to declare the keys.",
        stacklevel=4,
    )


def make_envs(
    envs: Union[Callable, Sequence[Any], Any],
    n_envs: Optional[int],
    seed: Union[None, int, np.random.SeedSequence],
) -> Union[EnvList, BatchedEnv]:
    """Build a batch of envs from a factory, a list of envs, or one batched env.

    A factory is called ``n_envs`` times as ``factory(seed)`` (or ``factory()``), each with its
    own seed derived from ``seed``; those envs are owned (closed with the collector). A factory
    that returns a gymnasium ``VectorEnv`` is called once and must not be given ``n_envs > 1``.
    """
    if isinstance(envs, (list, tuple)):
        if n_envs is not None and n_envs != len(envs):
            raise ConfigurationError(f"n_envs={n_envs} does not match the {len(envs)} envs given")
        return EnvList(list(envs), owned=False)
    if is_batched(envs):
        return BatchedEnv(envs, owned=False)
    if is_factory(envs):
        if n_envs is None:
            raise ConfigurationError("n_envs is required with an env factory")
        if not isinstance(n_envs, int) or n_envs < 1:
            raise ConfigurationError(f"n_envs must be a positive int, found {n_envs!r}")
        seeds = env_seeds(seed_sequence(seed).spawn(1)[0], n_envs)  # child 0 derives the factory's seeds
        built = []
        try:
            for s in seeds:
                env = make_env(envs, s)
                if is_batched(env):
                    if n_envs != 1:
                        raise ConfigurationError(
                            f"the factory returned a VectorEnv; pass n_envs=1 (found n_envs={n_envs})"
                        )
                    return BatchedEnv(env, owned=True)
                built.append(env)
        except BaseException:
            for env in built:
                env.close()
            raise
        return EnvList(built, owned=True, factory=envs)
    return EnvList([adapt(envs)], owned=False)
