r"""The stepping kernel: :func:`startup` and :func:`collect` for one batch of envs in this process.

Every collector (same process, worker processes, Ray) runs this kernel; it knows nothing about
processes. :func:`startup` resets the envs, validates them and the actor, and returns a
:class:`Context` (the running state of the batch); :func:`collect` fills one fragment.

Timing
------
Row t of ``state`` is ``z_t = (t, x_t, a_{t-1}, r_t, d_t)``; ``actor[t]`` is the actor's reaction
to ``z_t``, and the action it chose is stored in the next row. Over a fragment of ``T = 3`` steps
in which the episode ends (``d``) on the transition into row 2 (non-sticky):

===========  ==========  ==========  ==============  ==========  =============================
row          0           1           2               3 (= T)     notes
===========  ==========  ==========  ==============  ==========  =============================
stepno       n           n+1         0               1           steps into the episode
obs          x_n         x_{n+1}     x'_0 (reset)    x'_1        the new episode's obs at fin
act          a_{n-1}     a_n         a_{n+1}         a'_0        action that led to this row
rew          r_n         r_{n+1}     r_{n+2}         r'_1        its reward
fin          .           .           True            .           x_t starts a new episode
terminated   .           .           term?           .           set with fin: no bootstrap
actor        A(z_0)      A(z_1)      A(z_2)          A~(z_3)     A~: virtual lookahead step
final.obs    .           .           x_{n+2}         .           true last obs of the episode
final.actor  .           .           A~(x_{n+2})     .           only at truncations
env          info(0->1)  info(1->2)  info(2->3)                  T rows: env[t] = step t -> t+1
===========  ==========  ==========  ==============  ==========  =============================

* ``fin[t] & ~terminated[t]`` is a truncation (time limit): bootstrap from
  ``final.actor['value'][t]``, the actor's virtual reaction to ``final.obs[t]`` computed with the
  recurrent state it had before the reset and ``stepno`` = the ended episode's length.
* ``final.episode_return[t]`` and ``final.episode_length[t]`` hold the whole ended episode's
  return and length (also the part from earlier fragments); ``episode_length`` is 0 elsewhere.
* Row 0 of fragment k+1 equals row T of fragment k in ``state`` and ``final``, bit for bit.
  ``actor[0]`` is recomputed by a real step (row T was virtual, its action never executed), so
  for a stochastic actor ``actor[0]`` of k+1 differs from ``actor[T]`` of k.
* ``Fragment.hx`` is the recurrent state fed to the step at row 0. The collector calls
  ``actor.reset(hx, at)`` for every env whose episode ended, before that env's next step.

With ``sticky=True`` an env that ends its episode is frozen until the fragment ends, so that each
column holds at most one episode suffix. Episode ends on the transition into row 1:

===========  ==========  ==============  ==============  ==============
row          0           1               2               3 (= T)
===========  ==========  ==============  ==============  ==============
obs          x_n         x'_0 (reset)    x'_0 (repeat)   x'_0 (repeat)
fin          .           True            True            True
terminated   .           term?           True            True
rew          r_n         r_{n+1}         0               0
stepno       n           0               0               0
episode_len  .           n+1             0               0
===========  ==========  ==============  ==============  ==============

Frozen rows (``fin`` with ``episode_length == 0``, from row 1 on) are padding: the env is not
called, their ``terminated`` is True (nothing to bootstrap), ``env`` info holds the fill values and
their actor outputs must be ignored by learners. The env resumes at the next fragment, whose row 0
is the reset observation with ``fin=True``.

Cost
----
A step of :func:`collect` does only what must happen at every step: the actor's step and the
copy of its action (*react*), the envs' step writing row ``t+1`` (*step*), one vector add of the
row's rewards to the running returns and one of the step numbers (``stepno[t] + 1``, restarted
where an episode ended), a heartbeat. Everything else is written per fragment or at episode ends
(*record*): sticky step numbers are laid out as ``stepno[0] + t`` when the fragment begins and
zeroed from an episode's end on, and a sticky env's frozen rows are written once, when it
freezes. The work at episode ends is a fixed number of array operations over the envs that ended,
never a Python loop over them: a step costs the same whether one env ends or a hundred (a batched
env of thousands ends dozens per step). Checks and copies that depend on the layout (the actor's
outputs, the envs' loop) are chosen once, at :func:`startup` and ``EnvList.bind``. An actor
without ``info`` is asked no virtual step (row T's lookahead and the truncation bootstraps record
only ``info``).

Returns are float64 sums of the float32 rewards in step order (``ret += r`` once per step), so an
episode's return does not depend on how it is split into fragments or which other envs end.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import optree
import torch

from . import buffers
from .actor import Actor
from .envs import BatchedEnv, EnvList, Layout, Row, info_examples, warn_no_probe
from .seeds import env_seeds
from .errors import ActorContractError, ConfigurationError, EnvError
from .fragment import Fragment, State
from .record import check_outputs, copier, recorder
from .nested import paths, torch_dtype

__all__ = ["Context", "startup", "collect"]


def _fill(example: np.ndarray) -> Any:
    """The value written for an env-info key that a step lacks: 0 (False for bool)."""
    return False if example.dtype == np.bool_ else 0


class _Plan:
    """Flat views of one fragment buffer for the per-step loop (built once per buffer)."""

    def __init__(self, context: "Context", fragment: Fragment):
        T = context.n_steps
        self.fragment = fragment  # keeps the buffers alive while the plan is cached
        state, final = fragment.state, fragment.final
        self.state_leaves = optree.tree_leaves(state)
        self.final_leaves = optree.tree_leaves(final)
        self.final_actor_leaves = optree.tree_leaves(final.actor)
        self.final_obs_leaves = optree.tree_leaves(final.obs)
        self.hx_leaves = optree.tree_leaves(fragment.hx)
        self.identity = [fragment.version.numpy(), fragment.worker.numpy(), fragment.sequence.numpy()]
        leaves = self.state_leaves + self.final_leaves
        self.final_np = [_numpy_or_tensor(x) for x in self.final_leaves]
        self.load = _copies([x[0:1] for x in leaves], context.carry)  # row 0 <- the carry
        self.save = _copies(context.carry, [x[T : T + 1] for x in leaves])  # the carry <- row T
        obs = optree.tree_leaves(state.obs)
        act = optree.tree_leaves(state.act)
        actor = optree.tree_leaves(fragment.actor)
        rows = range(1 + T)
        obs_spec, act_spec = context.obs_layout.spec, context.act_layout.spec
        # Actor inputs for row t, as (1, B, ...) views: no allocation in the loop.
        self.inputs = [
            (
                state.stepno[t : t + 1],
                optree.tree_unflatten(obs_spec, [x[t : t + 1] for x in obs]),
                optree.tree_unflatten(act_spec, [x[t : t + 1] for x in act]),
                state.rew[t : t + 1],
                state.fin[t : t + 1],
            )
            for t in rows
        ]
        self.act_rows = [[x[t : t + 1] for x in act] for t in rows]
        self.actor_rows = [[x[t : t + 1] for x in actor] for t in rows]
        obs_np = [buffers.numpy_view(x) for x in obs]
        act_np = [buffers.numpy_view(x) for x in act]
        final_obs_np = [buffers.numpy_view(x) for x in self.final_obs_leaves]
        env_np = {key: buffers.numpy_view(x) for key, x in fragment.env.items()}
        self.obs_np, self.env_np = obs_np, env_np  # whole leaves (1+T, B, ...) and (T, B, ...)
        self.stepno = buffers.numpy_view(state.stepno)
        self.stepno_rows = list(self.stepno)  # (B,) views of rows 0..T
        # (B,) views of the rows of final.episode_length and final.episode_return
        self.length_rows = list(buffers.numpy_view(final.episode_length))
        self.return_rows = list(buffers.numpy_view(final.episode_return))
        self.rew = buffers.numpy_view(state.rew)
        self.fin = buffers.numpy_view(state.fin)
        self.terminated = buffers.numpy_view(state.terminated)
        self.truncated = np.zeros(self.fin.shape, dtype=bool)  # not a fragment field: fin & ~terminated
        self.ramp = np.arange(T + 1, dtype=np.int64)  # (1+T,): 0, 1, ..., T
        # What a step of the envs into row t reads and writes (row 0 is never stepped into).
        self.rows = [None] + [
            Row(
                act=[x[t] for x in act_np],
                obs=[x[t] for x in obs_np],
                final=[x[t] for x in final_obs_np],
                rew=self.rew[t],
                term=self.terminated[t],
                trunc=self.truncated[t],
                fin=self.fin[t],
                info={key: x[t - 1] for key, x in env_np.items()},
            )
            for t in range(1, T + 1)
        ]


def _numpy_or_tensor(x: torch.Tensor) -> Union[np.ndarray, torch.Tensor]:
    """A numpy view of a CPU tensor (numpy calls cost a fraction of torch's on small arrays), or
    the tensor itself where its dtype has no numpy equivalent (e.g. bfloat16 actor outputs)."""
    try:
        return x.numpy()
    except TypeError:
        return x


def _copies(dsts: List[torch.Tensor], srcs: List[torch.Tensor]) -> List[Tuple[Callable, Any, Any]]:
    """``(copy, dst, src)`` for pairs of CPU tensors, with numpy's copy where both have a view."""
    out = []
    for dst, src in zip(dsts, srcs):
        d, s = _numpy_or_tensor(dst), _numpy_or_tensor(src)
        both = isinstance(d, np.ndarray) and isinstance(s, np.ndarray)
        out.append((np.copyto, d, s) if both else (torch.Tensor.copy_, dst, src))
    return out


@dataclasses.dataclass(eq=False)
class Context:
    """The running state of one batch of ``B`` envs between fragments, built by :func:`startup`.

    Fields (who writes them: S = :func:`startup`, C = :func:`collect`, W = a worker collector):
    """

    envs: Union[EnvList, BatchedEnv]  # S: the batch of B envs
    actor: Actor  # S: steps the envs
    n_steps: int  # S: T, steps per fragment
    sticky: bool  # S: freeze an env from its episode end to the fragment end
    obs_layout: Layout  # S: flat leaves, shapes and dtypes of the observations
    act_layout: Layout  # S: the same for the actions
    info_keys: List[Tuple[str, Any]]  # S: env-info keys recorded, with their fill values
    actor_device: Optional[torch.device]  # S: where the actor steps: its parameters' device (None: the CPU)
    info_spec: optree.PyTreeSpec  # S: the structure of the actor's info
    hx_spec: optree.PyTreeSpec  # S: the structure of the actor's recurrent state
    record: Callable  # S: checks and copies the actor's outputs of one step into their rows (chosen once)
    copy_info: Callable  # S: copies an info into its rows
    spec: Fragment  # S: example leaves of one row and column, for buffers.allocate
    hx: Any  # S, C: the recurrent state to feed the next step, batch at dim 1
    carry: List[torch.Tensor]  # S, C: row T of the last fragment (state and final leaves), row 0 of the next
    recurrent: bool  # S: the actor's hx has leaves (reset at episode ends)
    has_info: bool  # S: the actor's info has leaves (recorded: the lookahead and bootstrap steps run)
    # S, C: (B,) float64, each env's return so far in its running episode: the rewards of the
    # steps into rows 1..t added one row at a time (one vector add per step, whatever ends)
    episode_return: np.ndarray
    frozen: np.ndarray  # C: (B,) bool, sticky envs frozen until the fragment ends
    version: int = 0  # W (or same): written into Fragment.version
    worker: int = 0  # W: written into Fragment.worker
    sequence: int = 0  # C: written into Fragment.sequence, counted up after each fragment
    # C: (1,) int64 heartbeat, +1 per env step; a worker collector puts it in shared memory for its watchdog
    progress: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    _plans: Dict[int, "_Plan"] = dataclasses.field(default_factory=dict, repr=False)  # C: per-buffer views

    @property
    def n_envs(self) -> int:
        """``B``."""
        return len(self.envs)

    def allocate(self, *, shared: bool = False, pinned: bool = False) -> Fragment:
        """Fragment buffers for this context: ``(1+T, B, ...)`` leaves (see :mod:`rollout.buffers`)."""
        return buffers.allocate(self.spec, self.n_steps, self.n_envs, shared=shared, pinned=pinned)

    def plan(self, fragment: Fragment) -> _Plan:
        plan = self._plans.get(id(fragment))
        if plan is None or plan.fragment is not fragment:
            self._check_buffer(fragment)
            plan = self._plans[id(fragment)] = _Plan(self, fragment)
        return plan

    def _check_buffer(self, fragment: Fragment) -> None:
        expected = buffers.allocate(optree.tree_map(lambda x: x.to("meta"), self.spec), self.n_steps, self.n_envs)

        def layout(tree):
            return optree.tree_structure(tree), [(tuple(x.shape), x.dtype) for x in optree.tree_leaves(tree)]

        if not isinstance(fragment, Fragment) or layout(fragment) != layout(expected):
            raise ConfigurationError(
                f"the fragment buffer does not match this context: expected {layout(expected)}, found {layout(fragment)}"
            )

    def close(self) -> None:
        """Close the envs (those the collector created)."""
        self.envs.close()


# ---------------------------------------------------------------------------------------- startup
def startup(
    envs: Union[EnvList, BatchedEnv],
    actor: Actor,
    n_steps: int,
    *,
    sticky: bool = False,
    seed: Union[None, int, Sequence[int], np.random.SeedSequence] = None,
    env_info: Any = None,
    disposable: bool = False,
    reset_seeds: Optional[Sequence[int]] = None,
) -> Context:
    """Reset and validate a batch of envs and the actor; return the running context.

    Parameters
    ----------
    envs : EnvList or BatchedEnv
        ``B`` envs (see :mod:`rollout.envs`).
    actor : Actor
        Called once with ``hx=None`` for a fresh recurrent state, which is then reset for all
        envs, and to learn the layout of its outputs.
    n_steps : int
        ``T``, steps per fragment.
    sticky : bool
        Freeze an env from its episode end until the fragment ends (see the module docstring).
    seed : int, sequence of ints, SeedSequence or None
        Env ``j`` is reset with child ``1 + j`` of ``seed`` (child 0 derives a factory's seeds,
        see :func:`rollout.envs.make_envs`); None: fresh entropy.
    env_info : None, sequence of str, or mapping
        Env-info keys to record in ``Fragment.env``: None infers them from one probe step of a
        copy of the first env; names; or name -> example value. Missing keys read 0 (False).
    disposable : bool
        The envs only serve this validation and are thrown away (a worker collector's probe in
        the parent): the probe step that checks the step observation runs on env 0 itself, so
        envs that cannot be deep-copied are checked too, whatever ``env_info`` is.

    reset_seeds : sequence of B ints, optional
        The envs' first reset seeds, instead of those derived from ``seed``.

    Returns
    -------
    Context

    Raises
    ------
    ConfigurationError, EnvError, ActorContractError
        With a message naming the leaf, the expected and the found value.
    """
    if not isinstance(actor, Actor):
        raise ActorContractError(f"expected an actor subclassing rollout.Actor, found {type(actor).__name__}")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ConfigurationError(f"n_steps must be a positive int, found {n_steps!r}")
    if sticky and envs.batched:
        raise ConfigurationError(
            "sticky=True needs single envs: a batched env cannot leave its finished envs unstepped"
        )
    B = len(envs)
    obs_layout = Layout(envs.observation_space, "observation")
    act_layout = Layout(envs.action_space, "action")
    obs_rows = _reset_all(envs, obs_layout, env_seeds(seed, B, 1) if reset_seeds is None else list(reset_seeds))
    examples = _probe_step(envs, obs_layout, env_info, disposable)
    info_keys = [(key, _fill(example)) for key, example in examples.items()]
    envs.bind(obs_layout, act_layout, info_keys, sticky)
    state = _carry_state(obs_layout, act_layout, obs_rows, B)
    device = _device(actor)
    info, hx = _ask_actor(actor, state, act_layout, device, B)
    info_spec, hx_spec = optree.tree_structure(info), optree.tree_structure(hx)
    with torch.no_grad():
        hx = _reset(actor, hx, torch.arange(B), hx_spec)
    spec = _fragment_spec(state, info, hx, examples)
    final = buffers.allocate(spec, 0, B).final
    return Context(
        envs=envs,
        actor=actor,
        n_steps=n_steps,
        sticky=sticky,
        obs_layout=obs_layout,
        act_layout=act_layout,
        info_keys=info_keys,
        actor_device=device,
        info_spec=info_spec,
        hx_spec=hx_spec,
        record=recorder(act_layout, info_spec, hx_spec),
        copy_info=copier(info_spec, "info"),
        spec=spec,
        hx=hx,
        carry=optree.tree_leaves(state) + optree.tree_leaves(final),
        recurrent=hx_spec.num_leaves > 0,
        has_info=info_spec.num_leaves > 0,
        episode_return=np.zeros(B, dtype=np.float64),
        frozen=np.zeros(B, dtype=bool),
    )


def _reset_all(envs: Union[EnvList, BatchedEnv], obs_layout: Layout, seeds: List[int]) -> List[np.ndarray]:
    """Reset every env with its seed, check the observations; the flat leaves ``(B, ...)``."""
    B = len(envs)
    first = envs.reset(seeds)
    if envs.batched:
        return _batched_obs(obs_layout, first, B, "VectorEnv.reset")
    obs_layout.adopt(first[0], "env 0: reset() observation")
    obs_rows = [np.zeros((B, *s), dtype=d) for s, d in zip(obs_layout.shapes, obs_layout.dtypes)]
    for j, obs in enumerate(first):
        if j:
            obs_layout.adopt(obs, f"env {j}: reset() observation")
        obs_layout.write(obs_rows, j, obs, "reset() observation")
    return obs_rows


def _probe_step(
    envs: Union[EnvList, BatchedEnv], obs_layout: Layout, env_info: Any, disposable: bool
) -> Dict[str, np.ndarray]:
    """One probe step (checks the step observation and reward); the env-info keys and examples."""
    wants_probe = disposable or env_info is None or (not isinstance(env_info, dict) and len(env_info) > 0)
    probe = envs.probe(in_place=disposable) if wants_probe else None
    if probe is not None:
        obs_layout.adopt(probe[0], "env 0: step() observation")
        if not isinstance(probe[1], (int, float, np.integer, np.floating, np.bool_)):
            raise EnvError(f"env 0: step() reward: expected a number, found {type(probe[1]).__name__}")
    elif wants_probe and not envs.batched:
        warn_no_probe()
    return info_examples(env_info, probe[2] if probe is not None else None)


def _carry_state(obs_layout: Layout, act_layout: Layout, obs_rows: List[np.ndarray], B: int) -> State:
    """The first carry row ``(1, B, ...)``: the reset observations, every env starting an episode."""
    obs = [torch.from_numpy(x).unsqueeze(0) for x in obs_rows]
    act = [torch.zeros((1, B, *s), dtype=torch_dtype(d)) for s, d in zip(act_layout.shapes, act_layout.dtypes)]
    return State(
        stepno=torch.zeros((1, B), dtype=torch.int64),
        obs=optree.tree_unflatten(obs_layout.spec, obs),
        act=optree.tree_unflatten(act_layout.spec, act),
        rew=torch.zeros((1, B), dtype=torch.float32),
        fin=torch.ones((1, B), dtype=torch.bool),
        terminated=torch.zeros((1, B), dtype=torch.bool),
    )


def _ask_actor(
    actor: Actor, state: State, act_layout: Layout, device: Optional[torch.device], B: int
) -> Tuple[Any, Any]:
    """One virtual step on the carry row, its outputs checked: ``(info, fresh hx)``."""
    with torch.no_grad():
        out = actor.step(*_to(device, tuple(state[:5])), hx=None, virtual=True)
    check_outputs(out, B, act_layout, f"{type(actor).__name__}.step")
    _, hx, info = out
    return info, hx


def _fragment_spec(state: State, info: Any, hx: Any, examples: Dict[str, np.ndarray]) -> Fragment:
    """Example leaves for one row and one column of every fragment field."""

    def example(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 1, *x.shape[2:]), dtype=x.dtype)

    actor_example = optree.tree_map(example, info)
    return Fragment(
        state=optree.tree_map(example, state),
        actor=actor_example,
        env={key: torch.zeros((1, 1, *ex.shape), dtype=torch_dtype(ex.dtype)) for key, ex in examples.items()},
        hx=optree.tree_map(lambda h: torch.zeros((h.shape[0], 1, *h.shape[2:]), dtype=h.dtype), hx),
        final=buffers.final_spec(optree.tree_map(example, state.obs), actor_example),
        version=torch.zeros(1, dtype=torch.int64),
    )


def _device(actor: torch.nn.Module) -> Optional[torch.device]:
    for tensor in actor.parameters():
        return None if tensor.device.type == "cpu" else tensor.device
    return None


def _to(device: Optional[torch.device], tree: Any) -> Any:
    if device is None:
        return tree
    return optree.tree_map(lambda x: x.to(device, non_blocking=True), tree)


def _reset(actor: Actor, hx: Any, at: torch.Tensor, spec: optree.PyTreeSpec) -> Any:
    if spec.num_leaves == 0:
        return hx
    hx = actor.reset(hx, at.to(optree.tree_leaves(hx)[0].device))
    found = optree.tree_structure(hx)
    if found != spec:
        raise ActorContractError(
            f"{type(actor).__name__}.reset changed the structure of hx: expected {spec}, found {found}"
        )
    return hx


def _batched_obs(layout: Layout, value: Any, B: int, where: str) -> List[np.ndarray]:
    leaves, spec = optree.tree_flatten(value)
    if paths(spec) != layout.paths:
        raise EnvError(f"{where}: expected observation leaves {layout.paths}, found {paths(spec)}")
    layout.spec = spec
    for path, leaf, shape, dtype in zip(layout.paths, leaves, layout.shapes, layout.dtypes):
        if not isinstance(leaf, np.ndarray) or leaf.shape != (B, *shape) or leaf.dtype != dtype:
            raise EnvError(
                f"{where}: observation{path}: expected an array of shape {(B, *shape)} and dtype {dtype}, found {leaf!r:.60}"
            )
    return leaves


# ---------------------------------------------------------------------------------------- collect
def collect(context: Context, fragment: Fragment) -> Fragment:
    """Fill ``fragment`` with the next ``T`` steps of the batch (see the module's timing table).

    Each step has three phases: *react* (the actor's step on row ``t``: its action goes to row
    ``t+1``, its other outputs to ``actor[t]``), *step* (the envs write row ``t+1``) and *record*
    (step numbers and running returns, then only where episodes ended, in :func:`_episode_ends`).
    What can be written per fragment is: sticky step numbers are laid out by :func:`_begin`, and a
    sticky env's frozen rows are filled when it ends.

    Parameters
    ----------
    context : Context
        From :func:`startup`; advanced in place (envs, recurrent state, counters).
    fragment : Fragment
        Buffers from ``context.allocate()`` (or columns of a larger buffer with the same layout),
        overwritten: leaves ``(1+T, B, ...)``, ``env`` ``(T, B, ...)``.

    Returns
    -------
    Fragment
        ``fragment`` itself.
    """
    plan = context.plan(fragment)
    actor, T, device, progress = context.actor, context.n_steps, context.actor_device, context.progress
    step_envs, record, ret, add = context.envs.step, context.record, context.episode_return, np.add
    # Non-sticky step numbers count up one row per step (zeroed where an episode ends); sticky
    # ones are laid out per fragment by _begin (their frozen rows stay 0).
    count = None if context.sticky else plan.stepno_rows
    inputs, act_rows, actor_rows, rows = plan.inputs, plan.act_rows, plan.actor_rows, plan.rows
    skip = context.frozen if context.sticky else None
    with torch.no_grad():
        _begin(context, plan)
        hx, t, resets = context.hx, 0, False
        try:
            for t in range(T):
                t1 = t + 1
                # react (positional arguments: a call without * packing)
                stepno, obs, act, rew, fin = inputs[t] if device is None else _to(device, inputs[t])
                act, hx_next, info = actor.step(stepno, obs, act, rew, fin, hx=hx, virtual=False)
                record(act, hx_next, info, act_rows[t1], actor_rows[t])
                # step (frozen envs are not called)
                row = rows[t1]
                ended = step_envs(row, skip)
                progress[0] += 1
                # record: step numbers and running returns, then only where episodes ended
                if count is not None:
                    add(count[t], 1, out=count[t1])
                add(ret, row.rew, out=ret)
                if ended or resets:
                    hx_next, resets = _episode_ends(context, plan, t1, row, hx_next, ended)
                hx = hx_next
        except ActorContractError as error:  # the actor's fault: say which actor and which row
            raise ActorContractError(f"{type(actor).__name__}.step at row {t} of the fragment: {error}") from None

        # Row T: a virtual lookahead step (its action is never executed; hx does not advance),
        # for the info it records: an actor without info is not asked.
        if context.has_info:
            _, _, info = actor.step(*_to(device, inputs[T]), hx=hx, virtual=True)
            context.copy_info(info, actor_rows[T])
        _end(context, plan)
        context.hx = hx
    return fragment


def _begin(context: Context, plan: _Plan) -> None:
    """Row 0 from the carry, the fragment's identity, sticky step numbers laid out as if no
    episode ended, and rows 1..T cleared of what a step does not write (``fin``, ``terminated``,
    and ``final`` where the buffer's last use had episode ends)."""
    rows, cols = np.nonzero(plan.fin[1:])
    if len(rows):  # only rows with `fin` were written: no full sweep of large observations
        index = (rows + 1, cols)
        for dst in plan.final_np:
            dst[index if isinstance(dst, np.ndarray) else tuple(map(torch.from_numpy, index))] = 0
    plan.fin[1:] = False
    plan.terminated[1:] = False
    plan.truncated[1:] = False
    for copy, dst, src in plan.load:
        copy(dst, src)
    if plan.hx_leaves:
        for dst, src in zip(plan.hx_leaves, optree.tree_leaves(context.hx)):
            dst.copy_(src)
    if context.sticky:
        np.add(plan.stepno[0], plan.ramp[1:, None], out=plan.stepno[1:])
    for dst, value in zip(plan.identity, (context.version, context.worker, context.sequence)):
        dst.fill(value)
    context.frozen[:] = False


def _end(context: Context, plan: _Plan) -> None:
    """Row T carried to the next fragment."""
    for copy, dst, src in plan.save:
        copy(dst, src)
    context.sequence += 1


def _episode_ends(context: Context, plan: _Plan, t1: int, row: Row, hx: Any, ended: bool) -> Tuple[Any, bool]:
    """Row ``t1``, where the envs set ``fin`` where an episode ended (``ended``: any did), or
    sticky envs are frozen and the actor has a state.

    Records the ended episodes' length and return and the bootstraps of truncations, restarts
    the ended envs' step numbers (or, sticky, writes their frozen rows to the fragment's end),
    and resets the recurrent state of every env with ``fin``. Returns that state and whether
    the next step has resets too (a recurrent actor with frozen envs).

    Every write is one array operation over the batch, masked by ``fin``: the cost of a step
    does not grow with the number of envs that end (thousands of batched envs end dozens at a
    time), and there are as few operations as can be (each costs microseconds here, between an
    actor's forward and an env's step, whatever its size).
    """
    fin, stepno, sticky, ret, copyto = row.fin, plan.stepno_rows[t1], context.sticky, context.episode_return, np.copyto
    if ended:
        # Sticky envs frozen earlier have `fin` on this row too: the newly ended ones are the others.
        new = fin & ~context.frozen if sticky else fin
        copyto(plan.length_rows[t1], stepno, where=new)
        copyto(plan.return_rows[t1], ret, where=new)
        copyto(ret, 0.0, where=new)
        # `trunc` is set only where an episode ended (and cleared by _begin); count_nonzero is
        # the cheapest test of a bool row (any() is a Python-level method)
        if context.has_info and np.count_nonzero(row.trunc):  # an actor without info has nothing to record
            _bootstrap(context, plan, t1, hx, row.trunc, stepno)
        if sticky:
            _freeze(context, plan, t1, np.flatnonzero(new))
        else:
            copyto(stepno, 0, where=new)  # the next rows count on from it
    if context.recurrent:
        at = np.flatnonzero(fin)
        if len(at):
            hx = _reset(context.actor, hx, torch.from_numpy(at), context.hx_spec)
        return hx, sticky and bool(np.count_nonzero(context.frozen))
    return hx, False


def _freeze(context: Context, plan: _Plan, t1: int, ends: np.ndarray) -> None:
    """Sticky envs that ended at row ``t1``: not stepped until the fragment ends; their rows
    ``t1+1 .. T`` are padding, written here once: the reset observation repeated, reward 0,
    ``fin`` and ``terminated`` set, step number 0, env info at its fill value."""
    context.frozen[ends] = True
    plan.stepno[t1:, ends] = 0
    rest = slice(t1 + 1, None)
    for obs in plan.obs_np:
        obs[rest, ends] = obs[t1, ends]
    plan.rew[rest, ends] = 0.0
    plan.fin[rest, ends] = True
    plan.terminated[rest, ends] = True
    for key, fill in context.info_keys:
        plan.env_np[key][t1:, ends] = fill


def _bootstrap(context: Context, plan: _Plan, t1: int, hx: Any, truncated: np.ndarray, stepno: np.ndarray) -> None:
    """Record the actor's virtual reaction to the true final observations of truncated envs."""
    at = torch.from_numpy(np.flatnonzero(truncated))
    take = lambda x: x[t1 : t1 + 1].index_select(1, at)  # noqa: E731
    state = plan.fragment.state
    inputs = (
        torch.from_numpy(stepno[truncated]).unsqueeze(0),
        optree.tree_map(take, plan.fragment.final.obs),
        optree.tree_map(take, state.act),
        take(state.rew),
        torch.zeros((1, len(at)), dtype=torch.bool),
    )
    hx = optree.tree_map(lambda h: h.index_select(1, at.to(h.device)), hx)
    _, _, info = context.actor.step(*_to(context.actor_device, inputs), hx=hx, virtual=True)
    found, spec = optree.tree_flatten(info)
    if spec != context.info_spec:
        raise ActorContractError(f"the actor's info changed structure: expected {context.info_spec}, found {spec}")
    for dst, src in zip(plan.final_actor_leaves, found):
        dst[t1 : t1 + 1].index_copy_(1, at, src.to(dst.device))
